"""Training throughput of both stages for the small presets: steps per second and images per second.

Runs `python -m train` as users do, for a few steps, and reads the run's metrics.jsonl (the first logged interval,
which includes start-up, is left out).

    .venv/bin/python -m bench.training_speed --tokenizer runs/default-tokenizer/model --steps 30
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from train.rundir import RunDir


def run(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "train", *args], check=True, capture_output=True, text=True)


def throughput(run_dir: Path) -> tuple[int, float, float]:
    """(batch size, steps/s, images/s) of a finished run, the batch size read from its config.json."""
    batch_size = json.loads((run_dir / "config.json").read_text())["training"]["batch_size"]
    records = [r for r in RunDir(run_dir).read_metrics() if "time" in r][1:]
    seconds = records[-1]["time"] - records[0]["time"]
    steps = records[-1]["step"] - records[0]["step"]
    return batch_size, steps / seconds, steps * batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a trained default-preset tokenizer, for Stage II")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"# {time.strftime('%Y-%m-%d')}, {machine}")
    print("| stage | preset | batch | steps/s | images/s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = [
            f"training.max_steps={args.steps}",
            "training.log_every=5",
            "training.save_every=100000",
            "training.sample_every=100000",
        ]
        for preset in ("tiny", "default"):
            run(["tokenizer", "--preset", preset, "--run-dir", str(tmp / f"tok-{preset}"), "--set", *common])
            batch, steps, images = throughput(tmp / f"tok-{preset}")
            print(f"| tokenizer | {preset} | {batch} | {steps:.2f} | {images:.1f} |", flush=True)
        run(["pretokenize", "--tokenizer", args.tokenizer, "--count", "2000", "--out", str(tmp / "tokens.npz")])
        run(
            [
                "generator",
                "--preset",
                "default",
                "--run-dir",
                str(tmp / "gen"),
                "--set",
                *common,
                f"tokenizer={args.tokenizer}",
                f"data.pretokenized={tmp / 'tokens.npz'}",
            ]
        )
        batch, steps, images = throughput(tmp / "gen")
        print(f"| generator | default (pre-tokenised) | {batch} | {steps:.2f} | {images:.1f} |", flush=True)


if __name__ == "__main__":
    main()
