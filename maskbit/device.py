"""Where models run and at what precision: one rule for the library, the CLIs, training, indexes and the app.

    device     "auto" → the first CUDA device when there is one, else the CPU
    precision  "auto" → bf16 autocast on CUDA, float32 on the CPU; "fp32" and "bf16" force one
    training   accelerate's mixed_precision "auto" → "bf16" on CUDA and on a CPU with native bf16, else "no"

Nothing here touches CUDA at import time (a ZeroGPU Space attaches the GPU only inside its decorated functions);
`pick_device` asks torch.cuda only when it is called.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import warnings

import torch

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "pick_device",
    "autocast_dtype",
    "autocast",
    "precision_autocast",
    "mixed_precision",
    "cpu_has_native_bf16",
    "add_device_arguments",
]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")  # accelerate's names, plus "auto"


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """ "auto" → the first CUDA device when there is one, else the CPU; "cuda" without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name not in DEVICES and not str(name).startswith("cuda:"):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but no CUDA device is available; use --device cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name: "auto" is bf16 on CUDA and fp32 (no autocast) on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        _warn_if_emulated(device)
    return torch.bfloat16 if precision == "bf16" else None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 BF16 or AMX): bf16 is then 1.4-3.7x faster than fp32
    in sampling, and without them about 6x slower (bench/README.md)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _warn_if_emulated(device: torch.device) -> None:
    """bf16 asked for on a CPU without native bf16: say that it is slower there (stacklevel: the caller's caller)."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "this CPU has no native bf16 (no AVX-512 or AMX bf16 in oneDNN): bf16 runs emulated, several times "
            "slower than fp32 here (6x on an AVX2 AMD EPYC, bench/README.md); use fp32",
            stacklevel=3,
        )


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast on `device` with `dtype`, or a no-op context for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_autocast(precision: str, device: torch.device):
    """The autocast context for a precision name on `device` (see `autocast_dtype`)."""
    return autocast(device, autocast_dtype(precision, device))


def mixed_precision(name: str, device: torch.device) -> str:
    """accelerate's `mixed_precision` for a training config value: "auto" → "bf16" on CUDA and on a CPU with native
    bf16 (a training step of the bundled tokenizer: 2x faster there), "no" on other CPUs (22x faster than emulated
    bf16 on an AVX2 AMD EPYC)."""
    if name not in MIXED_PRECISIONS:
        raise ValueError(f"mixed precision must be one of {', '.join(MIXED_PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "no"
    if name == "bf16":
        _warn_if_emulated(device)
    return name


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --precision, the same on every command line of the project."""
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when there is a GPU, else CPU")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: bf16 autocast on CUDA, float32 on the CPU; bf16 on a CPU is approximate, and faster only on one "
        "with native bf16 (AVX-512 BF16 or AMX; bench/README.md)",
    )
