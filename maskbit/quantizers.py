"""The tokenizer's two quantisers: lookup-free (bit tokens) and vector quantisation (a learned codebook).

Lookup-free (Yu et al., MAGVIT-v2; MaskBit Sec. 3.2, spec §1.5): each of the K latent channels becomes one bit by
its sign, so the index's bits *are* the latent. Vector quantisation (van den Oord et al., VQ-VAE; the official
`SimpleVectorizer`, spec §1.10): the latent at each position becomes the nearest of N learned codes, so the index
only names a codebook row and its bits carry no meaning of their own; IBQ (Shi et al., "Taming Scalable Visual
Tokenizer for Autoregressive Image Generation", 2024, `IndexPropagationQuantize`) takes the code of largest dot
product instead and passes gradients to every code through a softmax over them. All give a straight-through output,
the indices and the same loss terms (commitment, VQ's codebook term, and the shared entropy term).

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
    """Sign quantisation of each latent channel; bit k of the index is channel k (z = 0 gives −1). Open-MAGVIT2's
    and BitDance's quantisers compute the same bits and indices."""

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        # Deterministic tables, kept as persistent buffers because MaskBit's official state dicts contain them;
        # Open-MAGVIT2's do not (non-persistent there), and BitDance's 2^32 rows would not fit: computed when needed.
        self.stores_tables = config.model_class in ("vqgan+", "maskgit")
        if self.stores_tables:
            k = config.token_size
            self.register_buffer("bits_to_indices", (2 ** torch.arange(k)).to(torch.int32))
            self.register_buffer("codebook", all_codes(k, torch.device("cpu")))

    def codes(self, device: torch.device) -> torch.Tensor:
        """(2^K, K) float32 ±1: row n holds the bits of n."""
        return self.codebook if self.stores_tables else all_codes(self.num_bits, device)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z = z.permute(0, 2, 3, 1)  # (B, h, w, K)
        q = torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        indices = bitops.bits_to_indices(q)
        commitment = self.commitment_cost * torch.mean((q.detach() - z) ** 2)
        zero = z.new_zeros(())
        per_sample_entropy = avg_entropy = entropy = zero
        if self.uses_entropy:
            affinity = 2 * z.reshape(-1, self.num_bits) @ self.codes(z.device).to(z.dtype).T  # (B·h·w, 2^K)
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
    """Quantisation with a learned codebook (`quantize.embedding.weight`, N × C), by `code_assignment`:

    * "nearest": the code nearest in L2, the distance computed as Σz² + Σe² − 2 z·e as the official code does
      (the first index wins an exact tie, as with argmin); the straight-through output passes gradients to z unchanged.
    * "dot_product" (IBQ): the code of largest z·e, the argmax of the index-propagation softmax(z·E) (on the tiny
      fixture 93 of 128 tokens differ from the nearest code). The output is (hard − sg(soft) + soft) @ E, the code
      itself in value, with gradients to z and to every code through the softmax.

    Scores are always computed in float32: under bf16 autocast the chosen code would otherwise depend on rounding.
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__(config)
        self.use_l2_normalisation = config.use_l2_normalisation
        self.code_assignment = config.code_assignment
        self.embedding = nn.Embedding(config.codebook_size, config.token_size)
        # VQGAN's init, U(±1/N). IBQ keeps nn.Embedding's N(0, 1), as the official IndexPropagationQuantize: codes as
        # small as VQGAN's give z·e ≈ 0, a uniform softmax and an entropy term without gradient (the default_ibq
        # preset used 7 of its 4,096 codes per batch after 80 steps with them).
        if config.code_assignment == "nearest":
            nn.init.uniform_(self.embedding.weight, -1.0 / config.codebook_size, 1.0 / config.codebook_size)

    def codes(self) -> torch.Tensor:
        """(N, C) float32: the codebook as the quantiser compares against it (l2-normalised if configured)."""
        codes = self.embedding.weight.float()
        return F.normalize(codes, dim=-1) if self.use_l2_normalisation else codes

    def _scores(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) → the compared latent (B·h·w, C) float32 and its score for every code (B·h·w, N), higher is
        closer: −(squared distance) for "nearest", z·e for "dot_product". These are also the entropy term's logits."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (B·h·w, C)
        if self.use_l2_normalisation:
            flat = F.normalize(flat, dim=-1)
        codes = self.codes()
        with torch.autocast(flat.device.type, enabled=False):
            if self.code_assignment == "dot_product":
                return flat, flat @ codes.T
            return flat, -(flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * flat @ codes.T)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, c, h, w = z.shape
        flat, scores = self._scores(z)
        indices = scores.argmax(1)
        codes = self.codes()
        quantized = codes[indices]  # (B·h·w, C)
        commitment = self.commitment_cost * torch.mean((quantized.detach() - flat) ** 2)
        codebook = torch.mean((quantized - flat.detach()) ** 2)
        if self.code_assignment == "dot_product":
            # IBQ's quant_loss, (2 + β)·mse in value: mse(z_q, z) through the soft one-hot, mse(sg(e), z),
            # β·mse(e, sg(z)).
            soft = scores.softmax(1)
            one_hot = F.one_hot(indices, codes.shape[0]).to(soft)
            propagated = (one_hot - soft.detach() + soft) @ codes
            commitment = torch.mean((quantized.detach() - flat) ** 2)
            codebook = self.commitment_cost * codebook + torch.mean((propagated - flat) ** 2)
            quantized = propagated
        else:
            quantized = flat + (quantized - flat).detach()
        zero = flat.new_zeros(())
        per_sample_entropy = avg_entropy = entropy = zero
        if self.uses_entropy:
            entropy, per_sample_entropy, avg_entropy = self.entropy(scores)
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
        """(B, C, h, w) → (B, h, w) int64: the chosen code at each position."""
        return self._scores(z)[1].argmax(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices → (B, C, h, w) float32 codes."""
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.embedding.num_embeddings):
            raise ValueError(
                f"indices must be in [0, {self.embedding.num_embeddings}) (the codebook size), "
                f"got values in [{int(indices.min())}, {int(indices.max())}]"
            )
        return self.codes()[indices.long()].permute(0, 3, 1, 2)


def all_codes(num_bits: int, device: torch.device) -> torch.Tensor:
    """(2^K, K) float32 ±1: row n holds the bits of n, LSB first."""
    return (torch.arange(2**num_bits, device=device)[:, None] >> torch.arange(num_bits, device=device) & 1) * 2.0 - 1


def build_quantizer(config: TokenizerConfig) -> LookupFreeQuantizer | VectorQuantizer:
    return LookupFreeQuantizer(config) if config.quantizer == "lfq" else VectorQuantizer(config)
