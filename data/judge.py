"""The judge: a small CNN that says which procedural shape an image shows, trained on real images only.

It measures what the bundled models cannot be trusted to report about themselves: whether a generated image shows
the class it was generated for (bench.default_model), and whether an image keeps its class when bits of its tokens
are flipped (bench.bit_flips and the app's bit-flip comparison). `python -m data.judge` trains it (3,000 steps,
about 17 minutes on 2 CPU cores) and writes the bundled copy, data/judge.safetensors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from data.datasets import PROCEDURAL_CLASSES
from data.views import split_images
from maskbit.files import atomic_write

__all__ = ["Classifier", "augment", "train", "save", "load", "load_or_train", "predict", "BUNDLED", "STEPS"]

BUNDLED = Path(__file__).with_name("judge.safetensors")
STEPS = 3000


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


def train(steps: int = STEPS, batch_size: int = 64, images: int = 12_000) -> Classifier:
    """AdamW with a one-cycle schedule over `steps` batches drawn from `images` pre-rendered training images (seed 1:
    other images than the tokenizer's and generator's training data)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x, y = split_images("procedural", "train", images, 64, seed=1)
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


def recipe(steps: int) -> dict:
    return {"steps": steps, "round_trip_sizes": list(ROUND_TRIP_SIZES)}


def save(model: Classifier, path: str | Path, steps: int) -> None:
    metadata = {"recipe": json.dumps(recipe(steps))}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda p: save_file(tensors, p, metadata=metadata))


def load(path: str | Path = BUNDLED, steps: int | None = STEPS) -> Classifier | None:
    """The judge saved at `path` (default: the bundled one), or None when there is none or it was trained with
    another recipe than `steps` asks for (None: any) — an older judge is retrained, never silently reused."""
    try:
        with safe_open(str(path), "pt") as file:
            saved_recipe = json.loads(file.metadata().get("recipe", "{}"))
    except (OSError, ValueError, SafetensorError):
        return None
    if steps is not None and saved_recipe != recipe(steps):
        return None
    model = Classifier(len(PROCEDURAL_CLASSES))
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


def load_or_train(path: str | Path | None = None, steps: int = STEPS) -> Classifier:
    """The judge at `path` (default: the bundled one) if it has this recipe; else trained, and saved to `path`."""
    model = load(path or BUNDLED, steps)
    if model is None:
        model = train(steps)
        if path is not None:
            save(model, path, steps)
    return model


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class ids (n,) for images (n, 3, 64, 64) in [0, 1]."""
    device = next(model.parameters()).device
    return torch.cat(
        [model(images[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.judge", description="train the judge and save it")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", type=Path, default=BUNDLED)
    args = parser.parse_args(argv)
    started = time.time()
    model = train(args.steps)
    save(model, args.out, args.steps)
    print(f"trained the judge in {time.time() - started:.0f} s ({args.steps} steps); saved {args.out}")


if __name__ == "__main__":
    main()
