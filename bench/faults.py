"""Fault injection at scale: kill -9 at random moments and full disks (a real tmpfs, mounted small) under every
multi-file writer, then the same command again; each resumed result is compared with an uninterrupted run.

    index    `python -m indexes build ... --save-every 1` (tiny tokenizer, 32 px, hamming + pixel)
    report   `python -m indexes report` (tiny pair, 16 generated images)
    train    `python -m train tokenizer --preset tiny` (8 steps, a checkpoint every 2)
    app      `python -m app` while it builds its index on start (tiny pair; restarted until the index is ready)

A kill lands uniformly in the window where the uninterrupted run writes (from its first commit to its end). A full
disk: the output folder on a tmpfs of a random size smaller than the run needs; the command must stop with a message
that names the disk space, then, after `mount -o remount,size=...` (space freed), the same command must finish with
the uninterrupted result. Needs root (mount). Results: bench/results/faults.json.

    .venv/bin/python -m bench.faults --trials 10
    .venv/bin/python -m bench.faults --trials 10 --cases index report train --faults kill --into-writes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests" / "fixtures" / "official-tiny"
ENV = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "ACCELERATE_USE_CPU": "true",
    "OMP_NUM_THREADS": "1",
    "MASKBIT_PRECISION": "fp32",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
}
TOKENIZER = ["--tokenizer", str(TINY / "tiny_tokenizer.bin"), "--tokenizer-config", str(TINY / "tiny_tokenizer.yaml")]
GENERATOR = ["--generator", str(TINY / "tiny_generator.bin"), "--generator-config", str(TINY / "tiny_generator.yaml")]
INDEX_LIMIT = 320
DISK_WORDS = "the disk is full"
TIMEOUT = 900


# ------------------------------------------------------------------------------------------------ plumbing


@contextmanager
def tmpfs(size: int):
    folder = Path(tempfile.mkdtemp(prefix="faults-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def grow(folder: Path, size: int = 1 << 30) -> None:
    """Free space: the tmpfs grows (the same files stay)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def spawn(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(command: list[str], written) -> tuple[float, float]:
    """Run uninterrupted; return (seconds to the first write `written()` sees, seconds to the end)."""
    start, first = time.time(), None
    process = spawn(command)
    while process.poll() is None:
        if first is None and written():
            first = time.time() - start
        time.sleep(0.01)
    if process.returncode:
        raise RuntimeError(f"{command} failed with {process.returncode}")
    end = time.time() - start
    return (first if first is not None else 0.0), end


INTO_WRITES: list[bool] = [False]  # --into-writes: every kill waits for the next write to begin, then lands in it


def kill_at(command: list[str], moment: float, inside) -> bool:
    """Start `command`, kill -9 it `moment` seconds later (with --into-writes: at a random point of the first write
    that `inside()` sees after that moment); returns whether it was inside a write."""
    process = spawn(command)
    deadline = time.time() + moment
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.002)
    if INTO_WRITES[0]:
        while not inside() and process.poll() is None:
            time.sleep(0.0005)
        time.sleep(random.uniform(0, 0.0003))
    landed = inside()
    process.send_signal(signal.SIGKILL)
    process.wait()
    return landed


def record(results: dict, case: str, **counts: int) -> None:
    entry = results.setdefault(case, {})
    for key, value in counts.items():
        entry[key] = entry.get(key, 0) + int(value)
    print(case, entry, flush=True)


# ------------------------------------------------------------------------------------------------ index


def index_command(out: Path) -> list[str]:
    return python(
        "-m", "indexes", "build", *TOKENIZER, "--resolution", "32", "--metrics", "hamming", "pixel",
        "--batch-size", "8", "--save-every", "1", "--limit", str(INDEX_LIMIT), "--index", str(out),
    )  # fmt: skip


def index_contents(directory: Path) -> dict:
    from indexes.store import ImageIndex
    from maskbit import Tokenizer

    tokenizer = Tokenizer.from_pretrained(TINY / "tiny_tokenizer.bin", TINY / "tiny_tokenizer.yaml")
    index = ImageIndex.open(directory, tokenizer)
    return {
        "count": len(index),
        "tokens": index.tokens,
        "sources": index.sources,
        "calibration": {m: c.threshold for m, c in index.calibration.items()},
        **{m: flat.reconstruct_n(0, len(index)) for m, flat in index.flat.items()},
    }


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
    )


def committed(directory: Path) -> int:
    try:
        return json.loads((directory / "manifest.json").read_text())["generation"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def index_case(results: dict, trials: int, work: Path) -> None:
    reference = work / "index-reference"
    first, end = timed(index_command(reference), lambda: committed(reference) > 0)
    expected = index_contents(reference)
    for trial in range(trials if KILLS[0] else 0):
        out = work / f"index-kill-{trial}"
        inside = kill_at(
            index_command(out),
            random.uniform(first, end),
            lambda out=out: (out / f"generation-{committed(out) + 1}").exists(),
        )
        resumed = run(index_command(out))
        record(
            results,
            "index: kill -9",
            faults=1,
            inside_a_save=inside,
            resumed=resumed.returncode == 0,
            equal=resumed.returncode == 0 and same(index_contents(out), expected),
        )
        shutil.rmtree(out)
    needed = sum(f.stat().st_size for f in reference.rglob("*") if f.is_file())
    for _ in range(trials if FULL_DISKS[0] else 0):
        with tmpfs(random.randint(needed // 20, needed)) as disk:
            out = disk / "index"
            failed = run(index_command(out))
            message = failed.returncode == 2 and DISK_WORDS in failed.stderr and "still holds its" in failed.stderr
            grow(disk)
            resumed = run(index_command(out))
            record(
                results,
                "index: full disk",
                faults=failed.returncode != 0,
                clear_message=message,
                traceback="Traceback" in failed.stderr,
                resumed=resumed.returncode == 0,
                equal=resumed.returncode == 0 and same(index_contents(out), expected),
            )


# ------------------------------------------------------------------------------------------------ report


def report_command(index: Path, out: Path) -> list[str]:
    return python(
        "-m", "indexes", "report", "--index", str(index), *TOKENIZER, *GENERATOR, "--count", "16", "--out", str(out)
    )  # fmt: skip


def report_json(out: Path):
    return json.loads((out / "report.json").read_text())


def report_case(results: dict, trials: int, work: Path) -> None:
    index = work / "index-reference"
    reference = work / "report-reference"
    first, end = timed(report_command(index, reference), lambda: (work / ".report-reference.partial").exists())
    expected = report_json(reference)
    for trial in range(trials if KILLS[0] else 0):
        out = work / f"report-kill-{trial}"
        partial = work / f".report-kill-{trial}.partial"
        moment = random.uniform(0, first) if INTO_WRITES[0] else random.uniform(first * 0.5, end)  # before the write
        inside = kill_at(report_command(index, out), moment, partial.exists)
        state_after_kill = (
            "complete" if (out / "report.json").is_file() else ("absent" if not out.exists() else "mixed")
        )
        resumed = run(report_command(index, out))
        record(
            results,
            "report: kill -9",
            faults=1,
            inside_a_write=inside,
            left_mixed=state_after_kill == "mixed",
            resumed=resumed.returncode == 0,
            equal=resumed.returncode == 0 and report_json(out) == expected,
        )
        shutil.rmtree(out, ignore_errors=True)
    needed = sum(f.stat().st_size for f in reference.rglob("*") if f.is_file())
    for _ in range(trials if FULL_DISKS[0] else 0):
        with tmpfs(random.randint(needed // 20, needed - 4096)) as disk:
            out = disk / "report"
            failed = run(report_command(index, out))
            message = failed.returncode == 2 and DISK_WORDS in failed.stderr and "is as it was" in failed.stderr
            grow(disk)
            resumed = run(report_command(index, out))
            record(
                results,
                "report: full disk",
                faults=failed.returncode != 0,
                clear_message=message,
                traceback="Traceback" in failed.stderr,
                resumed=resumed.returncode == 0,
                equal=resumed.returncode == 0 and report_json(out) == expected,
            )


# ------------------------------------------------------------------------------------------------ training


def train_command(run_dir: Path, resume: bool = False) -> list[str]:
    """The run, or its resume (which reads the config from the run directory)."""
    settings = (
        ["--resume"] if resume else ["--preset", "tiny", "--set", "training.max_steps=8", "training.save_every=2"]
    )
    return python("-m", "train", "tokenizer", *settings, "--run-dir", str(run_dir))


def train_result(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    from train.rundir import RunDir

    run = RunDir(run_dir)
    latest = run.latest_checkpoint()
    return {
        "losses": {r["step"]: r["loss"] for r in run.read_metrics()},
        "step": latest[0] if latest else None,
        "weights": load_file(latest[1] / "model" / "model.safetensors") if latest else {},
    }


def same_training(a: dict, b: dict) -> bool:
    return (
        a["step"] == b["step"]
        and a["losses"].keys() == b["losses"].keys()
        and all(abs(a["losses"][s] - b["losses"][s]) <= 1e-6 + 1e-5 * abs(b["losses"][s]) for s in a["losses"])
        and a["weights"].keys() == b["weights"].keys()
        and all(torch.allclose(a["weights"][k], b["weights"][k], rtol=1e-5, atol=1e-6) for k in a["weights"])
    )


def train_case(results: dict, trials: int, work: Path) -> None:
    reference = work / "train-reference"
    first, end = timed(train_command(reference), lambda: (reference / "checkpoints").is_dir())
    expected = train_result(reference)
    for trial in range(trials if KILLS[0] else 0):
        run_dir = work / f"train-kill-{trial}"
        checkpoints = run_dir / "checkpoints"
        inside = kill_at(
            train_command(run_dir),
            random.uniform(first, end),
            lambda checkpoints=checkpoints: (
                checkpoints.is_dir() and any(p.name.startswith(".tmp-step-") for p in checkpoints.iterdir())
            ),
        )
        resumed = run(train_command(run_dir, resume=True))
        record(
            results,
            "train: kill -9",
            faults=1,
            inside_a_checkpoint_write=inside,
            resumed=resumed.returncode == 0,
            equal=resumed.returncode == 0 and same_training(train_result(run_dir), expected),
        )
        shutil.rmtree(run_dir)
    needed = sum(f.stat().st_size for f in reference.rglob("*") if f.is_file())
    for _ in range(trials if FULL_DISKS[0] else 0):
        with tmpfs(random.randint(needed // 10, needed)) as disk:
            run_dir = disk / "run"
            failed = run(train_command(run_dir))
            message = failed.returncode == 2 and DISK_WORDS in failed.stderr and "--resume`" in failed.stderr
            grow(disk)
            resumed = run(train_command(run_dir, resume=True))
            record(
                results,
                "train: full disk",
                faults=failed.returncode != 0,
                clear_message=message,
                traceback="Traceback" in failed.stderr,
                resumed=resumed.returncode == 0,
                equal=resumed.returncode == 0 and same_training(train_result(run_dir), expected),
            )


# ------------------------------------------------------------------------------------------------ app


MODELS: list[Path] = []  # the app's models (the tiny pair in the own format), written by app_case


def app_command(root: Path, port: int) -> list[str]:
    return python(
        "-m", "app", "--tokenizer", str(MODELS[0] / "tokenizer"),
        "--generator", str(MODELS[0] / "generator"), "--index-root", str(root),
        "--index-limit", "240", "--port", str(port),
    )  # fmt: skip


def app_index(root: Path) -> Path | None:
    found = [p for p in root.iterdir() if (p / "manifest.json").is_file()] if root.is_dir() else []
    return found[0] if found else None


def app_ready(root: Path) -> bool:
    directory = app_index(root)
    if directory is None:
        return False
    manifest = json.loads((directory / "manifest.json").read_text())
    return manifest["count"] == 240 and bool(manifest.get("calibration"))


def start_app_until(root: Path, done, timeout: float = TIMEOUT) -> subprocess.Popen:
    from tests.conftest import free_port

    process = subprocess.Popen(
        app_command(root, free_port()), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + timeout
    while not done() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    return process


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGKILL)
    return process.communicate()[1] or ""


def app_status(port: int) -> str:
    from gradio_client import Client

    return Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/index_status")


def app_case(results: dict, trials: int, work: Path) -> None:
    from maskbit import Generator, Tokenizer

    models = work / "models"
    MODELS[:] = [models]
    Tokenizer.from_pretrained(TINY / "tiny_tokenizer.bin", TINY / "tiny_tokenizer.yaml").save_pretrained(
        models / "tokenizer"
    )
    Generator.from_pretrained(TINY / "tiny_generator.bin", TINY / "tiny_generator.yaml").save_pretrained(
        models / "generator"
    )
    reference = work / "app-reference"
    start, first = time.time(), None

    def ready() -> bool:
        nonlocal first
        if first is None and app_index(reference) is not None:
            first = time.time() - start
        return app_ready(reference)

    stop(start_app_until(reference, ready))
    end = time.time() - start
    expected = index_contents(app_index(reference))
    for trial in range(trials if KILLS[0] else 0):
        root = work / f"app-kill-{trial}"
        moment = random.uniform(first, end)
        process = start_app_until(root, lambda: False, timeout=moment)
        stop(process)
        process = start_app_until(root, lambda root=root: app_ready(root))
        stop(process)
        ready = app_ready(root)
        record(
            results,
            "app: kill -9 while it builds its index",
            faults=1,
            resumed=ready,
            equal=ready and same(index_contents(app_index(root)), expected),
        )
        shutil.rmtree(root)
    needed = sum(f.stat().st_size for f in reference.rglob("*") if f.is_file())
    for _ in range(trials if FULL_DISKS[0] else 0):
        from tests.conftest import free_port

        with tmpfs(random.randint(needed // 20, needed // 2)) as disk:
            root, port = disk / "indexes", free_port()
            log = open(work / "app-full-disk.log", "w")  # noqa: SIM115 - closed below
            process = subprocess.Popen(app_command(root, port), cwd=ROOT, env=ENV, stdout=log, stderr=log)
            status, deadline = "", time.time() + TIMEOUT
            while DISK_WORDS not in status and time.time() < deadline and process.poll() is None:
                time.sleep(1)
                try:
                    status = app_status(port)
                except Exception:  # noqa: BLE001 - not listening yet
                    status = ""
            serving = process.poll() is None and bool(app_status(port))
            stop(process)
            log.close()
            if DISK_WORDS not in status:
                print(status, (work / "app-full-disk.log").read_text()[-3000:])
            grow(disk)
            stop(start_app_until(root, lambda root=root: app_ready(root)))
            ready = app_ready(root)
            record(
                results,
                "app: full disk while it builds its index",
                faults=1,
                clear_message=DISK_WORDS in status and "still holds its" in status,
                kept_serving=serving,
                resumed=ready,
                equal=ready and same(index_contents(app_index(root)), expected),
            )


KILLS, FULL_DISKS = [True], [True]  # --faults

CASES = {"index": index_case, "report": report_case, "train": train_case, "app": app_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="kills and full disks per case")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--faults", nargs="+", choices=["kill", "full"], default=["kill", "full"])
    parser.add_argument("--into-writes", action="store_true", help="every kill lands inside a save or checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.json"))
    args = parser.parse_args()
    random.seed(args.seed)
    KILLS[0], FULL_DISKS[0], INTO_WRITES[0] = "kill" in args.faults, "full" in args.faults, args.into_writes
    results: dict = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="faults-") as work:
        if "report" in args.cases and "index" not in args.cases:
            timed(index_command(Path(work) / "index-reference"), lambda: True)
        for case in args.cases:
            CASES[case](results, args.trials, Path(work))
    results["seconds"] = round(time.time() - started)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
