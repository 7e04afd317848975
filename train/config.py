"""Training configs: one frozen dataclass per concern, composed per stage, with presets and `--set` overrides.

A resolved config is written to the run directory as `config.json` and is all a resume needs. Official YAML files
(`configs/tokenizer/*.yaml`, `configs/generator/*.yaml`) are read into the same dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskbit.config import MASK_SCHEDULES, GeneratorConfig, SamplingConfig, TokenizerConfig, config_from_dict
from maskbit.official import read_official_yaml
from maskbit.presets import GENERATOR_PRESETS, SAMPLING_PRESETS, TOKENIZER_PRESETS

__all__ = [
    "DataConfig",
    "OptimizerConfig",
    "TrainingConfig",
    "TokenizerLossConfig",
    "DiscriminatorConfig",
    "TokenizerTrainConfig",
    "GeneratorTrainConfig",
    "TOKENIZER_TRAIN_PRESETS",
    "GENERATOR_TRAIN_PRESETS",
    "load_train_config",
    "apply_overrides",
    "to_dict",
    "from_dict",
    "PATH_FIELDS",
]

# The settings whose values name files or folders the trainer reads (an app that starts training checks them all).
PATH_FIELDS = {
    "tokenizer": ("data.dataset", "data.pretokenized"),
    "generator": ("data.dataset", "data.pretokenized", "tokenizer", "tokenizer_config"),
}


MAX_RESOLUTION = 4096  # pixels per side
MAX_BATCH = 4096  # images per process and step


def _bounded(name: str, value: int, low: int, high: int | None) -> None:
    """Sizes and seeds are checked when a config is built, before anything is allocated from them."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be a whole number {bound}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "procedural"  # "procedural", an image folder (<class>/<file>) or tar shards (jpg + cls)
    split: str = "train"
    seed: int = 0  # procedural dataset seed
    resolution: int = 256
    random_crop: bool = True
    min_scale: float = 0.8
    aspect_ratio_aug: bool = True
    random_flip: bool = True
    interpolation: str = "bilinear"
    num_workers: int = 0
    pretokenized: str = ""  # generator: token file written by `python -m train pretokenize`

    def __post_init__(self) -> None:
        _bounded("data.resolution", self.resolution, 8, MAX_RESOLUTION)
        _bounded("data.num_workers", self.num_workers, 0, 64)
        _bounded("data.seed", self.seed, 0, 2**63 - 1)
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"data.min_scale must be in (0, 1], got {self.min_scale}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"data.interpolation must be bilinear or bicubic, got {self.interpolation!r}")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up then cosine decay to min_lr_ratio·lr ("cosine_with_minimum")."""

    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-4
    eps: float = 1e-8
    warmup_steps: int = 5000
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class TrainingConfig:
    max_steps: int = 1_350_000
    batch_size: int = 16  # per process
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "auto"  # accelerate's "no", "bf16", "fp16"; "auto": maskbit.device.mixed_precision
    seed: int = 42
    use_ema: bool = True
    ema_decay: float = 0.999
    log_every: int = 50
    save_every: int = 5000
    sample_every: int = 5000
    keep_last: int = 3
    num_samples: int = 16  # images in each sample grid
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"training.mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "save_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be ≥ 1, got {getattr(self, name)}")
        _bounded("training.batch_size", self.batch_size, 1, MAX_BATCH)
        _bounded("training.num_samples", self.num_samples, 1, 256)
        _bounded("training.sample_every", self.sample_every, 1, None)
        _bounded("training.seed", self.seed, 0, 2**31 - 1)  # seed + process index seeds numpy (< 2**32)
        if not 0 <= self.ema_decay <= 1:
            raise ValueError(f"training.ema_decay must be in [0, 1], got {self.ema_decay}")


@dataclass(frozen=True)
class TokenizerLossConfig:
    """Spec §1.7: 4·L2 + 0.1·perceptual + quantiser (annealed entropy) + hinge GAN with LeCAM."""

    reconstruction_weight: float = 4.0
    perceptual: str = "resnet50"  # "resnet50" (logits, as in the paper), "lpips", or "none"
    perceptual_weight: float = 0.1
    quantizer_weight: float = 1.0
    entropy_annealing_steps: int = 2000
    entropy_annealing_factor: float = 2.0
    discriminator_start: int = 20_000
    discriminator_factor: float = 1.0
    discriminator_weight: float = 0.02
    discriminator_learning_rate: float = 1e-4
    lecam_weight: float = 0.001
    lecam_ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.perceptual not in ("resnet50", "lpips", "none"):
            raise ValueError(f"loss.perceptual must be resnet50, lpips or none, got {self.perceptual!r}")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Spec §1.6 (NLayerDiscriminatorv2): 5×5 stem, stages of 3×3 conv → blur-pool ↓2 → GroupNorm → LeakyReLU."""

    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 8)
    blur_kernel_size: int = 4
    pool_size: int = 16  # logits grid: the token grid


@dataclass(frozen=True)
class TokenizerTrainConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(resolution=256))
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    stage: str = "tokenizer"


@dataclass(frozen=True)
class GeneratorTrainConfig:
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    tokenizer: str = "default"  # a from_pretrained source
    tokenizer_config: str = ""  # for an official .bin: preset name or YAML
    data: DataConfig = field(
        default_factory=lambda: DataConfig(resolution=256, aspect_ratio_aug=False, interpolation="bicubic")
    )
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(beta2=0.96, weight_decay=0.045))
    class_label_dropout: float = 0.1
    label_smoothing: float = 0.1
    # which (position, group) entries the cross-entropy averages over: "all" (the official MLMLoss, spec §2.4) or
    # "masked" (MaskGIT's: the unmasked entries, copied from the input, teach nothing)
    loss_on: str = "all"
    # how each sample's masking probability is drawn from its U(0, 1) draw: "arccos" (official, spec §2.4) or
    # another of the sampler's schedules ("cosine": MaskGIT's, more grids masked almost entirely)
    mask_schedule: str = "arccos"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # for the sample grids
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(batch_size=32))
    stage: str = "generator"

    def __post_init__(self) -> None:
        check_loss_on(self.loss_on)
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {MASK_SCHEDULES}, got {self.mask_schedule!r}")


LOSS_ON = ("all", "masked")


def check_loss_on(loss_on: str) -> None:
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")


# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------


def _official_tokenizer(k: int) -> TokenizerTrainConfig:
    return TokenizerTrainConfig(model=TOKENIZER_PRESETS[f"maskbit_tokenizer_{k}bit"])


def _official_generator(k: int) -> GeneratorTrainConfig:
    return GeneratorTrainConfig(
        model=GENERATOR_PRESETS[f"maskbit_generator_{k}bit"],
        tokenizer=f"markweber/maskbit_tokenizer_{k}bit",
        sampling=SAMPLING_PRESETS[f"maskbit_generator_{k}bit"],
    )


_TINY_TRAINING = TrainingConfig(
    max_steps=6, batch_size=4, seed=0, log_every=1, save_every=3, sample_every=3, keep_last=2, num_samples=4
)
_FAST_OPTIMIZER = OptimizerConfig(learning_rate=1e-3, warmup_steps=2)

TOKENIZER_TRAIN_PRESETS: dict[str, TokenizerTrainConfig] = {
    **{f"maskbit_tokenizer_{k}bit": _official_tokenizer(k) for k in (10, 12, 14, 16, 18)},
    # VQGAN+ (configs/tokenizer/vqgan_plus_{10,12}bit.yaml): the same recipe with a learned codebook, no entropy term.
    **{
        f"vqgan_plus_{k}bit": TokenizerTrainConfig(
            model=TOKENIZER_PRESETS[f"vqgan_plus_{k}bit"], loss=TokenizerLossConfig(entropy_annealing_factor=0.0)
        )
        for k in (10, 12)
    },
    # Seconds on a CPU, for tests: 32×32 procedural images → 8×8 tokens of 12 bits, the GAN from step 2.
    # The bundled default model: 64×64 procedural shapes → 16×16 tokens of 12 bits on 2 CPU cores. 4× downsampling,
    # not the official 16×: with 8×8 tokens eval PSNR was 14.8 dB after 500 steps, with 16×16 18.5 dB after 300.
    # 8 GroupNorm groups instead of 32 and a 16·L2 reconstruction weight instead of 4 each gained about 0.5 dB at
    # 600 steps; bf16 autocast halves the step time (bench/README.md, "Bundled default model quality").
    "default": TokenizerTrainConfig(
        model=TokenizerConfig(
            token_size=12, hidden_channels=64, channel_mult=(1, 1, 2), num_res_blocks=1, norm_groups=8, image_size=64
        ),
        data=DataConfig(resolution=64, random_crop=False),
        optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=100),
        loss=TokenizerLossConfig(
            reconstruction_weight=16.0, perceptual="none", entropy_annealing_steps=200, discriminator_start=1_000_000
        ),
        discriminator=DiscriminatorConfig(hidden_channels=32, channel_mult=(1, 2, 4), pool_size=16),
        training=TrainingConfig(
            max_steps=3600,
            batch_size=16,
            mixed_precision="auto",  # bf16 where the CPU has it natively (2x faster); emulated it is 22x slower
            seed=0,
            log_every=10,
            save_every=400,
            sample_every=400,
            num_samples=8,
        ),
    ),
    "tiny_vq": TokenizerTrainConfig(
        # The official-vq-tiny VQGAN+ (4,096 codes of dimension 16), with the entropy term on to exercise it.
        model=dataclasses.replace(TOKENIZER_PRESETS["tiny_vqgan_plus"], entropy_loss_weight=0.02),
        data=DataConfig(resolution=32, random_crop=False),
        optimizer=_FAST_OPTIMIZER,
        loss=TokenizerLossConfig(perceptual="none", discriminator_start=2, entropy_annealing_steps=4),
        discriminator=DiscriminatorConfig(hidden_channels=32, channel_mult=(1, 2), pool_size=8),
        training=_TINY_TRAINING,
    ),
    "tiny": TokenizerTrainConfig(
        model=TOKENIZER_PRESETS["tiny"],
        data=DataConfig(resolution=32, random_crop=False),
        optimizer=_FAST_OPTIMIZER,
        loss=TokenizerLossConfig(perceptual="none", discriminator_start=2, entropy_annealing_steps=4),
        discriminator=DiscriminatorConfig(hidden_channels=32, channel_mult=(1, 2), pool_size=8),
        training=_TINY_TRAINING,
    ),
}

# The bundled default tokenizer's VQ twin: the same autoencoder, data, optimiser, losses (the entropy term included)
# and step budget, with a learned codebook of 4,096 codes (12 bits, as the LFQ tokenizer's tokens) in place of
# lookup-free bits. Codes of dimension 12, the LFQ latent's width, so the decoder's input differs only in what is
# quantised. l2-normalised codes and the entropy term, because the plain VQGAN+ quantiser collapsed in 300-step
# pilots (7 codes per batch of 4,096 tokens, 13 dB): l2 alone used 20 % of the codebook, with the entropy term 53 %
# (model card, "The VQ twin").
TOKENIZER_TRAIN_PRESETS["default_vq"] = dataclasses.replace(
    TOKENIZER_TRAIN_PRESETS["default"],
    model=dataclasses.replace(
        TOKENIZER_TRAIN_PRESETS["default"].model,
        quantizer="vq",
        codebook_size=4096,
        token_size=12,
        use_l2_normalisation=True,
    ),
)

# The bundled default tokenizer's twins from the bit-token family (issue 26): the same data, optimiser, loss weights
# (16·L2, the entropy term at 0.02 annealed from 3× over 200 steps, no perceptual or GAN loss), step budget and token
# grid (64×64 → 16×16 tokens of 12 bits), with another autoencoder. Widths are chosen for a similar parameter count
# (default 1.74 M): the Open-MAGVIT2 architecture (lookup-free bits, bias-free residual blocks, a decoder whose
# adaptive GroupNorms take their scale and shift from the statistics of the whole token grid) at hidden width 56,
# 1.76 M; the IBQ architecture (the Taming VQGAN with attention at the 16×16 grid, a 4,096 × 48 codebook, the code of
# largest dot product with IBQ's index-propagation losses, `maskbit/quantizers.py`) at hidden width 48, 2.02 M.


def _twin(recipe: str, **model) -> TokenizerTrainConfig:
    """`recipe` (its data, optimiser, losses and schedule) with another autoencoder of three stages, one block each."""
    autoencoder = TokenizerConfig(channel_mult=(1, 1, 2), num_res_blocks=1, norm_groups=8, **model)
    return dataclasses.replace(TOKENIZER_TRAIN_PRESETS[recipe], model=autoencoder)


_OMV_TWIN = dict(model_class="magvit2")
_IBQ_TWIN = dict(model_class="taming", quantizer="vq", code_assignment="dot_product")
TOKENIZER_TRAIN_PRESETS["default_omv"] = _twin("default", **_OMV_TWIN, token_size=12, hidden_channels=56, image_size=64)
TOKENIZER_TRAIN_PRESETS["default_ibq"] = _twin(
    "default", **_IBQ_TWIN, codebook_size=4096, token_size=48, z_channels=48, hidden_channels=48, image_size=64,
    attn_resolutions=(16,),
)  # fmt: skip
# Their tiny versions, for tests: 32×32 images → 8×8 tokens, the GAN from step 2 (as `tiny`).
TOKENIZER_TRAIN_PRESETS["tiny_omv"] = _twin("tiny", **_OMV_TWIN, token_size=8, hidden_channels=16, image_size=32)
TOKENIZER_TRAIN_PRESETS["tiny_ibq"] = _twin(
    "tiny", **_IBQ_TWIN, codebook_size=256, token_size=16, z_channels=16, hidden_channels=16, image_size=32,
    attn_resolutions=(8,),
)  # fmt: skip

GENERATOR_TRAIN_PRESETS: dict[str, GeneratorTrainConfig] = {
    **{f"maskbit_generator_{k}bit": _official_generator(k) for k in (10, 12, 14, 16, 18)},
    # The bundled default model: a small generator over the default tokenizer's 16×16 × 12-bit tokens. Batch 16 at
    # twice the learning rate instead of batch 32: same images per second on the CPU, twice the updates; with half the
    # images and time it raised the generated-class accuracy from 18.6 % to 23.2 % (model card). 9,000 steps instead
    # of 3,000: 55.0 % judged as their class against 47.8 %; a depth of 8 or the loss on masked entries only, at 3,000
    # steps, gained nothing (model card, "Training pilots").
    "default": GeneratorTrainConfig(
        model=GENERATOR_PRESETS["default"],
        tokenizer="default",
        data=DataConfig(resolution=64, random_crop=False, pretokenized="runs/default-tokens.npz"),
        optimizer=OptimizerConfig(learning_rate=2e-3, beta2=0.96, weight_decay=0.045, warmup_steps=200),
        sampling=SAMPLING_PRESETS["default"],
        training=TrainingConfig(
            max_steps=9000,
            batch_size=16,
            mixed_precision="auto",
            seed=0,
            log_every=10,
            save_every=1000,
            sample_every=500,
            num_samples=16,
        ),
    ),
    "tiny": GeneratorTrainConfig(
        # the official tiny architecture (tests/fixtures/official-tiny) with one class per procedural shape: a
        # generator trained on the shapes has their 10 classes, not ImageNet's 1000
        model=dataclasses.replace(GENERATOR_PRESETS["tiny"], num_classes=10),
        tokenizer="",  # must be given: e.g. a tiny tokenizer run's model directory
        data=DataConfig(resolution=32, random_crop=False),
        optimizer=_FAST_OPTIMIZER,
        sampling=SAMPLING_PRESETS["tiny"],
        training=_TINY_TRAINING,
    ),
}

# The memorization audit's positive control (bench/README.md, "Memorization audit"): the `default` generator on
# the first 64 training images only, long enough that its samples reproduce them. Make its token file with
# `python -m train pretokenize --tokenizer default --count 64 --out runs/memorize-tokens.npz`. 64 images are 4
# batches: 2,000 steps are 500 epochs. EMA decay 0.99 so the exported weights follow the memorized ones.
_DEFAULT_GENERATOR = GENERATOR_TRAIN_PRESETS["default"]
GENERATOR_TRAIN_PRESETS["memorize"] = dataclasses.replace(
    _DEFAULT_GENERATOR,
    data=dataclasses.replace(_DEFAULT_GENERATOR.data, random_flip=False, pretokenized="runs/memorize-tokens.npz"),
    optimizer=dataclasses.replace(_DEFAULT_GENERATOR.optimizer, weight_decay=0.0, warmup_steps=100),
    training=dataclasses.replace(
        _DEFAULT_GENERATOR.training, max_steps=2000, ema_decay=0.99, save_every=250, sample_every=250
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# Dicts, files and overrides
# ---------------------------------------------------------------------------------------------------------------

TrainConfig = TokenizerTrainConfig | GeneratorTrainConfig


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Nested dict → nested frozen dataclasses, with type conversion and unknown-key errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
    nested = {k: from_dict(hints[k], v) for k, v in values.items() if dataclasses.is_dataclass(hints[k])}
    flat = {k: v for k, v in values.items() if k not in nested}
    if any(not dataclasses.is_dataclass(hints[k]) for k in names):
        base = config_from_dict(cls, flat) if flat else cls()
        return dataclasses.replace(base, **nested)
    return cls(**nested)


def flat_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"training.max_steps": 6, ...}: every settable key with its value."""
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(flat_keys(value, f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = value
    return keys


def unknown_key_message(key: str, valid: list[str]) -> str:
    """Name the few closest keys (a typo), or else the keys of the section named, or the sections; never all ~80."""
    section, _, name = key.rpartition(".")
    in_section = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == section] if section else []
    if in_section:
        close = difflib.get_close_matches(name, in_section, n=3, cutoff=0.6)
        if close:
            return f"unknown config key {key!r} (did you mean {', '.join(f'{section}.{c}' for c in close)}?)"
        return f"unknown config key {key!r}; the keys of {section}: {', '.join(in_section)}"
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if close:
        return f"unknown config key {key!r} (did you mean {', '.join(close)}?)"
    sections = sorted({k.split(".")[0] for k in valid if "." in k})
    single = [k for k in valid if "." not in k]
    return f"unknown config key {key!r}; keys are section.name, sections {', '.join(sections + single)}"


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Apply `key=value` strings (dotted keys, YAML values: `training.max_steps=100`, `model.channel_mult=[1,2]`)."""
    import yaml

    values = to_dict(config)
    valid = flat_keys(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key=value")
        if key not in valid or key == "stage":
            raise ValueError(unknown_key_message(key, [k for k in valid if k != "stage"]))
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        if (value is None and raw.strip()) or (isinstance(target.get(leaf), str) and not isinstance(value, str)):
            value = raw.strip()  # a text setting keeps the text: mixed_precision=no is "no", not YAML's False
        target[leaf] = value
    return from_dict(type(config), values)


def load_train_config(stage: str, preset: str | None = None, config_file: str | None = None) -> TrainConfig:
    """A preset, a `config.json` written by a run, or an official YAML file; the stage's defaults otherwise."""
    cls, presets = (
        (TokenizerTrainConfig, TOKENIZER_TRAIN_PRESETS)
        if stage == "tokenizer"
        else (GeneratorTrainConfig, GENERATOR_TRAIN_PRESETS)
    )
    if preset and config_file:
        raise ValueError("give either a preset or a config file, not both")
    if preset:
        if preset not in presets:
            raise ValueError(f"unknown {stage} preset {preset!r}; presets: {', '.join(presets)}")
        return presets[preset]
    if not config_file:
        return cls()
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix == ".json":
        values = json.loads(path.read_text())
        if values.get("stage", stage) != stage:
            raise ValueError(f"{path} is a {values['stage']} config, not a {stage} config")
        return from_dict(cls, values)
    if path.suffix in (".yaml", ".yml"):
        return _from_official(cls, read_official_yaml(path))
    raise ValueError(f"config file must be .json (from a run directory) or an official .yaml, got {path}")


def _present(cls: type, **values: Any) -> Any:
    """A config from the values an official file actually has (None = absent: keep our default)."""
    return config_from_dict(cls, {k: v for k, v in values.items() if v is not None})


def _from_official(cls: type, official) -> TrainConfig:
    """The training sections of an official YAML file (spec §1.9, §2.6) as our dataclasses."""
    sections = official.sections
    losses = sections.get("losses") or {}
    optimizer = (sections.get("optimizer") or {}).get("params") or {}
    scheduler = (sections.get("lr_scheduler") or {}).get("params") or {}
    training = sections.get("training") or {}
    preprocessing = (sections.get("dataset") or {}).get("preprocessing") or {}
    data = _present(
        DataConfig,
        resolution=preprocessing.get("resolution", preprocessing.get("crop_size")),
        random_crop=preprocessing.get("random_crop"),
        random_flip=preprocessing.get("random_flip"),
        min_scale=preprocessing.get("min_scale"),
        aspect_ratio_aug=preprocessing.get("use_aspect_ratio_aug"),
        interpolation=preprocessing.get("interpolation"),
    )
    opt = _present(
        OptimizerConfig,
        learning_rate=optimizer.get("learning_rate"),
        beta1=optimizer.get("beta1"),
        beta2=optimizer.get("beta2"),
        weight_decay=optimizer.get("weight_decay"),
        eps=optimizer.get("epsilon"),
        warmup_steps=scheduler.get("warmup_steps"),
        max_grad_norm=training.get("max_grad_norm"),
    )
    train = _present(
        TrainingConfig,
        max_steps=training.get("max_train_steps"),
        batch_size=training.get("per_gpu_batch_size"),
        gradient_accumulation_steps=training.get("gradient_accumulation_steps"),
        mixed_precision=training.get("mixed_precision"),
        seed=training.get("seed"),
        use_ema=training.get("use_ema"),
    )
    if cls is TokenizerTrainConfig:
        loss = _present(
            TokenizerLossConfig,
            reconstruction_weight=losses.get("reconstruction_weight"),
            perceptual=losses.get("perceptual_loss"),
            perceptual_weight=losses.get("perceptual_weight"),
            quantizer_weight=losses.get("quantizer_weight"),
            entropy_annealing_steps=losses.get("entropy_annealing_steps"),
            entropy_annealing_factor=losses.get("entropy_annealing_factor"),
            discriminator_start=losses.get("discriminator_start"),
            discriminator_factor=losses.get("discriminator_factor"),
            discriminator_weight=losses.get("discriminator_weight"),
            lecam_weight=losses.get("lecam_regularization_weight"),
            discriminator_learning_rate=optimizer.get("discriminator_learning_rate"),
        )
        return TokenizerTrainConfig(model=official.tokenizer, data=data, optimizer=opt, loss=loss, training=train)
    if official.generator is None:
        raise ValueError("this YAML file has no model.mlm_model section: it is not a generator config")
    if "use_aspect_ratio_aug" not in preprocessing:  # Stage II trains without aspect-ratio jitter
        data = dataclasses.replace(data, aspect_ratio_aug=False)
    return GeneratorTrainConfig(
        model=official.generator,
        data=data,
        optimizer=opt,
        sampling=official.sampling or SamplingConfig(),
        training=train,
    )
