"""MaskBit Stage-II generator: a masked bidirectional transformer over bit tokens, with no embedding tables.

Weber et al., "MaskBit", TMLR 2024, Sec. 3.3; numerics and state-dict layout of the official
`modeling/bert.py::LFQBert` (spec §2): the bits of known groups enter as ±1 (masked groups as zeros) through one
linear projection; a class token (null class = num_classes) is appended after the image tokens; post-norm BERT
blocks with LayerNorm eps 1e-12; the output predicts every group of K/m bits as one 2^(K/m)-way categorical.

    tokens (B, N, m) in [0, 2^(K/m)], 2^(K/m) = masked → bits (B, N, K) → transformer → logits (B, N, m, 2^(K/m))

Axes: B batch, N = h·w token positions (row-major), m groups, K bits per token, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maskbit.checkpoint import PretrainedMixin
from maskbit.config import GeneratorConfig
from maskbit.presets import GENERATOR_PRESETS

__all__ = ["Generator"]

LAYER_NORM_EPS = 1e-12


class MultiheadSelfAttention(nn.Module):
    """Self-attention with the parameter names of torch.nn.MultiheadAttention (fused q, k, v in_proj)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # PyTorch's default for this raw Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, heads, n, d_h)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class AttentionBlock(nn.Module):
    """x = LN(x + Dropout(MHA(x))), post-norm."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.mha = MultiheadSelfAttention(dim, heads, dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.mha(x)))


class FeedForwardBlock(nn.Module):
    """x = LN(x + Dropout(W₂ GELU(W₁ x))), post-norm, exact GELU."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([AttentionBlock(dim, heads, dropout), FeedForwardBlock(dim, mlp_dim, dropout)])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, feed_forward in self.layers:
            x = feed_forward(attention(x))
        return x


class Generator(PretrainedMixin, nn.Module):
    """Class-conditional bit-token transformer: group tokens + labels → per-group logits."""

    config_class = GeneratorConfig
    presets = GENERATOR_PRESETS
    kind = "generator"

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        c = config
        self.pos_emb = nn.Parameter(torch.zeros(1, c.num_positions + 1, c.hidden_dim))
        self.register_buffer("bits_to_indices", (2 ** torch.arange(c.bits_per_group)).to(torch.int32))
        self.class_emb = nn.Embedding(c.num_classes + 1, c.hidden_dim)  # + the null class
        self.input_proj = nn.Linear(c.token_size, c.hidden_dim)
        self.first_layer = nn.Sequential(nn.LayerNorm(c.hidden_dim, eps=LAYER_NORM_EPS), nn.Dropout(c.dropout))
        self.transformer = Transformer(c.hidden_dim, c.depth, c.heads, c.mlp_dim, c.dropout)
        self.last_layer = nn.Sequential(
            nn.Linear(c.hidden_dim, c.hidden_dim), nn.GELU(), nn.LayerNorm(c.hidden_dim, eps=LAYER_NORM_EPS)
        )
        self.prediction_layer = nn.Linear(c.hidden_dim, c.num_groups * c.group_vocab_size)
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    @classmethod
    def inferred_config_fields(cls, state_dict) -> dict[str, int]:
        fields = {}
        if "input_proj.weight" in state_dict:
            fields["hidden_dim"], fields["token_size"] = state_dict["input_proj.weight"].shape
        if "pos_emb" in state_dict:
            fields["grid_size"] = math.isqrt(state_dict["pos_emb"].shape[1] - 1)
        if "class_emb.weight" in state_dict:
            fields["num_classes"] = state_dict["class_emb.weight"].shape[0] - 1
        layers = {k.split(".")[2] for k in state_dict if k.startswith("transformer.layers.")}
        if layers:
            fields["depth"] = len(layers)
        if "transformer.layers.0.1.net.0.weight" in state_dict:
            fields["mlp_dim"] = state_dict["transformer.layers.0.1.net.0.weight"].shape[0]
        return fields

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """The official initialisation (only matters when training from scratch)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def token_bits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, m) group tokens → (B, N, K) network input: ±1 bits per known group, zeros for masked groups."""
        masked = tokens == self.config.mask_token
        bits = (tokens[..., None] & self.bits_to_indices) != 0  # (B, N, m, K/m), LSB first
        bits = torch.where(masked[..., None], 0.0, bits.float() * 2 - 1)
        return bits.flatten(2).to(self.input_proj.weight.dtype)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, drop_labels: torch.Tensor) -> torch.Tensor:
        """Logits (B, N, m, 2^(K/m)) for group tokens (B, N, m) int64 and labels (B,) int64.

        drop_labels (B,) bool replaces those samples' labels by the null class (classifier-free guidance).
        The arguments are never modified.
        """
        self._check_inputs(tokens, labels, drop_labels)
        c = self.config
        b, n, _ = tokens.shape
        x = self.input_proj(self.token_bits(tokens))  # (B, N, D)
        labels = torch.where(drop_labels, c.null_class, labels)
        x = torch.cat([x, self.class_emb(labels)[:, None]], dim=1) + self.pos_emb  # class token last: (B, N+1, D)
        x = self.last_layer(self.transformer(self.first_layer(x)))
        logits = self.prediction_layer(x[:, :n])  # (B, N, m · 2^(K/m)), group-major
        return logits.view(b, n, c.num_groups, c.group_vocab_size)

    def _check_inputs(self, tokens: torch.Tensor, labels: torch.Tensor, drop_labels: torch.Tensor) -> None:
        c = self.config
        expected = (c.num_positions, c.num_groups)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != expected:
            raise ValueError(f"tokens must have shape (B, {expected[0]}, {expected[1]}), got {tuple(tokens.shape)}")
        if tokens.dtype != torch.int64:
            raise TypeError(f"tokens must be int64, got {tokens.dtype}")
        if labels.shape != tokens.shape[:1] or drop_labels.shape != tokens.shape[:1]:
            raise ValueError(
                f"labels and drop_labels must have shape ({tokens.shape[0]},), "
                f"got {tuple(labels.shape)} and {tuple(drop_labels.shape)}"
            )
        if drop_labels.dtype != torch.bool:
            raise TypeError(f"drop_labels must be a bool tensor, got {drop_labels.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() > c.mask_token):
            raise ValueError(f"group tokens must be in [0, {c.mask_token}] ({c.mask_token} = masked)")
        if labels.numel() and (labels.min() < 0 or labels.max() > c.num_classes):
            raise ValueError(f"labels must be class ids in [0, {c.num_classes}] ({c.num_classes} = null class)")
