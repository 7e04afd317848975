"""Exhaustive k-NN backends behind `ImageIndex`: FAISS (the default) and pure torch (no faiss needed; CPU or GPU).

Both expose the few FAISS calls the index uses: `add`, `search(x, k) -> (distances, ids)`, `reconstruct(i)`,
`reconstruct_n(start, n)` and `ntotal`, and are written to the index directory as `<metric>.faiss` (FAISS's format)
or `<metric>.npy` (the raw vectors: packed bit codes as uint8, features as float32). With a GPU, FAISS indexes are
moved to it when the installed faiss has GPU support, and the torch backend computes there (XOR + popcount for
Hamming).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskbit.device import pick_device

try:
    import faiss
except ImportError:  # the torch backend still works
    faiss = None

__all__ = ["BACKENDS", "TorchFlat", "available_backend", "new_flat", "read_flat", "write_flat", "file_name"]

logger = logging.getLogger(__name__)

BACKENDS = ("faiss", "torch")
_POPCOUNT = torch.tensor([bin(v).count("1") for v in range(256)], dtype=torch.int32)
_BUFFER = 1 << 24  # elements of the (queries × database chunk × bytes) XOR buffer of one search step


def available_backend(requested: str = "auto") -> str:
    """`auto` → faiss when it imports, torch otherwise; an explicit choice is checked."""
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be auto, faiss or torch, got {requested!r}")
    if requested == "faiss" and faiss is None:
        raise ValueError("the faiss backend needs faiss (pip install faiss-cpu); or use the torch backend")
    if requested == "auto":
        return "faiss" if faiss is not None else "torch"
    return requested


def _default_device() -> torch.device:
    return pick_device()


class TorchFlat:
    """Exact k-NN over vectors held as one torch tensor: Hamming distance between packed bit codes (uint8 rows,
    `binary=True`) or squared L2 between float32 rows. Ties are broken by the lower id, like FAISS's flat indexes."""

    def __init__(self, dim: int, binary: bool, device: torch.device | str | None = None):
        self.dim, self.binary = dim, binary  # dim: bits (binary) or floats
        self.device = torch.device(device) if device is not None else _default_device()
        width = dim // 8 if binary else dim
        self.vectors = torch.zeros((0, width), dtype=torch.uint8 if binary else torch.float32, device=self.device)

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    def add(self, x: np.ndarray) -> None:
        x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.vectors.dtype)
        if x.dim() != 2 or x.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"vectors must have shape (n, {self.vectors.shape[1]}), got {tuple(x.shape)}")
        self.vectors = torch.cat([self.vectors, x])

    def reconstruct(self, i: int) -> np.ndarray:
        return self.vectors[i].cpu().numpy()

    def reconstruct_n(self, start: int, n: int) -> np.ndarray:
        return self.vectors[start : start + n].cpu().numpy()

    @torch.no_grad()
    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.vectors.dtype)
        k = min(k, self.ntotal)
        best_d, best_i = None, None
        step = max(1, _BUFFER // (len(queries) * self.vectors.shape[1])) if self.binary else 65536
        table = _POPCOUNT.to(self.device)
        q64 = queries.double()
        for start in range(0, self.ntotal, step):
            chunk = self.vectors[start : start + step]
            if self.binary:
                d = table[(queries[:, None, :] ^ chunk[None]).long()].sum(-1)
            else:  # in float64, so that ‖q‖² − 2q·c + ‖c‖² keeps float32 accuracy
                c64 = chunk.double()
                d = (q64.square().sum(1, keepdim=True) - 2 * q64 @ c64.T + c64.square().sum(1)).clamp_min(0)
            ids = torch.arange(start, start + len(chunk), device=self.device).expand(len(queries), -1)
            if best_d is not None:
                d, ids = torch.cat([best_d, d], 1), torch.cat([best_i, ids], 1)
            # stable sort on distance keeps the ascending-id order among ties
            order = torch.sort(d, dim=1, stable=True).indices[:, :k]
            best_d, best_i = d.gather(1, order), ids.gather(1, order)
        dtype = np.int32 if self.binary else np.float32
        return best_d.cpu().numpy().astype(dtype), best_i.cpu().numpy().astype(np.int64)


def file_name(metric: str, backend: str) -> str:
    return f"{metric}.faiss" if backend == "faiss" else f"{metric}.npy"


def _to_gpu(index: Any) -> Any:
    """A FAISS index on the GPU when this faiss build has GPU support and a GPU is visible; else unchanged."""
    if faiss is None or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index
    resources = faiss.StandardGpuResources()
    if isinstance(index, faiss.IndexBinaryFlat):
        return faiss.GpuIndexBinaryFlat(resources, index)
    return faiss.index_cpu_to_gpu(resources, 0, index)


def _to_cpu(index: Any) -> Any:
    if faiss is not None and hasattr(faiss, "GpuIndexBinaryFlat") and isinstance(index, faiss.GpuIndexBinaryFlat):
        cpu = faiss.IndexBinaryFlat(index.d)
        index.copyTo(cpu)
        return cpu
    if faiss is not None and hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        return faiss.index_gpu_to_cpu(index)
    return index


def new_flat(backend: str, dim: int, binary: bool) -> Any:
    """An empty exact index: `dim` bits (binary, a multiple of 8) or floats."""
    if backend == "torch":
        return TorchFlat(dim, binary)
    return _to_gpu(faiss.IndexBinaryFlat(dim) if binary else faiss.IndexFlatL2(dim))


def write_flat(index: Any, path: str, binary: bool) -> None:
    """Write to `path` exactly (callers pass a temporary name and rename it)."""
    if isinstance(index, TorchFlat):
        with open(path, "wb") as file:  # np.save on a name would append ".npy"
            np.save(file, index.vectors.cpu().numpy())
    elif binary:
        faiss.write_index_binary(_to_cpu(index), path)
    else:
        faiss.write_index(_to_cpu(index), path)


def read_flat(backend: str, path: Path, binary: bool) -> Any:
    if backend == "torch":
        vectors = np.load(path, allow_pickle=False)
        expected = np.uint8 if binary else np.float32
        if vectors.ndim != 2 or vectors.dtype != expected:
            raise ValueError(f"{path} holds {vectors.dtype} {vectors.shape}, expected 2-D {np.dtype(expected)}")
        index = TorchFlat(vectors.shape[1] * 8 if binary else vectors.shape[1], binary)
        index.add(vectors)
        return index
    if faiss is None:
        raise ValueError(
            f"{path} is a FAISS index and faiss is not installed (pip install faiss-cpu), "
            "or rebuild the index with --backend torch"
        )
    return _to_gpu(faiss.read_index_binary(str(path)) if binary else faiss.read_index(str(path)))
