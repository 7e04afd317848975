"""Quality of the bundled default model on its procedural dataset (the numbers of its model card).

    .venv/bin/python -m bench.default_model --out bench/results
    .venv/bin/python -m bench.default_model --guidance-scale 4 --randomize-temperature 4.5 --out /tmp/sweep \
        --judge /tmp/judge.safetensors  # another judge: trained by the first such run, reused by the next
    .venv/bin/python -m bench.default_model --tokenizer default-vq --tokenizer-only --out bench/results/default-vq

1. Held-out reconstruction PSNR of the tokenizer (the fixed test split).
2. A classifier trained only on real dataset images (train split), with its own held-out accuracy and its accuracy
   on the tokenizer's reconstructions of those images (the ceiling for generated images); then the fraction of
   generated images it assigns to the class they were generated for, and what it takes the others for.
3. Diversity: mean pairwise Hamming distance between the token grids of same-class images, generated versus
   real, and the share of distinct generated grids.
4. How much the generator uses the class: its masked cross-entropy on the test images' tokens with the true label
   minus that with the null label, at masking ratios 1, 0.9 and 0.7 (nats per masked group).
5. The generator's conditionals without the sampler: the test images' tokens with a fraction of the entries masked,
   each masked entry replaced by the generator's most likely group in one forward pass, decoded and judged.
6. Code usage and per-bit entropy of the tokenizer on the test split; distinct codes per image, of test images and
   of uniform colours (1 when a uniform region's code depends on its colour only, not on the distance to the border).
Writes default_model.json and image grids; with --tokenizer-only, figures 1 and 6 (plus dead codes) for any tokenizer,
LFQ or VQ, in tokenizer_quality.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data import judge, split_images
from data.datasets import PROCEDURAL_CLASSES
from maskbit import Generator, Tokenizer, analysis, bits, generate
from maskbit.cli import add_sampling_args, sampling_from_args
from maskbit.device import add_precision_argument, describe_precision, resolve_precision
from maskbit.images import image_grid, psnr, save_image


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    return accuracy_of(judge.predict(model, images), labels)


def accuracy_of(predictions: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    correct = predictions == labels
    per_class = [float(correct[labels == c].float().mean()) for c in range(len(PROCEDURAL_CLASSES))]
    return float(correct.float().mean()), per_class


def judged_as(predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, dict[str, int]]:
    """For each class, how many of its images the judge assigns to each class (nonzero counts, largest first)."""
    table = {}
    for c, name in enumerate(PROCEDURAL_CLASSES):
        counts = torch.bincount(predictions[labels == c], minlength=len(PROCEDURAL_CLASSES))
        order = counts.argsort(descending=True, stable=True).tolist()
        table[name] = {PROCEDURAL_CLASSES[j]: int(counts[j]) for j in order if counts[j]}
    return table


def mean_pairwise_hamming(indices: torch.Tensor, num_bits: int) -> float:
    flat = indices.flatten(1)
    distances = [bits.hamming(flat[i], flat[i + 1 :], dim=-1).float() for i in range(len(flat) - 1)]
    return float(torch.cat(distances).mean())


def mask_entries(generator: Generator, indices: torch.Tensor, ratio: float):
    """(groups, masked, tokens): the indices' (position, group) entries, `ratio` of them masked (fixed seed)."""
    c = generator.config
    groups = bits.split_groups(indices.flatten(1), c.token_size, c.num_groups)
    masked = torch.rand(groups.shape, generator=torch.Generator().manual_seed(0)) < ratio
    return groups, masked, torch.where(masked, c.mask_token, groups)


@torch.no_grad()
def class_label_gain(generator: Generator, indices: torch.Tensor, labels: torch.Tensor, ratio: float) -> dict:
    """Masked cross-entropy (nats per masked group) with the true and with the null label, the same entries masked."""
    groups, masked, tokens = mask_entries(generator, indices, ratio)
    loss = {}
    for name, drop in (("true_label", False), ("null_label", True)):
        drop_mask = torch.full((len(labels),), drop)
        logits = torch.cat(
            [
                generator(tokens[i : i + 256], labels[i : i + 256].clone(), drop_mask[i : i + 256])
                for i in range(0, len(labels), 256)
            ]
        )
        loss[name] = float(F.cross_entropy(logits[masked].float(), groups[masked]))
    return {**loss, "gain": loss["null_label"] - loss["true_label"]}


@torch.no_grad()
def infill_accuracy(
    generator: Generator,
    tokenizer: Tokenizer,
    classifier: nn.Module,
    indices: torch.Tensor,
    labels: torch.Tensor,
    ratio: float,
) -> dict:
    """Mask `ratio` of the (position, group) entries, fill each with its argmax in one pass, decode, judge."""
    groups, masked, tokens = mask_entries(generator, indices, ratio)
    logits = generator(tokens, labels, torch.zeros(len(labels), dtype=torch.bool))
    filled = torch.where(masked, logits.argmax(-1), groups)
    completed = tokenizer.decode(bits.combine_groups(filled, generator.config.token_size).view_as(indices)).clamp(0, 1)
    return {
        "entry_accuracy": float((filled == groups)[masked].float().mean()),
        "judge_accuracy": accuracy(classifier, completed, labels)[0],
    }


def tokenizer_quality(tokenizer: Tokenizer, images: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Reconstruction PSNR; code usage, dead codes and code entropy; per-bit statistics of the indices (for a VQ
    tokenizer: of its codebook indices); distinct codes per image, of `images` and of uniform colours. Returns the
    figures, the indices (B, h, w) and the reconstructions (unclamped)."""
    indices = torch.cat([tokenizer.encode(images[i : i + 100]) for i in range(0, len(images), 100)])
    reconstructions = torch.cat([tokenizer.decode(indices[i : i + 100]) for i in range(0, len(indices), 100)])
    reconstruction_psnr = psnr(reconstructions, images)
    statistics = analysis.token_statistics(indices, tokenizer.num_bits)
    colours = torch.rand(8, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    uniform = tokenizer.encode(colours.expand(-1, -1, *images.shape[-2:]).contiguous())
    figures = {
        "reconstruction_psnr_db": {
            "mean": float(reconstruction_psnr.mean()),
            "median": float(reconstruction_psnr.median()),
            "p10": float(reconstruction_psnr.quantile(0.1)),
            "images": len(images),
        },
        "code_usage": statistics.code_usage,
        "dead_codes": 2**tokenizer.num_bits - statistics.codes_used,
        "code_entropy_bits": statistics.code_entropy,
        "distinct_codes_per_image": {
            "test_images": float(np.mean([row.unique().numel() for row in indices.flatten(1)])),
            "uniform_colours": float(np.mean([row.unique().numel() for row in uniform.flatten(1)])),
            "tokens": indices[0].numel(),
        },
        "per_bit_p_one": [round(float(p), 4) for p in statistics.bit_usage],
        "per_bit_entropy": [round(float(e), 4) for e in statistics.bit_entropy],
    }
    return figures, indices, reconstructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="default")
    parser.add_argument("--generator", default="default")
    add_sampling_args(parser, sampling="default")  # e.g. --guidance-scale 4 --randomize-temperature 4.5 for a sweep
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--per-class", type=int, default=50, help="generated images per class")
    parser.add_argument("--classifier-steps", type=int, default=3000)
    parser.add_argument(
        "--judge", type=Path, help="a judge file to reuse or train into (default: the bundled data/judge.safetensors)"
    )
    parser.add_argument("--out", default="bench/results")
    add_precision_argument(parser, "what both models compute at")
    parser.add_argument(
        "--tokenizer-only",
        action="store_true",
        help="only the tokenizer's figures (1. and 6.), written to tokenizer_quality.json; any tokenizer, LFQ or VQ",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"computing in {describe_precision(args.precision, torch.device('cpu'))}", flush=True)
    tokenizer = Tokenizer.from_pretrained(args.tokenizer, precision=args.precision)
    images, labels = split_images("procedural", "test", args.test_images, 64)
    tokenizer_figures, indices, reconstructions = tokenizer_quality(tokenizer, images)
    save_image(
        image_grid(torch.cat([images[:10], reconstructions[:10].clamp(0, 1)]), columns=10), out / "reconstructions.png"
    )
    if args.tokenizer_only:
        results = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "precision": resolve_precision(args.precision, torch.device("cpu")),
            "tokenizer": args.tokenizer,
            "quantizer": tokenizer.quantizer_kind,
            **tokenizer_figures,
            "seconds": time.time() - started,
        }
        (out / "tokenizer_quality.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        return
    generator = Generator.from_pretrained(args.generator, precision=args.precision)
    k = tokenizer.num_bits

    classifier = judge.load_or_train(args.judge, args.classifier_steps)
    classifier_accuracy, _ = accuracy(classifier, images, labels)
    # The ceiling for generated images: the judge on the tokenizer's reconstructions of the same held-out images.
    reconstruction_accuracy, reconstruction_per_class = accuracy(classifier, reconstructions.clamp(0, 1), labels)

    requested = torch.arange(len(PROCEDURAL_CLASSES)).repeat_interleave(args.per_class)
    sampling = sampling_from_args(args)
    generated = torch.cat(
        [
            generate(generator, tokenizer, requested[i : i + 100], sampling, seed=i)
            for i in range(0, len(requested), 100)
        ]
    )
    generated_predictions = judge.predict(classifier, generated)
    generated_accuracy, generated_per_class = accuracy_of(generated_predictions, requested)
    grid = torch.cat([generated[requested == c][:8] for c in range(len(PROCEDURAL_CLASSES))])
    save_image(image_grid(grid, columns=8), out / "generated.png")

    generated_indices = tokenizer.encode(generated)
    diversity_generated = np.mean([mean_pairwise_hamming(generated_indices[requested == c], k) for c in range(10)])
    diversity_real = np.mean([mean_pairwise_hamming(indices[labels == c][: args.per_class], k) for c in range(10)])
    distinct = len({tuple(row.tolist()) for row in generated_indices.flatten(1)}) / len(generated_indices)

    label_gain = {str(r): class_label_gain(generator, indices, labels, r) for r in (1.0, 0.9, 0.7)}
    infill = {
        str(r): infill_accuracy(generator, tokenizer, classifier, indices[:200], labels[:200], r)
        for r in (0.3, 0.6, 0.8, 0.9)
    }

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "precision": resolve_precision(args.precision, torch.device("cpu")),
        "tokenizer": args.tokenizer,
        "generator": args.generator,
        "sampling": sampling.__dict__,
        "reconstruction_psnr_db": tokenizer_figures["reconstruction_psnr_db"],
        "classifier_heldout_accuracy": classifier_accuracy,
        "classifier_steps": args.classifier_steps,
        "classifier_accuracy_on_reconstructions": reconstruction_accuracy,
        "classifier_accuracy_on_reconstructions_per_class": dict(zip(PROCEDURAL_CLASSES, reconstruction_per_class)),
        "generated_class_accuracy": generated_accuracy,
        "generated_class_accuracy_per_class": dict(zip(PROCEDURAL_CLASSES, generated_per_class)),
        "generated_judged_as": judged_as(generated_predictions, requested),
        "generated_images": len(generated),
        "diversity_mean_pairwise_hamming_same_class": {
            "generated": float(diversity_generated),
            "real": float(diversity_real),
            "max": k * indices[0].numel(),
        },
        "distinct_generated_token_grids": distinct,
        "class_label_gain_nats_by_mask_ratio": label_gain,
        "one_pass_infill_by_mask_ratio": infill,
        **{k: v for k, v in tokenizer_figures.items() if k not in ("reconstruction_psnr_db", "dead_codes")},
        "seconds": time.time() - started,
    }
    (out / "default_model.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
