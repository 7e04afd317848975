"""The official config files as an input format: MaskBit's YAML files (`configs/tokenizer/*.yaml`,
`configs/generator/*.yaml` of markweberdev/maskbit) and the bit-token family's LightningCLI files (Open-MAGVIT2, IBQ,
BitDance), read into the dataclasses of `maskbit.config`, so users can bring the official configs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maskbit.config import (
    MODEL_CLASSES,
    GeneratorConfig,
    SamplingConfig,
    TokenizerConfig,
    _coerce,
    _require,
    config_from_dict,
)

__all__ = ["OfficialConfig", "read_official_yaml", "read_family_config", "FAMILY_CLASS_PATHS"]


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
