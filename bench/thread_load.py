"""Generation next to other computing work, with torch's fixed thread count ("before") and with maskbit.device's
thread rule ("after"), interleaved in one process (issue 27).

`generate` of 4 images with the bundled pair (decode included) under three loads:

    idle      nothing of ours beside it
    cli       one other CPU-bound process: a torch loop with one thread per core that knows nothing of the rule
              (as another user's job would); the CLI's case
    train     `python -m train tokenizer --preset default` from the command line (the issue's case; "before": the
              trainer with one thread per core, MASKBIT_THREADS; normal priority both times)
    app       the app's case: a background thread that encodes dataset batches as the index build does, and a
              tokenizer training job launched through app.jobs.Jobs (`accelerate launch`, the `default` preset)

"before" runs every piece with one thread per core at normal priority (the job through accelerate's own default);
"after" with the rule: `fit_threads` per unit of work, the background thread marked by `run_in_background`, the job
launched by `Jobs` as the app does it.

    .venv/bin/python -m bench.thread_load --precision bf16 --repeats 3 --json bench/results/thread_load.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from maskbit import Generator, Tokenizer, generate
from maskbit.device import cpu_has_native_bf16, run_in_background, usable_cores

BURNER = """
import torch
x, conv = torch.randn(16, 64, 32, 32), torch.nn.Conv2d(64, 64, 3, padding=1)
while True:
    conv(x).sum().backward()
"""


@contextlib.contextmanager
def rule(after: bool):
    """ "before": the rule replaced by a fixed thread per core (MASKBIT_THREADS), as torch sets it at start."""
    if not after:
        os.environ["MASKBIT_THREADS"] = str(usable_cores())
    try:
        yield
    finally:
        os.environ.pop("MASKBIT_THREADS", None)


@contextlib.contextmanager
def burner():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MASKBIT_THREADS")}
    process = subprocess.Popen([sys.executable, "-c", BURNER], env=env)  # one thread per core
    time.sleep(3)  # its imports
    try:
        yield
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def trainer(after: bool, workspace: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MASKBIT_THREADS")}
    if not after:
        env["MASKBIT_THREADS"] = str(usable_cores())
    run = workspace / f"train-{time.monotonic_ns()}"
    args = [sys.executable, "-m", "train", "tokenizer", "--preset", "default", "--run-dir", str(run)]
    process = subprocess.Popen(
        args, cwd=Path(__file__).parents[1], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(1)  # until its first logged steps
    try:
        yield
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def app_load(tokenizer: Tokenizer, after: bool, workspace: Path):
    from app.jobs import Jobs
    from data import split_images

    images, _ = split_images("procedural", "train", 64, 64)
    stop = threading.Event()

    def index_build():
        if after:
            run_in_background()
        else:
            torch.set_num_threads(usable_cores())
        while not stop.is_set():
            tokenizer.encode(images)

    jobs = Jobs(workspace)
    name = f"job-{'after' if after else 'before'}-{time.monotonic_ns()}"
    if after:
        jobs.launch("tokenizer", name, "default")
    else:  # as before issue 27: accelerate's thread default, normal priority, no per-step rule
        run = jobs.run_dir(name)
        run.path.mkdir(parents=True)
        args = jobs.command("tokenizer", run, "default")
        cut = args.index("--num_cpu_threads_per_process")
        args = args[:cut] + args[cut + 2 :]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASKBIT_THREADS": str(usable_cores())}
        jobs.processes[name] = subprocess.Popen(
            args,
            cwd=Path(__file__).parents[1],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = jobs.run_dir(name)
    deadline = time.time() + 300
    while run.read_status().get("state") != "running" and time.time() < deadline:
        time.sleep(1)
    time.sleep(5)  # past its first step
    worker = threading.Thread(target=index_build, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        process = jobs.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        for pid in jobs.live_pids(run):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        process.wait()


def time_generate(generator, tokenizer, precision: str, repeats: int) -> float:
    labels = torch.arange(4)
    if repeats == 0:
        return generate(generator, tokenizer, labels, "default", seed=0, precision=precision)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(generator, tokenizer, labels, "default", seed=0, precision=precision)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--loads", nargs="+", default=["idle", "cli", "train", "app"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    generator = Generator.from_pretrained("default").inference("cpu")
    tokenizer = Tokenizer.from_pretrained("default").inference("cpu")
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {usable_cores()} cores, native bf16: {cpu_has_native_bf16()}, "
        f"torch {torch.__version__}",
        "load_average_at_start": os.getloadavg(),
        "seconds": {},
    }
    print(report, flush=True)
    with tempfile.TemporaryDirectory() as workspace:
        for load in args.loads:
            if load in ("app", "train"):  # the other work differs: before and after one after the other
                blocks = [((False,), None), ((True,), None)]
            else:  # the same load for both: before and after interleaved at every repeat
                blocks = [((False, True), burner() if load == "cli" else contextlib.nullcontext())]
            for rules, context in blocks:
                if context is None:
                    after = rules[0]
                    if load == "app":
                        context = app_load(tokenizer, after, Path(workspace))
                    else:
                        context = trainer(after, Path(workspace))
                with context:
                    for precision in args.precision:
                        tokenizer.precision = precision
                        times = {after: [] for after in rules}
                        for after in rules:  # warm-up
                            with rule(after):
                                time_generate(generator, tokenizer, precision, 0)
                        for _ in range(args.repeats):
                            for after in rules:
                                with rule(after):
                                    times[after].append(time_generate(generator, tokenizer, precision, 1))
                        for after, values in times.items():
                            key = f"{load} {'after' if after else 'before'} {precision}"
                            report["seconds"][key] = min(values)
                            print(
                                f"{key}: {min(values):.2f} s (all: {', '.join(f'{v:.2f}' for v in values)})", flush=True
                            )
    report["load_average_at_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
