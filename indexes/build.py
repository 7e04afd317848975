"""Building an index of a dataset split, calibrating its memorization thresholds, and its token-space projection.

Used by `python -m indexes build` and by the app, which asks `ready_index` for the index of its tokenizer (built
from the bundled dataset on first start). Each step is resumable or cached in the index directory, and every save is
all-or-nothing (indexes/store.py): a kill or a full disk leaves the last saved state, which the same call continues.

    ready_index           open, extend or build, then calibrate: an index ready to search, or IndexError_ saying why not
    build_dataset_index   images already indexed are skipped (the index is saved every `save_every` batches)
    calibrate             the manifest's calibration: per metric, the p-th percentile of held-out nearest distances
    token_projection      projection.npy: a 2-D UMAP of the indexed images' bit tokens
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from data import eval_view, heldout_images
from indexes.store import MANIFEST, Calibration, ImageIndex, IndexedDataset, IndexError_, IndexOptions, save_npy
from maskbit import Tokenizer, bits
from maskbit.device import fit_threads
from maskbit.files import atomic_write

__all__ = ["ready_index", "build_dataset_index", "calibrate", "token_projection"]

Progress = Callable[[int, int, str], None]  # (done, total, what)
MAX_BUILD_RESOLUTION = 128  # larger images take a CPU minutes to hours per thousand: built by command, not on demand


class Processes(Protocol):
    """What a multi-process build needs of its process group (accelerate's `PartialState` has it)."""

    process_index: int
    num_processes: int
    is_main_process: bool

    def wait_for_everyone(self) -> None: ...


def ready_index(
    directory: str | Path,
    tokenizer: Tokenizer,
    *,
    dataset: str = "procedural",
    limit: int,
    resolution: int | None = None,
    options: IndexOptions | None = None,
    must_exist: bool = False,
    heldout: int = 500,
    progress: Progress | None = None,
) -> ImageIndex:
    """The index at `directory`, ready to search with `tokenizer`: what the app asks for its loaded tokenizer.

    - An index there is opened; one built with another tokenizer is refused (IndexError_).
    - Nothing there: with `must_exist` (a directory the user named) refused; for a tokenizer of more than
      MAX_BUILD_RESOLUTION pixels refused with the command that builds one; otherwise the first `limit` images of
      `dataset` are indexed at `resolution` (default: the tokenizer's image size), their tokens computed at the
      tokenizer's precision (ImageIndex.create).
    - An index of `dataset` with fewer than `limit` images is extended (a build continues where it stopped).
    - An index of a dataset that has no thresholds yet is calibrated on `heldout` held-out images of it.
    """
    directory = Path(directory)
    progress = progress or (lambda done, total, what: None)
    resolution = resolution or tokenizer.config.image_size
    index = ImageIndex.open(directory, tokenizer) if (directory / MANIFEST).is_file() else None
    if index is None and must_exist:
        raise IndexError_(f"{directory} is not an index (no manifest.json); build it with `python -m indexes build`")
    if index is None and resolution > MAX_BUILD_RESOLUTION:
        raise IndexError_(
            f"no index for this {resolution}px tokenizer: build one of your dataset with `python -m indexes build "
            "--dataset <folder> --tokenizer <source> --index <dir>` and start with --index"
        )
    if index is None or (len(index) < limit and index.dataset is not None and index.dataset.spec == dataset):
        progress(0, limit, f"indexing {dataset}")
        index = build_dataset_index(
            directory,
            tokenizer,
            dataset=dataset,
            resolution=resolution,
            limit=limit,
            options=options,
            progress=lambda done, total, what: progress(done, total, f"{what} {dataset}"),
        )
    if not index.calibration and index.dataset is not None:
        progress(0, 0, "calibrating on held-out images")
        described = index.dataset
        calibrate(index, heldout_images(described.spec, heldout, index.image_size, described.seed), progress=progress)
    return index


def build_dataset_index(
    out: str | Path,
    tokenizer: Tokenizer,
    *,
    dataset: str = "procedural",
    split: str = "train",
    seed: int = 0,
    resolution: int | None = None,
    limit: int | None = None,
    options: IndexOptions | None = None,
    batch_size: int = 64,
    save_every: int = 50,
    train_size: int = 20_000,
    progress: Progress | None = None,
    processes: Processes | None = None,
) -> ImageIndex:
    """Create the index of the first `limit` images of a dataset split, or continue one that stopped.

    A compressed LPIPS index (`options.lpips_factory` other than "Flat") is first trained on the first `train_size`
    images. With `processes` (several, e.g. under `accelerate launch`), each process indexes a contiguous share of the
    images still missing into its own resumable part (`<out>.parts/from-<done>-to-<total>/`), on its own device; the
    main process then appends the parts in order and saves the index in one commit, so the result equals a
    one-process build. Parts of another starting point (left by a kill after that commit) are removed first."""
    out = Path(out)
    options = options or IndexOptions()
    resolution = resolution or tokenizer.config.image_size
    view = eval_view(dataset, split, seed, resolution)
    total = min(limit or len(view), len(view))
    described = IndexedDataset(dataset, split, seed, tuple(view.classes))
    if processes is None or processes.num_processes == 1:
        index = _open_or_create(out, tokenizer, resolution, options, described)
        if index.needs_training:
            if progress:
                progress(0, total, "training the LPIPS index")
            index.train_lpips(torch.stack([view[i][0] for i in range(min(train_size, total))]), batch_size)
        _index_items(index, view, range(len(index), total), 0, batch_size, save_every, progress)
        return index

    parts_root = out.with_name(out.name + ".parts")
    if processes.is_main_process:
        done = len(_open_or_create(out, tokenizer, resolution, options, described))
        if parts_root.is_dir():  # parts of another starting point: merged by a run killed before their removal
            for stale in parts_root.iterdir():
                if stale.name != f"from-{done}-to-{total}":
                    shutil.rmtree(stale)
    processes.wait_for_everyone()
    index = ImageIndex.open(out, tokenizer)
    # Parts store raw LPIPS vectors and no HNSW graph: the merge compresses and links them in the final index.
    rank, count, done = processes.process_index, processes.num_processes, len(index)
    first, stop = done + (total - done) * rank // count, done + (total - done) * (rank + 1) // count
    parts_dir = parts_root / f"from-{done}-to-{total}"
    raw = dataclasses.replace(options, approximate_hamming=False, lpips_factory="Flat")
    part = _open_or_create(
        parts_dir / f"part-{rank}-of-{count}",
        tokenizer,
        resolution,
        raw,
        dataclasses.replace(described, part=(first, stop)),
    )
    _index_items(part, view, range(first + len(part), stop), first, batch_size, save_every, progress)
    processes.wait_for_everyone()
    if processes.is_main_process:
        parts = [ImageIndex.open(parts_dir / f"part-{r}-of-{count}", tokenizer) for r in range(count)]
        if index.needs_training:
            if progress:
                progress(0, total, "training the LPIPS index")
            sample, wanted = [], train_size
            for p in parts:
                sample.append(p.flat["lpips"].reconstruct_n(0, min(wanted, len(p))))
                wanted -= len(sample[-1])
            index.train_lpips_vectors(np.concatenate(sample))
        for p in parts:
            index.extend(p)
        index.save()  # the commit: the parts are merged
        shutil.rmtree(parts_root)
    processes.wait_for_everyone()
    return ImageIndex.open(out, tokenizer)


def _open_or_create(
    out: Path, tokenizer: Tokenizer, resolution: int, options: IndexOptions, described: IndexedDataset
) -> ImageIndex:
    """The index at `out` if it indexes the same images (continue it), else a new one."""
    if (out / MANIFEST).is_file():
        index = ImageIndex.open(out, tokenizer)
        if index.dataset != described:
            raise IndexError_(
                f"{out} indexes {index.dataset}, not {described}; use `python -m indexes add` to add other images, or "
                "delete it (a leftover part of a multi-process build with other settings)"
            )
        return index
    return ImageIndex.create(out, tokenizer, resolution, options, described)


def _index_items(
    index: ImageIndex, view, items: range, base: int, batch_size: int, save_every: int, progress: Progress | None
) -> None:
    """Add dataset items (in order, after those `index` holds), saving a resumable point every `save_every`
    batches; progress counts from item `base`. Sources are "spec:split:i", which `indexes.sources` reads."""
    spec, split = index.dataset.spec, index.dataset.split
    for n, first in enumerate(range(items.start, items.stop, batch_size)):
        ids = range(first, min(first + batch_size, items.stop))
        fit_threads(index.device)  # LPIPS and the pixels; the tokenizer fits its own
        batch = [view[i] for i in ids]
        sources = [f"{spec}:{split}:{i}" for i in ids]
        index.add(torch.stack([image for image, _ in batch]), sources, [label for _, label in batch])
        if n % save_every == 0:
            index.save()
        if progress:
            progress(ids.stop - base, items.stop - base, "indexing")
    index.save()


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
    index.manifest.calibration = {metric: Calibration(**values) for metric, values in calibration.items()}
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
