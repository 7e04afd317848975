#!/usr/bin/env bash
# Set up .venv (once, and again whenever the requirements change), then run the main job or the test suite.
# requirements.txt is what the app needs at run time (a Space installs it); the tests add requirements-dev.txt.
#   ./run.sh app     the explorer on http://127.0.0.1:7860 with the bundled model (extra arguments go to the app)
#   ./run.sh test    the whole test suite, browser tests included (extra arguments go to pytest)
#   --gpu            (right after app/test, or MASKBIT_GPU=1) set .venv up from requirements-gpu.txt: FAISS with GPU
#                    indexes in place of faiss-cpu; without it the CPU requirements come back. The same .venv switches.
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  local python=${PYTHON:-python3} requirements=requirements.txt
  [ "$gpu" = 1 ] && requirements=requirements-gpu.txt
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  local want have
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  have=$(cat .venv/.requirements.sha256 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    rm -f .venv/.requirements-dev.sha256  # installed beside the run-time set: check it again after
    echo "Installing $requirements into .venv (a few minutes the first time)..." >&2
    # faiss-cpu and faiss-gpu install the same files (the module `faiss`): remove the one not asked for first, so
    # that installing one over the other, or uninstalling it later, never leaves a broken mix.
    local wanted unwanted
    wanted=$(grep -oE '^faiss-[a-z0-9-]+' "$requirements" || true)
    unwanted=$(.venv/bin/python -m pip list --format=freeze --disable-pip-version-check 2>/dev/null |
      grep -oiE '^faiss-[a-z0-9-]+' | grep -vix "$wanted" || true)
    if [ -n "$unwanted" ]; then
      .venv/bin/python -m pip uninstall --quiet --yes $unwanted
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > .venv/.requirements.sha256
  fi
}

# The test suite's tools, beside the run-time requirements (a Space or `./run.sh app` needs none of them).
setup_dev() {
  local want have
  want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
  have=$(cat .venv/.requirements-dev.sha256 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "Installing requirements-dev.txt into .venv..." >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    echo "$want" > .venv/.requirements-dev.sha256
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
gpu=${MASKBIT_GPU:-0}
if [ "${1:-}" = "--gpu" ]; then
  gpu=1
  shift
fi
case "$command" in
  app)
    setup
    exec .venv/bin/python -m app "$@"
    ;;
  test)
    setup
    setup_dev
    browser
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: ./run.sh app [--gpu] [args...] | ./run.sh test [--gpu] [pytest args...]" >&2
    exit 2
    ;;
esac
