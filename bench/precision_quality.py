"""The bundled pair in bf16 autocast against float32 on this CPU: what `--precision auto` may choose (issue 27).

1. Generation: the same labels and seeds in each precision (and at each number of sampling steps asked for); the
   share of images the judge (`data/judge.py`, trained on real images only) takes for their class.
2. Tokenizer: held-out test images encoded and decoded in each precision; reconstruction PSNR, and the fraction of
   bits of the bf16 codes that differ from the float32 ones.
3. Time: `generate` of 4 images end to end (decode included) at each setting, interleaved, minimum of the repeats.

    .venv/bin/python -m bench.precision_quality --per-class 50 --num-steps 16 12 8 --json bench/results/precision.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from data import judge, split_images
from maskbit import SAMPLING_PRESETS, Generator, Tokenizer, generate
from maskbit.device import cpu_has_native_bf16
from maskbit.images import psnr

PRECISIONS = ("fp32", "bf16")


@torch.no_grad()
def judged_share(generator, tokenizer, classifier, sampling, precision: str, per_class: int) -> float:
    tokenizer.precision = precision
    labels = torch.arange(generator.config.num_classes).repeat_interleave(per_class)
    images = torch.cat(
        [
            generate(generator, tokenizer, labels[i : i + 100], sampling, seed=i, precision=precision)
            for i in range(0, len(labels), 100)
        ]
    )
    return float((judge.predict(classifier, images) == labels).float().mean())


@torch.no_grad()
def tokenizer_figures(tokenizer: Tokenizer, images: torch.Tensor) -> dict:
    indices, result = {}, {}
    for precision in PRECISIONS:
        tokenizer.precision = precision
        indices[precision] = torch.cat([tokenizer.encode(images[i : i + 100]) for i in range(0, len(images), 100)])
        decoded = torch.cat([tokenizer.decode(indices[precision][i : i + 100]) for i in range(0, len(images), 100)])
        result[f"psnr_db_{precision}"] = float(psnr(decoded.clamp(0, 1), images).mean())
    differing = (indices["fp32"] ^ indices["bf16"]).flatten()
    bits = tokenizer.num_bits
    flipped = sum(int(((differing >> k) & 1).sum()) for k in range(bits))
    result["bits_differing"] = flipped / (differing.numel() * bits)
    result["tokens_differing"] = float((differing != 0).float().mean())
    return result


def end_to_end(generator, tokenizer, settings: list[tuple[int, str]], repeats: int) -> dict:
    labels = torch.arange(4)

    def run(steps: int, precision: str):
        tokenizer.precision = precision
        sampling = dataclasses.replace(SAMPLING_PRESETS["default"], num_steps=steps)
        generate(generator, tokenizer, labels, sampling, seed=0, precision=precision)

    for setting in settings:
        run(*setting)
    timings = {setting: [] for setting in settings}
    for _ in range(repeats):
        for setting in settings:
            start = time.perf_counter()
            run(*setting)
            timings[setting].append(time.perf_counter() - start)
    return {f"{steps} steps {precision}": min(values) for (steps, precision), values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=50, help="generated images per class and setting")
    parser.add_argument("--num-steps", type=int, nargs="+", default=[16], help="sampling steps to compare")
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5, help="end-to-end timing repeats (0: none)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    generator = Generator.from_pretrained("default").inference("cpu")
    tokenizer = Tokenizer.from_pretrained("default").inference("cpu")
    classifier = judge.load()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, native bf16: {cpu_has_native_bf16()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
    }
    print(report, flush=True)
    images, _ = split_images("procedural", "test", args.test_images, 64)
    report["tokenizer"] = tokenizer_figures(tokenizer, images)
    print(report["tokenizer"], flush=True)
    report["judged_share"] = {}
    for steps in args.num_steps:
        sampling = dataclasses.replace(SAMPLING_PRESETS["default"], num_steps=steps)
        for precision in PRECISIONS:
            share = judged_share(generator, tokenizer, classifier, sampling, precision, args.per_class)
            report["judged_share"][f"{steps} steps {precision}"] = share
            print(f"{steps} steps {precision}: {share:.3f} of {10 * args.per_class} images", flush=True)
    if args.repeats:
        settings = [(steps, precision) for steps in args.num_steps for precision in PRECISIONS]
        report["four_images_s"] = end_to_end(generator, tokenizer, settings, args.repeats)
        print(report["four_images_s"], flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
