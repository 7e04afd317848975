"""MaskBit Stage-I tokenizer: a conv VQGAN+ autoencoder with lookup-free (binary) quantisation.

Weber et al., "MaskBit: Embedding-free Image Generation via Bit Tokens", TMLR 2024, Sec. 3.1 and 3.2;
numerics and state-dict layout of the official `modeling/conv_vqgan.py::ConvVQModel` (spec §1), including its
quirks: TensorFlow "SAME" padding (asymmetric for stride 2), the residual shortcut applied to the branch output,
GroupNorm eps 1e-6, and the quantiser's bit tables stored as buffers.

    image (B, 3, H, W) in [0, 1] → encoder → z (B, K, h, w) → sign → bits ±1 → indices (B, h, w) → decoder → image

Axes: B batch, K bits per token, h × w token grid (H/f × W/f, f = 2^(len(channel_mult) − 1)).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maskbit import bits as bitops
from maskbit.checkpoint import PretrainedMixin
from maskbit.config import TOKENIZER_PRESETS, TokenizerConfig
from maskbit.device import precision_autocast

__all__ = ["Tokenizer", "LookupFreeQuantizer", "QuantizerOutput", "TokenizerOutput"]


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
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        c, n, g, levels = config.hidden_channels, config.decoder_res_blocks, config.norm_groups, config.num_resolutions
        mult = (*config.channel_mult, config.channel_mult[-1])
        top = c * config.channel_mult[-1]
        self.conv_in = Conv2dSame(config.token_size, top, 3)
        self.mid = ResidualStage(top, top, n, g)
        # Built (and stored as up.0, up.1, ...) from the deepest level to full resolution.
        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            in_ch, out_ch = c * mult[i + 1], c * mult[i]
            self.up.append(UpsamplingStage(in_ch, out_ch, n, g) if i > 0 else ResidualStage(in_ch, out_ch, n, g))
        self.norm_out = group_norm(c, g)
        self.conv_out = Conv2dSame(c, config.num_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(x))
        for stage in self.up:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class QuantizerOutput(NamedTuple):
    bits: torch.Tensor  # (B, K, h, w) ±1, straight-through: gradients flow to z
    indices: torch.Tensor  # (B, h, w) int64
    commitment_loss: torch.Tensor  # β · mean((bits − z)²)
    entropy_loss: torch.Tensor  # w · (per_sample_entropy − avg_entropy); 0 outside training
    per_sample_entropy: torch.Tensor
    avg_entropy: torch.Tensor
    quantizer_loss: torch.Tensor  # commitment_loss + entropy_loss


class LookupFreeQuantizer(nn.Module):
    """Sign quantisation of each latent channel (Yu et al., MAGVIT-v2), with the commitment and entropy losses."""

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.num_bits = config.token_size
        self.commitment_cost = config.commitment_cost
        self.entropy_loss_weight = config.entropy_loss_weight
        self.entropy_loss_temperature = config.entropy_loss_temperature
        self.entropy_gamma = config.entropy_gamma
        # Deterministic tables, kept as persistent buffers because the official state dicts contain them.
        k = config.token_size
        self.register_buffer("bits_to_indices", (2 ** torch.arange(k)).to(torch.int32))
        codes = torch.arange(2**k)[:, None] >> torch.arange(k) & 1  # row n = bits of n, LSB first
        self.register_buffer("codebook", codes.float() * 2 - 1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z = z.permute(0, 2, 3, 1)  # (B, h, w, K)
        q = torch.where(z > 0, 1.0, -1.0).to(z.dtype)  # z == 0 → −1
        indices = bitops.bits_to_indices(q)
        commitment = self.commitment_cost * torch.mean((q.detach() - z) ** 2)
        zero = z.new_zeros(())
        per_sample_entropy = avg_entropy = entropy = zero
        if self.training and self.entropy_loss_weight != 0:
            affinity = 2 * z.reshape(-1, self.num_bits) @ self.codebook.T  # (B·h·w, 2^K)
            per_sample_entropy, avg_entropy = self._entropies(affinity)
            entropy = self.entropy_loss_weight * (per_sample_entropy - avg_entropy)
        q = z + (q - z).detach()
        return QuantizerOutput(
            q.permute(0, 3, 1, 2), indices, commitment, entropy, per_sample_entropy, avg_entropy, commitment + entropy
        )

    def _entropies(self, affinity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean per-position code entropy and γ × entropy of the mean code distribution (natural log)."""
        probs = (affinity / self.entropy_loss_temperature).softmax(dim=-1)
        per_sample = -(probs * probs.clamp(min=1e-5).log()).sum(-1).mean()
        mean_probs = probs.mean(0)
        avg = self.entropy_gamma * -(mean_probs * mean_probs.clamp(min=1e-5).log()).sum()
        return per_sample, avg


class TokenizerOutput(NamedTuple):
    reconstructions: torch.Tensor  # (B, 3, H, W), unclamped
    quantizer: QuantizerOutput


class Tokenizer(PretrainedMixin, nn.Module):
    """Images ↔ bit tokens. Public methods take and return images as float RGB in [0, 1], NCHW."""

    config_class = TokenizerConfig
    presets = TOKENIZER_PRESETS
    kind = "tokenizer"
    # encode / decode / decode_bits run under maskbit.device's autocast rule for this name ("auto": bf16 on CUDA,
    # float32 on the CPU; "fp32", "bf16"). A run-time choice, not part of the config or the checkpoint.
    precision: str = "auto"

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # The official state dict names the quantiser `quantize.*`, while the API's `quantize(z)` is a method:
        # register the module under that name directly; the method wins attribute lookup, `quantizer` reaches it.
        self._modules["quantize"] = LookupFreeQuantizer(config)
        for module in self.modules():
            if isinstance(module, Conv2dSame):
                module.padding_mode = config.padding_mode

    @property
    def quantizer(self) -> LookupFreeQuantizer:
        return self._modules["quantize"]

    @property
    def num_bits(self) -> int:
        return self.config.token_size

    @classmethod
    def inferred_config_fields(cls, state_dict) -> dict[str, int]:
        fields = {}
        if "encoder.conv_out.weight" in state_dict:
            fields["token_size"] = state_dict["encoder.conv_out.weight"].shape[0]
        if "encoder.conv_in.weight" in state_dict:
            fields["hidden_channels"] = state_dict["encoder.conv_in.weight"].shape[0]
        return fields

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        """Training forward: reconstruction through the straight-through bits, plus the quantiser losses."""
        quantized = self.quantizer(self.encode_latent(images))
        return TokenizerOutput(self.decoder(quantized.bits), quantized)

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → pre-quantisation latent z (B, K, H/f, W/f)."""
        self._check_images(images)
        return self.encoder(images)

    @torch.no_grad()
    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, K, h, w) → bits (B, K, h, w) in {−1, +1}; z = 0 gives −1."""
        return torch.where(z > 0, 1.0, -1.0).to(z.dtype)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → indices (B, h, w) int64, bit k of an index = latent channel k."""
        with precision_autocast(self.precision, self._device):
            z = self.encode_latent(images)
        return bitops.bits_to_indices(z.permute(0, 2, 3, 1))

    @torch.no_grad()
    def decode_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) ±1 bits → images (B, 3, h·f, w·f), unclamped (clamp to [0, 1] for display)."""
        if bits.dim() != 4 or bits.shape[1] != self.num_bits:
            raise ValueError(f"bits must have shape (B, {self.num_bits}, h, w), got {tuple(bits.shape)}")
        with precision_autocast(self.precision, self._device):
            images = self.decoder(bits.to(self._dtype))
        return images if images.dtype == self._dtype else images.to(torch.float32)  # float32 out of autocast

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices, or (B, N) with N a square, → images (B, 3, H, W), unclamped."""
        if indices.dim() == 2:
            side = math.isqrt(indices.shape[1])
            if side * side != indices.shape[1]:
                raise ValueError(f"cannot decode {indices.shape[1]} tokens: not a square grid; pass (B, h, w)")
            indices = indices.view(-1, side, side)
        if indices.dim() != 3:
            raise ValueError(f"indices must have shape (B, h, w) or (B, N), got {tuple(indices.shape)}")
        bits = bitops.indices_to_bits(indices, self.num_bits)  # (B, h, w, K)
        return self.decode_bits(bits.permute(0, 3, 1, 2))

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
