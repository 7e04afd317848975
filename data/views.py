"""The evaluation view of a dataset (no augmentation), and the held-out images that calibrate memorization checks."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from data.datasets import Preprocessing, build_dataset

__all__ = ["EvalView", "eval_view", "split_images", "heldout_images"]


class EvalView(Dataset):
    """item i → (image (3, R, R) float in [0, 1], label): the shorter side resized to R, center-cropped (spec §6)."""

    def __init__(self, dataset: Dataset, resolution: int, interpolation: str = "bilinear"):
        self.dataset = dataset
        self.preprocessing = Preprocessing(resolution=resolution, interpolation=interpolation)
        self.classes: list[str] = list(getattr(dataset, "classes", []))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return self.preprocessing.eval(image), label


def eval_view(spec: str, split: str, seed: int, resolution: int) -> EvalView:
    """The evaluation view of the dataset `spec` (see `build_dataset`) at `resolution`."""
    return EvalView(build_dataset(spec, split, seed, resolution), resolution)


def split_images(
    spec: str, split: str, count: int, resolution: int, seed: int = 0, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [start, start + count) of a split (fewer at its end): (n, 3, R, R) in [0, 1] and their labels (n,)."""
    if count < 1:
        raise ValueError(f"count must be ≥ 1, got {count}")
    view = eval_view(spec, split, seed, resolution)
    items = [view[i] for i in range(start, min(start + count, len(view)))]
    if not items:
        raise ValueError(f"{spec} ({split}) has {len(view)} images, none from {start} on")
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def heldout_images(spec: str, count: int, resolution: int, seed: int = 0, split: str = "test") -> torch.Tensor:
    """The first `count` images (at most the split's size) of a held-out split, (count, 3, R, R) in [0, 1]."""
    return split_images(spec, split, count, resolution, seed)[0]
