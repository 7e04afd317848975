"""The Open-MAGVIT2 encoder and decoder (Luo et al., "Open-MAGVIT2: An Open-Source Project Toward Democratizing
Auto-regressive Visual Generation", arXiv 2409.04410, 2024; after MAGVIT-v2, Yu et al., "Language Model Beats
Diffusion: Tokenizer is Key to Visual Generation", ICLR 2024), which the BitDance ImageNet autoencoder (Ai et al.,
"BitDance: Scaling Autoregressive Generative Models with Binary Tokens", arXiv 2602.14041, 2026) reuses unchanged.
Both code a token as MaskBit does, one bit per latent channel; the tokenizer owns the lookup-free quantiser.

State-dict layout and numerics of the official `src/Open_MAGVIT2/modules/diffusionmodules/improved_model.py`
(TencentARC/Open-MAGVIT2 @ 3c58097; BitDance's `imagenet_gen/src/qae.py` is the same file), including its quirks:
convolutions of the residual blocks and the encoder's `conv_in` without bias; a 1×1 `nin_shortcut` projecting the
block input when the width changes; downsampling by a 3×3 stride-2 conv with symmetric padding 1; no attention; an
adaptive GroupNorm at the start of every decoder level whose scale and shift are linear in the per-channel standard
deviation (torch's unbiased estimator) and mean of the whole quantised latent; upsampling by a 3×3 conv to 4× the
width and depth-to-space in DCR order (not `pixel_shuffle`'s CRD order). These modules work in [−1, 1]; the
tokenizer maps images to and from [0, 1] around them.

    x ∈ [−1, 1] (B, 3, H, W) → Encoder → z (B, K, h, w) → sign → ±1 (B, K, h, w) → Decoder → (B, 3, H, W) ∈ ~[−1, 1]

Axes: B batch, C channels, K latent channels (bits per token), h × w token grid = H/f × W/f,
f = 2^(len(channel_mult) − 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskbit.config import TokenizerConfig

__all__ = ["Encoder", "Decoder", "depth_to_space"]


def group_norm(channels: int, groups: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=affine)


def depth_to_space(x: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) → (B, C, 2h, 2w) in DCR order: out[c, 2h + i, 2w + j] = in[(2i + j)·C + c, h, w].

    The official Upsampler's order; `torch.pixel_shuffle` reads in[4c + 2i + j] instead, which the trained
    `upsample.conv1` weights do not expect."""
    b, c4, h, w = x.shape
    x = x.view(b, 2, 2, c4 // 4, h, w)  # (B, i, j, C, h, w)
    return x.permute(0, 3, 4, 1, 5, 2).reshape(b, c4 // 4, 2 * h, 2 * w)  # (B, C, h, i, w, j)


class ResBlock(nn.Module):
    """GN → swish → conv → GN → swish → conv, plus the input (1×1-projected when the width changes); no biases."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine parameters, then a per-sample scale and shift predicted from the quantised latent:
    gamma(sqrt(var(z) + eps)) and beta(mean(z)), statistics per channel over all h·w tokens. `var` is torch's
    unbiased estimator (the official comment says "not unbias"; the code is), so a 1×1 token grid gives NaN there as
    well. Every output pixel therefore depends on all tokens: flipping one token's bit changes the whole image a
    little."""

    def __init__(self, latent_channels: int, channels: int, norm_groups: int):
        super().__init__()
        self.gn = group_norm(channels, norm_groups, affine=False)
        self.gamma = nn.Linear(latent_channels, channels)
        self.beta = nn.Linear(latent_channels, channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        flat = z.flatten(2)  # (B, K, h·w)
        scale = self.gamma((flat.var(dim=-1) + 1e-6).sqrt())[..., None, None]  # (B, C, 1, 1)
        shift = self.beta(flat.mean(dim=-1))[..., None, None]
        return self.gn(x) * scale + shift


class Upsampler(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv1(x))


class Level(nn.Module):
    """One resolution: residual blocks, then an optional resampling (`downsample` conv or `upsample`)."""

    def __init__(self, channels: list[int], norm_groups: int, resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(ResBlock(i, o, norm_groups) for i, o in zip(channels, channels[1:]))
        self.resample_name = name
        if resample is not None:
            self.add_module(name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        resample = getattr(self, self.resample_name, None)
        return resample(x) if resample is not None else x


class Encoder(nn.Module):
    """[−1, 1] images (B, 3, H, W) → z (B, K, H/f, W/f)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c, g, n = config.hidden_channels, config.norm_groups, config.num_res_blocks
        mult, levels = (1, *config.channel_mult), config.num_resolutions
        self.conv_in = nn.Conv2d(config.num_channels, c, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        for i in range(levels):
            width = c * mult[i + 1]
            # Symmetric padding 1 (TensorFlow's "SAME" would pad (0, 1) for stride 2): as trained.
            downsample = nn.Conv2d(width, width, 3, stride=2, padding=1) if i < levels - 1 else None
            self.down.append(Level([c * mult[i]] + [width] * n, g, downsample, "downsample"))
        top = c * config.channel_mult[-1]
        self.mid_block = nn.ModuleList(ResBlock(top, top, g) for _ in range(n))
        self.norm_out = group_norm(top, g)
        self.conv_out = nn.Conv2d(top, config.token_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        for block in self.mid_block:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Quantised latent (B, K, h, w) → images (B, 3, h·f, w·f) in about [−1, 1]. `up.0` is the full-resolution
    level; `adaptive.i` normalises the input of level i."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c, g, n, k = config.hidden_channels, config.norm_groups, config.num_res_blocks, config.token_size
        mult, levels = config.channel_mult, config.num_resolutions
        width = c * mult[-1]
        self.conv_in = nn.Conv2d(k, width, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(width, width, g) for _ in range(n))
        # Built from the deepest level up, stored with index 0 at full resolution (the official code prepends).
        adaptive, up = [], []
        for i in reversed(range(levels)):
            adaptive.append(AdaptiveGroupNorm(k, width, g))
            channels = [width] + [c * mult[i]] * n
            up.append(Level(channels, g, Upsampler(channels[-1]) if i > 0 else None, "upsample"))
            width = channels[-1]
        self.up = nn.ModuleList(reversed(up))
        self.adaptive = nn.ModuleList(reversed(adaptive))
        self.norm_out = group_norm(width, g)
        self.conv_out = nn.Conv2d(width, config.num_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in self.mid_block:
            x = block(x)
        for adaptive, level in zip(reversed(self.adaptive), reversed(self.up)):
            x = level(adaptive(x, z))
        return self.conv_out(F.silu(self.norm_out(x)))
