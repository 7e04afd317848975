"""Loading and saving models: official `.bin` state dicts, Lightning `.ckpt` files, the hub, and our own format.

`from_pretrained(source, config=None)` accepts
  * a directory written by `save_pretrained` (`config.json` + `model.safetensors`);
  * an official `.bin` state dict (or a directory holding `pytorch_model.bin`), a Lightning `.ckpt` (the Taming
    VQGAN's, Open-MAGVIT2's, IBQ's: its `state_dict` without the training loss's `loss.*` keys) or a `{"state_dict":
    ...}` file (BitDance's `.pt`), with `config` an official YAML file, a preset name or a config object; without
    `config` the preset whose shapes match is used;
  * a hub id such as "markweber/maskbit_tokenizer_12bit" (official file name `<repo name>.bin`, or the names in
    `OFFICIAL_VQ_HUB_FILES` and `FAMILY_HUB_FILES`, downloaded with huggingface_hub; other repos are read in our
    own format);
  * "default" (and "default-vq", "default-omv", "default-ibq" for the tokenizer): the small models bundled with this
    package.
Checkpoints trained with an exponential moving average (Lightning's LitEma: Open-MAGVIT2, IBQ) hold two copies of
every parameter, the raw training weights under their names and the EMA weights under `model_ema.<name without
dots>`; `weights=` picks one (`select_weights`), by default the EMA copy, which the official evaluation uses.
Official files are read with `torch.load(weights_only=True)` only: nothing in a checkpoint can run code. Training
metadata that Lightning pickles beside the weights (callback states, hyper-parameters) is read as inert
placeholders, never imported or called; any other Python object is refused with its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from maskbit.config import SamplingConfig, config_from_dict
from maskbit.device import check_precision, pick_device
from maskbit.files import atomic_write
from maskbit.official import OfficialConfig, read_official_yaml
from maskbit.presets import SAMPLING_PRESETS

__all__ = [
    "PretrainedMixin",
    "CheckpointError",
    "HubDownloadError",
    "MetadataPlaceholder",
    "load_official_state_dict",
    "select_weights",
    "class_names",
    "DEFAULT_MODEL_DIR",
    "BUNDLED_MODELS",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).parent / "pretrained" / "default"
# The bundled models by name: the LFQ pair, and the VQ tokenizer trained with the same recipe (its "twin").
BUNDLED_MODELS = {
    ("tokenizer", "default"): DEFAULT_MODEL_DIR / "tokenizer",
    ("generator", "default"): DEFAULT_MODEL_DIR / "generator",
    ("tokenizer", "default-vq"): DEFAULT_MODEL_DIR / "tokenizer-vq",
    # The Open-MAGVIT2 architecture trained with the same recipe (issue 26), a tokenizer only: it pairs with no
    # generator.
    ("tokenizer", "default-omv"): DEFAULT_MODEL_DIR / "tokenizer-omv",
    # IBQ's Taming autoencoder with dot-product VQ over 4,096 codes, the same recipe (issue 36): a tokenizer only.
    ("tokenizer", "default-ibq"): DEFAULT_MODEL_DIR / "tokenizer-ibq",
}
FORMAT_NAME = "maskbit-explorer"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, OFFICIAL_WEIGHTS_FILE = "config.json", "model.safetensors", "pytorch_model.bin"
# The published generator files still name the input projection `token_emb` (spec §4.2).
OFFICIAL_RENAMES = {"token_emb.": "input_proj."}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ------------------------------------------------------------------------------------------- what a model folder says


def _model_directory(generator_source: str | Path) -> Path:
    source = DEFAULT_MODEL_DIR / "generator" if str(generator_source) == "default" else Path(generator_source)
    return source if source.is_dir() else source.parent


def class_names(generator_source: str | Path, num_classes: int) -> list[str]:
    """The names of a generator's classes: the model's own `classes.json` (the bundled model, training runs; it wins
    even when it names fewer classes than the config's `num_classes`, e.g. 10 shapes of a 1000-class recipe),
    ImageNet's for 1000 classes (torchvision's list), else "class i"."""
    try:
        names = json.loads((_model_directory(generator_source) / "classes.json").read_text())
        if isinstance(names, list) and names:
            return [str(n) for n in names[:num_classes]]
    except (OSError, ValueError):
        pass
    if num_classes == 1000:
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    return [f"class {i}" for i in range(num_classes)]


def default_sampling(generator_source: str | Path, generator_config: Any = None) -> SamplingConfig:
    """The sampling a generator was made for, by one rule for the CLI, the app and the benchmarks:

    1. the `sampling` stored with the model (`save_pretrained(..., sampling=)`: the bundled model, exported runs),
       or in the config.json of the training run whose `model/` directory it is;
    2. the sampling keys of an official YAML given as `generator_config` (`model.mlm_model`: num_steps,
       guidance_scale, …), which the official code samples with;
    3. the paper's preset of an official generator, named by its hub id, file name or config preset;
    4. otherwise the official 12-bit defaults (`SamplingConfig()`).
    """
    directory = _model_directory(generator_source)
    for config_file in (directory / CONFIG_FILE, directory.parent / CONFIG_FILE):
        stored = _stored_sampling(config_file)
        if stored is not None:
            return stored
    official = generator_config if isinstance(generator_config, OfficialConfig) else None
    if isinstance(generator_config, (str, Path)) and Path(generator_config).suffix in (".yaml", ".yml"):
        official = read_official_yaml(generator_config)
    if official is not None and official.sampling is not None:
        return official.sampling
    for name in (generator_config, generator_source):
        if isinstance(name, (str, Path)):
            stem = Path(str(name)).name.removesuffix(".bin").removesuffix(".yaml").removesuffix(".yml")
            if stem in SAMPLING_PRESETS:
                return SAMPLING_PRESETS[stem]
    return SamplingConfig()


def _stored_sampling(config_file: Path) -> SamplingConfig | None:
    try:
        stored = json.loads(config_file.read_text()).get("sampling")
        return config_from_dict(SamplingConfig, stored) if isinstance(stored, dict) else None
    except (OSError, ValueError, AttributeError):  # absent, not JSON, not a dict, or not sampling settings
        return None


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why and what to do."""


class HubDownloadError(CheckpointError):
    """A hub checkpoint that could not be downloaded (offline, unknown repo). `url`: the file to fetch elsewhere;
    `file_name`: the name to keep (an official file's name names its preset)."""

    def __init__(self, message: str, url: str, file_name: str):
        super().__init__(message)
        self.url, self.file_name = url, file_name


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official weights file: a flat `{key: tensor}` torch.save file, or a Lightning checkpoint whose
    `state_dict` is taken without the `loss.*` keys (the training loss's discriminator, as the official loader does)."""
    path = Path(path)
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic[:4] != b"PK\x03\x04" and magic[:1] != b"\x80":  # torch.save's zip format, or a legacy pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.save file); pass the .bin or .ckpt file")
    checkpoint = _load_restricted(path)
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = {k: v for k, v in checkpoint["state_dict"].items() if not str(k).startswith("loss.")}
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(
            f"{path} holds neither a flat {{key: tensor}} state dict, as the official .bin files do, nor a "
            "Lightning checkpoint with a state_dict"
        )
    state_dict = dict(checkpoint)
    for old, new in OFFICIAL_RENAMES.items():
        state_dict = {new + k[len(old) :] if k.startswith(old) else k: v for k, v in state_dict.items()}
    return state_dict


EMA_PREFIX = "model_ema."
# LitEma's own state beside the EMA copies: the decay and the update count, not weights.
EMA_STATE = {"model_ema.decay", "model_ema.num_updates"}
WEIGHT_CHOICES = (None, "ema", "raw")


def select_weights(
    state_dict: Mapping[str, torch.Tensor], names: list[str], weights: str | None, source: Path | str
) -> dict[str, torch.Tensor]:
    """One set of weights from a state dict that may hold EMA copies (`model_ema.<name without dots>`).

    `weights`: None, the EMA copy where the file has EMA weights (as the official evaluation, under `ema_scope`),
    else the weights as stored; "ema", the EMA copy, required; "raw", the raw training weights, required (what the
    Open-MAGVIT2 AR stage loads). `names` are the model's state-dict keys: with the file's own raw keys they map the
    dotless EMA names back (a name the model does not know stays `model_ema.…`, an unexpected key for the caller to
    report). The training loss's EMA copies (`model_ema.loss…`) are dropped, as the official loader does.
    """
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be 'ema', 'raw' or None (EMA where the file has it), got {weights!r}")
    raw = {k: v for k, v in state_dict.items() if not k.startswith(EMA_PREFIX)}
    has_ema_state = any(k.startswith(EMA_PREFIX) for k in state_dict)
    copies = {
        k.removeprefix(EMA_PREFIX): v
        for k, v in state_dict.items()
        if k.startswith(EMA_PREFIX) and k not in EMA_STATE and not k.removeprefix(EMA_PREFIX).startswith("loss")
    }
    if weights == "raw" or (weights is None and not has_ema_state):
        if not raw:
            raise CheckpointError(
                f"{source} holds only EMA weights ({EMA_PREFIX}<name without dots>), no raw training weights; "
                "load them with weights='ema' (or leave weights unset)"
            )
        return raw
    if not copies:
        found = "only LitEma's decay and update count and " if has_ema_state else ""
        raise CheckpointError(
            f"{source} holds {found}no EMA weights: expected {EMA_PREFIX}<parameter name without dots> for every "
            "parameter beside the raw weights (the published Open-MAGVIT2 and IBQ checkpoints hold both, and their "
            "evaluation uses the EMA copy). To load the raw training weights it holds, pass weights='raw'"
        )
    by_dotless: dict[str, str] = {}
    for name in dict.fromkeys([*names, *raw]):
        dotless = name.replace(".", "")
        if by_dotless.setdefault(dotless, name) != name:
            raise CheckpointError(
                f"{source}: the EMA copy {EMA_PREFIX}{dotless} could belong to {by_dotless[dotless]} or to {name}; "
                "pass weights='raw', or convert the file with the names resolved"
            )
    without_copy = [k for k in raw if k.replace(".", "") not in copies]
    if without_copy:
        shown = ", ".join(without_copy[:8]) + (f", … ({len(without_copy)} in all)" if len(without_copy) > 8 else "")
        raise CheckpointError(
            f"{source} holds EMA weights, but none for these raw weights: {shown}; expected "
            f"{EMA_PREFIX}<name without dots> for each (is the file complete?). Pass weights='raw' for the raw weights"
        )
    return {by_dotless.get(k, EMA_PREFIX + k): v for k, v in copies.items()}


# Globals that training checkpoints pickle as metadata beside the weights: Lightning callback classes (keys of the
# callback states in Lightning < 1.5) and other Lightning objects, hyper-parameters as argparse.Namespace or
# omegaconf containers, numpy scalars and arrays in callback states, paths. They load as placeholders.
_METADATA_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "numpy.dtypes.")
_METADATA_GLOBALS = {
    "argparse.Namespace",
    "typing.Any",
    "pathlib.Path",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct",
}


class MetadataPlaceholder:
    """Stands in for a metadata object of a training checkpoint: it keeps the pickle's arguments and state as data,
    and its real class is never imported, constructed or called."""

    qualified_name: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name}>"


def _is_metadata(name: str) -> bool:
    return name in _METADATA_GLOBALS or name.startswith(_METADATA_PREFIXES)


def _load_restricted(path: Path) -> Any:
    """torch.load(weights_only=True), with the known training-metadata globals as placeholders."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_error = error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise _unreadable(path, error) from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file cannot be scanned: explain the first refusal
        names = []
    refused = [name for name in names if not _is_metadata(name)]
    if refused or not names:
        reason = f"it calls {', '.join(refused)}" if refused else _unpickling_reason(str(first_error))
        raise CheckpointError(
            f"refused to load {path}: {reason}, which is neither a tensor nor known training metadata, and loading "
            "it could run arbitrary code. If you trust the file, extract its weights once in an environment you "
            "trust: torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.bin') (or the checkpoint "
            "itself if it is a state dict), then pass weights.bin."
        ) from None
    placeholders = [
        (type(name.rsplit(".", 1)[-1], (MetadataPlaceholder,), {"qualified_name": name}), name) for name in names
    ]
    try:
        with torch.serialization.safe_globals(placeholders):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: {_unpickling_reason(str(error))}; only tensors and training metadata "
            "(read as placeholders) are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"could not read {path} as a PyTorch checkpoint ({type(error).__name__}: {error}); "
        "the file is probably truncated or not a torch.save file: download it again"
    )


def _unpickling_reason(message: str) -> str:
    """The sentence of torch's weights_only refusal that names what was refused."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    paragraphs = [p.strip() for p in message.split("\n\n") if p.strip() and not p.strip().startswith(boilerplate)]
    return paragraphs[0].replace("WeightsUnpickler error:", "").strip() if paragraphs else message.splitlines()[0]


class PretrainedMixin:
    """`from_pretrained` / `save_pretrained` for a Module built from one config dataclass."""

    config_class: ClassVar[type]
    presets: ClassVar[dict[str, Any]]
    official_hub_files: ClassVar[dict[str, tuple[str, str]]] = {}  # hub repo name → (preset, weights file name)
    kind: ClassVar[str]  # "tokenizer" or "generator"
    config: Any
    _precision: str = "fp32"

    @property
    def precision(self) -> str:
        """What the tokenizer's encode / decode and the sampler's forward passes compute at (maskbit.device):
        "fp32" by default, the official code's numerics on every machine; "bf16" autocast; "auto", bf16 where it is
        native. A run-time choice, not part of the config or the checkpoint."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)

    # ---------------------------------------------------------------------------------------------- saving

    def save_pretrained(self, directory: str | Path, sampling: Any = None) -> Path:
        """Write `config.json` and `model.safetensors` into `directory` (each file written whole, then renamed).

        A generator may carry the sampling it was made for (a SamplingConfig): `default_sampling` reads it back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": self.kind}
        body = {"config": dataclasses.asdict(self.config)}
        if sampling is not None:
            body["sampling"] = dataclasses.asdict(sampling)
        text = json.dumps({**header, **body}, indent=2) + "\n"
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(text))
        return directory

    def identity(self) -> str:
        """sha256 of the config and every tensor of the state dict: equal iff the models compute the same thing.

        Only config fields that differ from their defaults are hashed, so that adding a field with a default (which
        changes no existing model) leaves the identities that indexes and token files record unchanged."""
        config = {
            f.name: getattr(self.config, f.name)
            for f in dataclasses.fields(self.config)
            if getattr(self.config, f.name) != f.default
        }
        digest = hashlib.sha256(json.dumps({"kind": self.kind, **config}, sort_keys=True).encode())
        for key, tensor in self.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def inference(self, device: torch.device | str | None = None, precision: str | None = None):
        """Frozen, in eval mode, on `device` (default: maskbit.device.pick_device), computing at `precision` (default:
        the model's own, see `precision`): how every CLI, the indexes and the app use a loaded model. Returns it."""
        if precision is not None:
            self.precision = precision  # refused here, not at the first forward pass
        device = pick_device(device if device is not None else "auto")
        return self.requires_grad_(False).eval().to(device)

    # ---------------------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls, source: str | Path, config: Any = None, weights: str | None = None, precision: str = "fp32"
    ):
        """Build the model and load its weights strictly; see the module docstring for `source` and `config`.

        `weights` picks the copy of a checkpoint with EMA weights: None (the EMA copy where there is one), "ema" or
        "raw" (see `select_weights`). A file in our own format holds one set of weights. `precision` is what the
        model computes at (see `precision`): float32 unless bf16 is asked for."""
        check_precision(precision)
        model = cls._load(source, config, weights)
        model.precision = precision
        return model

    @classmethod
    def _load(cls, source: str | Path, config: Any, weights: str | None):
        if weights not in WEIGHT_CHOICES:
            raise ValueError(f"weights must be 'ema', 'raw' or None (EMA where the file has it), got {weights!r}")
        if (cls.kind, str(source)) in BUNDLED_MODELS:
            name, source = str(source), BUNDLED_MODELS[cls.kind, str(source)]
            if not source.is_dir():
                raise FileNotFoundError(f"the bundled {name} {cls.kind} is missing: expected {source}")
        path = Path(source)
        if not path.exists():
            if HUB_ID.match(str(source)) and not str(source).startswith((".", "/")):
                return cls._from_hub(str(source), config, weights)
            raise FileNotFoundError(
                f"{source} is neither a file, a directory, 'default' nor a hub id like "
                f"'markweber/maskbit_{cls.kind}_12bit'"
            )
        if path.is_dir() and (path / CONFIG_FILE).is_file():
            return cls._from_own_format(path, config, weights)
        if path.is_dir():
            if not (path / OFFICIAL_WEIGHTS_FILE).is_file():
                raise FileNotFoundError(
                    f"{path} holds neither {CONFIG_FILE} + {WEIGHTS_FILE} nor {OFFICIAL_WEIGHTS_FILE}"
                )
            path = path / OFFICIAL_WEIGHTS_FILE
        state_dict = load_official_state_dict(path)
        if config is not None:
            resolved = cls.resolve_config(config)
        else:
            resolved = cls._infer_config(select_weights(state_dict, [], weights, path), path)
        return cls._build(resolved, state_dict, path, weights)

    @classmethod
    def _from_own_format(cls, directory: Path, config: Any, weights: str | None = None):
        try:
            stored = json.loads((directory / CONFIG_FILE).read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{directory / CONFIG_FILE} is not valid JSON: {error}") from None
        if stored.get("format") != FORMAT_NAME or stored.get("kind") != cls.kind:
            raise CheckpointError(
                f"{directory} holds a {stored.get('kind', 'unknown')} in format {stored.get('format')!r}; "
                f"expected a {cls.kind} saved by save_pretrained"
            )
        stored_config = config_from_dict(cls.config_class, stored["config"])
        if config is not None and cls.resolve_config(config) != stored_config:
            raise CheckpointError(f"{directory} carries its own config, which differs from the one passed; omit config")
        weights_path = directory / WEIGHTS_FILE
        try:
            state_dict = load_file(weights_path)
        except Exception as error:  # safetensors raises its own error types for truncated or foreign files
            raise CheckpointError(
                f"could not read {weights_path} ({type(error).__name__}: {error}); save it again"
            ) from None
        return cls._build(stored_config, state_dict, weights_path, weights)

    @classmethod
    def _from_hub(cls, repo_id: str, config: Any, weights: str | None = None):
        name = repo_id.split("/")[-1]
        if name in cls.official_hub_files:
            preset, file_name = cls.official_hub_files[name]
        elif name in cls.presets:
            preset, file_name = name, f"{name}.bin"
        else:
            preset = file_name = None
        files = [file_name] if file_name else [CONFIG_FILE, WEIGHTS_FILE]
        try:
            from huggingface_hub import hf_hub_download

            paths = [Path(hf_hub_download(repo_id, f)) for f in files]
        except Exception as error:
            where = os.environ.get("HF_HUB_CACHE") or "the Hugging Face cache (~/.cache/huggingface/hub)"
            url = f"https://huggingface.co/{repo_id}/resolve/main/{files[0]}"
            raise HubDownloadError(
                f"could not get {', '.join(files)} of the hub repo {repo_id} into {where} "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
                f"If this machine is offline, download {url} "
                f"elsewhere and pass its local path: {cls.__name__}.from_pretrained('path/to/{files[0]}'"
                + (f", config='{preset}')" if preset else ")"),
                url,
                files[0],
            ) from None
        if file_name:
            return cls._build(
                cls.resolve_config(config if config is not None else preset),
                load_official_state_dict(paths[0]),
                paths[0],
                weights,
            )
        return cls._from_own_format(paths[0].parent, config, weights)

    @classmethod
    def resolve_config(cls, config: Any):
        """A config object, a dict of fields, a preset name, an official YAML path or a config.json path."""
        if isinstance(config, cls.config_class):
            return config
        if isinstance(config, OfficialConfig):
            return cls._official_part(config, "the given OfficialConfig")
        if isinstance(config, Mapping):
            return config_from_dict(cls.config_class, dict(config))
        if isinstance(config, (str, Path)):
            if str(config) in cls.presets:
                return cls.presets[str(config)]
            path = Path(config)
            if path.suffix in (".yaml", ".yml"):
                return cls._official_part(read_official_yaml(path), str(path))
            if path.suffix == ".json" and path.is_file():
                stored = json.loads(path.read_text())
                return config_from_dict(cls.config_class, stored.get("config", stored))
            raise ValueError(
                f"config {config!r} is neither a preset ({', '.join(sorted(cls.presets))}) "
                "nor an existing .yaml/.json file"
            )
        raise TypeError(f"config must be a {cls.config_class.__name__}, dict, preset name or path, got {type(config)}")

    @classmethod
    def _official_part(cls, official: OfficialConfig, where: str):
        part = getattr(official, cls.kind)
        if part is None:
            raise ValueError(f"{where} has no model.mlm_model section, so it does not describe a generator")
        return part

    @classmethod
    def _infer_config(cls, state_dict: dict[str, torch.Tensor], path: Path):
        """The first preset whose state-dict shapes match the file exactly."""
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        hints = cls.inferred_config_fields(state_dict)  # only presets that agree with these can match
        for name, preset in cls.presets.items():
            if any(getattr(preset, field) != value for field, value in hints.items()):
                continue
            with torch.device("meta"):
                expected = {k: tuple(v.shape) for k, v in cls(preset).state_dict().items()}
            if expected == shapes:
                logger.info("%s matches the %s preset", path, name)
                return preset
        raise CheckpointError(
            f"{path} matches no {cls.kind} preset ({', '.join(sorted(cls.presets))}); pass config= "
            "(an official YAML file, a preset name or a config object)"
        )

    @classmethod
    def _build(cls, config: Any, state_dict: dict[str, torch.Tensor], source: Path, weights: str | None = None):
        model = cls(config)
        state_dict = select_weights(state_dict, list(model.state_dict()), weights, source)
        _check_state_dict(model, state_dict, source)
        model.load_state_dict(state_dict, strict=True)
        return model.eval()

    @classmethod
    def inferred_config_fields(cls, state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Config values readable from a state dict's shapes, used to explain mismatches."""
        return {}


def _check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
    """Raise a CheckpointError listing missing/unexpected keys and shape mismatches, with the likely cause."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        causes = []
        inferred = type(model).inferred_config_fields(state_dict)
        bit_tokens = inferred.get("quantizer", "lfq") == "lfq" == getattr(model.config, "quantizer", "lfq")
        for field, value in inferred.items():
            configured = getattr(model.config, field)
            if value != configured:
                in_bits = field == "token_size" and bit_tokens
                what = f"{value}-bit tokens" if in_bits else f"{field}={value!r}"
                said = f"{configured}" if in_bits else f"{field}={configured!r}"
                causes.append(f"checkpoint has {what}, config says {said}")
        if unexpected and all(k.startswith("module.") for k in state_dict):
            causes.append("keys start with 'module.': saved from a DistributedDataParallel wrapper; strip the prefix")
        other = "generator" if model.kind == "tokenizer" else "tokenizer"
        if any(k.split(".")[0] in _TOP_LEVEL_KEYS[other] for k in unexpected) and not any(
            k.split(".")[0] in _TOP_LEVEL_KEYS[model.kind] for k in state_dict
        ):
            causes.append(f"this looks like a {other} checkpoint, not a {model.kind}")
        lines = [f"{source} does not fit the {model.kind} config {model.config}:"]
        lines += [f"  likely cause: {c}" for c in causes]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if items:
                shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointError("\n".join(lines))
    for name, buffer in model.named_buffers():
        if not torch.equal(state_dict[name].to(buffer.dtype), buffer):
            raise CheckpointError(f"{source}: buffer {name} does not hold the expected bit table; the file is corrupt")


_TOP_LEVEL_KEYS = {
    "tokenizer": {"encoder", "decoder", "quantize"},
    "generator": {"pos_emb", "class_emb", "input_proj", "transformer", "prediction_layer", "first_layer", "last_layer"},
}
