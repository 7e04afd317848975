"""Writing files so that a crash, a kill or a full disk never leaves a half-written one under the final name.

atomic_write         one file: written beside, renamed into place
write_json_atomic    the same for a JSON value
atomic_directory     a whole directory (several files): written beside, swapped into place in one step
disk_full_message    a full disk (or a file-size limit) as a sentence: the path, the space it needed, what was kept
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "write_json_atomic",
    "atomic_directory",
    "replace_directory",
    "DiskFullError",
    "disk_full_message",
    "explain_full_disk",
    "is_full_disk",
    "human_bytes",
]

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """A write that ran out of disk space (or hit a file-size limit); the message says where, how much, what was
    kept and how to continue."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call write(temporary_path) on a file beside `path`, then rename it to `path` (atomic on POSIX)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates files readable by their owner only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, value: Any) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=2) + "\n"))


def partial_directory(path: str | Path) -> Path:
    """Where `atomic_directory` builds the next version of `path`: a hidden sibling with a fixed name, so that the
    same command after a kill finds (and reuses or removes) what the killed one left."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


@contextlib.contextmanager
def atomic_directory(path: str | Path, resume: bool = False, keep_on_error: bool = False) -> Iterator[Path]:
    """Yield a directory beside `path` to write every file into; when the block ends without an error, it replaces
    `path` in one atomic step (`replace_directory`). A kill or an error leaves `path` as it was.

    resume: start from what an interrupted write left there (files written whole, e.g. with atomic_write), so that
    the same command continues it; otherwise start empty. keep_on_error: leave what was written for that resume
    (else it is removed, giving the space back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_directory(path)
    if partial.exists() and not resume:
        shutil.rmtree(partial)
    partial.mkdir(exist_ok=True)
    try:
        yield partial
    except BaseException:
        if not keep_on_error:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_directory(partial, path)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False  # a file system (or kernel) without exchange
    raise OSError(code, os.strerror(code), str(second))


def replace_directory(new: str | Path, path: str | Path) -> None:
    """Put directory `new` at `path` in one atomic step, then remove what was there.

    A missing `path` is one rename; an existing one is swapped with `new` (renameat2 RENAME_EXCHANGE), so that `path`
    always holds either the old or the new directory, whole. Where the file system cannot swap, the old directory is
    first renamed to a `.old` sibling (a kill between the two renames leaves it there, complete, under that name)."""
    new, path = Path(new), Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if not path.exists():
        os.rename(new, path)
    elif _exchange(new, path):
        shutil.rmtree(new)  # `new` now names the old directory
        return
    else:
        os.rename(path, old)
        os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(count) < 1024 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError


FULL_DISK_WORDS = ("No space left", "File too large", "os error 28", "os error 27", "StorageFull", "FileTooLarge")
LOW_SPACE = 1 << 20  # less free than this after a failed write: the write failed for space


def is_full_disk(error: BaseException, path: str | Path | None = None) -> bool:
    """Whether `error`, raised while writing at `path`, means a full disk or a file-size limit. Writers say it in
    different ways: errno ENOSPC/EDQUOT/EFBIG, numpy's errno-less "N requested and M written", FAISS's and
    safetensors' messages; torch.save only says "unexpected pos", so at `path` a nearly full disk or a file-size limit
    (RLIMIT_FSIZE) in force also counts."""
    if isinstance(error, DiskFullError) or not isinstance(error, Exception):
        return False
    if isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS:
        return True
    text = str(error)
    if isinstance(error, OSError) and error.errno is None and "requested and" in text and "written" in text:
        return True
    if any(word in text for word in FULL_DISK_WORDS):
        return True
    if path is None or not isinstance(error, (OSError, RuntimeError)):
        return False
    if _free_bytes(Path(path)) < LOW_SPACE:
        return True
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):
        return False


def _free_bytes(path: Path) -> int:
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(probe).free


def disk_full_message(path: str | Path, needed: int | None, kept: str) -> str:
    free = _free_bytes(Path(path))
    need = f"it needed about {human_bytes(needed)}" if needed else "it needed more space"
    return (
        f"the disk is full (or a file-size limit was hit) while writing {path}: {need}, "
        f"{human_bytes(free)} are free there; {kept}"
    )


@contextlib.contextmanager
def explain_full_disk(path: str | Path, needed: int | Callable[[], int] | None, kept: str) -> Iterator[None]:
    """Turn a full disk inside the block into DiskFullError with `disk_full_message` (`needed`: bytes, or a function
    that estimates them when the error comes); other errors pass unchanged."""
    try:
        yield
    except Exception as error:
        if not is_full_disk(error, path):
            raise
        amount = needed() if callable(needed) else needed
        raise DiskFullError(disk_full_message(path, amount, kept)) from error
