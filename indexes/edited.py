"""Edited and partial copies: Hamming distance over windows of the token grid, at small shifts, of an image and its
mirror image.

A whole-grid Hamming search finds copies that keep the token grid (re-encoded, compressed, brighter, noisier) and
misses geometric edits: a copy shifted by one token has every token at another position, a mirrored copy has other
tokens (the encoder is not mirror-symmetric), and a copy of half an image pasted onto another shares only half of
its tokens. Tokens are local, so each of these is still a near-exact match of *some window* of the grid:

    shifted   the central (h − 4)×(w − 4) window of each indexed grid against the query's window moved by
              (dy, dx) ∈ [−2, 2]²: a copy moved by up to 2 tokens (2 · downsampling pixels), in bits
    flipped   the whole grid of the query and of its mirror image, encode(flip(x)): a mirrored copy, in bits
    part      the strip of 3/8 of the grid along each edge (left, right, top, bottom), at the same place: part of a
              training image pasted onto another image, as a relative distance (below)

Each test's distance is the minimum over its windows, shifts and mirrorings (and the indexed images), so an exact
copy is at 0 in every test, and each test also finds what a plain whole-grid search finds when the copy has not
moved. It is the Hamming distance in bits over the window, or, for `part`, Carlini et al.'s relative
distance d₁ / mean(d₁..d₅₀) over the 50 nearest indexed windows: a pasted part is re-encoded beside foreign content
(and under the whole image's GroupNorm statistics), which moves about one bit per token even far from the seam, so a
few real images have some strip about as near in bits; the ratio asks instead whether one training image is much
nearer there than the others. Distances of different tests do not compare: calibrate each test on held-out images,
as the report does for every metric (`indexes.report`). The search is exact (FAISS or torch flat indexes over the
packed windows, indexes/backends.py); `bench/edited_copies.py` measures each test's recall on planted edits, its
false-positive rate and its cost per query.

Axes: Q queries, N indexed images, (h, w) the token grid; offsets (dy, dx) in tokens, the query's content at
(i + dy, j + dx) matching the indexed grid's at (i, j) (a copy moved down and right has dy, dx > 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from indexes import audit
from indexes.backends import new_flat
from indexes.errors import IndexError_
from maskbit import bits

if TYPE_CHECKING:
    from indexes.store import ImageIndex

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
    """One test: the minimum distance over `windows` of the indexed grid's central region (the grid without
    `margin` tokens at each edge; default `max_shift`), the query's window moved by every offset in
    [−max_shift, max_shift]², of the query and, with `mirrored` holding True, of its mirror image.

    Windows: "whole" (the central region); "left", "right", "top", "bottom": the strip of `part` of the region's
    width (or height) along that edge (0.5: a half); "top-left", ...: the corner of `part` of both sides (0.5: a
    quadrant). The distance is the Hamming distance in bits over the window or, with `relative` n ≥ 2, Carlini et
    al.'s relative distance d₁ / mean(d₁..d_n) over the n nearest indexed windows of the same window and move
    (`indexes.audit.relative_distance`; in [0, 1]): how much closer the nearest image is than the images near it,
    which discounts windows that many images share (a plain background)."""

    name: str
    label: str
    windows: tuple[str, ...] = ("whole",)
    max_shift: int = 0
    mirrored: tuple[bool, ...] = (False,)
    margin: int | None = None
    part: float = 0.5
    relative: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.windows) - set(WINDOWS)
        if unknown or not self.windows:
            raise ValueError(f"windows must be a non-empty subset of {WINDOWS}, got {list(self.windows)}")
        if isinstance(self.max_shift, bool) or not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ValueError(f"max_shift must be a whole number ≥ 0, got {self.max_shift!r}")
        if not self.mirrored or set(self.mirrored) - {False, True}:
            raise ValueError(f"mirrored must hold False and/or True, got {self.mirrored!r}")
        if self.margin is None:
            object.__setattr__(self, "margin", self.max_shift)
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < self.max_shift:
            raise ValueError(f"margin must be a whole number ≥ max_shift ({self.max_shift}), got {self.margin!r}")
        if not 0 < self.part <= 1:  # also refuses NaN
            raise ValueError(f"part must lie in (0, 1], got {self.part}")
        if isinstance(self.relative, bool) or not isinstance(self.relative, int) or self.relative in (1,):
            raise ValueError(f"relative must be 0 (bits) or a number of neighbours ≥ 2, got {self.relative!r}")
        if self.relative < 0:
            raise ValueError(f"relative must be 0 (bits) or a number of neighbours ≥ 2, got {self.relative!r}")


TESTS = {
    "shifted": WindowTest("shifted", "Hamming, shifted (±2 tokens)", ("whole",), 2),
    "flipped": WindowTest("flipped", "Hamming, flipped", ("whole",), 0, (False, True)),
    "part": WindowTest("part", "Hamming, best edge strip (relative)", HALVES, part=0.375, relative=50),
}


def offsets(max_shift: int) -> list[tuple[int, int]]:
    """Every (dy, dx) in [−s, s]², (0, 0) first, then by distance |dy| + |dx| (ties: row-major), so that of equal
    distances the smallest move wins."""
    r = range(-max_shift, max_shift + 1)
    return sorted(((dy, dx) for dy in r for dx in r), key=lambda o: (abs(o[0]) + abs(o[1]), o))


def window_bounds(grid: tuple[int, int], window: str, margin: int, part: float = 0.5) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom and right exclusive: `window` of the central region of a grid (h, w), the
    grid without `margin` tokens at each edge; a strip or corner spans round(part · side) tokens of a side (at least
    one; halves of an odd side leave its middle row or column out)."""
    h, w = grid
    if not 0 <= 2 * margin < min(h, w) - 1:
        raise IndexError_(
            f"a margin of {margin} tokens (max_shift, or the test's margin) leaves no window to compare on a {h}×{w} "
            f"token grid: choose at most {max(0, (min(h, w) - 2) // 2)}"
        )
    top, bottom, left, right = margin, h - margin, margin, w - margin
    along_h = min(bottom - top, max(1, int(part * (bottom - top) + 0.5)))
    along_w = min(right - left, max(1, int(part * (right - left) + 0.5)))
    if part == 0.5:  # halves: the same number of tokens on both sides
        along_h, along_w = (bottom - top) // 2, (right - left) // 2
    rows = {"top": (top, top + along_h), "bottom": (bottom - along_h, bottom)}
    cols = {"left": (left, left + along_w), "right": (right - along_w, right)}
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
    distances: np.ndarray  # (Q,) float64: differing bits over the window, or the relative distance in [0, 1]
    ids: np.ndarray  # (Q,) int64: the nearest indexed image
    offsets: np.ndarray  # (Q, 2) int64: (dy, dx) of the best match, in tokens
    windows: list[str]  # the best-matching window of each query
    mirrored: np.ndarray  # (Q,) bool: whether the mirror image matched best
    tokens: np.ndarray  # (Q,) int64: tokens in the best-matching window


class EditedSearch:
    """The window searches of one index. Keeps an exact flat index of each window's packed codes of the indexed
    token grids (built on first use, rebuilt when the index has grown), so that a second search costs only the
    search. Memory: one packed copy of the indexed codes per window size in use (a half: half the Hamming index)."""

    def __init__(self, index: ImageIndex) -> None:
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
        q, grid = len(query[False]), self.index.grid
        bounds = {w: window_bounds(grid, w, test.margin, test.part) for w in test.windows}
        sizes = {w: (b[1] - b[0]) * (b[3] - b[2]) for w, b in bounds.items()}
        if not test.relative and len(set(sizes.values())) > 1:
            raise IndexError_(
                f"test {test.name!r}: its windows hold different numbers of tokens on a {grid[0]}×{grid[1]} grid "
                f"({sizes}), so their bit counts do not compare; give it relative=n (a ratio) or windows of one size"
            )
        moves = offsets(test.max_shift)
        best = np.full(q, np.inf)
        ids, moved = np.full(q, -1, np.int64), np.zeros((q, 2), np.int64)
        windows, mirrored, tokens = [""] * q, np.zeros(q, bool), np.zeros(q, np.int64)
        rows = np.arange(q)
        for mirror in test.mirrored:
            for window in test.windows:
                distances, found = self._search_window(query[mirror], bounds[window], moves, test.relative)
                column = distances.argmin(1)  # the first of equal distances: the smallest move
                d = distances[rows, column]
                better = d < best  # strictly: earlier mirrorings and windows win ties
                best[better], ids[better] = d[better], found[rows, column][better]
                moved[better] = np.asarray(moves)[column[better]]
                mirrored[better], tokens[better] = mirror, sizes[window]
                for i in np.flatnonzero(better):
                    windows[i] = window
        return EditedNeighbours(test.name, best, ids, moved, windows, mirrored, tokens)

    def _search_window(
        self, grids: torch.Tensor, bounds: tuple[int, int, int, int], moves: list[tuple[int, int]], relative: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances (Q, moves) float64 of each query window at each move (bits to the nearest indexed window, or
        the relative distance over the `relative` nearest) and the nearest ids (Q, moves)."""
        flat = self._window_index(bounds)
        top, bottom, left, right = bounds
        k = min(relative, len(self.index)) if relative else 1
        distances, ids = [], []
        for first in range(0, len(grids), BATCH):
            batch = grids[first : first + BATCH]
            windows = torch.stack(
                [batch[:, top + dy : bottom + dy, left + dx : right + dx] for dy, dx in moves], 1
            )  # (B, moves, window h, window w)
            codes = bits.pack_bits(windows.flatten(0, 1), self.index.num_bits).numpy()
            d, i = flat.search(codes, k)  # (B · moves, k), nearest first
            d = d.astype(np.float64)
            if relative:
                d = audit.relative_distance(d, k) if k >= 2 else np.ones(len(d))  # one image: none to compare with
            else:
                d = d[:, 0]
            distances.append(d.reshape(len(batch), len(moves)))
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
    index: ImageIndex,
    images: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
    tests: Sequence[str | WindowTest] = tuple(TESTS),
) -> dict[str, EditedNeighbours]:
    """`EditedSearch(index).search(images, tokens, tests)` for one call (a caller that searches again keeps the
    EditedSearch, whose window indexes are then built once)."""
    return EditedSearch(index).search(images, tokens, tests)
