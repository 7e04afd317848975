"""Typed configs for the tokenizer, the generator and the sampler, and the one way to build them from a dict.

The dataclasses are the one config system of the project: models own their config, checkpoints carry it, and
derived values (bits per group, mask token, token grid) are read-only properties. Named presets are in
`maskbit.presets`; the official YAML and Lightning files are read into these dataclasses by `maskbit.official`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TokenizerConfig",
    "MODEL_CLASSES",
    "QUANTIZERS",
    "GeneratorConfig",
    "SamplingConfig",
    "MASK_SCHEDULES",
    "GUIDANCE_ANNEALINGS",
    "config_from_dict",
]


MODEL_CLASSES = ("vqgan+", "maskgit", "taming", "magvit2")
QUANTIZERS = ("lfq", "vq")
CODE_ASSIGNMENTS = ("nearest", "dot_product")
MAX_LFQ_BITS = 62  # indices are int64 (maskbit.bits.MAX_BITS)
MAX_ENTROPY_BITS = 24  # the entropy term compares a latent with all 2^K codes


@dataclass(frozen=True)
class TokenizerConfig:
    """A Stage-I tokenizer (spec §1, §1.10). Field names follow the official `model.vq_model` section.

    `model_class` picks the autoencoder: "vqgan+" (the conv VQGAN+ of spec §1.3–1.4, MaskBit's), "maskgit" (the
    same computation with the legacy decoder's key order and no separate decoder depth), "taming" (the original
    CompVis VQGAN with attention, `maskbit/taming.py`; also IBQ's autoencoder) or "magvit2" (the Open-MAGVIT2
    encoder-decoder, `maskbit/magvit2.py`; also BitDance's autoencoder). `quantizer` picks how a latent becomes a
    token: "lfq" (the sign of each of the K = token_size channels; the index's bits are the latent) or "vq" (one of
    `codebook_size` learned codes of dimension token_size, by `code_assignment`; the index is a codebook row).
    """

    token_size: int = 12  # LFQ: K, bits per token; VQ: the dimension of a code
    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    num_res_blocks_decoder: int | None = None  # None: same as the encoder
    sample_with_conv: bool = True
    norm_groups: int = 32  # GroupNorm groups (the official code always uses 32)
    num_channels: int = 3
    image_size: int = 256  # the resolution the model was trained at; any multiple of the downsampling works
    commitment_cost: float = 0.25
    entropy_loss_weight: float = 0.02
    entropy_loss_temperature: float = 0.01
    entropy_gamma: float = 1.0
    # Not in the official code, which pads with zeros. "replicate" makes a convolution see the same input at the border
    # as inside, so the codes of a uniform region no longer depend on its distance to the image border.
    padding_mode: str = "zeros"
    model_class: str = "vqgan+"
    quantizer: str = "lfq"
    codebook_size: int | None = None  # VQ only: the number of codes, a power of two (LFQ: 2^token_size, implied)
    use_l2_normalisation: bool = False  # VQ only: nearest code by cosine (latents and codes l2-normalised)
    # VQ only: "nearest" code in L2 (MaskBit's, Taming's), or the code with the largest dot product z·e, the argmax
    # of IBQ's index-propagation softmax (a different code than the nearest for most tokens of the IBQ models).
    code_assignment: str = "nearest"
    # Taming only (hard-coded in the official OriginalVQModel): feature-map sides, at image_size, that get a
    # self-attention block after each residual block; and the encoder's output width before the 1×1 quant_conv.
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        _require(
            self.model_class in MODEL_CLASSES, f"model_class must be one of {MODEL_CLASSES}, got {self.model_class!r}"
        )
        _require(self.quantizer in QUANTIZERS, f"quantizer must be lfq or vq, got {self.quantizer!r}")
        _require(
            self.padding_mode in ("zeros", "replicate", "reflect"),
            f"padding_mode must be zeros, replicate or reflect, got {self.padding_mode!r}",
        )
        if self.model_class == "taming":
            _require(self.quantizer == "vq", "the Taming VQGAN is a vector-quantised model: set quantizer='vq'")
        if self.model_class == "magvit2":
            _require(self.quantizer == "lfq", "the Open-MAGVIT2 / BitDance autoencoder is lookup-free: quantizer='lfq'")
        _require(
            self.code_assignment in CODE_ASSIGNMENTS,
            f"code_assignment must be one of {CODE_ASSIGNMENTS}, got {self.code_assignment!r}",
        )
        if self.quantizer == "lfq":
            if self.model_class == "magvit2":  # no bit table in its state dict: any K an int64 index holds
                _require(
                    1 <= self.token_size <= MAX_LFQ_BITS,
                    f"token_size must be in [1, {MAX_LFQ_BITS}], got {self.token_size}",
                )
                _require(
                    self.token_size <= MAX_ENTROPY_BITS or self.entropy_loss_weight == 0,
                    f"the entropy term compares each latent with all 2^token_size codes: with token_size > "
                    f"{MAX_ENTROPY_BITS} set entropy_loss_weight=0, got {self.entropy_loss_weight}",
                )
            else:  # MaskBit's state dicts store the 2^K × K bit table
                _require(1 <= self.token_size <= 24, f"token_size must be in [1, 24], got {self.token_size}")
            _require(
                self.codebook_size is None and not self.use_l2_normalisation and self.code_assignment == "nearest",
                "codebook_size, use_l2_normalisation and code_assignment are for vector quantisation "
                "(quantizer='vq'); a lookup-free tokenizer has 2^token_size codes",
            )
        else:
            size = self.codebook_size
            _require(
                size is not None and 2 <= size <= 2**24 and size & (size - 1) == 0,
                "a VQ tokenizer needs codebook_size, a power of two in [2, 2^24] (a token has log2 of it as bits), "
                f"got {size}",
            )
            _require(self.token_size >= 1, f"token_size (the code dimension) must be ≥ 1, got {self.token_size}")
            _require(
                self.code_assignment == "nearest" or not self.use_l2_normalisation,
                "use_l2_normalisation picks the nearest code by cosine: it needs code_assignment='nearest'",
            )
        _require(len(self.channel_mult) >= 1, "channel_mult must not be empty")
        for mult in self.channel_mult:
            _require(
                self.hidden_channels * mult % self.norm_groups == 0,
                f"hidden_channels × channel_mult must be divisible by norm_groups = {self.norm_groups}, "
                f"got {self.hidden_channels} × {mult}",
            )
        _require(self.num_res_blocks >= 1, "num_res_blocks must be ≥ 1")
        _require(
            self.image_size % self.downsample_factor == 0,
            f"image_size {self.image_size} is not a multiple of the downsampling factor {self.downsample_factor}",
        )
        if self.model_class in ("taming", "magvit2"):
            name = {"taming": "the Taming VQGAN", "magvit2": "the Open-MAGVIT2 autoencoder"}[self.model_class]
            _require(self.padding_mode == "zeros", f"{name} pads with zeros only")
            _require(self.sample_with_conv, f"{name} downsamples with convolutions (sample_with_conv=True)")
        if self.model_class == "taming":
            _require(self.num_res_blocks_decoder is None, "the Taming decoder has num_res_blocks + 1 blocks per level")
        else:
            _require(
                not self.attn_resolutions and self.z_channels is None,
                "attn_resolutions and z_channels describe the Taming VQGAN (model_class='taming')",
            )
        if self.model_class in ("maskgit", "magvit2"):
            _require(
                self.num_res_blocks_decoder is None,
                f"the {self.model_class} decoder has num_res_blocks blocks per level; "
                "leave num_res_blocks_decoder unset",
            )

    @property
    def num_bits(self) -> int:
        """Bits per token index: K for LFQ, log2(codebook_size) for VQ (bit i of a VQ token is bit i of its index)."""
        return self.token_size if self.quantizer == "lfq" else self.codebook_size.bit_length() - 1

    @property
    def signed_images(self) -> bool:
        """Whether the autoencoder works on images in [−1, 1] (Taming, Open-MAGVIT2: the tokenizer maps its [0, 1]
        images there and back) rather than in [0, 1] (MaskBit's)."""
        return self.model_class in ("taming", "magvit2")

    @property
    def num_codes(self) -> int:
        return 2**self.num_bits

    @property
    def num_resolutions(self) -> int:
        return len(self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_resolutions - 1)

    @property
    def grid_size(self) -> int:
        """Token grid side at `image_size`."""
        return self.image_size // self.downsample_factor

    @property
    def decoder_res_blocks(self) -> int:
        return self.num_res_blocks if self.num_res_blocks_decoder is None else self.num_res_blocks_decoder

    @property
    def latent_channels(self) -> int:
        """Channels of the Taming encoder's output and decoder's input (z_channels, default token_size)."""
        return self.token_size if self.z_channels is None else self.z_channels


@dataclass(frozen=True)
class GeneratorConfig:
    """Bit-token masked transformer, LFQBert in the official code (spec §2)."""

    token_size: int = 12  # K, bits per token of the paired tokenizer
    codebook_splits: int = 2  # m, groups of K/m bits predicted independently
    grid_size: int = 16  # token grid side: image_size // input_stride
    hidden_dim: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    dropout: float = 0.1
    num_classes: int = 1000  # class id num_classes is the null class used for guidance

    def __post_init__(self) -> None:
        _require(
            self.token_size % self.codebook_splits == 0,
            f"token_size {self.token_size} is not divisible by codebook_splits {self.codebook_splits}",
        )
        _require(self.hidden_dim % self.heads == 0, f"hidden_dim {self.hidden_dim} not divisible by heads {self.heads}")
        _require(self.grid_size >= 1 and self.depth >= 1 and self.num_classes >= 1, "sizes must be positive")
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_bits(self) -> int:
        return self.token_size

    @property
    def num_groups(self) -> int:
        return self.codebook_splits

    @property
    def bits_per_group(self) -> int:
        return self.token_size // self.codebook_splits

    @property
    def group_vocab_size(self) -> int:
        """Classes per group: 2^(K/m)."""
        return 2**self.bits_per_group

    @property
    def mask_token(self) -> int:
        """The group value that means "masked": 2^(K/m)."""
        return self.group_vocab_size

    @property
    def num_positions(self) -> int:
        return self.grid_size**2

    @property
    def null_class(self) -> int:
        return self.num_classes


MASK_SCHEDULES = ("arccos", "cosine", "linear", "square", "root")
GUIDANCE_ANNEALINGS = ("none", "linear", "cosine")


@dataclass(frozen=True)
class SamplingConfig:
    """The official sampler's knobs (spec §3). Defaults: the 12-bit generator config."""

    num_steps: int = 64
    guidance_scale: float = 7.1
    guidance_annealing: str = "cosine"
    scale_pow: float = 3.0
    randomize_temperature: float = 8.2
    softmax_temperature: float = 1.0
    mask_schedule: str = "arccos"

    def __post_init__(self) -> None:
        _require(self.num_steps >= 1, f"num_steps must be ≥ 1, got {self.num_steps}")
        _require(self.guidance_scale >= 0, f"guidance_scale must be ≥ 0, got {self.guidance_scale}")
        _require(
            self.guidance_annealing in GUIDANCE_ANNEALINGS,
            f"guidance_annealing must be one of {GUIDANCE_ANNEALINGS}, got {self.guidance_annealing!r}",
        )
        _require(self.scale_pow > 0, f"scale_pow must be > 0, got {self.scale_pow}")
        _require(self.randomize_temperature >= 0, "randomize_temperature must be ≥ 0")
        _require(self.softmax_temperature > 0, f"softmax_temperature must be > 0, got {self.softmax_temperature}")
        _require(
            self.mask_schedule in MASK_SCHEDULES,
            f"mask_schedule must be one of {MASK_SCHEDULES}, got {self.mask_schedule!r}",
        )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# ---------------------------------------------------------------------------------------------------------------
# Configs from dicts: config.json files, and the values of YAML files (maskbit.official).
# ---------------------------------------------------------------------------------------------------------------

ConfigT = typing.TypeVar("ConfigT", TokenizerConfig, GeneratorConfig, SamplingConfig)


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/JSON value to a dataclass field's type (YAML reads `1e-4` as a string)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else _coerce(value, options[0], name)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(annotation) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(v, item, name) for v in value)
    try:
        if annotation is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise TypeError
            return value
        if annotation is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if annotation is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {annotation.__name__}, got {value!r}") from None
    return value


def config_from_dict(cls: type[ConfigT], values: dict[str, Any], ignore_unknown: bool = False) -> ConfigT:
    """Build a config dataclass from a dict, converting types; unknown keys are an error listing valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown and not ignore_unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {names}")
    kwargs = {k: _coerce(v, hints[k], f"{cls.__name__}.{k}") for k, v in values.items() if k in names}
    return cls(**kwargs)
