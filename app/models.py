"""The model pair the app serves, the published choices, and generation with its step-by-step frames.

Images cross into the callbacks as float tensors (3, H, W) in [0, 1]; everything here is free of Gradio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.validation import UserError
from maskbit import Generator, SamplingConfig, Tokenizer
from maskbit.checkpoint import HubDownloadError, class_names, default_sampling
from maskbit.device import describe_precision, pick_device
from maskbit.presets import IBQ_CODEBOOK_SIZES
from maskbit.sampling import check_pair, iter_generate, prediction_to_indices

__all__ = ["Models", "load_models", "load_model", "OFFICIAL_PAIRS", "BUNDLED_PAIRS", "Step", "generate_steps"]

# The bundled pair and its VQ, Open-MAGVIT2 and IBQ twins, loaded offline; then the published checkpoints (hub
# downloads).
BUNDLED_PAIRS = {
    "bundled default (LFQ, 12 bits)": ("default", "default"),
    "bundled VQ twin (VQGAN+, 12 bits; tokenizer only)": ("default-vq", ""),
    "bundled Open-MAGVIT2 twin (LFQ, 12 bits; tokenizer only)": ("default-omv", ""),
    "bundled IBQ twin (VQ, 12 bits; tokenizer only)": ("default-ibq", ""),
}
OFFICIAL_PAIRS = {
    **{
        f"official {k}-bit (LFQ, ImageNet 256)": (
            f"markweber/maskbit_tokenizer_{k}bit",
            f"markweber/maskbit_generator_{k}bit",
        )
        for k in (10, 12, 14, 16, 18)
    },
    "VQGAN+ 10-bit (paper, ImageNet 256; tokenizer only)": ("markweber/vqgan_plus_paper", ""),
    "VQGAN+ 12-bit (ImageNet 256; tokenizer only)": ("markweber/vqgan_plus_12bit", ""),
    "MaskGIT tokenizer (VQ, 10-bit; tokenizer only)": ("markweber/maskgit_tokenizer", ""),
    "Taming VQGAN (VQ, 10-bit; tokenizer only)": ("markweber/taming_vqgan", ""),
    # The bit-token family (README): each hub id names its file and preset (maskbit.presets.FAMILY_HUB_FILES); none has
    # a generator of this project's kind, so they load as tokenizers only, like the VQ ones above.
    "Open-MAGVIT2 (LFQ, 18 bits, ImageNet 256; tokenizer only)": (
        "TencentARC/Open-MAGVIT2-Tokenizer-256-resolution",
        "",
    ),
    "Open-MAGVIT2 (LFQ, 18 bits, ImageNet 128; tokenizer only)": (
        "TencentARC/Open-MAGVIT2-Tokenizer-128-resolution",
        "",
    ),
    **{
        f"IBQ {n:,} codes (VQ, {n.bit_length() - 1} bits, ImageNet 256; tokenizer only)": (
            f"TencentARC/IBQ-Tokenizer-{n}",
            "",
        )
        for n in IBQ_CODEBOOK_SIZES
    },
    "BitDance autoencoder (LFQ, 32 bits in 4 groups of 8, ImageNet 256; tokenizer only)": (
        "shallowdream204/BitDance-ImageNet",
        "",
    ),
}


@dataclass
class Models:
    """The loaded tokenizer, and a generator when one is loaded and fits the tokenizer."""

    tokenizer: Tokenizer
    generator: Generator | None
    tokenizer_source: str
    generator_source: str
    class_names: list[str]
    sampling: SamplingConfig  # the generator's own (maskbit.checkpoint.default_sampling)
    image_size: int  # the generator's grid × the tokenizer's downsampling; else the tokenizer config's size
    problem: str = ""  # why generation is unavailable, if it is

    @property
    def can_generate(self) -> bool:
        return self.generator is not None and not self.problem

    @property
    def why_not(self) -> str:
        """What to do when this pair cannot generate."""
        if self.generator is None:
            return "this model pair has no generator; load one in the model panel, or use the other tabs"
        return self.problem

    @property
    def device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.tokenizer.downsample_factor
        return side, side

    def label(self, name_or_id: str | int) -> int:
        """A class given by name (as listed, any case) or by id."""
        if isinstance(name_or_id, str) and len(name_or_id) > 200:
            raise UserError(f"a class name is {len(name_or_id):,} characters long; class names are at most 200")
        if not self.class_names:
            raise UserError(self.why_not)
        if isinstance(name_or_id, int) or str(name_or_id).strip().lstrip("-").isdigit():
            label = int(name_or_id)
            if not 0 <= label < len(self.class_names):
                raise UserError(
                    f"class id {label} is out of range: this model has classes 0–{len(self.class_names) - 1}"
                )
            return label
        name = str(name_or_id).strip()
        lowered = [c.lower() for c in self.class_names]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        close = [c for c in self.class_names if name.lower() in c.lower()][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Classes: {', '.join(self.class_names[:12])}…"
        raise UserError(f"unknown class {name!r}.{hint}")

    def describe(self) -> dict:
        t = self.tokenizer
        info = {
            "tokenizer": self.tokenizer_source,
            "quantizer": t.quantizer_kind,
            "tokenizer_parameters": sum(p.numel() for p in t.parameters()),
            "bits_per_token": t.num_bits,
            "token_grid": list(self.grid),
            "image_size": self.image_size,
            "tokenizer_identity": t.identity()[:16],
            "generator": self.generator_source or None,
            "device": str(self.device),
            "precision": describe_precision(t.precision, self.device),
        }
        if self.generator is not None:
            g = self.generator.config
            info |= {
                "generator_parameters": sum(p.numel() for p in self.generator.parameters()),
                "classes": len(self.class_names),
                "groups_per_token": g.codebook_splits,
                "sampling": dataclasses.asdict(self.sampling),
            }
        if not self.can_generate:
            info["generation"] = f"unavailable: {self.why_not}"
        return info


def load_models(
    tokenizer_source: str,
    generator_source: str = "",
    tokenizer_config: str | None = None,
    generator_config: str | None = None,
    device: torch.device | None = None,
    precision: str = "fp32",
    progress: Callable[[str], None] | None = None,
) -> Models:
    """Load a tokenizer and optionally a generator (any `from_pretrained` source); say why they do not fit.
    `precision` (maskbit.device) is what both models encode, decode and sample at; `progress` is told what is being
    loaded ("the tokenizer markweber/…") before each model (a hub download can take a while)."""
    device = device or pick_device()
    progress = progress or (lambda what: None)
    progress(f"the tokenizer {tokenizer_source}")
    tokenizer = load_model(Tokenizer, tokenizer_source, tokenizer_config, device, precision)
    generator, names, problem, sampling = None, [], "", SamplingConfig()
    image_size = tokenizer.config.image_size
    if generator_source:
        progress(f"the generator {generator_source}")
        generator = load_model(Generator, generator_source, generator_config, device, precision)
        names = class_names(generator_source, generator.config.num_classes)
        sampling = default_sampling(generator_source, generator_config)
        try:
            check_pair(generator, tokenizer)
            image_size = generator.config.grid_size * tokenizer.downsample_factor  # the generator's grid decides
        except ValueError as error:
            problem = f"{error}; load a matching pair"
    return Models(
        tokenizer, generator, str(tokenizer_source), str(generator_source), names, sampling, image_size, problem
    )


def load_model(cls, source: str, config, device: torch.device, precision: str):
    """One model for inference (PretrainedMixin.inference), or a UserError saying why it cannot be loaded."""
    try:
        return cls.from_pretrained(source, config).inference(device, precision)
    except HubDownloadError as error:  # the library's advice (a from_pretrained call) is not what the panel takes
        raise UserError(
            f"cannot download the {cls.kind} {source!r} (this server may be offline). Download {error.url} on a "
            f"machine that is online, put {error.file_name} into the workspace or a model root (--model-root), and "
            f"type that file's path in the model panel's {cls.kind} box: its preset is recognised from its weights"
        ) from None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the {cls.kind} {source!r}: {error}") from None


# ---------------------------------------------------------------------------------------------------- generation


@dataclass
class Step:
    """One sampling step as the app shows it."""

    step: int  # 1-based
    num_steps: int
    frames: torch.Tensor  # (B, 3, H, W): decided tokens as predicted, partly decided half grey, undecided grey
    masked_fraction: float  # of (position, group) entries, after the step (0 after the last)
    images: torch.Tensor | None  # (B, 3, H, W) in [0, 1]: the result, after the last step only


MASK_GREY = 0.5


@torch.no_grad()
def generate_steps(models: Models, labels: list[int], sampling: SamplingConfig, seed: int) -> Iterator[Step]:
    """Sample images of class ids `labels`, yielding each step's frames so that a caller can stream them."""
    if not models.can_generate:
        raise UserError(models.why_not)
    generator, tokenizer = models.generator, models.tokenizer
    side = generator.config.grid_size
    for state in iter_generate(generator, labels, sampling, seed=seed):
        images = tokenizer.decode(prediction_to_indices(state.prediction, generator)).clamp(0, 1)
        if state.is_last:
            # the result is the final prediction; its re-masked entries (the official rule keeps at least one entry
            # masked per sample) are never used
            yield Step(state.step + 1, state.num_steps, images, 0.0, images)
            return
        undecided = state.mask.float().mean(-1).view(-1, 1, side, side)  # 1: every group masked, 0.5: one of two
        undecided = F.interpolate(undecided, size=images.shape[-2:], mode="nearest")
        frames = images * (1 - undecided) + MASK_GREY * undecided
        yield Step(state.step + 1, state.num_steps, frames, float(state.mask.float().mean()), None)
