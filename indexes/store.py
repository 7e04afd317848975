"""The index directory: exact k-NN indexes of a set of images, with what was indexed and by which tokenizer.

    manifest.json      tokenizer identity and the precision its tokens were computed at, K, grid, image size, metrics,
                       backend, count, versions (written last)
    hamming.faiss      IndexBinaryFlat over the packed bit tokens (exact Hamming distance)
    lpips.faiss        IndexFlatL2 over φ(x), ‖φ(x) − φ(y)‖² = LPIPS(x, y) (exact); or, for large sets, any FAISS
                       index (e.g. "IVF1024,PQ64") over count sketches of φ (manifest "lpips_sketch"), whose
                       shortlist is re-ranked by exact LPIPS computed on the source images
    pixel.faiss        IndexFlatL2 over 16×16 thumbnails in [0, 1] (squared L2)
                       (`<metric>.npy`, the raw vectors, with the torch backend: indexes/backends.py)
    hamming-hnsw.faiss optional IndexBinaryHNSW over the same codes: approximate Hamming search (`approximate=True`)
    tokens.npy         (N, h, w) token indices (int32; int64 for 32-bit tokens), for per-token Hamming maps
    thumbnails.npy     (N, T, T, 3) uint8, for display
    sources.jsonl      one {"source", "label"} per id
Every file is written under a temporary name and renamed; the manifest last, so a crash leaves the old index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data import eval_view
from indexes.backends import available_backend, faiss, file_name, new_flat, read_flat, write_flat
from indexes.lpips_embedding import CountSketch, LPIPSEmbedding
from maskbit import Tokenizer, bits
from maskbit.device import resolve_precision
from maskbit.files import atomic_write, write_json_atomic
from maskbit.images import load_image

__all__ = ["ImageIndex", "IndexOptions", "IndexedDataset", "Calibration", "Neighbours", "IndexError_", "METRICS"]

METRICS = ("hamming", "lpips", "pixel")
PIXEL_SIZE = 16
THUMBNAIL_SIZE = 64
FORMAT_VERSION = 1
HNSW_M = 32  # graph links per node of the approximate Hamming index
HNSW_FILE = "hamming-hnsw.faiss"


class IndexError_(ValueError):
    """An index that cannot be used as asked; the message says why and what to do."""


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
    def from_manifest(cls, manifest: dict[str, Any]) -> IndexOptions:
        sketch = manifest.get("lpips_sketch") or {}
        return cls(
            metrics=tuple(manifest["metrics"]),
            lpips_net=manifest.get("lpips_net") or "alex",
            random_lpips_backbone=bool(manifest.get("lpips_random_backbone")),
            backend=manifest.get("backend", "faiss"),
            approximate_hamming=bool(manifest.get("approximate_hamming")),
            lpips_sketch=sketch.get("dim"),
            lpips_factory=sketch.get("factory", "Flat"),
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
    """The dataset split an index was built from (`build_dataset_index`); its items are "spec:split:i" sources."""

    spec: str
    split: str
    seed: int
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Calibration:
    """One metric's memorization threshold: the `percentile`-th percentile of held-out images' nearest distances."""

    percentile: float
    threshold: float
    heldout_median: float
    heldout_images: int


class ImageIndex:
    def __init__(self, directory: Path, tokenizer: Tokenizer, manifest: dict[str, Any], lpips: LPIPSEmbedding | None):
        self.directory, self.tokenizer, self.manifest, self.lpips = directory, tokenizer, manifest, lpips
        # images are encoded and embedded there, and the exact indexes searched (indexes/backends.py, `place`)
        self.device = next(tokenizer.parameters()).device
        if lpips is not None:
            lpips.to(self.device)
        sketch = manifest.get("lpips_sketch")
        self.sketch = CountSketch(sketch["phi_dim"], sketch["dim"], sketch["seed"]) if sketch else None
        self._datasets: dict[tuple[str, str], Any] = {}  # (spec, split) → dataset view, for loading sources
        self.flat: dict[str, Any] = {}  # metric → exact k-NN index (indexes/backends.py)
        self.hnsw: Any = None  # optional approximate Hamming index
        self.tokens = np.zeros((0, *manifest["grid"]), dtype=token_dtype(manifest["tokenizer"]["num_bits"]))
        self.thumbnails = np.zeros((0, THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3), dtype=np.uint8)
        self.sources: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------------ open / create

    @classmethod
    def create(cls, directory: str | Path, tokenizer: Tokenizer, image_size: int, options: IndexOptions | None = None):
        """An empty index of images of `image_size` pixels, built as `options` say (see IndexOptions).

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
        if (directory / "manifest.json").exists():
            raise IndexError_(f"{directory} already holds an index; open it to add images, or choose another --out")
        f = tokenizer.downsample_factor
        manifest = {
            "format_version": FORMAT_VERSION,
            "tokenizer": {
                "identity": tokenizer.identity(),
                "num_bits": tokenizer.num_bits,
                "config": tokenizer.config.__dict__,
            },
            # what the tokenizer computed the tokens at ("fp32" or "bf16"), so that queries are encoded the same way
            "precision": resolve_precision(tokenizer.precision, next(tokenizer.parameters()).device),
            "image_size": image_size,
            "grid": [image_size // f, image_size // f],
            "metrics": list(metrics),
            "lpips_net": options.lpips_net if "lpips" in metrics else None,
            "lpips_random_backbone": options.random_lpips_backbone,
            "backend": backend,
            "approximate_hamming": {"kind": "hnsw", "M": HNSW_M} if options.approximate_hamming else None,
            "count": 0,
            "versions": {"faiss": faiss.__version__ if faiss is not None else None, "torch": torch.__version__},
        }
        lpips = LPIPSEmbedding(options.lpips_net, options.random_lpips_backbone) if "lpips" in metrics else None
        if lpips is not None:
            phi_dim = lpips(torch.zeros(1, 3, image_size, image_size)).shape[1]
            if sketch is not None:
                if not 1 <= sketch <= phi_dim:
                    raise IndexError_(f"the LPIPS sketch dimension must be in [1, {phi_dim}], got {sketch}")
                manifest["lpips_sketch"] = {"dim": sketch, "phi_dim": phi_dim, "seed": 0, "factory": factory}
        index = cls(directory, tokenizer, manifest, lpips)
        code_bits = manifest["grid"][0] * manifest["grid"][1] * tokenizer.num_bits
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
    def open(cls, directory: str | Path, tokenizer: Tokenizer) -> ImageIndex:
        directory = Path(directory)
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except FileNotFoundError:
            raise IndexError_(f"{directory} is not an index: manifest.json is missing (build one first)") from None
        except json.JSONDecodeError as error:
            raise IndexError_(f"{directory / 'manifest.json'} is corrupt: {error}") from None
        if manifest["tokenizer"]["identity"] != tokenizer.identity():
            raise IndexError_(
                f"{directory} was built with another tokenizer ({manifest['tokenizer']['num_bits']} bits, identity "
                f"{manifest['tokenizer']['identity'][:12]}…) than the one given ({tokenizer.num_bits} bits, "
                f"{tokenizer.identity()[:12]}…); search it with the tokenizer it was built with, or rebuild it"
            )
        lpips = None
        if "lpips" in manifest["metrics"]:
            lpips = LPIPSEmbedding(manifest["lpips_net"], manifest["lpips_random_backbone"])
        index = cls(directory, tokenizer, manifest, lpips)
        count, backend = manifest["count"], manifest.get("backend", "faiss")
        try:
            for metric in manifest["metrics"]:
                path = directory / file_name(metric, backend)
                index.flat[metric] = read_flat(backend, path, metric == "hamming", index.device)
                if index.flat[metric].ntotal != count:
                    raise IndexError_(f"{path} holds {index.flat[metric].ntotal} entries, the manifest says {count}")
            if manifest.get("approximate_hamming"):
                if faiss is None:
                    raise IndexError_(
                        f"{directory} has an HNSW index and faiss is not installed (pip install faiss-cpu)"
                    )
                index.hnsw = faiss.read_index_binary(str(directory / HNSW_FILE))
                if index.hnsw.ntotal != count:
                    raise IndexError_(
                        f"{directory / HNSW_FILE} holds {index.hnsw.ntotal} entries, the manifest {count}"
                    )
            if "hamming" not in index.flat:
                raise IndexError_(f"{directory} has no Hamming index")
            index.tokens = np.load(directory / "tokens.npy", allow_pickle=False)
            index.thumbnails = np.load(directory / "thumbnails.npy", allow_pickle=False)
            index.sources = [json.loads(line) for line in (directory / "sources.jsonl").read_text().splitlines()]
        except IndexError_:
            raise
        except (RuntimeError, OSError, ValueError, json.JSONDecodeError) as error:
            raise IndexError_(
                f"{directory} is corrupt or truncated ({type(error).__name__}: {error}); rebuild it"
            ) from None
        if not (len(index.tokens) == len(index.thumbnails) == len(index.sources) == count):
            raise IndexError_(f"{directory} is inconsistent: its files hold different numbers of images; rebuild it")
        return index

    # ------------------------------------------------------------------------------------------------ add / save

    def __len__(self) -> int:
        return self.manifest["count"]

    # What an index is, typed: callers ask these instead of reading the manifest.

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def precision(self) -> str:
        """What the index's tokens were computed at: "fp32" or "bf16" (indexes of before it was recorded: "fp32")."""
        return self.manifest.get("precision", "fp32")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Token grids (B, h, w) of images (B, 3, H, W) in [0, 1], computed as the indexed tokens were: at the
        index's `precision`, whatever the tokenizer's own, so that an indexed image is at Hamming distance 0 from its
        entry. On the index's device."""
        return self.tokenizer.encode(images.to(self.device), self.precision)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])

    @property
    def num_bits(self) -> int:
        """Bits per token: K of a bit tokenizer, log2 of a VQ tokenizer's codebook (its index bits)."""
        return int(self.manifest["tokenizer"]["num_bits"])

    @property
    def tokenizer_kind(self) -> str:
        """'lfq' (bit tokens: Hamming distance is between bits) or 'vq' (between the binary codes of indices)."""
        return self.manifest["tokenizer"].get("config", {}).get("quantizer", "lfq")

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.manifest["metrics"])

    @property
    def dataset(self) -> IndexedDataset | None:
        """The dataset split it indexes; None for an index of added image files only."""
        described = self.manifest.get("dataset")
        if not described:
            return None
        classes = tuple(described.get("classes", ()))
        return IndexedDataset(described["spec"], described.get("split", "train"), described.get("seed", 0), classes)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes if self.dataset else ()

    @property
    def calibration(self) -> dict[str, Calibration]:
        """metric → its memorization threshold; empty until `indexes.build.calibrate` has run."""
        return {
            metric: Calibration(
                c["percentile"], c["threshold"], c.get("heldout_median", float("nan")), c["heldout_images"]
            )
            for metric, c in self.manifest.get("calibration", {}).items()
        }

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
                f"training the LPIPS index {self.manifest['lpips_sketch']['factory']!r} on {len(vectors)} images "
                f"failed ({error}); train on more images or choose a smaller index"
            ) from None

    def _lpips_vectors(self, images: torch.Tensor) -> np.ndarray:
        """What the LPIPS index stores: φ(images), or its sketch."""
        phi = self.lpips(images.to(self.device))
        return (self.sketch(phi) if self.sketch is not None else phi).cpu().numpy()

    @torch.no_grad()
    def add(self, images: torch.Tensor, sources: Sequence[str], labels: Sequence[int]) -> None:
        """Index images (B, 3, S, S) in [0, 1] (S = the index's image size); call save() to persist."""
        size = self.manifest["image_size"]
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
        self.manifest["count"] += len(images)

    def extend(self, part: ImageIndex, chunk: int = 10_000) -> None:
        """Append every image of `part`, an index of other images made with the same tokenizer and metrics whose
        LPIPS index (if any) stores the raw vectors this one stores or compresses (a part of a multi-process
        build)."""
        if part.manifest["metrics"] != self.manifest["metrics"] or part.manifest["grid"] != self.manifest["grid"]:
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
        self.manifest["count"] += len(part)

    def save(self) -> None:
        """Write every file whole under a temporary name, rename it, and the manifest last."""
        d = self.directory
        backend = self.manifest.get("backend", "faiss")
        for metric, index in self.flat.items():
            binary = metric == "hamming"
            atomic_write(d / file_name(metric, backend), lambda p, i=index, b=binary: write_flat(i, p, b, backend))
        if self.hnsw is not None:
            atomic_write(d / HNSW_FILE, lambda p: faiss.write_index_binary(self.hnsw, p))
        atomic_write(d / "tokens.npy", lambda p: save_npy(p, self.tokens))
        atomic_write(d / "thumbnails.npy", lambda p: save_npy(p, self.thumbnails))
        atomic_write(
            d / "sources.jsonl", lambda p: Path(p).write_text("".join(json.dumps(s) + "\n" for s in self.sources))
        )
        self.manifest["updated"] = time.time()
        write_json_atomic(d / "manifest.json", self.manifest)

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
        metrics = list(metrics or self.manifest["metrics"])
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
                grid = tuple(self.manifest["grid"])
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
        parts = []
        for first in range(0, len(ids), batch_size):
            stored = self.lpips(self.load_images(ids[first : first + batch_size]).to(phi.device))
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

    def load_images(self, ids: Sequence[int]) -> torch.Tensor:
        """Indexed images (B, 3, S, S) in [0, 1], read again from their sources: items of the indexed dataset
        ("spec:split:i", as `build_dataset_index` records them) or image files (as `indexes add` records them)."""
        size, described = self.manifest["image_size"], self.manifest.get("dataset", {})
        images = []
        for i in ids:
            source = self.sources[int(i)]["source"]
            spec, split, item = (source.rsplit(":", 2) + ["", ""])[:3]
            if described and spec == described.get("spec") and item.isdigit():
                key = (spec, split)
                if key not in self._datasets:
                    self._datasets[key] = eval_view(spec, split, described.get("seed", 0), size)
                images.append(self._datasets[key][int(item)][0])
            elif Path(source).is_file():
                images.append(load_image(source, size))
            else:
                raise IndexError_(
                    f"indexed image {int(i)} comes from {source!r}, which is neither an item of the indexed dataset "
                    "nor a readable image file: exact LPIPS re-ranking needs the source images where they were indexed"
                )
        return torch.stack(images)

    def token_distance_map(self, tokens: torch.Tensor, neighbour_id: int) -> np.ndarray:
        """Per-token Hamming distance (h, w) between one token grid and an indexed image."""
        return bits.hamming(tokens.cpu().long(), torch.from_numpy(self.tokens[neighbour_id]).long()).numpy()


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
