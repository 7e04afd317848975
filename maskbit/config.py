"""Typed configs for the tokenizer, the generator and the sampler, named presets, and the official YAML reader.

The dataclasses are the one config system of the project: models own their config, checkpoints carry it, and
derived values (bits per group, mask token, token grid) are read-only properties. Official YAML files
(`configs/tokenizer/*.yaml`, `configs/generator/*.yaml` of markweberdev/maskbit) are an input format, turned
into these dataclasses by `read_official_yaml`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "TokenizerConfig",
    "MODEL_CLASSES",
    "QUANTIZERS",
    "OFFICIAL_VQ_HUB_FILES",
    "FAMILY_HUB_FILES",
    "GeneratorConfig",
    "SamplingConfig",
    "OfficialConfig",
    "TOKENIZER_PRESETS",
    "GENERATOR_PRESETS",
    "SAMPLING_PRESETS",
    "read_official_yaml",
    "read_family_config",
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
# Presets: every official config (spec §1.9, §2.6) plus small ones for tests.
# ---------------------------------------------------------------------------------------------------------------

OFFICIAL_BITS = (10, 12, 14, 16, 18)

TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    f"maskbit_tokenizer_{k}bit": TokenizerConfig(token_size=k) for k in OFFICIAL_BITS
}
# The official-tiny conformance fixture: 32×32 images → 8×8 tokens of 12 bits.
TOKENIZER_PRESETS["tiny"] = TokenizerConfig(
    token_size=12, hidden_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, image_size=32
)
# The vector-quantised tokenizers of the official model zoo (spec §1.10): VQGAN+ (configs/tokenizer/vqgan_plus_*.yaml,
# no entropy term), the MaskGIT tokenizer (configs/external/maskgit_tokenizer.yaml) and the Taming VQGAN, whose
# architecture the official OriginalVQModel hard-codes.
TOKENIZER_PRESETS["vqgan_plus_10bit"] = TokenizerConfig(
    quantizer="vq", codebook_size=1024, token_size=256, entropy_loss_weight=0.0
)
TOKENIZER_PRESETS["vqgan_plus_12bit"] = TokenizerConfig(
    quantizer="vq", codebook_size=4096, token_size=64, entropy_loss_weight=0.0
)
TOKENIZER_PRESETS["maskgit_tokenizer"] = TokenizerConfig(
    model_class="maskgit", quantizer="vq", codebook_size=1024, token_size=256, sample_with_conv=False
)
TOKENIZER_PRESETS["taming_vqgan"] = TokenizerConfig(
    model_class="taming",
    quantizer="vq",
    codebook_size=1024,
    token_size=256,
    entropy_loss_weight=0.0,
    attn_resolutions=(16,),
    z_channels=256,
)
# The official-vq-tiny conformance fixtures: 32×32 images → 8×8 tokens.
_TINY_VQ = dict(quantizer="vq", hidden_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, image_size=32)
TOKENIZER_PRESETS["tiny_vqgan_plus"] = TokenizerConfig(
    codebook_size=4096, token_size=16, entropy_loss_weight=0.0, **_TINY_VQ
)
TOKENIZER_PRESETS["tiny_maskgit"] = TokenizerConfig(
    model_class="maskgit", codebook_size=1024, token_size=32, sample_with_conv=False, **_TINY_VQ
)
TOKENIZER_PRESETS["tiny_taming"] = TokenizerConfig(
    model_class="taming",
    codebook_size=1024,
    token_size=32,
    entropy_loss_weight=0.0,
    attn_resolutions=(8,),
    z_channels=32,
    **_TINY_VQ,
)
# The published files of the VQ tokenizers: hub repo name → (preset, file name). The file names are those the
# official configs give as `vqgan_checkpoint` (the MaskBit repos hold `<repo name>.bin`, spec §4.1).
OFFICIAL_VQ_HUB_FILES: dict[str, tuple[str, str]] = {
    "vqgan_plus_paper": ("vqgan_plus_10bit", "vqgan_plus_10bit.bin"),
    "vqgan_plus_12bit": ("vqgan_plus_12bit", "vqgan_plus_12bit.bin"),
    "maskgit_tokenizer": ("maskgit_tokenizer", "maskgit_tokenizer.bin"),
    "taming_vqgan": ("taming_vqgan", "taming_vqgan.ckpt"),
}

# The bit-token family: Open-MAGVIT2 (TencentARC/Open-MAGVIT2, configs/Open-MAGVIT2/gpu/imagenet_lfqgan_{256,128}_L
# .yaml), IBQ (configs/IBQ/gpu/imagenet_ibqgan_{N}.yaml, identical but for n_embed) and BitDance's ImageNet autoencoder
# (shallowdream204/BitDance imagenet_gen/src/model.py, which hard-codes it). Their training losses are not
# reproduced here (the entropy terms differ in detail, BitDance's is per 8-bit group): presets are for inference.
_OPEN_MAGVIT2 = dict(model_class="magvit2", token_size=18, hidden_channels=128, num_res_blocks=4)
TOKENIZER_PRESETS["open_magvit2_256_L"] = TokenizerConfig(channel_mult=(1, 1, 2, 2, 4), image_size=256, **_OPEN_MAGVIT2)
TOKENIZER_PRESETS["open_magvit2_128_L"] = TokenizerConfig(channel_mult=(1, 2, 2, 4), image_size=128, **_OPEN_MAGVIT2)
_IBQ = dict(
    model_class="taming",
    quantizer="vq",
    code_assignment="dot_product",
    token_size=256,
    z_channels=256,
    num_res_blocks=4,
    attn_resolutions=(16,),
    entropy_loss_weight=0.05,
)
IBQ_CODEBOOK_SIZES = (1024, 8192, 16384, 262144)
TOKENIZER_PRESETS |= {f"ibq_{n}": TokenizerConfig(codebook_size=n, **_IBQ) for n in IBQ_CODEBOOK_SIZES}
TOKENIZER_PRESETS["bitdance_ae_d16c32"] = TokenizerConfig(
    model_class="magvit2", token_size=32, hidden_channels=256, num_res_blocks=4, entropy_loss_weight=0.0
)
# The open-magvit2-tiny conformance fixtures: 16×16 images → 8×8 tokens.
TOKENIZER_PRESETS["tiny_open_magvit2"] = TokenizerConfig(
    model_class="magvit2", token_size=10, hidden_channels=32, channel_mult=(2, 1), num_res_blocks=1, image_size=16
)
TOKENIZER_PRESETS["tiny_ibq"] = TokenizerConfig(
    **{**_IBQ, "token_size": 8, "z_channels": 16, "num_res_blocks": 1, "attn_resolutions": (8,)},
    codebook_size=1024,
    hidden_channels=32,
    channel_mult=(1, 1),
    image_size=16,
)
TOKENIZER_PRESETS["tiny_bitdance"] = TokenizerConfig(
    model_class="magvit2",
    token_size=32,
    hidden_channels=32,
    channel_mult=(2, 1),
    num_res_blocks=1,
    entropy_loss_weight=0.0,
)
# Their published files, as OFFICIAL_VQ_HUB_FILES: hub repo name → (preset, file name), the repos and names of the
# official READMEs (docs/Open-MAGVIT2.md, docs/IBQ.md, imagenet_gen/README.md). Not downloaded by any test here.
FAMILY_HUB_FILES: dict[str, tuple[str, str]] = {
    "Open-MAGVIT2-Tokenizer-256-resolution": ("open_magvit2_256_L", "imagenet_256_L.ckpt"),
    "Open-MAGVIT2-Tokenizer-128-resolution": ("open_magvit2_128_L", "imagenet_128_L.ckpt"),
    **{f"IBQ-Tokenizer-{n}": (f"ibq_{n}", f"imagenet256_{n}.ckpt") for n in IBQ_CODEBOOK_SIZES},
    "BitDance-ImageNet": ("bitdance_ae_d16c32", "ae_d16c32.pt"),
}

GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    f"maskbit_generator_{k}bit": GeneratorConfig(token_size=k) for k in OFFICIAL_BITS
}
# The 128- and 256-step 14-bit configs share the 14-bit checkpoint; only their sampling differs.
GENERATOR_PRESETS["maskbit_generator_14bit_128steps"] = GENERATOR_PRESETS["maskbit_generator_14bit"]
GENERATOR_PRESETS["maskbit_generator_14bit_256steps"] = GENERATOR_PRESETS["maskbit_generator_14bit"]
# The bundled default model (trained by `python -m train generator --preset default`), 10 procedural classes.
# No dropout: on a CPU, attention dropout sends scaled_dot_product_attention down its slow path (a Bernoulli draw per
# attention weight): 2.9 s per batch-32 step with 0.1, 1.9 s without (bench/README.md); and a model this small on an
# unlimited dataset underfits rather than overfits. (The bundled generator was trained with 0.1.)
GENERATOR_PRESETS["default"] = GeneratorConfig(
    token_size=12,
    codebook_splits=2,
    grid_size=16,
    hidden_dim=192,
    depth=4,
    heads=6,
    mlp_dim=768,
    num_classes=10,
    dropout=0.0,
)
GENERATOR_PRESETS["tiny"] = GeneratorConfig(
    token_size=12, codebook_splits=2, grid_size=8, hidden_dim=64, depth=2, heads=4, mlp_dim=256
)

SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    "maskbit_generator_10bit": SamplingConfig(64, 6.4, "cosine", 2.5, 10.5),
    "maskbit_generator_12bit": SamplingConfig(64, 7.1, "cosine", 3.0, 8.2),
    "maskbit_generator_14bit": SamplingConfig(64, 7.1, "cosine", 3.0, 7.8),
    "maskbit_generator_14bit_128steps": SamplingConfig(128, 7.1, "cosine", 3.0, 9.0),
    "maskbit_generator_14bit_256steps": SamplingConfig(256, 5.8, "cosine", 3.0, 10.3),
    "maskbit_generator_16bit": SamplingConfig(64, 6.5, "cosine", 2.5, 7.5),
    "maskbit_generator_18bit": SamplingConfig(64, 5.7, "cosine", 2.5, 8.5),
    # demo_utils.sample: constant guidance, scale_pow unused. The notebook's scale and temperature were not
    # published; these are the official sample() defaults for them.
    "demo": SamplingConfig(64, 3.0, "none", 1.0, 4.5),
    "tiny": SamplingConfig(8, 2.0, "cosine", 3.0, 4.5),
    # The bundled default model: 16×16 tokens × 2 groups of 6 bits = 512 entries to unmask. Constant guidance: with
    # cosine annealing the first steps, which lay out the shape, are unguided (class accuracy 14 % against 24 %,
    # earlier judge; model card).
    "default": SamplingConfig(16, 4.0, "none", 1.0, 2.0),
}


# What each sampling preset was tuned for: the paper's presets suit their own ImageNet checkpoints, not other models.
SAMPLING_PRESET_NOTES: dict[str, str] = {
    **{
        name: f"the paper's preset for markweber/{name.removesuffix('_128steps').removesuffix('_256steps')} "
        "(ImageNet 256); on other models it can make images worse"
        for name in SAMPLING_PRESETS
        if name.startswith("maskbit_generator_")
    },
    "demo": "the official demo's constant guidance (ImageNet checkpoints)",
    "tiny": "for the tiny test models (8 steps)",
    "default": "tuned for the bundled default model (16 steps: about 50 % of its images show their class)",
}


# ---------------------------------------------------------------------------------------------------------------
# Reading configs from dicts and official YAML files.
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


@dataclass(frozen=True)
class OfficialConfig:
    """What an official YAML file describes, as our dataclasses (generator/sampling only for generator configs).

    `sections` keeps the raw training-related sections (`losses`, `optimizer`, `lr_scheduler`, `training`,
    `dataset`, `experiment`) for the training code.
    """

    tokenizer: TokenizerConfig
    generator: GeneratorConfig | None
    sampling: SamplingConfig | None
    sections: dict[str, Any] = field(default_factory=dict)


# Keys of the official `model.vq_model` section that do not describe our tokenizer's architecture.
_VQ_MODEL_IGNORED = {
    "model_class",  # read below
    "quantizer_type",  # read below
    "codebook_size",  # read below for VQ; ignored by the LFQ quantiser and stale in the 14/16/18-bit YAMLs (spec §7.4)
    "num_resolutions",  # derived from channel_mult; checked below
    "vqgan_checkpoint",
}
_QUANTIZER_TYPES = {"lookup-free": "lfq", "lookup": "vq"}
# The Taming VQGAN's architecture as the official OriginalVQModel hard-codes it (spec §1.10), under its own names;
# a YAML may spell any of them out (the official one does not, the official-vq-tiny fixture does).
_TAMING_ARCHITECTURE = {
    "ch": 128,
    "ch_mult": (1, 1, 2, 2, 4),
    "num_res_blocks": 2,
    "attn_resolutions": (16,),
    "z_channels": 256,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "double_z": False,
    "dropout": 0.0,  # inference only here: dropout has no weights
}


def _taming_fields(vq: dict[str, Any]) -> dict[str, Any]:
    """TokenizerConfig fields of a `model_class: taming` section: its architecture keys, else the official values."""
    arch = {k: vq.get(k, default) for k, default in _TAMING_ARCHITECTURE.items()}
    _require(not arch["double_z"], "double_z: True (a KL autoencoder's latent) is not a Taming VQGAN")
    _require(arch["in_channels"] == arch["out_ch"], "in_channels and out_ch must be equal")
    other = {k: v for k, v in vq.items() if k not in _TAMING_ARCHITECTURE and k not in _VQ_MODEL_IGNORED}
    return {
        "entropy_loss_weight": 0.0,  # the official OriginalVQModel builds its quantiser without the entropy term
        **other,
        "hidden_channels": arch["ch"],
        "channel_mult": arch["ch_mult"],
        "num_res_blocks": arch["num_res_blocks"],
        "attn_resolutions": arch["attn_resolutions"],
        "z_channels": arch["z_channels"],
        "image_size": arch["resolution"],  # also what places the attention blocks
        "num_channels": arch["in_channels"],
    }


_MLM_MODEL_KEYS = {"hidden_dim", "depth", "heads", "mlp_dim", "dropout", "codebook_splits"}
_MLM_MODEL_IGNORED = {
    "model_cls",
    "use_prenorm",  # checked below
    "class_label_dropout",  # training
    "train_mask_schedule_strategy",  # training
    "label_smoothing",
    "sum_splits",
    "use_sampling_annealing",  # checked below
    "codebook_size",  # recomputed from token_size by the official scripts
}


def read_official_yaml(source: str | Path | dict) -> OfficialConfig:
    """Read an official MaskBit YAML file (or its parsed dict) into our dataclasses; also the bit-token family's
    LightningCLI configs (`model.class_path` + `model.init_args`, see `read_family_config`).

    The bit count always comes from `model.vq_model.token_size`, never from a `codebook_size` field, so the stale
    `codebook_size: 4096` of the official 14/16/18-bit tokenizer YAMLs cannot produce a 12-bit generator.
    """
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from None
    model = (raw or {}).get("model") if isinstance(raw, dict) else None
    if isinstance(model, dict) and "class_path" in model:
        return read_family_config(raw)
    if not isinstance(model, dict) or not isinstance(model.get("vq_model"), dict):
        raise ValueError(
            "an official MaskBit config needs a `model.vq_model` section (or, for Open-MAGVIT2, IBQ and BitDance, "
            "`model.class_path` and `model.init_args`)"
        )
    vq = dict(model["vq_model"])

    quantizer_type = vq.get("quantizer_type", "lookup-free")
    _require(
        quantizer_type in _QUANTIZER_TYPES,
        f"quantizer_type must be lookup-free or lookup, got {quantizer_type!r}",
    )
    quantizer = _QUANTIZER_TYPES[quantizer_type]
    model_class = vq.get("model_class", "vqgan+")
    _require(model_class in MODEL_CLASSES, f"model_class must be one of {MODEL_CLASSES}, got {model_class!r}")
    mult = vq.get("ch_mult" if model_class == "taming" else "channel_mult", TokenizerConfig.channel_mult)
    if "num_resolutions" in vq:
        _require(
            int(vq["num_resolutions"]) == len(mult),
            f"num_resolutions {vq['num_resolutions']} does not match channel_mult {list(mult)}",
        )
    resolution = (raw.get("dataset") or {}).get("preprocessing", {}).get("resolution", 256)
    if model_class == "taming":
        tokenizer_values = _taming_fields(vq)
    else:
        tokenizer_values = {k: v for k, v in vq.items() if k not in _VQ_MODEL_IGNORED}
        tokenizer_values["image_size"] = resolution
    if quantizer == "vq":
        _require("codebook_size" in vq, "a vector-quantised tokenizer (quantizer_type: lookup) needs codebook_size")
        tokenizer_values["codebook_size"] = vq["codebook_size"]
    tokenizer_values |= {"model_class": model_class, "quantizer": quantizer}
    tokenizer = config_from_dict(TokenizerConfig, tokenizer_values)

    generator = sampling = None
    mlm = model.get("mlm_model")
    if isinstance(mlm, dict):
        _require(
            quantizer == "lfq",
            "a MaskBit generator predicts bit tokens: its tokenizer must be lookup-free (quantizer_type: lookup-free), "
            f"got {quantizer_type!r}",
        )
        _require(not mlm.get("use_prenorm", False), "pre-norm generators (use_prenorm: True) are not supported")
        _require(not mlm.get("use_sampling_annealing", False), "use_sampling_annealing is not supported")
        unknown = set(mlm) - _MLM_MODEL_KEYS - _MLM_MODEL_IGNORED - _MLM_SAMPLING_KEYS.keys()
        _require(not unknown, f"unknown model.mlm_model keys: {sorted(unknown)}")
        generator_values = {k: v for k, v in mlm.items() if k in _MLM_MODEL_KEYS}
        generator = config_from_dict(
            GeneratorConfig,
            {**generator_values, "token_size": tokenizer.token_size, "grid_size": tokenizer.grid_size},
        )
        sampling_values = {_MLM_SAMPLING_KEYS[k]: v for k, v in mlm.items() if k in _MLM_SAMPLING_KEYS}
        sampling = config_from_dict(SamplingConfig, sampling_values)

    sections = {k: v for k, v in raw.items() if k != "model"}
    return OfficialConfig(tokenizer, generator, sampling, sections)


_MLM_SAMPLING_KEYS = {
    "num_steps": "num_steps",
    "guidance_scale": "guidance_scale",
    "guidance_annealing": "guidance_annealing",
    "scale_pow": "scale_pow",
    "randomize_temperature": "randomize_temperature",
    "softmax_temperature": "softmax_temperature",
    "gen_mask_schedule_strategy": "mask_schedule",
}


# ---------------------------------------------------------------------------------------------------------------
# The bit-token family's configs: LightningCLI files (Open-MAGVIT2, IBQ), and BitDance's hard-coded arguments
# spelled out the same way. Every key the official class accepts is known here; any other is an error (the official
# autoencoders swallow unknown ddconfig keys, which hides typos).
# ---------------------------------------------------------------------------------------------------------------

FAMILY_CLASS_PATHS = {
    "src.Open_MAGVIT2.models.lfqgan.VQModel": "Open-MAGVIT2",
    "src.IBQ.models.ibqgan.IBQ": "IBQ",
    "imagenet_gen.src.qae.VQModel": "BitDance",
}
_LIGHTNING_ARGS = {  # training, logging and loading arguments shared by the two Lightning modules
    "lossconfig",
    "ckpt_path",
    "ignore_keys",
    "image_key",
    "colorize_nlabels",
    "monitor",
    "learning_rate",
    "resume_lr",
    "warmup_epochs",
    "scheduler_type",
    "min_learning_rate",
    "use_ema",  # which weights a checkpoint holds is read from the checkpoint (maskbit.checkpoint.select_weights)
    "stage",
    "lr_drop_epoch",
    "lr_drop_rate",
    "sample_minimization_weight",
    "batch_maximization_weight",
}
_FAMILY_INIT_ARGS = {
    "Open-MAGVIT2": {"ddconfig", "n_embed", "embed_dim", "token_factorization", "factorized_bits", *_LIGHTNING_ARGS},
    "IBQ": {
        "ddconfig",
        "n_embed",
        "embed_dim",
        "remap",
        "sane_index_shape",
        "l2_normalize",  # passed on, but unused by IndexPropagationQuantize
        "cosine_similarity",  # likewise
        "gradient_clip_val",
        "use_entropy_loss",
        "entropy_temperature",
        "beta",
        *_LIGHTNING_ARGS,
    },
    "BitDance": {"ddconfig", "num_codebooks", "sample_minimization_weight", "batch_maximization_weight", "gan_decoder"},
}
_MAGVIT2_DDCONFIG = {"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks"}
_FAMILY_DDCONFIG = {
    "Open-MAGVIT2": _MAGVIT2_DDCONFIG,
    "IBQ": _MAGVIT2_DDCONFIG | {"attn_resolutions", "dropout", "resamp_with_conv", "give_pre_end"},
    "BitDance": _MAGVIT2_DDCONFIG,
}


def _known_keys(section: Any, known: set[str], where: str) -> dict[str, Any]:
    _require(isinstance(section, dict), f"{where} must be a mapping, got {section!r}")
    unknown = sorted(set(section) - known)
    _require(not unknown, f"unknown keys in {where}: {unknown}; the official class accepts {sorted(known)}")
    return section


def read_family_config(raw: dict[str, Any]) -> OfficialConfig:
    """An Open-MAGVIT2, IBQ or BitDance config (`model.class_path`, `model.init_args.ddconfig`, ...) → a
    TokenizerConfig. Open-MAGVIT2 and BitDance are lookup-free over the z_channels latent channels; IBQ is the Taming
    VQGAN with `n_embed` codes of dimension `embed_dim`, assigned by dot product."""
    model = raw["model"]
    family = FAMILY_CLASS_PATHS.get(model["class_path"])
    _require(
        family is not None,
        f"model.class_path {model['class_path']!r} is none of the known tokenizers {sorted(FAMILY_CLASS_PATHS)}",
    )
    args = _known_keys(model.get("init_args"), _FAMILY_INIT_ARGS[family], f"the {family} config's model.init_args")
    dd = _known_keys(args.get("ddconfig"), _FAMILY_DDCONFIG[family], f"the {family} config's ddconfig")
    missing = sorted({"z_channels", "ch", "ch_mult", "num_res_blocks"} - set(dd))
    _require(not missing, f"the {family} config's ddconfig lacks {missing}")
    _require(not dd.get("double_z", False), "double_z: True (a KL autoencoder's latent) is not a quantised tokenizer")
    _require(dd.get("in_channels", 3) == dd.get("out_ch", 3), "ddconfig in_channels and out_ch must be equal")
    z_channels = _coerce(dd["z_channels"], int, f"{family} ddconfig.z_channels")
    values: dict[str, Any] = {
        "hidden_channels": dd["ch"],
        "channel_mult": dd["ch_mult"],
        "num_res_blocks": dd["num_res_blocks"],
        "num_channels": dd.get("in_channels", 3),
        "image_size": dd.get("resolution", 256),  # IBQ: also what places the attention blocks
    }
    if family == "IBQ":
        _require(args.get("remap") is None, "IBQ's index remapping (remap) is not supported")
        _require(dd.get("resamp_with_conv", True), "resamp_with_conv: False (average pooling) is not supported")
        _require(not dd.get("give_pre_end", False), "give_pre_end: True (a decoder without conv_out) is not supported")
        entropy = (args.get("lossconfig") or {}).get("params", {}).get("entropy_loss_weight", 0.05)
        values |= {
            "model_class": "taming",
            "quantizer": "vq",
            "code_assignment": "dot_product",
            "codebook_size": args.get("n_embed"),
            "token_size": args.get("embed_dim"),
            "z_channels": z_channels,
            "attn_resolutions": dd.get("attn_resolutions", ()),
            "commitment_cost": args.get("beta", 0.25),
            "entropy_loss_weight": entropy if args.get("use_entropy_loss", False) else 0.0,
            "entropy_loss_temperature": args.get("entropy_temperature", 0.01),
        }
    else:
        # The Open-MAGVIT2 autoencoder ignores ddconfig.resolution (imagenet_lfqgan_256_L.yaml says 128): the size
        # it was trained at is the data section's. BitDance states neither; it was trained at 256.
        data_size = ((raw.get("data") or {}).get("init_args") or {}).get("train", {}).get("params", {})
        data_size = (data_size.get("config") or {}).get("size")
        values |= {
            "model_class": "magvit2",
            "quantizer": "lfq",
            "token_size": z_channels,
            "image_size": data_size or dd.get("resolution", 256),
        }
    if family == "Open-MAGVIT2":
        n_embed, embed_dim = args.get("n_embed"), args.get("embed_dim")
        _require(
            embed_dim == z_channels and n_embed == 2**z_channels,
            "Open-MAGVIT2's lookup-free quantiser codes z_channels bits: embed_dim must equal z_channels and n_embed "
            f"2^z_channels = {2**z_channels}, got embed_dim {embed_dim}, n_embed {n_embed}",
        )
    if family == "BitDance":
        groups = args.get("num_codebooks", 1)
        _require(
            isinstance(groups, int) and groups >= 1 and z_channels % groups == 0,
            f"num_codebooks must divide z_channels = {z_channels} (BitDance codes a token as num_codebooks groups of "
            f"z_channels / num_codebooks bits), got {groups!r}",
        )
        _require(not args.get("gan_decoder", False), "gan_decoder: True (a decoder fed with noise) is not supported")
        values["entropy_loss_weight"] = 0.0  # its entropy term is per bit group: not reproduced
    tokenizer = config_from_dict(TokenizerConfig, values)
    return OfficialConfig(tokenizer, None, None, {k: v for k, v in raw.items() if k != "model"})
