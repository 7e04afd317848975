"""Where models run and at what precision: one rule for the library, the CLIs, training, indexes and the app.

    device     "auto" → the first CUDA device when there is one, else the CPU
    precision  "fp32" (the library's default everywhere: the official code's float32 numerics, the same tokens and
               images on every machine); "bf16" autocast; "auto" → bf16 where it is native (`native_bf16`: CUDA, or a
               CPU with AVX-512 BF16 or AMX), else fp32. The programs a person runs for speed (the app, the CLIs,
               bench/) default to "auto" (`MASKBIT_PRECISION` changes that default) and say what it picked
               (`describe_precision`).
    training   accelerate's mixed_precision "auto" → "bf16" where bf16 is native, else "no"
    threads    on the CPU, each unit of work (a sampling step, an encode or decode, a training step, an index batch)
               runs with `cpu_threads()` threads: the cores this process may use (OMP_NUM_THREADS caps them) less the
               tasks other processes are running at that moment, at least one. Background work (the app's index
               build, the jobs it launches) also runs at a lower priority (`BACKGROUND_NICE`).
What bf16 gains and costs on each kind of machine is measured in bench/README.md ("bf16 on a CPU with native bf16").

Nothing here touches CUDA at import time (a ZeroGPU Space attaches the GPU only inside its decorated functions);
`pick_device` asks torch.cuda only when it is called.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import threading
import warnings
from pathlib import Path

import torch

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "pick_device",
    "native_bf16",
    "resolve_precision",
    "describe_precision",
    "check_precision",
    "autocast_dtype",
    "autocast",
    "precision_autocast",
    "mixed_precision",
    "cpu_has_native_bf16",
    "usable_cores",
    "cpu_threads",
    "fit_threads",
    "run_in_background",
    "BACKGROUND_NICE",
    "background_priority",
    "add_precision_argument",
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


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 is native on `device`: CUDA, or a CPU whose oneDNN has bf16 kernels. The one rule behind
    precision "auto" and training's mixed_precision "auto"."""
    return device.type == "cuda" or cpu_has_native_bf16()


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """What a precision name computes in on `device`: "fp32" or "bf16" ("auto": bf16 where it is native)."""
    if check_precision(precision) == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def describe_precision(precision: str, device: torch.device) -> str:
    """What a person is told a precision name picked, e.g. "bf16 (auto: native on this CPU)"."""
    resolved = resolve_precision(precision, device)
    if precision != "auto":
        return resolved
    where = "this GPU" if device.type == "cuda" else "this CPU"
    return f"{resolved} (auto: {'native' if resolved == 'bf16' else 'no native bf16'} on {where})"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name on `device`: torch.bfloat16, or None for float32 (no autocast)."""
    if resolve_precision(precision, device) == "fp32":
        return None
    _warn_if_emulated(device)
    return torch.bfloat16


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 BF16 or AMX); without them bf16 is emulated and several
    times slower than fp32 (bench/README.md)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _warn_if_emulated(device: torch.device) -> None:
    """bf16 asked for on a CPU without native bf16: say that it is slower there (stacklevel: the caller's caller)."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "this CPU has no native bf16 (no AVX-512 or AMX bf16 in oneDNN): bf16 runs emulated, several times "
            "slower than fp32 here (bench/README.md); use fp32",
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
    """accelerate's `mixed_precision` for a training config value: "auto" → "bf16" where bf16 is native
    (`native_bf16`), else "no"."""
    if name not in MIXED_PRECISIONS:
        raise ValueError(f"mixed precision must be one of {', '.join(MIXED_PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "no"
    if name == "bf16":
        _warn_if_emulated(device)
    return name


# ------------------------------------------------------------------------------------------------------ threads

BACKGROUND_NICE = 10  # background work yields the CPU to interactive work (CFS weight 110 against 1024 at nice 0)


def background_priority() -> int:
    """The nice value of this process's background work: BACKGROUND_NICE below the process itself, whatever it
    was started at (an app run under `nice` keeps its jobs below it)."""
    return min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)


def usable_cores() -> int:
    """The cores this process may run on, capped by OMP_NUM_THREADS when it is set (a launched job's share)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        cap = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        cap = cores
    return max(1, min(cores, cap if cap > 0 else cores))


def _running_elsewhere() -> int:
    """Tasks other processes are running now (Linux: /proc/loadavg's runnable count less this process's own running
    threads, whose count includes the caller and OpenMP workers still spinning after a parallel region); 0 where
    /proc is absent."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].partition("/")[0])
        own = 0
        for task in os.scandir("/proc/self/task"):
            with open(f"{task.path}/stat", "rb") as file:
                own += file.read().rpartition(b")")[2][1:2] == b"R"
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, running - max(own, 1))


def cpu_threads() -> int:
    """Threads for the next unit of CPU work: the usable cores less the tasks other processes run now, at least 1.

    Two processes that each run one OpenMP thread per core stall each other: every parallel region ends at a barrier
    that waits for the thread the other process has descheduled (4 images took 3.5x (fp32) to 11x (bf16) their idle
    time on 2 cores next to a training run; bench/README.md, "Threads under load"). MASKBIT_THREADS=N fixes the
    count instead (measurements that need a fixed one)."""
    fixed = os.environ.get("MASKBIT_THREADS", "")
    if fixed.isdigit() and int(fixed) > 0:
        return int(fixed)
    return max(1, usable_cores() - _running_elsewhere())


def fit_threads(device: torch.device | str = "cpu") -> int:
    """Set the calling thread's torch (OpenMP, oneDNN, MKL) thread count to `cpu_threads()` for CPU work, before each
    unit of work; returns it (0 on other devices, where nothing is changed). A thread marked by `run_in_background`
    keeps one thread."""
    if torch.device(device).type != "cpu":
        return 0
    threads = 1 if getattr(_background, "active", False) else cpu_threads()
    torch.set_num_threads(threads)  # OpenMP's count is per calling thread (torch reports the last one set)
    return threads


_background = threading.local()


def run_in_background() -> None:
    """Mark the calling thread as background work: one torch thread (`fit_threads`) and a lower CPU priority (Linux
    sets priorities per thread), so that interactive work in the same process or beside it keeps the cores."""
    _background.active = True
    torch.set_num_threads(1)
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), background_priority())


def _precision_option(text: str) -> str:
    try:
        return check_precision(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (from --precision or MASKBIT_PRECISION)") from None


def add_precision_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--precision of a program a person runs for speed: "auto" unless MASKBIT_PRECISION (a deployment's choice; the
    library never reads it) says otherwise; a bad value, typed or from MASKBIT_PRECISION, is a usage error naming
    both. `what`: what computes at it, for the help ("what the models compute at")."""
    parser.add_argument(
        "--precision",
        type=_precision_option,
        default=os.environ.get("MASKBIT_PRECISION", "auto"),  # a string default goes through `type`: checked too
        metavar="{" + ",".join(PRECISIONS) + "}",
        help=f"{what}. auto (the default; MASKBIT_PRECISION changes it): bf16 autocast where bf16 is native "
        "(CUDA, a CPU with AVX-512 BF16 or AMX), float32 elsewhere; fp32: the official code's exact numerics, the same "
        "on every machine (the library's default)",
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --precision, the same on every command line of the project."""
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when there is a GPU, else CPU")
    add_precision_argument(parser, "what the models compute at")
