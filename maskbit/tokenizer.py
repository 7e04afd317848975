"""MaskBit's Stage-I tokenizer and the vector-quantised tokenizers of its model zoo, behind one API.

Weber et al., "MaskBit: Embedding-free Image Generation via Bit Tokens", TMLR 2024, Sec. 3.1 and 3.2; numerics and
state-dict layout of the official `modeling/conv_vqgan.py::ConvVQModel` (spec §1), including its quirks: TensorFlow
"SAME" padding (asymmetric for stride 2), the residual shortcut applied to the branch output, GroupNorm eps 1e-6, and
the LFQ quantiser's bit tables stored as buffers. The same class holds the VQ tokenizers of spec §1.10: VQGAN+ (this
autoencoder with a learned codebook), the MaskGIT tokenizer (the legacy decoder's key order) and the original Taming
VQGAN (`maskbit/taming.py`, working in [−1, 1] between 1×1 quant_conv / post_quant_conv); and the bit-token family:
Open-MAGVIT2 and BitDance (`maskbit/magvit2.py` with the lookup-free quantiser, in [−1, 1]) and IBQ (the Taming VQGAN
with the dot-product code assignment).

    image (B, 3, H, W) in [0, 1] → encoder → z (B, C, h, w) → quantiser → indices (B, h, w) → codes → decoder → image
    LFQ: C = K bits, codes = ±1 bits of the index.   VQ: C = code dimension, codes = rows of the learned codebook.

Axes: B batch, C latent channels, h × w token grid (H/f × W/f, f = 2^(len(channel_mult) − 1)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maskbit import magvit2, taming
from maskbit.checkpoint import PretrainedMixin
from maskbit.config import TokenizerConfig
from maskbit.device import fit_threads, precision_autocast
from maskbit.presets import FAMILY_HUB_FILES, OFFICIAL_VQ_HUB_FILES, TOKENIZER_PRESETS
from maskbit.quantizers import LookupFreeQuantizer, QuantizerOutput, VectorQuantizer, build_quantizer

__all__ = ["Tokenizer", "LookupFreeQuantizer", "VectorQuantizer", "QuantizerOutput", "TokenizerOutput"]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial axis; stride 2 on even sizes gives (0, 1)."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with padding computed from the input size like TensorFlow's "SAME" (keys stay weight/bias).

    Pads with `padding_mode` (nn.Conv2d's attribute; the tokenizer sets it from its config): zeros, as the official
    code, or replicate / reflect.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        zeros = self.padding_mode == "zeros"
        if (top == bottom and left == right and zeros) or top + bottom + left + right == 0:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, (left, right, top, bottom), mode="constant" if zeros else self.padding_mode)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResidualBlock(nn.Module):
    """Pre-activation residual block; for in ≠ out the official code adds nin_shortcut(h), not a projection of x."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = Conv2dSame(in_channels, out_channels, 3, bias=False)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.conv2 = Conv2dSame(out_channels, out_channels, 3, bias=False)
        if in_channels != out_channels:
            self.nin_shortcut = Conv2dSame(out_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            return h + self.nin_shortcut(h)  # as trained: the shortcut projects the branch output (spec §7.1)
        return h + x


class ResidualStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, norm_groups: int):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_blocks
        self.res_blocks = nn.ModuleList(ResidualBlock(i, o, norm_groups) for i, o in zip(channels, channels[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class DownsamplingStage(ResidualStage):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, norm_groups: int, sample_with_conv: bool):
        super().__init__(in_channels, out_channels, num_blocks, norm_groups)
        if sample_with_conv:
            self.down_conv = Conv2dSame(out_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return self.down_conv(x) if hasattr(self, "down_conv") else F.avg_pool2d(x, 2, 2)


class UpsamplingStage(ResidualStage):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, norm_groups: int):
        super().__init__(in_channels, out_channels, num_blocks, norm_groups)
        self.upsample_conv = Conv2dSame(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c, n, g, levels = config.hidden_channels, config.num_res_blocks, config.norm_groups, config.num_resolutions
        mult = (1, *config.channel_mult)
        self.conv_in = Conv2dSame(config.num_channels, c, 3, bias=False)
        self.down = nn.ModuleList()
        for i in range(levels):
            in_ch, out_ch = c * mult[i], c * mult[i + 1]
            if i < levels - 1:
                self.down.append(DownsamplingStage(in_ch, out_ch, n, g, config.sample_with_conv))
            else:
                self.down.append(ResidualStage(in_ch, out_ch, n, g))
        top = c * config.channel_mult[-1]
        self.mid = ResidualStage(top, top, n, g)
        self.norm_out = group_norm(top, g)
        self.conv_out = Conv2dSame(top, config.token_size, 1)  # the projection to K channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down:
            x = stage(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """`legacy` (the MaskGIT tokenizer's `ConvDecoderLegacy`): the same computation with `up` stored in reverse."""

    def __init__(self, config: TokenizerConfig, legacy: bool = False):
        super().__init__()
        c, n, g, levels = config.hidden_channels, config.decoder_res_blocks, config.norm_groups, config.num_resolutions
        mult = (*config.channel_mult, config.channel_mult[-1])
        top = c * config.channel_mult[-1]
        self.conv_in = Conv2dSame(config.token_size, top, 3)
        self.mid = ResidualStage(top, top, n, g)
        # Built from the deepest level to full resolution and stored in that order (up.0 = deepest), or reversed.
        stages = []
        for i in reversed(range(levels)):
            in_ch, out_ch = c * mult[i + 1], c * mult[i]
            stages.append(UpsamplingStage(in_ch, out_ch, n, g) if i > 0 else ResidualStage(in_ch, out_ch, n, g))
        self.legacy = legacy
        self.up = nn.ModuleList(reversed(stages) if legacy else stages)
        self.norm_out = group_norm(c, g)
        self.conv_out = Conv2dSame(c, config.num_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(x))
        for stage in reversed(self.up) if self.legacy else self.up:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class TokenizerOutput(NamedTuple):
    reconstructions: torch.Tensor  # (B, 3, H, W), unclamped
    quantizer: QuantizerOutput


class Tokenizer(PretrainedMixin, nn.Module):
    """Images ↔ tokens. Public methods take and return images as float RGB in [0, 1], NCHW.

    Every tokenizer gives `encode(images) → indices (B, h, w)`, `decode(indices)`, `encode_latent`, `quantize`,
    `decode_latent`, `num_bits` and `quantizer_kind` ("lfq" or "vq"). A VQ token's bits are the bits of its codebook
    index (`maskbit.bits` works on them as on LFQ tokens), but only an LFQ tokenizer's decoder sees bits, so
    `decode_bits` is refused for VQ.
    """

    config_class = TokenizerConfig
    presets = TOKENIZER_PRESETS
    official_hub_files = OFFICIAL_VQ_HUB_FILES | FAMILY_HUB_FILES
    kind = "tokenizer"

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        if config.model_class == "taming":
            self.encoder, self.decoder = taming.Encoder(config), taming.Decoder(config)
        elif config.model_class == "magvit2":
            self.encoder, self.decoder = magvit2.Encoder(config), magvit2.Decoder(config)
        else:
            self.encoder = Encoder(config)
            self.decoder = Decoder(config, legacy=config.model_class == "maskgit")
        # The official state dict names the quantiser `quantize.*`, while the API's `quantize(z)` is a method:
        # register the module under that name directly; the method wins attribute lookup, `quantizer` reaches it.
        self._modules["quantize"] = build_quantizer(config)
        if config.model_class == "taming":
            self.quant_conv = nn.Conv2d(config.latent_channels, config.token_size, 1)
            self.post_quant_conv = nn.Conv2d(config.token_size, config.latent_channels, 1)
        for module in self.modules():
            if isinstance(module, Conv2dSame):
                module.padding_mode = config.padding_mode

    @property
    def quantizer(self) -> LookupFreeQuantizer | VectorQuantizer:
        return self._modules["quantize"]

    @property
    def quantizer_kind(self) -> str:
        """Either "lfq" (bit tokens: the index's bits are the latent) or "vq" (the index names a learned code)."""
        return self.config.quantizer

    @property
    def num_bits(self) -> int:
        """Bits per token index: K for LFQ, log2(codebook size) for VQ."""
        return self.config.num_bits

    @classmethod
    def inferred_config_fields(cls, state_dict) -> dict[str, int | str]:
        fields = {}
        if "quantize.embedding.weight" in state_dict:
            fields["quantizer"] = "vq"
            fields["codebook_size"], fields["token_size"] = state_dict["quantize.embedding.weight"].shape
        elif "quantize.codebook" in state_dict:
            fields["quantizer"] = "lfq"
            if "encoder.conv_out.weight" in state_dict:
                fields["token_size"] = state_dict["encoder.conv_out.weight"].shape[0]
        if "encoder.conv_in.weight" in state_dict:
            fields["hidden_channels"] = state_dict["encoder.conv_in.weight"].shape[0]
        if any(k.startswith(("encoder.mid_block.", "decoder.adaptive.")) for k in state_dict):
            fields["model_class"] = "magvit2"
            fields["quantizer"] = "lfq"
            if "encoder.conv_out.weight" in state_dict:
                fields["token_size"] = state_dict["encoder.conv_out.weight"].shape[0]
        elif any(".block." in k for k in state_dict) or "quant_conv.weight" in state_dict:
            fields["model_class"] = "taming"
        return fields

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """Training forward: reconstruction through the straight-through quantised latent, plus the quantiser losses."""
        quantized = self.quantizer(self.encode_latent(images))
        return TokenizerOutput(self.decode_latent(quantized.quantized), quantized)

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → z (B, C, H/f, W/f), what the quantiser sees (Taming, IBQ: after quant_conv)."""
        self._check_images(images)
        z = self.encoder(images * 2 - 1 if self.config.signed_images else images)
        return self.quant_conv(z) if hasattr(self, "quant_conv") else z

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Quantised latent (B, C, h, w) → images (B, 3, h·f, w·f), unclamped (clamp to [0, 1] for display)."""
        if latent.dim() != 4 or latent.shape[1] != self.config.token_size:
            raise ValueError(f"latent must have shape (B, {self.config.token_size}, h, w), got {tuple(latent.shape)}")
        latent = latent.to(self._dtype)
        images = self.decoder(self.post_quant_conv(latent) if hasattr(self, "post_quant_conv") else latent)
        return (images + 1) / 2 if self.config.signed_images else images

    @torch.no_grad()
    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, h, w) → the quantised latent the decoder sees: LFQ ±1 bits (z = 0 gives −1), VQ the chosen codes."""
        if self.quantizer_kind == "lfq":
            return torch.where(z > 0, 1.0, -1.0).to(z.dtype)
        return self.quantizer.lookup(self.quantizer.indices(z)).to(z.dtype)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → indices (B, h, w) int64 in [0, 2^num_bits); LFQ: bit k of an index = channel k.

        `precision` (here and in `decode`, `decode_bits`): this call's, in place of the tokenizer's `precision`."""
        fit_threads(self._device)
        with precision_autocast(precision or self.precision, self._device):
            z = self.encode_latent(images)
        return self.quantizer.indices(z.float())

    @torch.no_grad()
    def decode_bits(self, bits: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """LFQ only: (B, K, h, w) ±1 bits → images (B, 3, h·f, w·f), unclamped (clamp to [0, 1] for display)."""
        if self.quantizer_kind != "lfq":
            raise ValueError(
                "decode_bits is for lookup-free (bit) tokenizers, whose decoder takes the bits themselves; this is a "
                "vector-quantised tokenizer, whose decoder takes codebook vectors. Decode indices with "
                "decode(indices) (flip bits of the indices with maskbit.bits.flip_bits) or quantised latents with "
                "decode_latent(latent)"
            )
        if bits.dim() != 4 or bits.shape[1] != self.num_bits:
            raise ValueError(f"bits must have shape (B, {self.num_bits}, h, w), got {tuple(bits.shape)}")
        fit_threads(self._device)
        with precision_autocast(precision or self.precision, self._device):
            images = self.decode_latent(bits)
        return images if images.dtype == self._dtype else images.to(torch.float32)  # float32 out of autocast

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """(B, h, w) indices, or (B, N) with N a square, → images (B, 3, H, W), unclamped."""
        if indices.dim() == 2:
            side = math.isqrt(indices.shape[1])
            if side * side != indices.shape[1]:
                raise ValueError(f"cannot decode {indices.shape[1]} tokens: not a square grid; pass (B, h, w)")
            indices = indices.view(-1, side, side)
        if indices.dim() != 3:
            raise ValueError(f"indices must have shape (B, h, w) or (B, N), got {tuple(indices.shape)}")
        fit_threads(self._device)
        with precision_autocast(precision or self.precision, self._device):
            images = self.decode_latent(self.quantizer.lookup(indices))
        return images if images.dtype == self._dtype else images.to(torch.float32)  # float32 out of autocast

    @property
    def _dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype

    @property
    def _device(self) -> torch.device:
        return self.decoder.conv_in.weight.device

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError("images must be a float tensor (B, 3, H, W) with values in [0, 1]")
        if images.dim() != 4 or images.shape[1] != self.config.num_channels:
            raise ValueError(f"images must have shape (B, {self.config.num_channels}, H, W), got {tuple(images.shape)}")
        f = self.downsample_factor
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(
                f"image height and width must be multiples of {f} (the tokenizer downsamples by {f}), "
                f"got {images.shape[-2]}×{images.shape[-1]}; resize or crop first"
            )
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"images must have values in [0, 1], got [{low:.3g}, {high:.3g}] "
                "(uint8 images: divide by 255; images in [-1, 1]: use (x + 1) / 2)"
            )
