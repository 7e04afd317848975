"""Bit tokens: conversions between indices, ±1 bits, bit groups and packed bytes.

MaskBit's lookup-free quantiser turns each of the K latent channels into one bit; channel k is bit k of the
token index, least significant first (spec §1.5). The generator splits every index into m groups of K/m bits,
group 0 holding the low bits (spec §2.1). Everything here is a pure function: tensors in, tensors out, on the
input's device, arguments never modified.

Axes: B batch, N token positions (row-major over the h×w grid), K bits per token, m groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_indices",
    "indices_to_bits",
    "bits_to_indices",
    "split_groups",
    "combine_groups",
    "flip_bits",
    "hamming",
    "pack_bits",
]

MAX_BITS = 62  # indices are int64; leave the sign bit alone


def _check_num_bits(num_bits: int) -> None:
    if not 1 <= num_bits <= MAX_BITS:
        raise ValueError(f"num_bits must be in [1, {MAX_BITS}], got {num_bits}")


def check_indices(indices: torch.Tensor, num_bits: int) -> None:
    """Raise unless `indices` is an integer tensor of values in [0, 2^K) (K = `num_bits`, at most MAX_BITS)."""
    _check_num_bits(num_bits)
    if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= 2**num_bits):
        raise ValueError(
            f"indices must be in [0, 2^{num_bits}) = [0, {2**num_bits}), "
            f"got values in [{int(indices.min())}, {int(indices.max())}]"
        )


def _bit_weights(num_bits: int, device: torch.device) -> torch.Tensor:
    return torch.ones((), dtype=torch.int64, device=device) << torch.arange(num_bits, device=device)


def indices_to_bits(indices: torch.Tensor, num_bits: int) -> torch.Tensor:
    """(...) int indices in [0, 2^K) → (..., K) float32 bits in {−1, +1}, bit k = channel k, LSB first."""
    _check_num_bits(num_bits)
    check_indices(indices, num_bits)
    set_bits = (indices.long()[..., None] & _bit_weights(num_bits, indices.device)) != 0
    return set_bits.float() * 2 - 1


def bits_to_indices(bits: torch.Tensor) -> torch.Tensor:
    """(..., K) bits → (...) int64 indices; a bit counts as set iff it is > 0 (so 0 and −1 are unset)."""
    num_bits = bits.shape[-1]
    _check_num_bits(num_bits)
    return ((bits > 0).long() * _bit_weights(num_bits, bits.device)).sum(-1)


def split_groups(indices: torch.Tensor, num_bits: int, num_groups: int) -> torch.Tensor:
    """(...) indices → (..., m) int64 groups, group g = (index >> g·K/m) & (2^(K/m) − 1)."""
    _check_num_bits(num_bits)
    if num_bits % num_groups:
        raise ValueError(f"{num_bits} bits cannot be split into {num_groups} equal groups")
    check_indices(indices, num_bits)
    bits_per_group = num_bits // num_groups
    shifts = torch.arange(num_groups, device=indices.device) * bits_per_group
    return (indices.long()[..., None] >> shifts) & (2**bits_per_group - 1)


def combine_groups(groups: torch.Tensor, num_bits: int) -> torch.Tensor:
    """(..., m) groups of K/m bits each → (...) int64 indices; inverse of `split_groups`."""
    _check_num_bits(num_bits)
    num_groups = groups.shape[-1]
    if num_bits % num_groups:
        raise ValueError(f"{num_bits} bits cannot be split into {num_groups} equal groups")
    bits_per_group = num_bits // num_groups
    check_indices(groups, bits_per_group)
    shifts = torch.arange(num_groups, device=groups.device) * bits_per_group
    return (groups.long() << shifts).sum(-1)


def flip_bits(
    indices: torch.Tensor,
    bit_ids: int | Sequence[int],
    num_bits: int,
    positions: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Flip the chosen bits of every token, or only of the tokens at `positions`.

    indices: (B, h, w) or (B, N) int64. bit_ids: bit numbers in [0, K) (0 = least significant = channel 0).
    positions: None (every token); a bool mask shaped like one sample's indices ((h, w) or (N,)) or like
    the whole batch; or a sequence of flat row-major positions in [0, N).
    Flipping the same bits twice gives the input back.
    """
    _check_num_bits(num_bits)
    check_indices(indices, num_bits)
    bit_ids = [bit_ids] if isinstance(bit_ids, int) else list(bit_ids)
    bad = [b for b in bit_ids if not 0 <= int(b) < num_bits]
    if bad:
        raise ValueError(f"bit ids must be in [0, {num_bits}), got {bad}")
    flip_mask = sum(1 << int(b) for b in set(bit_ids))
    flipped = indices.long() ^ flip_mask
    if positions is None:
        return flipped
    per_sample_shape = indices.shape[1:]
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        where = positions.to(indices.device)
        if where.shape not in (per_sample_shape, indices.shape):
            raise ValueError(
                f"a position mask must have shape {tuple(per_sample_shape)} or {tuple(indices.shape)}, "
                f"got {tuple(where.shape)}"
            )
    else:
        flat = torch.as_tensor(positions, dtype=torch.long).flatten()
        num_positions = per_sample_shape.numel()
        if flat.numel() and (flat.min() < 0 or flat.max() >= num_positions):
            raise ValueError(f"positions must be in [0, {num_positions}), got {flat.tolist()}")
        where = torch.zeros(num_positions, dtype=torch.bool, device=indices.device)
        where[flat.to(indices.device)] = True
        where = where.view(per_sample_shape)
    return torch.where(where, flipped, indices.long())


def hamming(a: torch.Tensor, b: torch.Tensor, dim: int | Sequence[int] | None = None) -> torch.Tensor:
    """Number of differing bits between integer indices a and b (broadcast), as int64.

    With dim=None the result is per element (e.g. the per-token distance map of two (h, w) grids); otherwise
    it is summed over `dim` (e.g. `hamming(x, y, dim=(-2, -1))` is the image-level Hamming distance).
    """
    x = a.long() ^ b.long()
    if x.numel() and x.min() < 0:
        raise ValueError("hamming expects non-negative indices")
    count = torch.zeros_like(x)
    while x.numel() and bool((x != 0).any()):  # at most K rounds
        count += x & 1
        x = x >> 1
    return count if dim is None else count.sum(dim)


def pack_bits(indices: torch.Tensor, num_bits: int) -> torch.Tensor:
    """(B, ...) indices → (B, ceil(T·K / 8)) uint8, T = tokens per sample, for FAISS binary indexes.

    The bits of all tokens are laid out token by token (row-major), bit k of each token at offset k,
    little-endian within each byte (as `numpy.packbits(..., bitorder="little")`), zero-padded to whole bytes.
    The Hamming distance between two packed rows equals the sum of the per-token Hamming distances.
    """
    bits = indices_to_bits(indices, num_bits).flatten(1) > 0  # (B, T·K)
    pad = -bits.shape[1] % 8
    bits = torch.nn.functional.pad(bits, (0, pad)).view(bits.shape[0], -1, 8).to(torch.uint8)
    weights = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8, device=bits.device)
    return (bits * weights).sum(-1, dtype=torch.uint8)
