"""A baseline for the generator without the tokenizer: local colour codes in place of its tokens.

Each P×P-pixel patch's mean colour, quantised to 4 bits per channel, is a 12-bit code (red + 16·green + 256·blue);
with P = 4 the codes form a 16×16 grid like the bundled tokenizer's tokens. Decoding upsamples the quantised colours
bilinearly. A code depends on its patch alone and only on its colour, so a generator trained on these codes shows how
well it learns the shapes when its tokens are as local and as simple as they can be.

    .venv/bin/python -m bench.colour_codes write --count 10000 --out runs/colour-codes.npz
    .venv/bin/python -m train generator --preset default --run-dir runs/g-colour --set 'tokenizer=""' \\
        data.pretokenized=runs/colour-codes.npz training.max_steps=1500
    .venv/bin/python -m bench.colour_codes eval --generator runs/g-colour/model --judge runs/judge.pt

`eval` prints the judge's accuracy on the decoded codes of held-out images (the ceiling) and on generated images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.default_model import accuracy
from data import judge, split_images
from data.datasets import PROCEDURAL_CLASSES
from maskbit import Generator
from maskbit.cli import add_sampling_args, sampling_from_args
from maskbit.images import image_grid, save_image
from maskbit.sampling import iter_generate, prediction_to_indices

LEVELS = 16  # 4 bits per channel


def encode(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] → (B, H/patch, W/patch) 12-bit codes."""
    q = (F.avg_pool2d(images, patch) * LEVELS).floor().clamp(0, LEVELS - 1).long()
    return q[:, 0] + LEVELS * q[:, 1] + LEVELS**2 * q[:, 2]


def decode(codes: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) codes → (B, 3, size, size): the quantised colours, bilinearly upsampled."""
    q = torch.stack([codes % LEVELS, codes // LEVELS % LEVELS, codes // LEVELS**2], 1).float()
    return F.interpolate((q + 0.5) / LEVELS, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def write(args: argparse.Namespace) -> None:
    if args.patch < 1 or 64 % args.patch:
        raise SystemExit(f"--patch must divide the dataset's 64-pixel side (1, 2, 4, 8, 16, 32, 64), got {args.patch}")
    images, labels = split_images("procedural", "train", args.count, 64)
    codes = torch.cat([encode(images[i : i + 1000], args.patch) for i in range(0, len(images), 1000)])
    meta = {"num_bits": 12, "classes": list(PROCEDURAL_CLASSES), "tokenizer_identity": f"colour-codes-{args.patch}"}
    np.savez(args.out, indices=codes.numpy().astype(np.uint16), labels=labels.numpy(), meta=json.dumps(meta))
    print(f"{args.out}: {len(codes)} grids of {tuple(codes.shape[1:])} colour codes")


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> None:
    generator = Generator.from_pretrained(args.generator)
    if generator.config.token_size != 12:
        k = generator.config.token_size
        raise SystemExit(f"{args.generator} predicts {k}-bit tokens, colour codes have 12: train it on colour codes")
    classifier = judge.load_or_train(args.judge, args.classifier_steps)
    images, labels = split_images("procedural", "test", args.test_images, 64)
    patch = images.shape[-1] // generator.config.grid_size
    ceiling, _ = accuracy(classifier, decode(encode(images, patch), images.shape[-1]), labels)
    requested = torch.arange(len(PROCEDURAL_CLASSES)).repeat_interleave(args.per_class)
    sampling = sampling_from_args(args)
    generated = []
    for i in range(0, len(requested), 100):
        for state in iter_generate(generator, requested[i : i + 100], sampling, seed=i):
            pass
        generated.append(decode(prediction_to_indices(state.prediction, generator), images.shape[-1]))
    generated = torch.cat(generated)
    generated_accuracy, per_class = accuracy(classifier, generated, requested)
    print(f"judge on decoded held-out codes (ceiling): {ceiling:.3f}")
    print(f"generated images judged as their class: {generated_accuracy:.3f}")
    print("per class:", {name: round(a, 2) for name, a in zip(PROCEDURAL_CLASSES, per_class)})
    if args.grid:
        grid = torch.cat([generated[requested == c][:8] for c in range(len(PROCEDURAL_CLASSES))])
        save_image(image_grid(grid, columns=8), args.grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("write", help="an index file of colour codes of train images, for `train generator`")
    w.add_argument("--count", type=int, default=10_000)
    w.add_argument("--patch", type=int, default=4, help="pixels per code side (4: 16×16 codes for 64×64 images)")
    w.add_argument("--out", type=Path, required=True)
    e = commands.add_parser("eval", help="judge a generator trained on colour codes")
    e.add_argument("--generator", required=True)
    add_sampling_args(e, sampling="default")
    e.add_argument("--judge", type=Path, help="the classifier file of bench.default_model (trained if missing)")
    e.add_argument("--classifier-steps", type=int, default=3000)
    e.add_argument("--test-images", type=int, default=300)
    e.add_argument("--per-class", type=int, default=20)
    e.add_argument("--grid", type=Path, help="write 8 generated images per class here")
    args = parser.parse_args()
    write(args) if args.command == "write" else evaluate(args)


if __name__ == "__main__":
    main()
