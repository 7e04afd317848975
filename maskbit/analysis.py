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
    """Usage and entropy of every bit and every code over token grids (n, h, w)."""
    indices = torch.as_tensor(np.asarray(indices)).long()
    flat = indices.reshape(-1)
    usage = (bits.indices_to_bits(flat, num_bits) > 0).double().mean(0).numpy()
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


class Atlas(NamedTuple):
    """What every code of a tokenizer looks like, laid out so that codes one bit apart sit side by side."""

    image: torch.Tensor  # (3, rows·S, cols·S) in [0, 1]: one S×S cell per code
    codes: torch.Tensor  # (rows, cols) the code shown in each cell
    cell: int  # S, pixels per cell side
    base: int  # the bits above the atlas's 2·half bits, fixed for every cell (0 unless asked)


@torch.no_grad()
def code_atlas(tokenizer, half_bits: int | None = None, base: int = 0, grid: int = 6, crop: int = 2, batch_size=256):
    """Decode every code as a uniform grid×grid token grid and keep the central crop×crop tokens of the image.

    A uniform grid, not one token among others, because that is defined the same way for any tokenizer (a lookup-free
    code has no "neutral" neighbour to sit among), and the centre crop, because a convolutional decoder's border
    (zero padding) changes what the code looks like there. Cells are indexed by the two halves of the code's low
    2·half_bits bits, each in Gray-code order: row r holds high half gray(r), column c low half gray(c), so a step to
    a neighbouring cell flips exactly one bit of the code. `half_bits` defaults to K/2, at most 6 (a 64×64 sheet);
    bits above those are fixed to those of `base`.
    """
    k = tokenizer.num_bits
    half_bits = min(6, k // 2) if half_bits is None else half_bits
    if not 1 <= half_bits <= k // 2:
        raise ValueError(f"half_bits must be in [1, {k // 2}] for {k}-bit tokens, got {half_bits}")
    if not 0 <= base < 2**k:
        raise ValueError(f"base must be a {k}-bit code, got {base}")
    if not 1 <= crop <= grid:
        raise ValueError(f"crop must be between 1 and grid = {grid}, got {crop}")
    side = 2**half_bits
    order = gray_code(torch.arange(side))
    high = base >> (2 * half_bits) << (2 * half_bits)
    codes = high | order[:, None] << half_bits | order[None, :]  # (side, side)
    f = tokenizer.downsample_factor
    start, size = (grid - crop) // 2 * f, crop * f
    cells = []
    for chunk in codes.flatten().split(batch_size):
        uniform = chunk[:, None, None].expand(-1, grid, grid)
        images = decode_images(tokenizer, uniform, batch_size).cpu()
        cells.append(images[:, :, start : start + size, start : start + size])
    cells = torch.cat(cells).view(side, side, 3, size, size)
    sheet = cells.permute(2, 0, 3, 1, 4).reshape(3, side * size, side * size)
    return Atlas(sheet, codes, size, high)
