"""The index directory: exact k-NN indexes of a set of images, with what was indexed and by which tokenizer.

    manifest.json        IndexManifest: tokenizer identity, K, grid, image size, metrics, backend, precision, count,
                         versions, and which generation holds the files: the commit point of every save
    generation-<N>/      the files of the last complete save:
      hamming.faiss      IndexBinaryFlat over the packed bit tokens (exact Hamming distance)
      lpips.faiss        IndexFlatL2 over φ(x), ‖φ(x) − φ(y)‖² = LPIPS(x, y) (exact); or, for large sets, any FAISS
                         index (e.g. "IVF1024,PQ64") over count sketches of φ (manifest `lpips_sketch`), whose
                         shortlist is re-ranked by exact LPIPS computed on the source images (indexes/sources.py)
      pixel.faiss        IndexFlatL2 over 16×16 thumbnails in [0, 1] (squared L2)
                         (`<metric>.npy`, the raw vectors, with the torch backend: indexes/backends.py)
      hamming-hnsw.faiss optional IndexBinaryHNSW over the same codes: approximate Hamming search (`approximate=True`)
      tokens.npy         (N, h, w) token indices (int32; int64 for 32-bit tokens), for per-token Hamming maps
      thumbnails.npy     (N, T, T, 3) uint8, for display
      sources.jsonl      one {"source", "label"} per id
    projection.npy       optional cache (indexes/build.py, token_projection)

A save writes a whole new generation beside the last one, then commits it by replacing manifest.json (one atomic
rename), then removes the old generation: a kill or a full disk at any moment leaves the last complete index, and
`open` never meets a mixed set. An index written before generations (format 1: the files beside the manifest, each
renamed in turn) may have been torn by a kill between two renames; every file is append-only, so `open` falls back
to the manifest's images (the first `count` entries of each file) and the next save writes a generation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from indexes.backends import TorchFlat, available_backend, faiss, file_name, new_flat, read_flat, write_flat
from indexes.errors import IndexError_
from indexes.lpips_embedding import CountSketch, LPIPSEmbedding
from maskbit import Tokenizer, bits
from maskbit.device import resolve_precision
from maskbit.files import explain_full_disk, write_json_atomic

__all__ = [
    "ImageIndex",
    "IndexManifest",
    "IndexOptions",
    "IndexedDataset",
    "IndexedTokenizer",
    "LPIPSSketch",
    "Calibration",
    "Neighbours",
    "IndexError_",
    "METRICS",
    "TOKEN_PRECISIONS",
]

logger = logging.getLogger(__name__)

METRICS = ("hamming", "lpips", "pixel")
PIXEL_SIZE = 16
THUMBNAIL_SIZE = 64
FORMAT_VERSION = 2  # 2: files in generation-<N>/, committed by the manifest; 1: files beside the manifest
TOKEN_PRECISIONS = ("fp32", "bf16")  # what an index's tokens can have been computed at
HNSW_M = 32  # graph links per node of the approximate Hamming index
HNSW_FILE = "hamming-hnsw.faiss"
MANIFEST = "manifest.json"
GENERATION = "generation-"
# what a format-1 index kept beside its manifest (removed by the first save in generations)
FORMAT_1_FILES = {
    *(f"{m}.{e}" for m in METRICS for e in ("faiss", "npy")),
    HNSW_FILE,
    "tokens.npy",
    "thumbnails.npy",
    "sources.jsonl",
}
FORMAT_1_TEMPORARY = tuple(f".{name}." for name in sorted(FORMAT_1_FILES))


@dataclass(frozen=True)
class IndexOptions:
    """How an index is built, from the command line (`indexes build`) to the manifest, which records each field."""

    metrics: tuple[str, ...] = METRICS  # any of hamming, lpips, pixel
    lpips_net: str = "alex"  # the LPIPS backbone: alex, vgg or squeeze
    random_lpips_backbone: bool = False  # tests and offline demos: a random trunk (not the real metric)
    backend: str = "auto"  # faiss, torch, or auto (faiss when installed)
    approximate_hamming: bool = False  # also an HNSW graph for fast approximate Hamming search (faiss)
    lpips_sketch: int | None = None  # store d-dimensional count sketches of φ instead of φ (large datasets)
    lpips_factory: str = "Flat"  # the FAISS index_factory string for the sketches, e.g. "IVF1024,PQ64"

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        unknown = set(self.metrics) - set(METRICS)
        if unknown or not self.metrics:
            raise IndexError_(f"metrics must be a non-empty subset of {METRICS}, got {list(self.metrics)}")

    @classmethod
    def from_manifest(cls, manifest: IndexManifest) -> IndexOptions:
        sketch = manifest.lpips_sketch
        return cls(
            metrics=manifest.metrics,
            lpips_net=manifest.lpips_net or "alex",
            random_lpips_backbone=manifest.lpips_random_backbone,
            backend=manifest.backend,
            approximate_hamming=manifest.hnsw_links is not None,
            lpips_sketch=sketch.dim if sketch else None,
            lpips_factory=sketch.factory if sketch else "Flat",
        )


@dataclass
class Neighbours:
    """Top-k results of one metric for Q queries."""

    metric: str
    ids: np.ndarray  # (Q, k) int64
    distances: np.ndarray  # (Q, k): Hamming bits, LPIPS, or squared pixel L2
    sources: list[list[str]]
    labels: list[list[int]]


@dataclass(frozen=True)
class IndexedDataset:
    """The dataset split an index was built from (`build_dataset_index`); its items are "spec:split:i" sources.
    `part`: the item range [first, stop) of one process's part of a multi-process build."""

    spec: str
    split: str = "train"
    seed: int = 0
    classes: tuple[str, ...] = ()
    part: tuple[int, int] | None = None

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> IndexedDataset:
        part = value.get("part")
        return cls(
            value["spec"],
            value.get("split", "train"),
            int(value.get("seed", 0)),
            tuple(value.get("classes", ())),
            (int(part[0]), int(part[1])) if part else None,
        )

    def to_json(self) -> dict[str, Any]:
        value = {"spec": self.spec, "split": self.split, "seed": self.seed, "classes": list(self.classes)}
        return value | ({"part": list(self.part)} if self.part else {})


@dataclass(frozen=True)
class Calibration:
    """One metric's memorization threshold: the `percentile`-th percentile of held-out images' nearest distances."""

    percentile: float
    threshold: float
    heldout_median: float
    heldout_images: int

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Calibration:
        median = value.get("heldout_median", float("nan"))
        return cls(float(value["percentile"]), float(value["threshold"]), median, int(value["heldout_images"]))


@dataclass(frozen=True)
class IndexedTokenizer:
    """Which tokenizer computed the tokens: its identity hash (an index opens only with the same), K and config."""

    identity: str
    num_bits: int
    config: dict[str, Any]

    @property
    def kind(self) -> str:
        """'lfq' (bit tokens: Hamming distance is between bits) or 'vq' (between the binary codes of indices)."""
        return self.config.get("quantizer", "lfq")


@dataclass(frozen=True)
class LPIPSSketch:
    """The LPIPS index stores `dim`-dimensional count sketches (seed `seed`) of φ (`phi_dim`) in FAISS `factory`."""

    dim: int
    phi_dim: int
    seed: int = 0
    factory: str = "Flat"


@dataclass
class IndexManifest:
    """manifest.json, typed: what an index holds and which generation of files holds it. Every default here is what
    a manifest without the key means (older indexes)."""

    tokenizer: IndexedTokenizer
    image_size: int
    grid: tuple[int, int]
    metrics: tuple[str, ...]
    backend: str = "faiss"
    lpips_net: str | None = None
    lpips_random_backbone: bool = False
    hnsw_links: int | None = None  # M of the optional HNSW graph over the Hamming codes
    lpips_sketch: LPIPSSketch | None = None
    precision: str = "fp32"  # what the tokens were computed in: fp32 or bf16
    count: int = 0
    dataset: IndexedDataset | None = None
    calibration: dict[str, Calibration] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    generation: int = 0  # the folder generation-<N> holding the files; 0: format 1, the files beside the manifest
    updated: float | None = None
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> IndexManifest:
        tokenizer, sketch, hnsw = value["tokenizer"], value.get("lpips_sketch"), value.get("approximate_hamming")
        precision = value.get("precision", "fp32")
        if precision not in TOKEN_PRECISIONS:
            raise ValueError(f"precision must be one of {TOKEN_PRECISIONS}, got {precision!r}")
        return cls(
            tokenizer=IndexedTokenizer(tokenizer["identity"], int(tokenizer["num_bits"]), tokenizer.get("config", {})),
            image_size=int(value["image_size"]),
            grid=(int(value["grid"][0]), int(value["grid"][1])),
            metrics=tuple(value["metrics"]),
            backend=value.get("backend", "faiss"),
            lpips_net=value.get("lpips_net"),
            lpips_random_backbone=bool(value.get("lpips_random_backbone")),
            hnsw_links=int(hnsw.get("M", HNSW_M)) if hnsw else None,
            lpips_sketch=LPIPSSketch(**sketch) if sketch else None,
            precision=precision,
            count=int(value["count"]),
            dataset=IndexedDataset.from_json(value["dataset"]) if value.get("dataset") else None,
            calibration={m: Calibration.from_json(c) for m, c in value.get("calibration", {}).items()},
            versions=dict(value.get("versions", {})),
            generation=int(value.get("generation", 0)),
            updated=value.get("updated"),
            format_version=int(value.get("format_version", 1)),
        )

    def to_json(self) -> dict[str, Any]:
        value = {
            "format_version": self.format_version,
            "generation": self.generation,
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "image_size": self.image_size,
            "grid": list(self.grid),
            "metrics": list(self.metrics),
            "lpips_net": self.lpips_net,
            "lpips_random_backbone": self.lpips_random_backbone,
            "backend": self.backend,
            "approximate_hamming": {"kind": "hnsw", "M": self.hnsw_links} if self.hnsw_links else None,
            "precision": self.precision,
            "count": self.count,
            "versions": self.versions,
            "updated": self.updated,
        }
        if self.lpips_sketch:
            value["lpips_sketch"] = dataclasses.asdict(self.lpips_sketch)
        if self.dataset:
            value["dataset"] = self.dataset.to_json()
        if self.calibration:
            value["calibration"] = {m: dataclasses.asdict(c) for m, c in self.calibration.items()}
        return value


class ImageIndex:
    def __init__(
        self, directory: Path, tokenizer: Tokenizer, manifest: IndexManifest, lpips: LPIPSEmbedding | None
    ) -> None:
        self.directory, self.tokenizer, self.manifest, self.lpips = directory, tokenizer, manifest, lpips
        # images are encoded and embedded there, and the exact indexes searched (indexes/backends.py, `place`)
        self.device = next(tokenizer.parameters()).device
        if lpips is not None:
            lpips.to(self.device)
        sketch = manifest.lpips_sketch
        self.sketch = CountSketch(sketch.phi_dim, sketch.dim, sketch.seed) if sketch else None
        self.flat: dict[str, Any] = {}  # metric → exact k-NN index (indexes/backends.py)
        self.hnsw: Any = None  # optional approximate Hamming index
        self.tokens = np.zeros((0, *manifest.grid), dtype=token_dtype(manifest.tokenizer.num_bits))
        self.thumbnails = np.zeros((0, THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3), dtype=np.uint8)
        self.sources: list[dict[str, Any]] = []
        self.saved_count = manifest.count  # the images of the last committed save (what a crash now would keep)

    # ------------------------------------------------------------------------------------------------ open / create

    @classmethod
    def create(
        cls,
        directory: str | Path,
        tokenizer: Tokenizer,
        image_size: int,
        options: IndexOptions | None = None,
        dataset: IndexedDataset | None = None,
    ) -> ImageIndex:
        """An empty index of images of `image_size` pixels, built as `options` say (see IndexOptions), whose tokens
        are computed as `tokenizer.precision` resolves on its device (fp32 or bf16, recorded in the manifest: every
        later image and query is encoded so); `dataset`: the split it will index.

        A compressed LPIPS index (`options.lpips_factory` other than "Flat") is trained with `train_lpips` before the
        first `add` (`build_dataset_index` does it)."""
        options = options or IndexOptions()
        metrics, backend = options.metrics, options.backend
        sketch, factory = options.lpips_sketch, options.lpips_factory
        try:
            backend = available_backend(backend)
        except ValueError as error:
            raise IndexError_(str(error)) from None
        if options.approximate_hamming and backend != "faiss":
            raise IndexError_("approximate Hamming search (HNSW) needs the faiss backend")
        if sketch is not None and "lpips" not in metrics:
            raise IndexError_("an LPIPS sketch needs the lpips metric")
        if factory != "Flat" and (sketch is None or backend != "faiss"):
            raise IndexError_(f"the LPIPS index {factory!r} needs --lpips-sketch and the faiss backend")
        directory = Path(directory)
        if (directory / MANIFEST).exists():
            raise IndexError_(f"{directory} already holds an index; open it to add images, or choose another --out")
        f = tokenizer.downsample_factor
        manifest = IndexManifest(
            tokenizer=IndexedTokenizer(tokenizer.identity(), tokenizer.num_bits, tokenizer.config.__dict__),
            image_size=image_size,
            grid=(image_size // f, image_size // f),
            metrics=tuple(metrics),
            backend=backend,
            lpips_net=options.lpips_net if "lpips" in metrics else None,
            lpips_random_backbone=options.random_lpips_backbone,
            hnsw_links=HNSW_M if options.approximate_hamming else None,
            precision=resolve_precision(tokenizer.precision, next(tokenizer.parameters()).device),
            dataset=dataset,
            versions={"faiss": faiss.__version__ if faiss is not None else None, "torch": torch.__version__},
        )
        lpips = LPIPSEmbedding(options.lpips_net, options.random_lpips_backbone) if "lpips" in metrics else None
        if lpips is not None:
            phi_dim = lpips(torch.zeros(1, 3, image_size, image_size)).shape[1]
            if sketch is not None:
                if not 1 <= sketch <= phi_dim:
                    raise IndexError_(f"the LPIPS sketch dimension must be in [1, {phi_dim}], got {sketch}")
                manifest.lpips_sketch = LPIPSSketch(sketch, phi_dim, 0, factory)
        index = cls(directory, tokenizer, manifest, lpips)
        code_bits = manifest.grid[0] * manifest.grid[1] * tokenizer.num_bits
        index.flat["hamming"] = new_flat(backend, -(-code_bits // 8) * 8, True, index.device)
        if options.approximate_hamming:
            index.hnsw = faiss.IndexBinaryHNSW(-(-code_bits // 8) * 8, HNSW_M)
        if lpips is not None:
            if factory == "Flat":
                index.flat["lpips"] = new_flat(backend, sketch or phi_dim, False, index.device)
            else:
                try:
                    index.flat["lpips"] = faiss.index_factory(sketch, factory)
                except RuntimeError as error:
                    raise IndexError_(f"FAISS cannot make the index {factory!r}: {error}") from None
        if "pixel" in metrics:
            index.flat["pixel"] = new_flat(backend, 3 * PIXEL_SIZE * PIXEL_SIZE, False, index.device)
        directory.mkdir(parents=True, exist_ok=True)
        index.save()
        return index

    @classmethod
    def open(cls, directory: str | Path, tokenizer: Tokenizer, attempts: int = 3) -> ImageIndex:
        """The index at `directory`, as its last save committed it. Should a save by another process commit (and
        remove the generation being read) during the read, the new generation is read."""
        directory = Path(directory)
        for attempt in range(attempts):
            before = _committed_generation(directory)
            try:
                return cls._open(directory, tokenizer)
            except IndexError_:
                if attempt + 1 == attempts or _committed_generation(directory) == before:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _open(cls, directory: Path, tokenizer: Tokenizer) -> ImageIndex:
        try:
            manifest = IndexManifest.from_json(json.loads((directory / MANIFEST).read_text()))
        except FileNotFoundError:
            raise IndexError_(f"{directory} is not an index: {MANIFEST} is missing (build one first)") from None
        except json.JSONDecodeError as error:
            raise IndexError_(f"{directory / MANIFEST} is corrupt: {error}") from None
        except (KeyError, TypeError, ValueError) as error:
            raise IndexError_(f"{directory / MANIFEST} is corrupt: {type(error).__name__}: {error}") from None
        if manifest.tokenizer.identity != tokenizer.identity():
            raise IndexError_(
                f"{directory} was built with another tokenizer ({manifest.tokenizer.num_bits} bits, identity "
                f"{manifest.tokenizer.identity[:12]}…) than the one given ({tokenizer.num_bits} bits, "
                f"{tokenizer.identity()[:12]}…); search it with the tokenizer it was built with, or rebuild it"
            )
        lpips = None
        if "lpips" in manifest.metrics:
            lpips = LPIPSEmbedding(manifest.lpips_net, manifest.lpips_random_backbone)
        index = cls(directory, tokenizer, manifest, lpips)
        files = index.files_directory
        if manifest.generation and not files.is_dir():
            raise IndexError_(f"{directory} is corrupt: {files.name}/ (its manifest's) is missing; {index._repair}")
        count, backend, legacy = manifest.count, manifest.backend, manifest.generation == 0
        try:
            for metric in manifest.metrics:
                path = files / file_name(metric, backend)
                index.flat[metric] = read_flat(backend, path, metric == "hamming", index.device)
                index.flat[metric] = index._checked_count(index.flat[metric], path, legacy)
            if manifest.hnsw_links:
                if faiss is None:
                    raise IndexError_(
                        f"{directory} has an HNSW index and faiss is not installed (pip install faiss-cpu)"
                    )
                index.hnsw = faiss.read_index_binary(str(files / HNSW_FILE))
                if index.hnsw.ntotal != count:
                    index.hnsw = index._checked_count(index.hnsw, files / HNSW_FILE, legacy)
            if "hamming" not in index.flat:
                raise IndexError_(f"{directory} has no Hamming index")
            index.tokens = np.load(files / "tokens.npy", allow_pickle=False)
            index.thumbnails = np.load(files / "thumbnails.npy", allow_pickle=False)
            index.sources = [json.loads(line) for line in (files / "sources.jsonl").read_text().splitlines()]
        except IndexError_:
            raise
        except (RuntimeError, OSError, ValueError, json.JSONDecodeError) as error:
            raise IndexError_(
                f"{directory} is corrupt or truncated ({type(error).__name__}: {error}); {index._repair}"
            ) from None
        lengths = (len(index.tokens), len(index.thumbnails), len(index.sources))
        if legacy and min(lengths) >= count > 0 and max(lengths) > count:
            index.tokens, index.thumbnails, index.sources = (
                index.tokens[:count],
                index.thumbnails[:count],
                index.sources[:count],
            )
            logger.warning("%s: kept the %d images its manifest names (a save was interrupted)", directory, count)
        elif not (len(index.tokens) == len(index.thumbnails) == len(index.sources) == count):
            raise IndexError_(
                f"{directory} is inconsistent: its files hold different numbers of images "
                f"({', '.join(map(str, lengths))}, the manifest says {count}); {index._repair}"
            )
        return index

    @property
    def files_directory(self) -> Path:
        """Where the files of the committed generation are (the index directory itself for a format-1 index)."""
        generation = self.manifest.generation
        return self.directory / f"{GENERATION}{generation}" if generation else self.directory

    @property
    def _repair(self) -> str:
        return (
            f"delete {self.directory} and build it again (`python -m indexes build ... --index {self.directory}`, or "
            "start the app again for an index it builds itself)"
        )

    def _checked_count(self, index: Any, path: Path, legacy: bool) -> Any:
        """`index` if it holds the manifest's count of entries. A format-1 index torn by a kill between two renames
        may hold more: its files are append-only, so the first `count` entries are the last complete state."""
        count, held = self.manifest.count, index.ntotal
        if held == count:
            return index
        if not legacy or held < count:
            raise IndexError_(f"{path} holds {held} entries, the manifest says {count}; {self._repair}")
        logger.warning("%s holds %d entries, its manifest %d: keeping the first %d", path, held, count, count)
        if isinstance(index, TorchFlat):
            kept = TorchFlat(index.vectors.shape[1] * (8 if index.binary else 1), index.binary, index.device)
            kept.add(index.reconstruct_n(0, count))
            return kept
        if faiss is not None and isinstance(index, faiss.IndexBinaryHNSW):
            kept = faiss.IndexBinaryHNSW(index.d, self.manifest.hnsw_links or HNSW_M)
            kept.add(self.flat["hamming"].reconstruct_n(0, count))
            return kept
        try:
            index.remove_ids(faiss.IDSelectorRange(count, held))
        except RuntimeError as error:
            raise IndexError_(
                f"{path} holds {held} entries, the manifest says {count}, and they cannot be cut back ({error}); "
                f"{self._repair}"
            ) from None
        return index

    # ------------------------------------------------------------------------------------------------ add / save

    def __len__(self) -> int:
        return self.manifest.count

    # What an index is, typed (IndexManifest), for callers that hold the index.

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    @property
    def precision(self) -> str:
        """What the index's tokens were computed at: "fp32" or "bf16" (indexes of before it was recorded: "fp32")."""
        return self.manifest.precision

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Token grids (B, h, w) of images (B, 3, H, W) in [0, 1], computed as the indexed tokens were: at the
        index's `precision`, whatever the tokenizer's own, so that an indexed image is at Hamming distance 0 from its
        entry. On the index's device."""
        return self.tokenizer.encode(images.to(self.device), self.precision)

    @property
    def grid(self) -> tuple[int, int]:
        return self.manifest.grid

    @property
    def num_bits(self) -> int:
        """Bits per token: K of a bit tokenizer, log2 of a VQ tokenizer's codebook (its index bits)."""
        return self.manifest.tokenizer.num_bits

    @property
    def tokenizer_kind(self) -> str:
        return self.manifest.tokenizer.kind

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.manifest.metrics

    @property
    def dataset(self) -> IndexedDataset | None:
        """The dataset split it indexes; None for an index of added image files only."""
        return self.manifest.dataset

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes if self.dataset else ()

    @property
    def calibration(self) -> dict[str, Calibration]:
        """metric → its memorization threshold; empty until `indexes.build.calibrate` has run."""
        return self.manifest.calibration

    def describe(self) -> str:
        """One line: how many images of what, which metrics, where."""
        d = self.dataset
        source = f"{d.spec} ({d.split})" if d else "added images"
        what = f"{len(self)} images of {source}, metrics {', '.join(self.metrics)}, tokens in {self.precision}"
        return f"index: {what} — {self.directory}"

    @property
    def options(self) -> IndexOptions:
        return IndexOptions.from_manifest(self.manifest)

    @property
    def needs_training(self) -> bool:
        """True while the LPIPS index is a compressed FAISS index that has not been trained yet."""
        return "lpips" in self.flat and not getattr(self.flat["lpips"], "is_trained", True)

    @torch.no_grad()
    def train_lpips(self, images: torch.Tensor, batch_size: int = 64) -> None:
        """Train the compressed LPIPS index (its IVF centroids, PQ codebooks) on images (B, 3, S, S) in [0, 1]:
        a sample of what will be indexed, at least as many images as the index has centroids."""
        self.train_lpips_vectors(
            np.concatenate([self._lpips_vectors(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        )

    def train_lpips_vectors(self, vectors: np.ndarray) -> None:
        """Train the compressed LPIPS index on what it stores: sketches (N, d) of φ."""
        try:
            self.flat["lpips"].train(vectors)
        except RuntimeError as error:
            raise IndexError_(
                f"training the LPIPS index {self.manifest.lpips_sketch.factory!r} on {len(vectors)} images "
                f"failed ({error}); train on more images or choose a smaller index"
            ) from None

    def _lpips_vectors(self, images: torch.Tensor) -> np.ndarray:
        """What the LPIPS index stores: φ(images), or its sketch."""
        phi = self.lpips(images.to(self.device))
        return (self.sketch(phi) if self.sketch is not None else phi).cpu().numpy()

    @torch.no_grad()
    def add(self, images: torch.Tensor, sources: Sequence[str], labels: Sequence[int]) -> None:
        """Index images (B, 3, S, S) in [0, 1] (S = the index's image size); call save() to persist."""
        size = self.manifest.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise IndexError_(f"images must have shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        if self.needs_training:
            raise IndexError_("the LPIPS index must be trained on a sample of images first (train_lpips)")
        images = images.to(self.device)
        tokens = self.encode(images)
        codes = bits.pack_bits(tokens, self.tokenizer.num_bits).cpu().numpy()
        self.flat["hamming"].add(codes)
        if self.hnsw is not None:
            self.hnsw.add(codes)
        if "lpips" in self.flat:
            self.flat["lpips"].add(self._lpips_vectors(images))
        if "pixel" in self.flat:
            self.flat["pixel"].add(pixel_features(images))
        self.tokens = np.concatenate([self.tokens, tokens.cpu().numpy().astype(self.tokens.dtype)])
        self.thumbnails = np.concatenate([self.thumbnails, thumbnails(images)])
        self.sources += [{"source": str(s), "label": int(label)} for s, label in zip(sources, labels, strict=True)]
        self.manifest.count += len(images)

    def extend(self, part: ImageIndex, chunk: int = 10_000) -> None:
        """Append every image of `part`, an index of other images made with the same tokenizer and metrics whose
        LPIPS index (if any) stores the raw vectors this one stores or compresses (a part of a multi-process
        build)."""
        if part.metrics != self.metrics or part.grid != self.grid:
            raise IndexError_(f"{part.directory} was built with other metrics or another token grid")
        if part.precision != self.precision:
            raise IndexError_(
                f"{part.directory}'s tokens were computed in {part.precision}, this index's in "
                f"{self.precision}: build every part at one --precision"
            )
        if self.needs_training:
            raise IndexError_("the LPIPS index must be trained before images are added (train_lpips_vectors)")
        for start in range(0, len(part), chunk):
            n = min(chunk, len(part) - start)
            for metric, index in self.flat.items():
                vectors = part.flat[metric].reconstruct_n(start, n)
                index.add(vectors)
                if metric == "hamming" and self.hnsw is not None:
                    self.hnsw.add(vectors)
        self.tokens = np.concatenate([self.tokens, part.tokens])
        self.thumbnails = np.concatenate([self.thumbnails, part.thumbnails])
        self.sources += part.sources
        self.manifest.count += len(part)

    def save(self) -> None:
        """Write every file into a new generation folder, commit it by replacing manifest.json (one atomic rename),
        then remove the previous generation. A kill or a full disk before the commit leaves the last saved index;
        a full disk raises DiskFullError, which says how much space the save needed and what was kept."""
        generation = self.manifest.generation + 1
        folder = self.directory / f"{GENERATION}{generation}"
        kept = (
            f"the index at {self.directory} still holds its {self.saved_count} images; free space and run the same "
            "command to continue"
            if (self.directory / MANIFEST).is_file()
            else f"nothing was kept at {self.directory}; free space and run the same command"
        )
        self._remove_stale_generations()  # a killed save's folders, or one killed between its commit and cleanup
        try:
            with explain_full_disk(folder, self._bytes_needed, kept):
                folder.mkdir(parents=True)
                self._write_files(folder)
                manifest = dataclasses.replace(
                    self.manifest, generation=generation, updated=time.time(), format_version=FORMAT_VERSION
                )
                write_json_atomic(self.directory / MANIFEST, manifest.to_json())  # the commit
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.manifest, self.saved_count = manifest, manifest.count
        self._remove_stale_files()

    def _write_files(self, folder: Path) -> None:
        backend = self.manifest.backend
        for metric, index in self.flat.items():
            write_flat(index, str(folder / file_name(metric, backend)), metric == "hamming", backend)
        if self.hnsw is not None:
            faiss.write_index_binary(self.hnsw, str(folder / HNSW_FILE))
        save_npy(str(folder / "tokens.npy"), self.tokens)
        save_npy(str(folder / "thumbnails.npy"), self.thumbnails)
        (folder / "sources.jsonl").write_text("".join(json.dumps(s) + "\n" for s in self.sources))

    def _bytes_needed(self) -> int:
        """About how many bytes a save writes (the arrays and vectors; FAISS headers and JSON are small)."""
        vectors = 0
        for index in self.flat.values():
            width = getattr(index, "code_size", None) or (index.vectors.shape[1] * index.vectors.element_size())
            vectors += width * index.ntotal
        if self.hnsw is not None:
            vectors += self.hnsw.code_size * self.hnsw.ntotal * 3  # the codes and about as much again of links
        sources = sum(len(s["source"]) + 30 for s in self.sources)
        return vectors + self.tokens.nbytes + self.thumbnails.nbytes + sources

    def _remove_stale_generations(self) -> None:
        """Every generation folder but the committed one: earlier generations and folders of killed saves."""
        current = f"{GENERATION}{self.manifest.generation}"
        if not self.directory.is_dir():
            return
        for child in self.directory.iterdir():
            if child.name.startswith(GENERATION) and child.is_dir() and child.name != current:
                shutil.rmtree(child, ignore_errors=True)

    def _remove_stale_files(self) -> None:
        """After a commit: earlier generations, folders of killed saves, and the files of a format-1 index."""
        self._remove_stale_generations()
        for child in self.directory.iterdir():
            if child.is_file() and (child.name in FORMAT_1_FILES or child.name.startswith(FORMAT_1_TEMPORARY)):
                child.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------ search

    @torch.no_grad()
    def search(
        self,
        images: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        k: int = 10,
        metrics: Sequence[str] | None = None,
        approximate: bool = False,
        ef_search: int = 64,
        lpips_shortlist: int = 100,
        nprobe: int = 32,
    ) -> dict[str, Neighbours]:
        """Top-k neighbours per metric of images (Q, 3, S, S) in [0, 1], or of token grids (Q, h, w) (Hamming only).
        With both, `tokens` are the images' token grids (not encoded again). `approximate` searches Hamming distance
        in the HNSW graph (built with `approximate_hamming`), visiting `ef_search` candidates: faster at scale, and
        its recall is measured in bench/README.md; distances of what it finds are exact. An index of LPIPS sketches
        shortlists `lpips_shortlist` images (probing `nprobe` inverted lists of an IVF index) and returns their
        exact LPIPS distances, re-computed from the source images; recall is measured in bench/README.md."""
        if approximate and self.hnsw is None:
            raise IndexError_("this index has no approximate Hamming index; build it with --approximate-hamming")
        if images is None and tokens is None:
            raise IndexError_("give images or tokens")
        metrics = list(metrics or self.metrics)
        missing = [m for m in metrics if m not in self.flat]
        if missing:
            raise IndexError_(f"this index has no {', '.join(missing)} index (it has {', '.join(self.flat)})")
        if images is None and metrics != ["hamming"]:
            raise IndexError_("token queries can only be searched by Hamming distance; pass metrics=['hamming']")
        if images is not None:
            images = images.to(self.device)
        if len(self) == 0:
            raise IndexError_("the index is empty")
        k = max(1, min(k, len(self)))
        if tokens is None:
            tokens = self.encode(images)
        results = {}
        for metric in metrics:
            if metric == "hamming":
                grid = self.grid
                if tuple(tokens.shape[1:]) != grid:
                    raise IndexError_(f"token grids must be {grid}, got {tuple(tokens.shape[1:])}")
                codes = bits.pack_bits(tokens, self.tokenizer.num_bits).cpu().numpy()
                if approximate:
                    self.hnsw.hnsw.efSearch = max(ef_search, k)
                    distances, ids = self.hnsw.search(codes, k)
                else:
                    distances, ids = self.flat[metric].search(codes, k)
            elif metric == "lpips":
                distances, ids = self._search_lpips(images, k, lpips_shortlist, nprobe)
            else:
                distances, ids = self.flat[metric].search(pixel_features(images), k)
            ids = ids.astype(np.int64)
            results[metric] = Neighbours(
                metric,
                ids,
                distances,
                [[self.sources[i]["source"] if i >= 0 else "" for i in row] for row in ids],
                [[self.sources[i]["label"] if i >= 0 else -1 for i in row] for row in ids],
            )
        return results

    def _search_lpips(self, images: torch.Tensor, k: int, shortlist: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        phi = self.lpips(images)
        index = self.flat["lpips"]
        if self.sketch is None:
            return index.search(phi.cpu().numpy(), k)
        ivf = faiss.try_extract_index_ivf(index) if faiss is not None and isinstance(index, faiss.Index) else None
        if ivf is not None:
            ivf.nprobe = nprobe
        _, candidates = index.search(self.sketch(phi).cpu().numpy(), max(k, shortlist))
        # An IVF index may find fewer than asked for: the rest stay id −1 at distance +inf, as in FAISS.
        distances, ids = np.full((len(images), k), np.inf, np.float32), np.full((len(images), k), -1, np.int64)
        for q, row in enumerate(candidates):
            row = row[row >= 0]
            exact = self._exact_lpips(phi[q], row)
            order = np.argsort(exact, kind="stable")[:k]
            distances[q, : len(order)], ids[q, : len(order)] = exact[order], row[order]
        return distances, ids

    def _exact_lpips(self, phi: torch.Tensor, ids: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """LPIPS between one query's φ (D,) and indexed images: from the stored φ, or from the source images."""
        if self.sketch is None:
            vectors = torch.from_numpy(np.stack([self.flat["lpips"].reconstruct(int(i)) for i in ids]))
            return (vectors - phi.cpu()).pow(2).sum(1).numpy()
        from indexes.sources import load_indexed_images

        parts = []
        for first in range(0, len(ids), batch_size):
            stored = self.lpips(load_indexed_images(self, ids[first : first + batch_size]).to(phi.device))
            parts.append((stored - phi).pow(2).sum(1).cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    @torch.no_grad()
    def exact_distances(self, metric: str, images: torch.Tensor, tokens: torch.Tensor, ids: np.ndarray) -> np.ndarray:
        """Exact distances (len(ids),) float64 between one query (images (1, 3, S, S), tokens (1, h, w)) and
        indexed images, whatever kind of index holds the metric."""
        ids, images = np.asarray(ids, dtype=np.int64), images.to(self.device)
        if metric == "hamming":
            stored = torch.from_numpy(self.tokens[ids]).long()
            return bits.hamming(stored, tokens.cpu().long(), dim=(-2, -1)).numpy().astype(np.float64)
        if metric == "lpips":
            return self._exact_lpips(self.lpips(images)[0], ids).astype(np.float64)
        vectors = np.stack([self.flat[metric].reconstruct(int(i)) for i in ids])
        return ((vectors - pixel_features(images)) ** 2).sum(1).astype(np.float64)

    def token_distance_map(self, tokens: torch.Tensor, neighbour_id: int) -> np.ndarray:
        """Per-token Hamming distance (h, w) between one token grid and an indexed image."""
        return bits.hamming(tokens.cpu().long(), torch.from_numpy(self.tokens[neighbour_id]).long()).numpy()


def _committed_generation(directory: Path) -> int | None:
    try:
        return int(json.loads((directory / MANIFEST).read_text()).get("generation", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def token_dtype(num_bits: int) -> np.dtype:
    """How tokens.npy stores indices: int32 (half the bytes) while they fit, int64 from 32 bits (BitDance's 2^32 codes
    would wrap to negative numbers in int32)."""
    return np.dtype(np.int32 if num_bits <= 31 else np.int64)


def pixel_features(images: torch.Tensor) -> np.ndarray:
    """(B, 3·16·16) float32: area-downsampled thumbnails in [0, 1]."""
    small = F.interpolate(images.float().clamp(0, 1), size=(PIXEL_SIZE, PIXEL_SIZE), mode="area")
    return small.flatten(1).cpu().numpy().astype(np.float32)


def thumbnails(images: torch.Tensor) -> np.ndarray:
    small = F.interpolate(images.float().clamp(0, 1), size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE), mode="area")
    return (small * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as file:  # np.save on a name would append ".npy"
        np.save(file, array)
