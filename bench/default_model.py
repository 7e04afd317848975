"""Quality of the bundled default model on its procedural dataset (the numbers of its model card).

    .venv/bin/python -m bench.default_model --out bench/results
    .venv/bin/python -m bench.default_model --guidance-scale 4 --randomize-temperature 4.5 --out /tmp/sweep \
        --judge /tmp/judge.pt  # one knob; the judge is trained by the first such run and reused by the next
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

from maskbit import Generator, Tokenizer, bits, generate
from maskbit.cli import add_sampling_args, sampling_from_args
from maskbit.images import image_grid, psnr, save_image
from train.datasets import PROCEDURAL_CLASSES, ProceduralShapes


def to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def load_split(split: str, count: int, start: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = ProceduralShapes(split, seed=seed)
    items = [dataset[i] for i in range(start, start + count)]
    return torch.stack([to_tensor(image) for image, _ in items]), torch.tensor([label for _, label in items])


class Classifier(nn.Module):
    """A small CNN for 64×64 images: the judge of generated classes, trained on real images only."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers, channels, strides = [], [3, 32, 64, 128, 128, 256], [1, 2, 2, 2, 2]
        for i, o, s in zip(channels, channels[1:], strides):
            layers += [nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


ROUND_TRIP_SIZES = (32, 56)  # smallest and largest side of augment()'s trip through a lower resolution


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flips and quarter turns (every class is closed under both), then what decoding does to an image without
    changing its class: a random blur of up to 1.5 px, for half of the images a trip through a lower resolution
    (32–56 px, which rounds corners and wobbles edges; from 20 px a hexagon is a circle) and mild noise. The
    training data stays real images only; without the last two the judge took rounded squares for hearts (34 % on
    reconstructions of squares)."""
    n = len(x)
    x = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < 0.5, x.flip(-1), x)
    x = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < 0.5, x.flip(-2), x)
    x = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < 0.5, x.transpose(-1, -2), x)
    sigma = torch.rand(n, generator=generator) * 1.5
    radius = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-(radius**2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (n·3, 7), one per image and channel
    flat = x.reshape(1, n * 3, *x.shape[-2:])
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="replicate"), kernel[:, None, :, None], groups=n * 3)
    x = flat.reshape(x.shape)
    size = int(torch.randint(ROUND_TRIP_SIZES[0], ROUND_TRIP_SIZES[1] + 1, (), generator=generator))
    small = F.interpolate(x, size=(size, size), mode="area")
    round_trip = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    x = torch.where(torch.rand(n, 1, 1, 1, generator=generator) < 0.5, round_trip, x)
    noise = torch.randn(x.shape, generator=generator) * torch.rand(n, 1, 1, 1, generator=generator) * 0.03
    return (x + noise).clamp(0, 1)


def train_classifier(steps: int, batch_size: int, images: int = 12_000) -> Classifier:
    """AdamW with a cosine schedule over `steps` batches drawn from `images` pre-rendered training images (seed 1:
    other images than the tokenizer's and generator's training data)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x, y = load_split("train", images, seed=1)
    model = Classifier(len(PROCEDURAL_CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        batch = torch.randint(len(x), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(augment(x[batch], generator)), y[batch], label_smoothing=0.05)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def load_or_train_classifier(path: Path | None, steps: int) -> Classifier:
    """The judge from `path` when it was trained with this recipe (steps and augmentation); else trained, and saved
    there if given. A judge from an older recipe is retrained, never silently reused."""
    recipe = {"steps": steps, "round_trip_sizes": list(ROUND_TRIP_SIZES)}
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        if saved.get("recipe") == recipe:
            model = Classifier(len(PROCEDURAL_CLASSES))
            model.load_state_dict(saved["state_dict"])
            return model.eval()
    model = train_classifier(steps, 64)
    if path is not None:
        torch.save({"recipe": recipe, "state_dict": model.state_dict()}, path)
    return model


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(images[i : i + 256]).argmax(1) for i in range(0, len(images), 256)])


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    return accuracy_of(predict(model, images), labels)


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
    k = tokenizer.num_bits
    set_bits = bits.indices_to_bits(indices, k).flatten(0, -2) > 0  # (positions, K)
    p_one = set_bits.float().mean(0)
    bit_entropy = -(p_one * p_one.clamp_min(1e-12).log2() + (1 - p_one) * (1 - p_one).clamp_min(1e-12).log2())
    counts = torch.bincount(indices.flatten(), minlength=2**k).float()
    code_probability = counts / counts.sum()
    code_entropy = float(-(code_probability[counts > 0] * code_probability[counts > 0].log2()).sum())
    colours = torch.rand(8, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    uniform = tokenizer.encode(colours.expand(-1, -1, *images.shape[-2:]).contiguous())
    figures = {
        "reconstruction_psnr_db": {
            "mean": float(reconstruction_psnr.mean()),
            "median": float(reconstruction_psnr.median()),
            "p10": float(reconstruction_psnr.quantile(0.1)),
            "images": len(images),
        },
        "code_usage": float((counts > 0).float().mean()),
        "dead_codes": int((counts == 0).sum()),
        "code_entropy_bits": code_entropy,
        "distinct_codes_per_image": {
            "test_images": float(np.mean([row.unique().numel() for row in indices.flatten(1)])),
            "uniform_colours": float(np.mean([row.unique().numel() for row in uniform.flatten(1)])),
            "tokens": indices[0].numel(),
        },
        "per_bit_p_one": [round(float(p), 4) for p in p_one],
        "per_bit_entropy": [round(float(e), 4) for e in bit_entropy],
    }
    return figures, indices, reconstructions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="default")
    parser.add_argument("--generator", default="default")
    add_sampling_args(parser, preset="default")  # e.g. --guidance-scale 4 --randomize-temperature 4.5 for a sweep
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--per-class", type=int, default=50, help="generated images per class")
    parser.add_argument("--classifier-steps", type=int, default=3000)
    parser.add_argument(
        "--judge", type=Path, help="keep the trained classifier in this file and reuse it (sampling sweeps)"
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--tokenizer-only",
        action="store_true",
        help="only the tokenizer's figures (1. and 6.), written to tokenizer_quality.json; any tokenizer, LFQ or VQ",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    images, labels = load_split("test", args.test_images)
    tokenizer_figures, indices, reconstructions = tokenizer_quality(tokenizer, images)
    save_image(
        image_grid(torch.cat([images[:10], reconstructions[:10].clamp(0, 1)]), columns=10), out / "reconstructions.png"
    )
    if args.tokenizer_only:
        results = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "tokenizer": args.tokenizer,
            "quantizer": tokenizer.quantizer_kind,
            **tokenizer_figures,
            "seconds": time.time() - started,
        }
        (out / "tokenizer_quality.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        return
    generator = Generator.from_pretrained(args.generator)
    k = tokenizer.num_bits

    classifier = load_or_train_classifier(args.judge, args.classifier_steps)
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
    generated_predictions = predict(classifier, generated)
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
