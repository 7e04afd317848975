"""Resumable input pipelines: the data position is a function of the step, so a resume needs no loader state.

Every epoch is a permutation of the dataset drawn from (seed, epoch); global batch b covers positions
[b·G, (b+1)·G) of that stream (G = batch size × processes) and process r takes its slice. Augmentations draw from
a numpy generator seeded with (seed, epoch, index), so workers, process count and restarts cannot change them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.datasets import Preprocessing
from train.config import DataConfig

logger = logging.getLogger(__name__)

Item = tuple[int, int]  # (epoch, index)


class ResumableBatchSampler:
    """Endless batches of (epoch, index) for process `rank` of `world_size`, starting at global batch `start`."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if num_items < batch_size * world_size:
            raise ValueError(
                f"the dataset has {num_items} items, fewer than one global batch ({batch_size} × {world_size} "
                "processes); use a smaller training.batch_size or more data"
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self._epoch, self._order = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.num_items, generator=generator)
        return self._order

    def __iter__(self) -> Iterator[list[Item]]:
        global_batch = self.batch_size * self.world_size
        batches_per_epoch = self.num_items // global_batch  # the remainder of each epoch is dropped
        batch = self.start
        while True:
            epoch, position = divmod(batch, batches_per_epoch)
            first = position * global_batch + self.rank * self.batch_size
            order = self._permutation(epoch)
            yield [(epoch, int(i)) for i in order[first : first + self.batch_size]]
            batch += 1


class AugmentedImages(Dataset):
    """(epoch, index) → (image (3, R, R) float in [0, 1], label), augmentations seeded per item."""

    def __init__(self, dataset: Dataset, config: DataConfig, seed: int, train: bool = True):
        self.dataset, self.seed, self.train = dataset, seed, train
        self.preprocessing = Preprocessing(
            resolution=config.resolution,
            random_crop=config.random_crop,
            min_scale=config.min_scale,
            aspect_ratio_aug=config.aspect_ratio_aug,
            random_flip=config.random_flip,
            interpolation=config.interpolation,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Item | int) -> tuple[torch.Tensor, int]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        image, label = self.dataset[index]
        if not self.train:
            return self.preprocessing.eval(image), label
        return self.preprocessing.train(image, np.random.default_rng([self.seed, epoch, index])), label


class TokenFile(Dataset):
    """A pre-tokenised dataset (`python -m train pretokenize`): (epoch, index) → (indices (h, w) int64, label)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"token file not found: {self.path} (make one with `python -m train pretokenize`)")
        with np.load(self.path, allow_pickle=False) as data:
            self.indices, self.labels = data["indices"], data["labels"]
            self.meta = json.loads(str(data["meta"]))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: Item | int) -> tuple[torch.Tensor, int]:
        index = item[1] if isinstance(item, tuple) else item
        return torch.from_numpy(self.indices[index].astype(np.int64)), int(self.labels[index])


def batches(dataset: Dataset, sampler: ResumableBatchSampler, num_workers: int) -> Iterator:
    # Its own generator: creating the iterator draws a base seed, which must not shift the global RNG stream.
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(sampler.seed),
    )
    return iter(loader)
