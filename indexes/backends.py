"""Exhaustive k-NN backends behind `ImageIndex`: FAISS (the default) and pure torch (no faiss needed; CPU or GPU).

Both expose the few FAISS calls the index uses: `add`, `search(x, k) -> (distances, ids)`, `reconstruct(i)`,
`reconstruct_n(start, n)` and `ntotal`, and are written to the index directory as `<metric>.faiss` (FAISS's format)
or `<metric>.npy` (the raw vectors: packed bit codes as uint8, features as float32).

Where an exact index is searched follows the index's device (`place`): on a CUDA device, a FAISS index becomes a
FAISS GPU index when the installed faiss has GPU support and sees a GPU (`faiss.get_num_gpus() > 0`, requirements-
gpu.txt), and otherwise a `TorchFlat` on that GPU; on the CPU it stays as it is. The file format does not change:
a `.faiss` index searched by torch on the GPU is written back as a `.faiss` file. Compressed indexes (IVF, PQ, HNSW)
stay with FAISS on the CPU.
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

__all__ = [
    "BACKENDS",
    "TorchFlat",
    "available_backend",
    "faiss_has_gpu",
    "place",
    "new_flat",
    "read_flat",
    "write_flat",
    "file_name",
]

logger = logging.getLogger(__name__)

BACKENDS = ("faiss", "torch")
_BUFFER = {"cpu": 1 << 24, "cuda": 1 << 27}  # float32 elements of one search step's ±1 database chunk


def available_backend(requested: str = "auto") -> str:
    """`auto` → faiss when it imports, torch otherwise; an explicit choice is checked."""
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be auto, faiss or torch, got {requested!r}")
    if requested == "faiss" and faiss is None:
        raise ValueError("the faiss backend needs faiss (pip install faiss-cpu); or use the torch backend")
    if requested == "auto":
        return "faiss" if faiss is not None else "torch"
    return requested


def faiss_has_gpu() -> bool:
    """Whether the installed faiss has GPU indexes and sees a GPU (asked only when called: ZeroGPU)."""
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _signs(codes: torch.Tensor) -> torch.Tensor:
    """(n, bytes) packed bits uint8 → (n, 8·bytes) float32 ±1. Hamming(a, b) = (8·bytes − ⟨±a, ±b⟩) / 2, exact in
    float32 (and TF32) arithmetic: every product is ±1 and every partial sum an integer below 2^24."""
    shifts = torch.arange(8, dtype=torch.uint8, device=codes.device)
    return ((codes[..., None] >> shifts) & 1).flatten(-2).float() * 2 - 1


class TorchFlat:
    """Exact k-NN over vectors held as one torch tensor: Hamming distance between packed bit codes (uint8 rows,
    `binary=True`, computed as a ±1 matrix product) or squared L2 between float32 rows (in float64). Ties are broken
    by the lower id, like FAISS's flat indexes."""

    def __init__(self, dim: int, binary: bool, device: torch.device | str | None = None):
        self.dim, self.binary = dim, binary  # dim: bits (binary) or floats
        self.device = torch.device(device) if device is not None else pick_device()
        width = dim // 8 if binary else dim
        self.vectors = torch.zeros((0, width), dtype=torch.uint8 if binary else torch.float32, device=self.device)

    @classmethod
    def from_faiss(cls, index: Any, device: torch.device | str) -> TorchFlat:
        """The vectors of a FAISS flat index (IndexBinaryFlat or IndexFlatL2), searched by torch on `device`."""
        binary = isinstance(index, faiss.IndexBinary)
        flat = cls(index.d, binary, device)
        if index.ntotal:
            flat.add(index.reconstruct_n(0, index.ntotal))
        return flat

    def to_faiss(self) -> Any:
        """The same vectors in a FAISS CPU flat index (to be written as a `.faiss` file)."""
        index = faiss.IndexBinaryFlat(self.dim) if self.binary else faiss.IndexFlatL2(self.dim)
        if self.ntotal:
            index.add(self.vectors.cpu().numpy())
        return index

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
        bits = self.vectors.shape[1] * 8
        step = max(1, _BUFFER.get(self.device.type, _BUFFER["cpu"]) // bits) if self.binary else 65536
        q_signs = _signs(queries) if self.binary else None
        q64 = queries.double()
        for start in range(0, self.ntotal, step):
            chunk = self.vectors[start : start + step]
            if self.binary:
                d = ((bits - q_signs @ _signs(chunk).T) / 2).round().long()
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


_GPU_RESOURCES: dict[int, Any] = {}  # one faiss.StandardGpuResources per GPU, made on first use


def _faiss_to_gpu(index: Any, device: torch.device) -> Any:
    gpu = device.index or 0
    if gpu not in _GPU_RESOURCES:
        _GPU_RESOURCES[gpu] = faiss.StandardGpuResources()
    if isinstance(index, faiss.IndexBinaryFlat):
        config = faiss.GpuIndexBinaryFlatConfig()
        config.device = gpu
        return faiss.GpuIndexBinaryFlat(_GPU_RESOURCES[gpu], index, config)
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[gpu], gpu, index)


def _is_flat(index: Any) -> bool:
    return type(index) in (faiss.IndexBinaryFlat, faiss.IndexFlatL2)


def place(index: Any, device: torch.device | str) -> Any:
    """Where an exact index is searched: on a CUDA device, a FAISS GPU index when faiss has GPU support, else a
    TorchFlat there; a TorchFlat moves to `device`; a CPU device or a compressed index leaves it unchanged."""
    device = torch.device(device)
    if isinstance(index, TorchFlat):
        if index.device != device:
            index.device, index.vectors = device, index.vectors.to(device)
        return index
    if device.type != "cuda" or faiss is None or not _is_flat(index):
        return index
    return _faiss_to_gpu(index, device) if faiss_has_gpu() else TorchFlat.from_faiss(index, device)


def _to_cpu(index: Any) -> Any:
    if isinstance(index, TorchFlat):
        return index.to_faiss()
    if hasattr(faiss, "GpuIndexBinaryFlat") and isinstance(index, faiss.GpuIndexBinaryFlat):
        cpu = faiss.IndexBinaryFlat(index.d)
        index.copyTo(cpu)
        return cpu
    if hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu"):
        return faiss.index_gpu_to_cpu(index)
    return index


def new_flat(backend: str, dim: int, binary: bool, device: torch.device | str = "cpu") -> Any:
    """An empty exact index of `dim` bits (binary, a multiple of 8) or floats, searched on `device` (`place`)."""
    if backend == "torch":
        return TorchFlat(dim, binary, device)
    return place(faiss.IndexBinaryFlat(dim) if binary else faiss.IndexFlatL2(dim), device)


def write_flat(index: Any, path: str, binary: bool, backend: str) -> None:
    """Write to `path` exactly, in the backend's format (callers pass a temporary name and rename it)."""
    if backend == "torch":
        with open(path, "wb") as file:  # np.save on a name would append ".npy"
            np.save(file, index.vectors.cpu().numpy())
    elif binary:
        faiss.write_index_binary(_to_cpu(index), path)
    else:
        faiss.write_index(_to_cpu(index), path)


def read_flat(backend: str, path: Path, binary: bool, device: torch.device | str = "cpu") -> Any:
    """An index written by `write_flat`, searched on `device` (`place`)."""
    if backend == "torch":
        vectors = np.load(path, allow_pickle=False)
        expected = np.uint8 if binary else np.float32
        if vectors.ndim != 2 or vectors.dtype != expected:
            raise ValueError(f"{path} holds {vectors.dtype} {vectors.shape}, expected 2-D {np.dtype(expected)}")
        index = TorchFlat(vectors.shape[1] * 8 if binary else vectors.shape[1], binary, device)
        index.add(vectors)
        return index
    if faiss is None:
        raise ValueError(
            f"{path} is a FAISS index and faiss is not installed (pip install faiss-cpu), "
            "or rebuild the index with --backend torch"
        )
    return place(faiss.read_index_binary(str(path)) if binary else faiss.read_index(str(path)), device)
