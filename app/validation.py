"""What users send, checked before anything is allocated, opened or loaded.

Numbers and text from the API arrive as whatever a client sent (NaN, 2**70, a 2 MB string); every check here names
the parameter, says what was wrong and what is allowed, and runs before the value sizes an allocation. Paths are
allowed only inside the roots the deployer configured. Uploaded images are checked before they are decoded,
converted to RGB, and fitted to the tokenizer's size.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data.datasets import expand_braces, shard_paths
from maskbit.checkpoint import BUNDLED_MODELS, HUB_ID
from maskbit.config import GUIDANCE_ANNEALINGS, MASK_SCHEDULES, SamplingConfig
from maskbit.images import ImageTooLarge, fit_square, read_image
from maskbit.presets import TOKENIZER_PRESETS
from maskbit.sampling import MAX_SEED
from train.config import flat_keys
from train.rundir import RunDir

__all__ = [
    "UserError",
    "parse_ids",
    "load_upload",
    "fit_note",
    "whole_number",
    "real_number",
    "checked_seed",
    "bounded_text",
    "sampling_from",
    "SAMPLING_KNOBS",
    "KNOB_RANGES",
    "inside",
    "checked_model_source",
    "JobPaths",
    "public_message",
    "LIMITS",
]


class UserError(ValueError):
    """Bad input or an impossible request; the message says what was wrong and what to do."""


class LIMITS:
    """The bounds of every sized input of the app (the UI's sliders use the same numbers)."""

    steps = 256  # sampling steps
    k = 50  # neighbours
    walk_r = 256  # bits flipped per step of a walk
    walk_steps = 16
    report_images = (4, 256)
    report_plant = (0, 64)  # training images planted as copies under every edit of indexes.plant
    text = 10_000  # characters of a free-text field: id lists, class names, paths
    source = 1_000  # characters of a model source or a dataset path


# ---------------------------------------------------------------------------------------------------- numbers


def _shown(value) -> str:
    """A value for a message: text quoted, anything long cut to its start and its length."""
    text = str(value)
    if len(text) > 40:
        return (
            f"{text[:36]!r}… ({len(text)} characters)"
            if isinstance(value, str)
            else f"{text[:36]}… ({len(text)} digits)"
        )
    return repr(text) if isinstance(value, str) else text


def whole_number(value, name: str, low: int, high: int, note: str = "") -> int:
    """An int, an integral float or a numeric string in [low, high] → int; else a UserError naming `name` (and
    the range, followed by `note`)."""
    wanted = f"{name} must be a whole number from {low} to {high}{note}"
    if value is None or (isinstance(value, str) and not value.strip()):  # a cleared number box sends None
        raise UserError(f"{wanted}; the box is empty")
    if isinstance(value, bool):
        raise UserError(f"{wanted}; got {_shown(value)}")
    number = value
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 40:  # long digit strings: out of range, without converting 4,000 digits
            raise UserError(f"{wanted}; got {_shown(value)}")
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise UserError(f"{wanted}; got {_shown(value)}") from None
    if isinstance(number, float):
        if not math.isfinite(number) or number != int(number):
            raise UserError(f"{wanted}; got {_shown(value)}")
        number = int(number)
    if not isinstance(number, int):
        raise UserError(f"{wanted}; got {_shown(value)}")
    if not low <= number <= high:
        raise UserError(f"{wanted}; got {_shown(number)}")
    return number


def real_number(value, name: str, low: float, high: float) -> float:
    """A finite number in [low, high] → float; NaN, infinities and text get a UserError naming `name`."""
    wanted = f"{name} must be a number from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UserError(f"{wanted}; got {_shown(value)}")
    try:
        number = float(value) if not isinstance(value, str) or len(value) <= 40 else math.nan
    except ValueError:
        raise UserError(f"{wanted}; got {_shown(value)}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise UserError(f"{wanted}; got {_shown(value)}")
    return number


def checked_seed(value, name: str = "seed") -> int:
    """A seed for torch.Generator: 0 … 2**63 − 1."""
    return whole_number(value, name, 0, MAX_SEED, " (2**63 − 1)")


def bounded_text(value, name: str, max_chars: int = LIMITS.text) -> str:
    """None → ''; text of at most `max_chars` characters; anything else a UserError naming `name`."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{name} must be text; got {type(value).__name__}")
    if len(value) > max_chars:
        raise UserError(f"{name} is {len(value):,} characters long; the limit is {max_chars:,}: shorten it")
    return value


# The generate endpoint's sampling knobs by name, in the order of its widgets (app/layout.py builds them from this
# list, apply_preset fills them in it); every SamplingConfig field, whatever the dataclass's own field order.
SAMPLING_KNOBS = (
    "num_steps",
    "guidance_scale",
    "guidance_annealing",
    "scale_pow",
    "randomize_temperature",
    "softmax_temperature",
    "mask_schedule",
)


# The numeric knobs' ranges (low, high), checked here and used by the page's sliders (app/layout.py via page_values).
KNOB_RANGES = {
    "num_steps": (1, LIMITS.steps),
    "guidance_scale": (0, 15),
    "scale_pow": (0.01, 5),
    "randomize_temperature": (0, 15),
    "softmax_temperature": (0.01, 5),
}


def sampling_from(knobs: dict) -> SamplingConfig:
    """The generate endpoint's sampling knobs ({name: value} for every name in SAMPLING_KNOBS), each checked."""
    annealing, schedule = knobs["guidance_annealing"], knobs["mask_schedule"]
    if annealing not in GUIDANCE_ANNEALINGS:
        raise UserError(f"guidance_annealing must be one of {', '.join(GUIDANCE_ANNEALINGS)}; got {_shown(annealing)}")
    if schedule not in MASK_SCHEDULES:
        raise UserError(f"mask_schedule must be one of {', '.join(MASK_SCHEDULES)}; got {_shown(schedule)}")
    return SamplingConfig(
        num_steps=whole_number(knobs["num_steps"], "num_steps", *KNOB_RANGES["num_steps"]),
        guidance_scale=_knob(knobs, "guidance_scale"),
        guidance_annealing=annealing,
        scale_pow=_knob(knobs, "scale_pow"),
        randomize_temperature=_knob(knobs, "randomize_temperature"),
        softmax_temperature=_knob(knobs, "softmax_temperature"),
        mask_schedule=schedule,
    )


def _knob(knobs: dict, name: str) -> float:
    return real_number(knobs[name], name, *KNOB_RANGES[name])


# ---------------------------------------------------------------------------------------------------- id lists


ID_PART = re.compile(r"(-?\d+)(?:\s*-\s*(-?\d+))?")
MAX_ID_TEXT = 10_000  # characters (or list items) of an id list


def parse_ids(text: str | list | None, limit: int, what: str) -> list[int] | None:
    """'all' or '' → None (all); '0, 3, 5-7' → [0, 3, 5, 6, 7]; each in [0, limit).

    Every number is checked against [0, limit) before a range is expanded, and the chosen ids are marked in one
    array of `limit` flags, so neither "0-1000000000" nor ten thousand overlapping ranges can allocate more.
    """
    if text is None:
        return None
    if isinstance(text, list | tuple):
        parts = [str(v) for v in text[: MAX_ID_TEXT + 1]]
        size = len(text)
    else:
        text = str(text)
        size = len(text)
        text = text.strip().lower()
        if text in ("", "all"):
            return None
        parts = text.replace(";", ",").split(",")
    if size > MAX_ID_TEXT:
        raise UserError(f"{what}: the list is {size:,} long; the limit is {MAX_ID_TEXT:,}: use ranges like 0-63")
    chosen = np.zeros(limit, dtype=bool)
    for part in parts:
        part = part.strip()
        if not part:
            continue
        match = ID_PART.fullmatch(part)
        if match is None:
            raise UserError(f"{what}: {part[:40]!r} is not a number or a range like 3-7")
        ends = [match[1]] if match[2] is None else [match[1], match[2]]
        for end in ends:
            if len(end) > 18 or not 0 <= int(end) < limit:  # 18 digits: no 4,000-digit conversions
                shown = end if len(end) <= 18 else f"a {len(end)}-digit number"
                raise UserError(f"{what} must be in 0–{limit - 1}; got {shown}")
        first, last = int(ends[0]), int(ends[-1])
        if last < first:
            raise UserError(f"{what}: the range {part} runs backwards; write {last}-{first}")
        chosen[first : last + 1] = True
    if not chosen.any():
        raise UserError(f"no {what} chosen")
    return np.flatnonzero(chosen).tolist()


# ---------------------------------------------------------------------------------------------------- paths


def inside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether the resolved `path` is one of the resolved `roots` or lies below one."""
    path = path.resolve()
    return any(path == root or root in path.parents for root in (Path(r).resolve() for r in roots))


def checked_model_source(
    source: str,
    kind: str,
    roots: Iterable[Path],
    allow_hub: bool,
    trusted: Iterable[str] = (),
    base: Path | None = None,
) -> str:
    """A model source a user may load: a bundled model ('default', and 'default-vq' for a tokenizer); a path inside
    `roots` (returned absolute and resolved; relative paths are relative to `base`, default the working directory);
    a hub id when `allow_hub`; or one of the `trusted` sources (those the deployer started the app with, returned
    unchanged). Anything else: a UserError that says where models may come from, not whether the path exists."""
    source = bounded_text(source, kind, LIMITS.source).strip()
    if (kind, source) in BUNDLED_MODELS or (source and source in set(trusted)):
        return source
    if not source:
        raise UserError(f"no {kind} given: type 'default', a run's model folder, or a hub id")
    path = Path(source).expanduser()
    path = path if path.is_absolute() else (base or Path.cwd()) / path
    hub_like = HUB_ID.match(source) is not None and not source.startswith((".", "/", "~"))
    if hub_like and not path.exists():  # what from_pretrained does: an existing path wins over a hub id
        if not allow_hub:
            raise UserError(
                f"{kind} {source!r}: hub downloads are off on this exposed server; load 'default' or a model in "
                "the workspace or a model root, or ask the deployer to start the app with --allow-hub"
            )
        return source
    roots = [Path(r).resolve() for r in roots]
    if not inside(path, roots):
        raise UserError(
            f"{kind} {source[:200]!r} is outside the folders models may be loaded from "
            f"({', '.join(map(str, roots))}); put the model there, or start the app with --model-root FOLDER"
        )
    return str(path.resolve())


# ---------------------------------------------------------------------------------------------------- training paths

DATASET_NAMES = ["procedural"]  # the named datasets (data.datasets.build_dataset); any other is a path


class JobPaths:
    """The paths a training job may read (app/jobs.py).

    Every path a job will read (its dataset, token file, tokenizer and tokenizer config, however they were given)
    must lie inside the workspace or a data root (tokenizers also: 'default', a model root, a hub id when
    `allow_hub`, or a job of the workspace by name); the trainer is handed the checked absolute paths. Relative
    paths are relative to `base`, the trainer's working directory. `find_job(name)` is the workspace's job of that
    name (its `stage` and `state`), None when there is none."""

    def __init__(
        self,
        workspace: Path,
        data_roots: Iterable[str | Path],
        model_roots: Iterable[str | Path],
        allow_hub: bool,
        base: Path,
        find_job: Callable[[str], Any],
    ):
        self.workspace = Path(workspace).resolve()
        self.data_roots = [Path(p).resolve() for p in data_roots]
        self.model_roots = [Path(p).resolve() for p in model_roots]
        self.allow_hub = allow_hub
        self.base = base
        self.find_job = find_job

    def _absolute(self, text: str) -> Path:
        """A path as the trainer will read it: relative paths are relative to its working directory."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base / path

    def _outside(self, what: str, value: str, roots: list[Path]) -> UserError:
        return UserError(
            f"{what} {value[:200]!r} is outside the allowed folders ({', '.join(map(str, roots))}); "
            "put it there or start the app with --data-root"
        )

    def checked_dataset(self, dataset: str, what: str = "dataset") -> str:
        """'procedural', or a folder / tar file / shard pattern inside the data roots or the workspace (absolute)."""
        dataset = bounded_text(dataset, what, LIMITS.source).strip()
        if dataset in ("", "procedural"):
            return "procedural"
        roots = [self.workspace, *self.data_roots]
        path = self._absolute(dataset)
        if not any(c in str(path) for c in "*?[{"):
            # a bare word is a mistyped name more often than a folder; a path outside the roots is only told that
            # (whether it exists there is nobody's business)
            if not path.exists() and (os.sep not in dataset or inside(path, roots)):
                close = difflib.get_close_matches(dataset, DATASET_NAMES, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise UserError(
                    f"{what} {dataset[:200]!r}: no such dataset or folder; {hint}datasets: "
                    f"{', '.join(DATASET_NAMES)}, or a folder of class folders, a .tar file or a shard pattern inside "
                    f"{', '.join(map(str, roots))}"
                )
            if not inside(path, roots):
                raise self._outside(what, dataset, roots)
            return str(path.resolve())
        # A shard pattern: every folder it names, and every file it matches, must be inside the roots.
        if ".." in path.parts:
            raise UserError(f"{what} {dataset[:200]!r}: '..' is not allowed in a shard pattern; give the full path")
        try:
            patterns = expand_braces(str(path))
        except ValueError as error:
            raise UserError(f"{what}: {error}") from None
        folders = {Path(re.split(r"[*?\[]", p, maxsplit=1)[0]).parent for p in patterns}
        if not all(inside(folder, roots) for folder in folders):
            raise self._outside(what, dataset, roots)
        try:
            shards = shard_paths(str(path))
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"{what} {dataset[:200]!r}: {error}") from None
        if not all(inside(shard, roots) for shard in shards):
            raise self._outside(what, dataset, roots)
        return str(path)

    def checked_file(self, value: str, what: str) -> str:
        """'' or an existing file inside the workspace or a data root (absolute)."""
        if not value:
            return ""
        roots = [self.workspace, *self.data_roots]
        path = self._absolute(bounded_text(value, what, LIMITS.source))
        if not inside(path, roots):
            raise self._outside(what, value, roots)
        if not path.is_file():
            raise UserError(f"{what} {value[:200]!r} is not a file")
        return str(path.resolve())

    def workspace_model(self, source: str, kind: str) -> str:
        """A job's name, or a folder relative to the workspace (`tok-a/model`), as the model panel names finished
        runs: the absolute path of that job's exported model or of that folder. A job that has exported no model
        (yet), or whose model is of another kind, is refused now rather than by the job later. Other sources are
        returned unchanged (checked_model_source checks them)."""
        text = bounded_text(source, kind, LIMITS.source).strip()
        if not text or Path(text).expanduser().is_absolute():
            return source
        job = Path(text).parts[0]
        found = self.find_job(job)
        if found is None:
            return str(self.workspace / text) if (self.workspace / text).exists() else source
        stage = found.stage
        if stage != kind:
            raise UserError(f"{kind}={text}: job {job!r} trains a {stage}, not a {kind}; name a {kind} job")
        model = RunDir(self.workspace / job).model_dir
        if not (model / "config.json").is_file():
            state = found.state
            raise UserError(
                f"{kind}={text}: job {job!r} has not exported its model yet ({state}; it is written when the job "
                f"finishes): launch this job once it has, with {kind}={job}, or use {kind}=default"
            )
        return str(model) if text == job else str(self.workspace / text)

    def checked_paths(self, stage: str, config) -> dict[str, str]:
        """Every path setting of a resolved config (PATH_FIELDS), checked and made absolute: {key: value}."""
        values = flat_keys(config)
        checked = {
            "data.dataset": self.checked_dataset(values["data.dataset"], "data.dataset"),
            "data.pretokenized": self.checked_file(values["data.pretokenized"], "data.pretokenized"),
        }
        if stage == "generator":
            tokenizer, tokenizer_config = values["tokenizer"], values["tokenizer_config"]
            if not tokenizer and not checked["data.pretokenized"]:
                raise UserError(
                    "the generator needs a tokenizer: add the override tokenizer=<a tokenizer job's model folder> "
                    "(or tokenizer=default)"
                )
            if tokenizer:
                roots = [self.workspace, *self.data_roots, *self.model_roots]
                tokenizer = self.workspace_model(tokenizer, "tokenizer")
                tokenizer = checked_model_source(tokenizer, "tokenizer", roots, self.allow_hub, base=self.base)
            if tokenizer_config and tokenizer_config not in TOKENIZER_PRESETS:
                tokenizer_config = self.checked_file(tokenizer_config, "tokenizer_config")
            checked |= {"tokenizer": tokenizer, "tokenizer_config": tokenizer_config}
        return checked


def public_message(message: str) -> str:
    """A message without the server's temporary paths (Gradio's upload cache, the app's own temporary folders):
    each such path is shortened to its file name."""
    upload = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")  # Gradio's own rule
    temp = re.escape(tempfile.gettempdir())
    folders = {re.escape(upload), re.escape(str(Path(upload).resolve())), temp + r"/maskbit-[^/\s'\"]*"}
    pattern = "(?:" + "|".join(sorted(folders, key=len, reverse=True)) + r")/[^\s'\"]*"
    return re.sub(pattern, lambda match: Path(match.group(0)).name, message)


# ---------------------------------------------------------------------------------------------------- uploads


def load_upload(path: str | Path | dict | None, size: int, max_bytes: int, max_pixels: int) -> torch.Tensor:
    """An uploaded file → (3, size, size) float in [0, 1], or a UserError saying what is wrong with it.

    `path` is a file path, or Gradio's file payload ({"path": ...}) from an event that skips Gradio's preprocessing
    so that this is the first reader of the file."""
    if isinstance(path, dict):
        path = path.get("path")
    if path is None or str(path) == "":
        raise UserError("no image given: upload one, pick a dataset image, or send a generated image here")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the uploaded file is gone ({path.name}); upload it again")
    if path.stat().st_size > max_bytes:
        raise UserError(f"the file is {path.stat().st_size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    try:  # the one reader of image files (maskbit.images), with the app's pixel limit checked from the header
        image = read_image(path, max_pixels=max_pixels)
    except ImageTooLarge as error:
        raise UserError(str(error)) from None
    except ValueError as error:
        reason = str(error).split(" as an image: ", 1)[-1].replace(str(path), path.name)
        raise UserError(f"cannot read the file as an image ({reason}); use PNG, JPEG, WebP, BMP or GIF") from None
    return fit_square(image, size)


def fit_note(path: str | Path | dict | None, size: int) -> str:
    """What load_upload did to the file's size, in a sentence for the user ("" when nothing was resized)."""
    if isinstance(path, dict):
        path = path.get("path")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, ValueError, TypeError):
        return ""
    if (width, height) == (size, size):
        return ""
    crop = "" if width == height else f" and centre-cropped to {size}×{size}"
    return (
        f"The {width}×{height} image was resized to {size} px on its shorter side{crop}: the size this model works at."
    )
