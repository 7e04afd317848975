"""The files the app hands to Gradio (generated images, report figures), and how Gradio's cache writes images.

Gradio copies every file a callback returns into its own cache (cleaned by `gr.Blocks(delete_cache=...)`); these
copies only have to outlive the request, and the few paths kept in a session's state (generated images waiting to
be sent to another tab). So the folder keeps the newest `keep` files and deletes older ones as new ones come, and
is removed when the app exits.

Images a callback returns as arrays are encoded by Gradio into its cache under a name made of the hash of their
bytes, so identical results of concurrent requests (the same flips or neighbours of one image) share one path.
Gradio 6.31 writes that path in place (`Path.write_bytes`: truncate, then write) each time, so a second identical
result truncated and rewrote a file a client was still downloading, and the server broke the download off with
h11's "Too little data for declared Content-Length" (or "Too much data" when the size was read mid-write).
`write_images_once` makes that write atomic and write-once: a cached file, once complete, is never written again.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import weakref
from collections import deque
from pathlib import Path

__all__ = ["TempFiles", "write_once", "write_images_once"]


class TempFiles:
    def __init__(self, keep: int = 512):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.keep = keep
        self.folder = Path(tempfile.mkdtemp(prefix="maskbit-"))
        self._files: deque[Path] = deque()
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._remove = weakref.finalize(self, shutil.rmtree, self.folder, True)  # at exit, or when collected

    def path(self, name: str) -> Path:
        """A new path for a file called `name` (made unique); the oldest files beyond `keep` are deleted."""
        with self._lock:
            path = self.folder / f"{next(self._numbers):06d}-{Path(name).name}"
            self._files.append(path)
            while len(self._files) > self.keep:
                self._files.popleft().unlink(missing_ok=True)
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.iterdir())

    def close(self) -> None:
        self._remove()


def write_once(path: Path, data: bytes) -> Path:
    """Write `data` to `path` unless a file is there already; written beside and renamed into place, so that a reader
    of `path` (a download in progress) never sees it partly written or rewritten. For names that their content
    determines (a hash of `data`): an existing file already holds `data`. Like Gradio's own copies of returned files,
    an existing file is touched, so that the cache's cleaning ages it from its latest use."""
    if path.exists():
        try:
            os.utime(path)
        except OSError:
            pass
        return path
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path


def write_images_once() -> None:
    """Make Gradio's cache write each encoded image once and atomically (see the module's docstring). Gradio's
    components call `processing_utils.save_pil_to_cache` (arrays through `save_img_array_to_cache`, which calls it
    too), so replacing that one function covers every image, gallery and annotated image. Idempotent."""
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "writes_once", False):
        return

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        return str(write_once((folder / f"{name}.{format}").resolve(), data))

    save_pil_to_cache = processing_utils.traced_sync("postprocess_save_pil_to_cache")(save_pil_to_cache)  # as Gradio's
    save_pil_to_cache.writes_once = True
    processing_utils.save_pil_to_cache = save_pil_to_cache
