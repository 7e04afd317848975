"""The tokenizer's two quantisers: lookup-free (bit tokens) and vector quantisation (a learned codebook).

Lookup-free (Yu et al., MAGVIT-v2; MaskBit Sec. 3.2, spec §1.5): each of the K latent channels becomes one bit by
its sign, so the index's bits *are* the latent. Vector quantisation (van den Oord et al., VQ-VAE; the official
`SimpleVectorizer`, spec §1.10): the latent at each position becomes the nearest of N learned codes, so the index
only names a codebook row and its bits carry no meaning of their own. Both give a straight-through output, the
indices and the same loss terms (commitment, VQ's codebook term, and the shared entropy term).

Axes: B batch, C latent channels (LFQ: K bits; VQ: the code dimension), h × w token grid, N codes (LFQ: 2^K).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maskbit import bits as bitops
from maskbit.config import TokenizerConfig

__all__ = ["QuantizerOutput", "LookupFreeQuantizer", "VectorQuantizer", "code_entropies", "build_quantizer"]


class QuantizerOutput(NamedTuple):
    quantized: torch.Tensor  # (B, C, h, w) straight-through: LFQ ±1 bits, VQ the nearest codes; gradients reach z
    indices: torch.Tensor  # (B, h, w) int64
    commitment_loss: torch.Tensor  # β · mean((quantized − z)²), gradient to the encoder only
    codebook_loss: torch.Tensor  # VQ: mean((quantized − z)²), gradient to the codebook only; LFQ: 0
    entropy_loss: torch.Tensor  # w · (per_sample_entropy − avg_entropy); 0 outside training or with w = 0
    per_sample_entropy: torch.Tensor
    avg_entropy: torch.Tensor
    quantizer_loss: torch.Tensor  # commitment_loss + codebook_loss + entropy_loss


def code_entropies(logits: torch.Tensor, temperature: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, N) code logits → mean per-position entropy of softmax(logits/τ), and γ × the entropy of the mean
    distribution (natural log, log(clamp(p, 1e-5)) as the official `entropy_loss_fn`). Minimising their difference
    makes each position confident and the codes used evenly."""
    probs = (logits / temperature).softmax(dim=-1)
    per_sample = -(probs * probs.clamp(min=1e-5).log()).sum(-1).mean()
    mean_probs = probs.mean(0)
    avg = gamma * -(mean_probs * mean_probs.clamp(min=1e-5).log()).sum()
    return per_sample, avg


class Quantizer(nn.Module):
    """What both quantisers share: the commitment cost and the entropy term's settings (spec §1.5, §1.10)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.num_bits = config.num_bits
        self.commitment_cost = config.commitment_cost
        self.entropy_loss_weight = config.entropy_loss_weight
        self.entropy_loss_temperature = config.entropy_loss_temperature
        self.entropy_gamma = config.entropy_gamma

    @property
    def uses_entropy(self) -> bool:
        """The entropy term is computed in training only, and only when it has a weight."""
        return self.training and self.entropy_loss_weight != 0

    def entropy(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weighted entropy loss, per-sample entropy, γ·entropy of the mean) from logits over the codes."""
        per_sample, avg = code_entropies(logits, self.entropy_loss_temperature, self.entropy_gamma)
        return self.entropy_loss_weight * (per_sample - avg), per_sample, avg


class LookupFreeQuantizer(Quantizer):
    """Sign quantisation of each latent channel; bit k of the index is channel k (z = 0 gives −1)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        # Deterministic tables, kept as persistent buffers because the official state dicts contain them.
        k = config.token_size
        self.register_buffer("bits_to_indices", (2 ** torch.arange(k)).to(torch.int32))
        codes = torch.arange(2**k)[:, None] >> torch.arange(k) & 1  # row n = bits of n, LSB first
        self.register_buffer("codebook", codes.float() * 2 - 1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z = z.permute(0, 2, 3, 1)  # (B, h, w, K)
        q = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        indices = bitops.bits_to_indices(q)
        commitment = self.commitment_cost * torch.mean((q.detach() - z) ** 2)
        zero = z.new_zeros(())
        per_sample_entropy = avg_entropy = entropy = zero
        if self.uses_entropy:
            affinity = 2 * z.reshape(-1, self.num_bits) @ self.codebook.T  # (B·h·w, 2^K)
            entropy, per_sample_entropy, avg_entropy = self.entropy(affinity)
        q = z + (q - z).detach()
        return QuantizerOutput(
            q.permute(0, 3, 1, 2),
            indices,
            commitment,
            zero,
            entropy,
            per_sample_entropy,
            avg_entropy,
            commitment + entropy,
        )

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) → (B, h, w) int64."""
        return bitops.bits_to_indices(z.permute(0, 2, 3, 1))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices → (B, K, h, w) ±1 float32 bits."""
        return bitops.indices_to_bits(indices, self.num_bits).permute(0, 3, 1, 2)


class VectorQuantizer(Quantizer):
    """Nearest-code quantisation with a learned codebook (`quantize.embedding.weight`, N × C).

    The distance is computed as Σz² + Σe² − 2 z·e, as the official code does (argmin takes the first index on exact
    ties), always in float32: under bf16 autocast the nearest code would otherwise depend on rounding.
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        self.use_l2_normalisation = config.use_l2_normalisation
        self.embedding = nn.Embedding(config.codebook_size, config.token_size)
        nn.init.uniform_(self.embedding.weight, -1.0 / config.codebook_size, 1.0 / config.codebook_size)

    def codes(self) -> torch.Tensor:
        """(N, C) float32: the codebook as the quantiser compares against it (l2-normalised if configured)."""
        codes = self.embedding.weight.float()
        return F.normalize(codes, dim=-1) if self.use_l2_normalisation else codes

    def _distances(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) → the compared latent (B·h·w, C) float32 and its squared distances to every code (B·h·w, N)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (B·h·w, C)
        if self.use_l2_normalisation:
            flat = F.normalize(flat, dim=-1)
        codes = self.codes()
        with torch.autocast(flat.device.type, enabled=False):
            distances = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.T
        return flat, distances

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, c, h, w = z.shape
        flat, distances = self._distances(z)
        indices = distances.argmin(1)
        quantized = self.codes()[indices]  # (B·h·w, C)
        commitment = self.commitment_cost * torch.mean((quantized.detach() - flat) ** 2)
        codebook = torch.mean((quantized - flat.detach()) ** 2)
        zero = flat.new_zeros(())
        per_sample_entropy = avg_entropy = entropy = zero
        if self.uses_entropy:
            entropy, per_sample_entropy, avg_entropy = self.entropy(-distances)
        quantized = flat + (quantized - flat).detach()
        return QuantizerOutput(
            quantized.view(b, h, w, c).permute(0, 3, 1, 2),
            indices.view(b, h, w),
            commitment,
            codebook,
            entropy,
            per_sample_entropy,
            avg_entropy,
            commitment + codebook + entropy,
        )

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, h, w) int64: the nearest code at each position."""
        return self._distances(z)[1].argmin(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices → (B, C, h, w) float32 codes."""
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.embedding.num_embeddings):
            raise ValueError(
                f"indices must be in [0, {self.embedding.num_embeddings}) (the codebook size), "
                f"got values in [{int(indices.min())}, {int(indices.max())}]"
            )
        return self.codes()[indices.long()].permute(0, 3, 1, 2)


def build_quantizer(config: TokenizerConfig) -> LookupFreeQuantizer | VectorQuantizer:
    return LookupFreeQuantizer(config) if config.quantizer == "lfq" else VectorQuantizer(config)
