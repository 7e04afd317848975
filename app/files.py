"""The files the app hands to Gradio (generated images, report figures): one private folder, the newest kept.

Gradio copies every file a callback returns into its own cache (cleaned by `gr.Blocks(delete_cache=...)`); these
copies only have to outlive the request, and the few paths kept in a session's state (generated images waiting to
be sent to another tab). So the folder keeps the newest `keep` files and deletes older ones as new ones come, and
is removed when the app exits.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import weakref
from collections import deque
from pathlib import Path

__all__ = ["TempFiles"]


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
