"""Indexed images read again from where they were indexed: items of the indexed dataset ("spec:split:i", as
`indexes.build.build_dataset_index` records them) or image files (as `python -m indexes add` records them).

The index stores tokens, vectors and thumbnails, not images; exact LPIPS re-ranking of a sketched LPIPS index and the
memorization report's planted copies need the images themselves.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from data import eval_view
from indexes.errors import IndexError_
from maskbit.images import load_image

__all__ = ["load_indexed_images"]

# index → {(spec, split): dataset view}: a dataset view is built once per index, not once per call
_VIEWS: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()


def load_indexed_images(index: Any, ids: Sequence[int]) -> torch.Tensor:
    """Images (B, 3, S, S) in [0, 1] of the given ids of `index` (an `indexes.store.ImageIndex`, which imports this
    module where it re-ranks by exact LPIPS; S = its image size), read from their sources."""
    size, described = index.image_size, index.dataset
    views = _VIEWS.setdefault(index, {})
    images = []
    for i in ids:
        source = index.sources[int(i)]["source"]
        spec, split, item = (source.rsplit(":", 2) + ["", ""])[:3]
        if described is not None and spec == described.spec and item.isdigit():
            if (spec, split) not in views:
                views[spec, split] = eval_view(spec, split, described.seed, size)
            images.append(views[spec, split][int(item)][0])
        elif Path(source).is_file():
            images.append(load_image(source, size))
        else:
            raise IndexError_(
                f"indexed image {int(i)} comes from {source!r}, which is neither an item of the indexed dataset "
                "nor a readable image file: exact LPIPS re-ranking needs the source images where they were indexed"
            )
    return torch.stack(images)
