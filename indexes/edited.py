"""Edited and partial copies: Hamming distance over windows of the token grid, at small shifts, of an image and its
mirror image.

A whole-grid Hamming search finds copies that keep the token grid (re-encoded, compressed, brighter, noisier) and
misses geometric edits: a copy shifted by one token has every token at another position, a mirrored copy has other
tokens (the encoder is not mirror-symmetric), and a copy of half an image pasted onto another shares only half of
its tokens. Tokens are local, so each of these is still a near-exact match of *some window* of the grid:

    shifted   the central (h − 2s)×(w − 2s) window of each indexed grid against the query's window moved by
              (dy, dx) ∈ [−s, s]², s = 2 tokens: a copy moved by up to s tokens (s · downsampling pixels)
    flipped   the whole grid of the query and of its mirror image, encode(flip(x)): a mirrored copy
    half      each half of the grid (left, right, top, bottom), at the same place: half of a training image pasted
              onto another image
    edited    all three at once: the four halves of the central window, at every shift, of the query and its mirror

Each test's distance is the minimum over its windows, shifts and mirrorings (and the indexed images) of the Hamming
distance in bits over the window, so an exact copy is at 0 in every test, and each test also finds what a plain
whole-grid search finds when the copy has not moved. All windows of one test hold the same number of tokens, so its
distances are comparable; distances of different tests are not (other window sizes): calibrate each test on
held-out images, as the report does for every metric (`indexes.report`). The search is exact (FAISS or torch flat
indexes over the packed windows, indexes/backends.py); `bench/edited_copies.py` measures each test's recall on
planted edits, its false-positive rate and its cost.

Axes: Q queries, N indexed images, (h, w) the token grid; offsets (dy, dx) in tokens, the query's content at
(i + dy, j + dx) matching the indexed grid's at (i, j) (a copy moved down and right has dy, dx > 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from indexes.backends import new_flat
from indexes.errors import IndexError_
from maskbit import bits

__all__ = [
    "HALVES",
    "QUADRANTS",
    "TESTS",
    "EditedNeighbours",
    "EditedSearch",
    "WindowTest",
    "edited_neighbours",
    "offsets",
    "window_bounds",
]

HALVES = ("left", "right", "top", "bottom")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
WINDOWS = ("whole", *HALVES, *QUADRANTS)
BATCH = 64  # queries packed and searched at once


@dataclass(frozen=True)
class WindowTest:
    """One test: the minimum Hamming distance over `windows` of the indexed grid's central region (the grid without
    `margin` tokens at each edge; default `max_shift`), the query's window moved by every offset in
    [−max_shift, max_shift]², of the query and, with `mirrored` holding True, of its mirror image."""

    name: str
    label: str
    windows: tuple[str, ...] = ("whole",)
    max_shift: int = 0
    mirrored: tuple[bool, ...] = (False,)
    margin: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.windows) - set(WINDOWS)
        if unknown or not self.windows:
            raise ValueError(f"windows must be a non-empty subset of {WINDOWS}, got {list(self.windows)}")
        if len({window_size(w) for w in self.windows}) > 1:
            raise ValueError(f"the windows of one test must have one size, got {list(self.windows)}")
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"max_shift must be a whole number ≥ 0, got {self.max_shift!r}")
        if not self.mirrored or set(self.mirrored) - {False, True}:
            raise ValueError(f"mirrored must hold False and/or True, got {self.mirrored!r}")
        if self.margin is None:
            object.__setattr__(self, "margin", self.max_shift)
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < self.max_shift:
            raise ValueError(f"margin must be a whole number ≥ max_shift ({self.max_shift}), got {self.margin!r}")


def window_size(window: str) -> int:
    """How many of the central region's four quarters a window covers (one test's windows cover the same)."""
    return 4 if window == "whole" else 2 if window in HALVES else 1


TESTS = {
    "shifted": WindowTest("shifted", "Hamming, shifted (±2 tokens)", ("whole",), 2),
    "flipped": WindowTest("flipped", "Hamming, flipped", ("whole",), 0, (False, True)),
    "half": WindowTest("half", "Hamming, best half", HALVES),
    "edited": WindowTest("edited", "Hamming, best half, shifted ±2, flipped", HALVES, 2, (False, True)),
}


def offsets(max_shift: int) -> list[tuple[int, int]]:
    """Every (dy, dx) in [−s, s]², (0, 0) first, then by distance |dy| + |dx| (ties: row-major), so that of equal
    distances the smallest move wins."""
    r = range(-max_shift, max_shift + 1)
    return sorted(((dy, dx) for dy in r for dx in r), key=lambda o: (abs(o[0]) + abs(o[1]), o))


def window_bounds(grid: tuple[int, int], window: str, margin: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom and right exclusive: `window` of the central region of a grid (h, w), the
    grid without `margin` tokens at each edge. Halves and quadrants split it at its middle (the smaller side of an
    odd length is taken from both ends, so that both halves hold the same tokens)."""
    h, w = grid
    if not 0 <= 2 * margin < min(h, w) - 1:
        raise IndexError_(
            f"a margin of {margin} tokens (max_shift, or the test's margin) leaves no window to compare on a {h}×{w} "
            f"token grid: choose at most {max(0, (min(h, w) - 2) // 2)}"
        )
    top, bottom, left, right = margin, h - margin, margin, w - margin
    half_h, half_w = (bottom - top) // 2, (right - left) // 2
    rows = {"top": (top, top + half_h), "bottom": (bottom - half_h, bottom)}
    cols = {"left": (left, left + half_w), "right": (right - half_w, right)}
    if window == "whole":
        return top, bottom, left, right
    if window in ("left", "right"):
        return (top, bottom, *cols[window])
    if window in ("top", "bottom"):
        return (*rows[window], left, right)
    vertical, horizontal = window.split("-")
    return (*rows[vertical], *cols[horizontal])


class EditedNeighbours(NamedTuple):
    """One test's nearest indexed image for each of Q queries, and where the best window matched."""

    test: str
    distances: np.ndarray  # (Q,) float64: differing bits over the window (`tokens` tokens)
    ids: np.ndarray  # (Q,) int64: the nearest indexed image
    offsets: np.ndarray  # (Q, 2) int64: (dy, dx) of the best match, in tokens
    windows: list[str]  # the best-matching window of each query
    mirrored: np.ndarray  # (Q,) bool: whether the mirror image matched best
    tokens: int  # tokens per window


class EditedSearch:
    """The window searches of one index. Keeps an exact flat index of each window's packed codes of the indexed
    token grids (built on first use, rebuilt when the index has grown), so that a second search costs only the
    search. Memory: one packed copy of the indexed codes per window size in use (a half: half the Hamming index)."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self._windows: dict[tuple[int, int, int, int], tuple[int, Any]] = {}  # bounds → (indexed count, flat index)

    @torch.no_grad()
    def search(
        self,
        images: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        tests: Sequence[str | WindowTest] = tuple(TESTS),
    ) -> dict[str, EditedNeighbours]:
        """test name → its EditedNeighbours, for images (Q, 3, S, S) in [0, 1] and/or their token grids (Q, h, w)
        (as `ImageIndex.search` takes them). A test with a mirror image needs the images: the tokens of a mirrored
        image are not the mirrored tokens."""
        tests = [TESTS[t] if isinstance(t, str) and t in TESTS else t for t in tests]
        for test in tests:
            if not isinstance(test, WindowTest):
                raise IndexError_(f"tests: each must be one of {list(TESTS)} or a WindowTest, got {test!r}")
        index = self.index
        if len(index) == 0:
            raise IndexError_("the index is empty")
        if images is None and tokens is None:
            raise IndexError_("give images or tokens")
        if images is not None:
            size = index.image_size
            if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
                raise IndexError_(f"images must have shape (Q, 3, {size}, {size}), got {tuple(images.shape)}")
        if tokens is not None and (tokens.dim() != 3 or tuple(tokens.shape[1:]) != index.grid):
            raise IndexError_(
                f"token grids must have shape (Q, {index.grid[0]}, {index.grid[1]}), got {tuple(tokens.shape)}"
            )
        if images is not None and tokens is not None and len(images) != len(tokens):
            raise IndexError_(f"images and tokens must be as many, got {len(images)} and {len(tokens)}")
        needs_mirror = any(True in t.mirrored for t in tests)
        if needs_mirror and images is None:
            names = [t.name for t in tests if True in t.mirrored]
            raise IndexError_(
                f"the tests {names} search the mirror image, which token grids alone do not give (the tokens of a "
                "mirrored image are not the mirrored tokens): pass the images"
            )
        count = len(images) if images is not None else len(tokens)
        grids: dict[bool, list[torch.Tensor]] = {False: [], True: []}
        for first in range(0, count, BATCH):
            if tokens is not None:
                grids[False].append(tokens[first : first + BATCH].cpu().long())
            else:
                grids[False].append(index.encode(images[first : first + BATCH]).cpu().long())
            if needs_mirror:
                grids[True].append(index.encode(images[first : first + BATCH].flip(-1)).cpu().long())
        query = {m: torch.cat(g) for m, g in grids.items() if g}
        return {test.name: self._search_test(test, query) for test in tests}

    def _search_test(self, test: WindowTest, query: dict[bool, torch.Tensor]) -> EditedNeighbours:
        q = len(query[False])
        moves = offsets(test.max_shift)
        best = np.full(q, np.inf)
        ids, moved = np.full(q, -1, np.int64), np.zeros((q, 2), np.int64)
        windows, mirrored = [""] * q, np.zeros(q, bool)
        tokens = 0
        for mirror in test.mirrored:
            for window in test.windows:
                bounds = window_bounds(self.index.grid, window, test.margin)
                tokens = (bounds[1] - bounds[0]) * (bounds[3] - bounds[2])
                distances, found = self._search_window(query[mirror], bounds, moves)  # (Q, offsets) each
                column = distances.argmin(1)  # the first of equal distances: the smallest move
                d = distances[np.arange(q), column]
                better = d < best  # strictly: earlier mirrorings and windows win ties
                best[better], ids[better] = d[better], found[np.arange(q), column][better]
                moved[better] = np.asarray(moves)[column[better]]
                mirrored[better] = mirror
                for i in np.flatnonzero(better):
                    windows[i] = window
        return EditedNeighbours(test.name, best, ids, moved, windows, mirrored, tokens)

    def _search_window(
        self, grids: torch.Tensor, bounds: tuple[int, int, int, int], moves: list[tuple[int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest indexed window to each query window at each move: distances (Q, moves) float64, ids (Q, moves)."""
        flat = self._window_index(bounds)
        top, bottom, left, right = bounds
        k = self.index.num_bits
        distances, ids = [], []
        for first in range(0, len(grids), BATCH):
            batch = grids[first : first + BATCH]
            windows = torch.stack(
                [batch[:, top + dy : bottom + dy, left + dx : right + dx] for dy, dx in moves], 1
            )  # (B, moves, window h, window w)
            codes = bits.pack_bits(windows.flatten(0, 1), k).numpy()
            d, i = flat.search(codes, 1)
            distances.append(d[:, 0].reshape(len(batch), len(moves)).astype(np.float64))
            ids.append(i[:, 0].reshape(len(batch), len(moves)).astype(np.int64))
        return np.concatenate(distances), np.concatenate(ids)

    def _window_index(self, bounds: tuple[int, int, int, int]) -> Any:
        """The exact flat index of one window of every indexed grid (the Hamming index itself for the whole grid)."""
        index = self.index
        top, bottom, left, right = bounds
        if (top, bottom, left, right) == (0, index.grid[0], 0, index.grid[1]):
            return index.flat["hamming"]
        cached = self._windows.get(bounds)
        if cached is not None and cached[0] == len(index):
            return cached[1]
        k = index.num_bits
        width = -(-(bottom - top) * (right - left) * k // 8) * 8
        flat = new_flat(index.manifest.backend, width, True, index.device)
        for first in range(0, len(index), 4096):
            window = torch.from_numpy(index.tokens[first : first + 4096, top:bottom, left:right]).long()
            flat.add(bits.pack_bits(window, k).numpy())
        self._windows[bounds] = (len(index), flat)
        return flat


def edited_neighbours(
    index: Any,
    images: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
    tests: Sequence[str | WindowTest] = tuple(TESTS),
) -> dict[str, EditedNeighbours]:
    """`EditedSearch(index).search(images, tokens, tests)` for one call (a caller that searches again keeps the
    EditedSearch, whose window indexes are then built once)."""
    return EditedSearch(index).search(images, tokens, tests)
