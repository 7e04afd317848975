"""The explorer under load: N concurrent gradio_client clients for T seconds against the real server.

    .venv/bin/python -m bench.app_load [--clients 32] [--seconds 120] [--index-limit 200] [--out FILE] [-- app options]

Starts `python -m app` (the bundled models) as a subprocess with a temporary index root and workspace, waits for its
index, times every action with one client alone, then runs `--clients` clients, each with its own session, for
`--seconds` seconds, each sending a random mix of generate, flip_bits, neighbours and a small memorization_report;
most of them on one shared image with the same arguments, so that concurrent requests give identical results. Reports
the requests and errors (by kind), the server's exceptions (from its log), p50/p95 latency of each action alone and
under load, and the server's resident memory every `--rss-every` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KNOBS = [16, 4.0, "none", 1.0, 2.0, 1.0, "arccos"]  # the bundled model's own sampling
MIX = {"generate": 0.3, "flip_bits": 0.25, "neighbours": 0.3, "memorization_report": 0.15}
EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception)(: .*)?$")  # the last line of a traceback (and of each cause)


def wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the app did not answer within {timeout:.0f} s")


def rss_mb(pid: int) -> float:
    """Resident memory of the process and its children, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, AttributeError):
            continue
    return total / 1024


def percentiles(times: list[float]) -> dict:
    if not times:
        return {"n": 0}
    p50, p95 = np.percentile(times, [50, 95])
    return {"n": len(times), "p50_s": round(float(p50), 2), "p95_s": round(float(p95), 2)}


class Actions:
    """The requests a client sends; `image` is the shared query image, `other` a second one."""

    def __init__(self, client, classes: list[str], image, other):
        self.client, self.classes, self.image, self.other = client, classes, image, other

    def __call__(self, name: str, rng: random.Random):
        c, image = self.client, self.image if rng.random() < 0.8 else self.other
        if name == "generate":
            return c.predict(self.classes, 2, rng.choice([0, 1]), *KNOBS, api_name="/generate")
        if name == "flip_bits":
            return c.predict(image, "all", "all", api_name="/flip_bits")
        if name == "neighbours":
            return c.predict(image, 8, api_name="/neighbours")
        if name == "memorization_report":
            return c.predict(4, 0, 0, api_name="/memorization_report")
        raise ValueError(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--alone", type=int, default=4, help="requests of each action with one client alone")
    parser.add_argument("--index-limit", type=int, default=200)
    parser.add_argument("--rss-every", type=float, default=10)
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    parser.add_argument("app_args", nargs="*")
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    url = f"http://127.0.0.1:{args.port}/"
    scratch = Path(tempfile.mkdtemp(prefix="maskbit-load-"))
    log_path = scratch / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "app", "--port", str(args.port), "--index-limit", str(args.index_limit),
        "--index-root", str(scratch / "indexes"), "--workspace", str(scratch / "runs"), *args.app_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(url, process, 600)
        downloads = scratch / "downloads"
        client = Client(url, verbose=False, download_files=str(downloads))
        deadline = time.time() + 1800
        while (status := client.predict(api_name="/index_status")).startswith("⏳") or not status:
            if time.time() > deadline:
                raise TimeoutError(f"the index was not ready after 30 min: {status}")
            time.sleep(2)
        info = client.predict(api_name="/model_info")
        classes = ["circle"] if info.get("classes") == 10 else ["tench"]
        gallery = client.predict(classes, 2, 0, *KNOBS, api_name="/generate")[0]
        image, other = handle_file(gallery[0]["image"]), handle_file(gallery[1]["image"])

        alone: dict[str, list[float]] = {name: [] for name in MIX}
        act = Actions(client, classes, image, other)
        rng = random.Random(0)
        for name in MIX:
            for _ in range(args.alone):
                started = time.time()
                act(name, rng)
                alone[name].append(time.time() - started)
        rss_before = rss_mb(process.pid)

        load: dict[str, list[float]] = {name: [] for name in MIX}
        errors: Counter[str] = Counter()
        lock = threading.Lock()
        started = time.time()
        stop = started + args.seconds

        def run_client(number: int) -> None:
            rng = random.Random(number)
            mine = Actions(Client(url, verbose=False, download_files=str(downloads)), classes, image, other)
            names, weights = list(MIX), list(MIX.values())
            while time.time() < stop:
                name = rng.choices(names, weights)[0]
                t = time.time()
                try:
                    mine(name, rng)
                except Exception as error:  # every failure a client sees is counted and shown by kind
                    with lock:
                        errors[f"{name}: {type(error).__name__}: {str(error)[:160]}"] += 1
                    continue
                with lock:
                    load[name].append(time.time() - t)

        rss = [(0.0, round(rss_before))]
        threads = [threading.Thread(target=run_client, args=(i,), daemon=True) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            time.sleep(min(args.rss_every, 1.0))
            now = time.time() - started
            if now - rss[-1][0] >= args.rss_every:
                rss.append((round(now), round(rss_mb(process.pid))))
        wall = time.time() - started
        rss.append((round(wall), round(rss_mb(process.pid))))
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    for folder in ("downloads", "indexes", "runs"):  # the server's log stays, for reading
        shutil.rmtree(scratch / folder, ignore_errors=True)
    log_text = log_path.read_text(errors="replace")
    kinds = Counter(line for line in log_text.splitlines() if EXCEPTION_LINE.match(line))
    served = sum(len(v) for v in load.values())
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "clients": args.clients,
        "seconds": args.seconds,
        "wall_s": round(wall, 1),
        "index_limit": args.index_limit,
        "app_args": args.app_args,
        "requests": served + sum(errors.values()),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors),
        "server_tracebacks": log_text.count("Traceback (most recent call last)"),
        "server_errors_logged": len(re.findall(r"^ERROR|Exception in ASGI application| ERROR ", log_text, re.M)),
        "server_exceptions_by_kind": dict(kinds),
        "latency_alone": {name: percentiles(t) for name, t in alone.items()},
        "latency_under_load": {name: percentiles(t) for name, t in load.items()},
        "rss_mb": rss,
        "server_log": str(log_path),
    }
    print(json.dumps(result, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
