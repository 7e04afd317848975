"""What the bits of a token mean: flip them and decode, bit planes, walks in Hamming space, token statistics.

Weber et al., "MaskBit: Embedding-free Image Generation via Bit Tokens", TMLR 2024, Fig. 3 and App. G: with a
lookup-free tokenizer, flipping one bit of every token changes an image's details but keeps its content, because
bit k of an index is the sign of latent channel k. Everything here takes token indices and a tokenizer's `decode`,
so it runs unchanged on a vector-quantised tokenizer, where bit k of an index is only a bit of a codebook position:
measuring both is how the claim is tested rather than read. The CLI (`python -m maskbit flip`), the app and
`bench/` all call these functions.

Axes: n decoded variants, K bits per token, h × w token grid, H × W pixels. Images are float (3, H, W) in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from maskbit import bits
from maskbit.images import psnr

__all__ = [
    "Embed",
    "Distances",
    "distances",
    "random_token_mask",
    "reconstruct",
    "decode_images",
    "Flips",
    "flip_each_bit",
    "bit_planes",
    "Walk",
    "hamming_walk",
    "TokenStatistics",
    "token_statistics",
    "gray_code",
    "Atlas",
    "MAX_DRAWN_BITS",
    "sample_codes",
    "code_atlas",
]

# A perceptual embedding: images (n, 3, H, W) in [0, 1] → features (n, D) whose squared Euclidean distance is the
# perceptual distance (indexes.lpips_embedding.LPIPSEmbedding: ‖φ(x) − φ(y)‖² = LPIPS(x, y)).
Embed = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------- distances


class Distances(NamedTuple):
    """Distances of n images to one reference: PSNR (dB, inf where identical), L2 over all values, LPIPS."""

    psnr: np.ndarray  # (n,)
    l2: np.ndarray  # (n,)
    lpips: np.ndarray | None  # (n,), when an embedding was given


def distances(images: torch.Tensor, reference: torch.Tensor, embed: Embed | None = None, batch_size: int = 32):
    """Distances of images (n, 3, H, W) to one reference (3, H, W), or each to its own (n, 3, H, W); all in [0, 1]."""
    reference = (reference[None] if reference.dim() == 3 else reference).to(images.device)
    p = psnr(images, reference).cpu().numpy()
    d = (images - reference).flatten(1).norm(dim=1).cpu().numpy()
    lp = None
    if embed is not None:  # on the embedding's own device (a module's parameters say where; a function: as given)
        parameters = getattr(embed, "parameters", None)
        device = next(parameters()).device if parameters is not None else images.device
        anchor = embed(reference.to(device)) if len(reference) == 1 else None
        parts = []
        for i in range(0, len(images), batch_size):
            other = anchor if anchor is not None else embed(reference[i : i + batch_size].to(device))
            parts.append((embed(images[i : i + batch_size].to(device)) - other).pow(2).sum(1).cpu().numpy())
        lp = np.concatenate(parts)
    return Distances(p, d, lp)


def random_token_mask(shape: tuple[int, int, int], count: int, generator: torch.Generator) -> torch.Tensor:
    """(B, h, w) bool with `count` distinct random tokens set in each of the B grids."""
    b, h, w = shape
    if not 1 <= count <= h * w:
        raise ValueError(f"count must be between 1 and the grid's {h * w} tokens, got {count}")
    order = torch.rand(b, h * w, generator=generator).argsort(1)[:, :count]
    return torch.zeros(b, h * w, dtype=torch.bool).scatter_(1, order, True).view(b, h, w)


# ---------------------------------------------------------------------------------------------------- decoding


@torch.no_grad()
def decode_images(tokenizer, indices: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Token grids (n, h, w) → images (n, 3, H, W) clamped to [0, 1], decoded `batch_size` at a time."""
    device = next(tokenizer.parameters()).device
    chunks = [indices[i : i + batch_size].to(device) for i in range(0, len(indices), batch_size)]
    return torch.cat([tokenizer.decode(chunk).clamp(0, 1) for chunk in chunks])


@torch.no_grad()
def reconstruct(tokenizer, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image (3, H, W) → (its token grid (h, w), its reconstruction (3, H, W) in [0, 1])."""
    device = next(tokenizer.parameters()).device
    indices = tokenizer.encode(image[None].to(device))
    return indices[0], tokenizer.decode(indices).clamp(0, 1)[0]


# ---------------------------------------------------------------------------------------------------- flips


class Flips(NamedTuple):
    """Bit i flipped at every chosen token, for each chosen i, decoded and measured against the reconstruction."""

    indices: torch.Tensor  # (h, w) the unflipped tokens
    reconstruction: torch.Tensor  # (3, H, W): decode(indices)
    bit_ids: list[int]
    flipped: torch.Tensor  # (len(bit_ids), 3, H, W)
    distances: Distances  # of `flipped` to `reconstruction`
    num_positions: int  # tokens flipped in each image


@torch.no_grad()
def flip_each_bit(
    tokenizer,
    indices: torch.Tensor,
    bit_ids: Sequence[int] | None = None,
    positions: torch.Tensor | Sequence[int] | None = None,
    embed: Embed | None = None,
    batch_size: int = 16,
) -> Flips:
    """For each bit i in `bit_ids` (default: all K), flip bit i of every token (or of the tokens at `positions`,
    flat row-major ids or an (h, w) bool mask), decode, and measure the change against the reconstruction."""
    indices = indices.cpu()
    bit_ids = list(range(tokenizer.num_bits)) if bit_ids is None else [int(b) for b in bit_ids]
    variants = torch.cat([bits.flip_bits(indices[None], b, tokenizer.num_bits, positions) for b in bit_ids])
    images = decode_images(tokenizer, torch.cat([indices[None], variants]), batch_size).cpu()
    reconstruction, flipped = images[0], images[1:]
    if positions is None:
        count = indices.numel()
    elif isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        count = int(positions.sum())
    else:
        count = len(set(int(p) for p in positions))
    return Flips(indices, reconstruction, bit_ids, flipped, distances(flipped, reconstruction, embed), count)


def bit_planes(indices: torch.Tensor, num_bits: int) -> torch.Tensor:
    """(h, w) indices → (K, h, w) bool: plane k is bit k of every token (True = set, i.e. +1)."""
    return bits.indices_to_bits(indices, num_bits).permute(2, 0, 1) > 0


# ---------------------------------------------------------------------------------------------------- walks


class Walk(NamedTuple):
    """A random walk away from an image's tokens: step s has s·r bits flipped, none flipped twice."""

    indices: torch.Tensor  # (steps + 1, h, w): the start, then after r, 2r, … flipped bits
    images: torch.Tensor  # (steps + 1, 3, H, W) decoded
    hamming: list[int]  # bits flipped at each step: 0, r, 2r, …
    distances: Distances  # of each image to the first (the reconstruction: PSNR inf)


@torch.no_grad()
def hamming_walk(
    tokenizer, indices: torch.Tensor, bits_per_step: int, num_steps: int, seed: int, embed: Embed | None = None
) -> Walk:
    """Flip `bits_per_step` more random bits of the token grid (h, w) at each of `num_steps` steps, and decode."""
    k = tokenizer.num_bits
    total = indices.numel() * k
    if not 1 <= bits_per_step * num_steps <= total:
        raise ValueError(
            f"bits per step × steps must be between 1 and the image's {total} bits; got {bits_per_step} × {num_steps}"
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    weights = torch.ones((), dtype=torch.long) << torch.arange(k)
    start = indices.cpu().long()
    walked = [start]
    for step in range(1, num_steps + 1):
        chosen = torch.zeros(total, dtype=torch.long)
        chosen[order[: step * bits_per_step]] = 1
        walked.append(start ^ (chosen.view(-1, k) * weights).sum(1).view_as(start))
    grids = torch.stack(walked)
    images = decode_images(tokenizer, grids).cpu()
    hamming = [step * bits_per_step for step in range(num_steps + 1)]
    return Walk(grids, images, hamming, distances(images, images[0], embed))


# ---------------------------------------------------------------------------------------------------- statistics


class TokenStatistics(NamedTuple):
    images: int
    num_bits: int
    bit_usage: np.ndarray  # (K,) fraction of tokens with bit k set
    bit_entropy: np.ndarray  # (K,) binary entropy of bit k, in bits (1 = a fair coin)
    code_counts: np.ndarray  # counts of the used codes, descending
    codes_used: int
    code_entropy: float  # of the empirical code distribution, in bits (at most K)

    @property
    def code_usage(self) -> float:
        """Fraction of the 2^K codes used at least once."""
        return self.codes_used / 2**self.num_bits

    @property
    def perplexity(self) -> float:
        """2^entropy: the number of equally likely codes with the same entropy."""
        return math.pow(2, self.code_entropy)


def token_statistics(indices: np.ndarray | torch.Tensor, num_bits: int) -> TokenStatistics:
    """Usage and entropy of every bit and every code over token grids (n, h, w).

    Memory is O(tokens), whatever K: codes are counted among the used ones (no 2^K table, which at BitDance's 32 bits
    would be 2^32 entries) and bits one at a time (no (tokens, K) float table)."""
    indices = torch.as_tensor(np.asarray(indices)).long()
    flat = indices.reshape(-1)
    bits.check_indices(flat, num_bits)
    usage = np.array([float(((flat >> k) & 1).double().mean()) for k in range(num_bits)])
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(usage * np.log2(usage)) - np.nan_to_num((1 - usage) * np.log2(1 - usage))
    counts = flat.unique(return_counts=True)[1].numpy()
    p = counts / counts.sum()
    code_entropy = float(-(p * np.log2(p)).sum())
    return TokenStatistics(len(indices), num_bits, usage, entropy, np.sort(counts)[::-1], len(counts), code_entropy)


# ---------------------------------------------------------------------------------------------------- the code atlas


def gray_code(n: torch.Tensor) -> torch.Tensor:
    """The n-th reflected binary Gray code: consecutive values differ in exactly one bit."""
    return n ^ (n >> 1)


MAX_DRAWN_BITS = 12  # 2^12 codes fill a 64×64 sheet; above that the atlas samples codes (`code_atlas`)


class Atlas(NamedTuple):
    """What the codes of a tokenizer look like, laid out so that codes one bit apart sit side by side.

    Two layouts (`layout`): "gray", every code of the low 2·half bits in a Gray-code sheet (row r = high half gray(r),
    column c = low half gray(c)); "neighbours", where 2^K codes are too many to draw: row r is a sampled code (column
    0) and its K Hamming-1 neighbours (column k + 1: bit k flipped)."""

    image: torch.Tensor  # (3, rows·S, cols·S) in [0, 1]: one S×S cell per code
    codes: torch.Tensor  # (rows, cols) the code shown in each cell
    cell: int  # S, pixels per cell side
    base: int  # "gray": the bits above the atlas's 2·half bits, fixed for every cell (0 unless asked); else 0
    layout: str = "gray"  # "gray" or "neighbours"

    def describe(self, num_bits: int) -> str:
        """One line saying what the rows and columns are, for a caption."""
        rows, cols = self.codes.shape
        if self.layout == "neighbours":
            return (
                f"{rows} sampled codes of 2^{num_bits} (too many to draw), one per row: the code, then bit 0 … "
                f"{num_bits - 1} flipped (its {num_bits} Hamming-1 neighbours)"
            )
        low = 2 * (rows.bit_length() - 1)
        fixed = "" if low == num_bits else f"; bits {low}–{num_bits - 1} fixed to those of {self.base}"
        return f"{rows}×{cols} codes: row r = high half gray(r), column c = low half gray(c){fixed}"


def sample_codes(num_bits: int, count: int, seed: int, used: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """(≤ count,) distinct int64 codes: of `used` (token grids of any shape), drawn by token, so that a code comes up
    as often as it is used; without `used`, uniform in [0, 2^K). The same seed gives the same codes."""
    rng = torch.Generator().manual_seed(seed)
    if used is None:
        return torch.randint(0, 2**num_bits, (count,), generator=rng).unique()[:count]
    flat = torch.as_tensor(np.asarray(used)).long().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("no used codes given to sample from")
    bits.check_indices(flat, num_bits)
    drawn = flat[torch.randperm(len(flat), generator=rng)].numpy()
    _, first = np.unique(drawn, return_index=True)  # each code's first place in the random order
    return torch.from_numpy(drawn[np.sort(first)[:count]])


@torch.no_grad()
def _cells(tokenizer, codes: torch.Tensor, grid: int, crop: int, batch_size: int) -> torch.Tensor:
    """(n,) codes → (n, 3, S, S): each code decoded as a uniform grid×grid token grid, its central crop×crop tokens."""
    f = tokenizer.downsample_factor
    start, size = (grid - crop) // 2 * f, crop * f
    cells = []
    for chunk in codes.flatten().split(batch_size):
        uniform = chunk[:, None, None].expand(-1, grid, grid)
        images = decode_images(tokenizer, uniform, batch_size).cpu()
        cells.append(images[:, :, start : start + size, start : start + size])
    return torch.cat(cells)


@torch.no_grad()
def code_atlas(
    tokenizer,
    half_bits: int | None = None,
    base: int = 0,
    grid: int = 6,
    crop: int = 2,
    batch_size: int = 256,
    layout: str = "auto",
    used: np.ndarray | torch.Tensor | None = None,
    samples: int = 8,
    seed: int = 0,
) -> Atlas:
    """Decode codes as a uniform grid×grid token grid and keep the central crop×crop tokens of the image.

    A uniform grid, not one token among others, because that is defined the same way for any tokenizer (a lookup-free
    code has no "neutral" neighbour to sit among), and the centre crop, because a convolutional decoder's border
    (zero padding) changes what the code looks like there.

    `layout` "gray" draws every code of the low 2·half_bits bits: cells are indexed by the two halves of the code,
    each in Gray-code order (row r holds high half gray(r), column c low half gray(c)), so a step to a neighbouring
    cell flips exactly one bit. `half_bits` defaults to K/2, at most 6; bits above those are fixed to those of `base`.
    `layout` "neighbours" samples `samples` codes instead: codes of `used` (token grids, e.g. an index's tokens; drawn
    by token with `seed`), or uniform random codes without it, each followed on its row by its K Hamming-1 neighbours.
    "auto" is "gray" up to K = 12 bits (all 2^K codes on one sheet) or when `half_bits` is given, else "neighbours":
    2^18 codes (Open-MAGVIT2) or 2^32 (BitDance) are too many to draw.
    """
    k = tokenizer.num_bits
    if layout not in ("auto", "gray", "neighbours"):
        raise ValueError(f"layout must be 'auto', 'gray' or 'neighbours', got {layout!r}")
    if not 1 <= crop <= grid:
        raise ValueError(f"crop must be between 1 and grid = {grid}, got {crop}")
    if layout == "auto":
        layout = "gray" if k <= MAX_DRAWN_BITS or half_bits is not None else "neighbours"
    if layout == "neighbours":
        if not 1 <= samples <= 1024:
            raise ValueError(f"samples must be between 1 and 1024, got {samples}")
        sampled = sample_codes(k, samples, seed, used)
        codes = torch.cat([sampled[:, None], sampled[:, None] ^ (1 << torch.arange(k))], 1)  # (rows, K + 1)
        cells = _cells(tokenizer, codes, grid, crop, batch_size)
        size = cells.shape[-1]
        sheet = cells.view(*codes.shape, 3, size, size).permute(2, 0, 3, 1, 4)
        return Atlas(sheet.reshape(3, codes.shape[0] * size, codes.shape[1] * size), codes, size, 0, "neighbours")
    half_bits = min(6, k // 2) if half_bits is None else half_bits
    if not 1 <= half_bits <= k // 2:
        raise ValueError(f"half_bits must be in [1, {k // 2}] for {k}-bit tokens, got {half_bits}")
    if not 0 <= base < 2**k:
        raise ValueError(f"base must be a {k}-bit code, got {base}")
    side = 2**half_bits
    order = gray_code(torch.arange(side))
    high = base >> (2 * half_bits) << (2 * half_bits)
    codes = high | order[:, None] << half_bits | order[None, :]  # (side, side)
    cells = _cells(tokenizer, codes, grid, crop, batch_size)
    size = cells.shape[-1]
    sheet = cells.view(side, side, 3, size, size).permute(2, 0, 3, 1, 4).reshape(3, side * size, side * size)
    return Atlas(sheet, codes, size, high)
