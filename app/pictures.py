"""The pictures the app shows: tensors in [0, 1] → uint8 arrays, enlarged, with token borders and difference maps."""

from __future__ import annotations

import numpy as np
import torch

from maskbit.images import image_grid, to_array

__all__ = ["to_array", "enlarged", "token_grid", "with_difference", "outline_width", "frames_sheet", "DISPLAY"]

MARK = (255, 220, 0)  # the outline of a chosen token on a difference map
DISPLAY = 256  # pixels on the longer side that small images are enlarged to (nearest neighbour: pixels stay sharp)


def enlarged(image: torch.Tensor, size: int = DISPLAY) -> np.ndarray:
    """(3, H, W) → (H·f, W·f, 3) uint8, f the largest whole factor with H·f ≤ size (at least 1)."""
    array = to_array(image)
    factor = max(1, size // max(array.shape[:2]))
    return array.repeat(factor, 0).repeat(factor, 1) if factor > 1 else array


def token_grid(image: torch.Tensor, grid: tuple[int, int], chosen: list[int] | None = None) -> np.ndarray:
    """The image enlarged with token borders, the chosen tokens (flat row-major ids) tinted red."""
    h, w = grid
    array = enlarged(image).astype(np.float32)
    cell_h, cell_w = array.shape[0] // h, array.shape[1] // w
    for p in chosen or []:
        r, c = divmod(p, w)
        block = array[r * cell_h : (r + 1) * cell_h, c * cell_w : (c + 1) * cell_w]
        block[:] = 0.5 * block + 0.5 * np.array([255, 64, 64])
    array[::cell_h, :] = array[::cell_h, :] * 0.5 + 64
    array[:, ::cell_w] = array[:, ::cell_w] * 0.5 + 64
    return array.astype(np.uint8)


def with_difference(
    image: torch.Tensor,
    reference: torch.Tensor,
    grid: tuple[int, int],
    chosen: list[int] | None = None,
    gap: int = 2,
) -> tuple[np.ndarray, float]:
    """The image and, beside it after a white gap, what changed: |image − reference| scaled to its own range (its
    largest change becomes white; black: unchanged), both enlarged as `enlarged` does, the chosen tokens (flat
    row-major ids on the (h, w) token `grid`) outlined in yellow on the map. → (picture, the map's gain).

    A flip of one bit at one token changes pixels by about 0.01: a fixed gain leaves its map black."""
    difference = (image - reference).abs()
    peak = float(difference.max())
    gain = 1.0 / peak if peak > 0 else 1.0
    left, right = enlarged(image), enlarged((difference * gain).clamp(0, 1))
    h, w = grid
    cell_h, cell_w = right.shape[0] // h, right.shape[1] // w
    line = outline_width(max(right.shape[:2]), min(cell_h, cell_w))
    for p in chosen or []:
        r, c = divmod(p, w)
        top, left_edge = r * cell_h, c * cell_w
        box = right[top : top + cell_h, left_edge : left_edge + cell_w]
        box[:line], box[-line:], box[:, :line], box[:, -line:] = MARK, MARK, MARK, MARK
    white = np.full((left.shape[0], gap * left.shape[0] // image.shape[1], 3), 255, np.uint8)
    return np.concatenate([left, white, right], axis=1), gain


def outline_width(side: int, cell: int) -> int:
    """Pixels of a chosen token's outline on a picture `side` pixels wide whose tokens are `cell` pixels: 1/64 of
    the picture (a gallery shows it at about half its size, nearest neighbour, where a 1-px line breaks into
    fragments), at most a quarter of a token, at least 1."""
    return max(1, min(side // 64, cell // 4))


def frames_sheet(frames: torch.Tensor, columns: int = 4) -> np.ndarray:
    """(B, 3, H, W) frames of one sampling step → one sheet, `columns` images per row, 1 px apart."""
    return to_array(image_grid(frames, columns=min(columns, len(frames)), padding=1))
