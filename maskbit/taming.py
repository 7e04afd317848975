"""The original Taming VQGAN autoencoder (Esser et al., "Taming Transformers for High-Resolution Image Synthesis",
CVPR 2021), the baseline MaskBit's VQGAN+ improves on (MaskBit Sec. 3.1, Table 1: rFID 7.94 → 1.66).

State-dict layout and numerics of the official `modeling/taming/taming_autoencoder.py` (spec §1.10): plain
convolutions with symmetric padding and biases, GroupNorm eps 1e-6, swish, residual blocks whose 1×1 `nin_shortcut`
projects the block input when the width changes, single-head self-attention blocks at the feature-map sides listed
in `attn_resolutions`, downsampling by a stride-2 conv after zero padding (0, 1, 0, 1), upsampling by nearest ×2 then
a 3×3 conv. The decoder has num_res_blocks + 1 blocks per level. These modules work in [−1, 1]; the tokenizer maps
images to and from [0, 1] around them, and owns the 1×1 quant_conv / post_quant_conv.

    x ∈ [−1, 1] (B, 3, H, W) → Encoder → (B, z_channels, H/f, W/f) → … → Decoder → (B, 3, H, W) ∈ ~[−1, 1]

Axes: B batch, C channels, h × w feature map; f = 2^(len(ch_mult) − 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskbit.config import TokenizerConfig

__all__ = ["Encoder", "Decoder"]


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm_groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # (the official dropout, p = 0, sits before conv2)
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h·w positions, softmax(qᵀk / √C), with a residual connection."""

    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x_norm = self.norm(x)
        q, k, v = (conv(x_norm).reshape(b, 1, c, h * w).transpose(-1, -2) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, h·w, C)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric, as TensorFlow's "SAME" for stride 2


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: residual blocks, each followed by an attention block when the level has attention, then an
    optional resampling (`downsample` in the encoder, `upsample` in the decoder)."""

    def __init__(self, channels: list[int], attention: bool, norm_groups: int, resample: type | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, norm_groups) for i, o in zip(channels, channels[1:]))
        self.attn = nn.ModuleList(AttnBlock(o, norm_groups) for o in channels[1:]) if attention else nn.ModuleList()
        self.resample_name = name
        if resample is not None:
            self.add_module(name, resample(channels[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        resample = getattr(self, self.resample_name, None)
        return resample(x) if resample is not None else x


class Middle(nn.Module):
    def __init__(self, channels: int, norm_groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, norm_groups)
        self.attn_1 = AttnBlock(channels, norm_groups)
        self.block_2 = ResnetBlock(channels, channels, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """[−1, 1] images (B, 3, H, W) → (B, z_channels, H/f, W/f)."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c, g, n = config.hidden_channels, config.norm_groups, config.num_res_blocks
        mult, levels = (1, *config.channel_mult), config.num_resolutions
        self.conv_in = nn.Conv2d(config.num_channels, c, 3, padding=1)
        self.down = nn.ModuleList()
        side = config.image_size
        for i in range(levels):
            channels = [c * mult[i]] + [c * mult[i + 1]] * n
            resample = Downsample if i < levels - 1 else None
            self.down.append(Level(channels, side in config.attn_resolutions, g, resample, "downsample"))
            side //= 2
        top = c * config.channel_mult[-1]
        self.mid = Middle(top, g)
        self.norm_out = group_norm(top, g)
        self.conv_out = nn.Conv2d(top, config.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


class Decoder(nn.Module):
    """(B, z_channels, h, w) → images (B, 3, h·f, w·f) in about [−1, 1]. `up.0` is the full-resolution level."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c, g, n = config.hidden_channels, config.norm_groups, config.num_res_blocks
        mult, levels = config.channel_mult, config.num_resolutions
        top = c * mult[-1]
        self.conv_in = nn.Conv2d(config.latent_channels, top, 3, padding=1)
        self.mid = Middle(top, g)
        # Built from the deepest level up, stored with up.0 at full resolution (the official code prepends).
        built, width, side = [], top, config.image_size // config.downsample_factor
        for i in reversed(range(levels)):
            channels = [width] + [c * mult[i]] * (n + 1)
            resample = Upsample if i > 0 else None
            built.append(Level(channels, side in config.attn_resolutions, g, resample, "upsample"))
            width, side = channels[-1], side * 2
        self.up = nn.ModuleList(reversed(built))
        self.norm_out = group_norm(c * mult[0], g)
        self.conv_out = nn.Conv2d(c * mult[0], config.num_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))
