"""Building an index of a dataset split, calibrating its memorization thresholds, and its token-space projection.

Used by `python -m indexes build` and by the app, which builds the index of the bundled dataset on first start.
Each step is resumable or cached in the index directory:

    build_dataset_index   images already indexed are skipped (the index is saved every `save_every` batches)
    calibrate             manifest["calibration"]: per metric, the p-th percentile of held-out nearest distances
    token_projection      projection.npy: a 2-D UMAP of the indexed images' bit tokens
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from indexes.store import METRICS, ImageIndex, IndexError_, save_npy
from maskbit import Tokenizer, bits
from maskbit.files import atomic_write

__all__ = ["build_dataset_index", "calibrate", "token_projection", "dataset_view"]

Progress = Callable[[int, int, str], None]  # (done, total, what)


def dataset_view(spec: str, split: str, seed: int, resolution: int):
    """The evaluation view of a dataset (resize + center crop, no augmentation): item i → (image, label)."""
    from train.config import DataConfig
    from train.data import AugmentedImages
    from train.datasets import build_dataset

    dataset = build_dataset(spec, split, seed, resolution)
    view = AugmentedImages(dataset, DataConfig(dataset=spec, resolution=resolution), seed=0, train=False)
    return view, list(getattr(dataset, "classes", []))


def build_dataset_index(
    out: str | Path,
    tokenizer: Tokenizer,
    dataset: str = "procedural",
    split: str = "train",
    seed: int = 0,
    resolution: int | None = None,
    limit: int | None = None,
    metrics: Sequence[str] = METRICS,
    lpips_net: str = "alex",
    random_lpips_backbone: bool = False,
    batch_size: int = 64,
    save_every: int = 50,
    progress: Progress | None = None,
    backend: str = "auto",
    approximate_hamming: bool = False,
    lpips_sketch: int | None = None,
    lpips_factory: str = "Flat",
    train_size: int = 20_000,
) -> ImageIndex:
    """Create the index of the first `limit` images of a dataset split, or continue one that stopped.

    A compressed LPIPS index (`lpips_factory` other than "Flat") is first trained on the first `train_size` images."""
    out = Path(out)
    resolution = resolution or tokenizer.config.image_size
    view, classes = dataset_view(dataset, split, seed, resolution)
    total = min(limit or len(view), len(view))
    if (out / "manifest.json").is_file():
        index = ImageIndex.open(out, tokenizer)
        described = index.manifest.get("dataset", {})
        if described.get("spec") != dataset or described.get("split") != split:
            raise IndexError_(f"{out} indexes {described}; use `python -m indexes add` to add other images")
    else:
        index = ImageIndex.create(
            out,
            tokenizer,
            resolution,
            metrics,
            lpips_net,
            random_lpips_backbone,
            backend,
            approximate_hamming,
            lpips_sketch,
            lpips_factory,
        )
        index.manifest["dataset"] = {"spec": dataset, "split": split, "seed": seed, "classes": classes}
    if index.needs_training:
        if progress:
            progress(0, total, "training the LPIPS index")
        index.train_lpips(torch.stack([view[i][0] for i in range(min(train_size, total))]), batch_size)
    for first in range(len(index), total, batch_size):
        ids = range(first, min(first + batch_size, total))
        items = [view[i] for i in ids]
        images = torch.stack([image for image, _ in items])
        index.add(images, [f"{dataset}:{split}:{i}" for i in ids], [label for _, label in items])
        if (first // batch_size) % save_every == 0:
            index.save()  # a resumable point
        if progress:
            progress(len(index), total, "indexing")
    index.save()
    return index


def calibrate(
    index: ImageIndex,
    heldout: torch.Tensor,
    percentile: float = 1.0,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> dict[str, dict[str, float]]:
    """Store and return, per metric, the p-th percentile of held-out images' nearest-neighbour distances.

    A query closer to a training image than that is closer than all but p % of real images the model never saw:
    the memorization verdict's threshold (the same rule as `indexes report`).
    """
    nearest: dict[str, list[np.ndarray]] = {}
    for first in range(0, len(heldout), batch_size):
        for metric, found in index.search(heldout[first : first + batch_size], k=1).items():
            nearest.setdefault(metric, []).append(found.distances[:, 0].astype(np.float64))
        if progress:
            progress(min(first + batch_size, len(heldout)), len(heldout), "calibrating")
    calibration = {
        metric: {
            "percentile": percentile,
            "threshold": float(np.percentile(np.concatenate(values), percentile)),
            "heldout_median": float(np.median(np.concatenate(values))),
            "heldout_images": len(heldout),
        }
        for metric, values in nearest.items()
    }
    index.manifest["calibration"] = calibration
    index.save()
    return calibration


def token_projection(index: ImageIndex, max_points: int = 5000, seed: int = 0) -> np.ndarray:
    """(min(N, max_points), 2) UMAP of the first images' ±1 bit tokens, cached as projection.npy.

    Euclidean distance between ±1 bit vectors is 2·sqrt(Hamming), so the embedding follows Hamming neighbourhoods;
    a PCA to 50 dimensions first keeps UMAP's neighbour search fast at thousands of bits.
    """
    path = index.directory / "projection.npy"
    n = min(len(index), max_points)
    if path.is_file():
        cached = np.load(path, allow_pickle=False)
        if len(cached) == n:
            return cached
    if n < 5:
        raise IndexError_(f"a projection needs at least 5 indexed images, the index holds {len(index)}")
    import umap
    from sklearn.decomposition import PCA

    features = bits.indices_to_bits(torch.from_numpy(index.tokens[:n]).long(), index.tokenizer.num_bits)
    features = features.flatten(1).numpy()
    reduced = PCA(n_components=min(50, n - 1, features.shape[1]), random_state=seed).fit_transform(features)
    reducer = umap.UMAP(n_neighbors=min(15, n - 1), min_dist=0.1, random_state=seed, n_jobs=1)
    projection = reducer.fit_transform(reduced).astype(np.float32)
    atomic_write(path, lambda p: save_npy(p, projection))
    return projection
