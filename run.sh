#!/usr/bin/env bash
# Set up .venv (once, and again whenever requirements.txt changes), then run the main job or the test suite.
#   ./run.sh app     the explorer on http://127.0.0.1:7860 with the bundled model (extra arguments go to the app)
#   ./run.sh test    the whole test suite, browser tests included (extra arguments go to pytest)
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  local python=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  local want have
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  have=$(cat .venv/.requirements.sha256 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "Installing requirements into .venv (a few minutes the first time)..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" > .venv/.requirements.sha256
  fi
}

# The browser tests drive Debian's Chromium through Playwright (never `playwright install`: it downloads a browser);
# the emoji font lets its screenshots show the app's status symbols.
browser() {
  if [ ! -x /usr/bin/chromium ] || [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; then
    echo "Installing Chromium and an emoji font for the browser tests (apt-get)..." >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
  fi
}

command=${1:-}
shift || true
case "$command" in
  app)
    setup
    exec .venv/bin/python -m app "$@"
    ;;
  test)
    setup
    browser
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: ./run.sh app [args...] | ./run.sh test [pytest args...]" >&2
    exit 2
    ;;
esac
