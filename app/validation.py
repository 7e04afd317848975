"""What users send, checked before anything is allocated, opened or loaded.

Numbers and text from the API arrive as whatever a client sent (NaN, 2**70, a 2 MB string); every check here names
the parameter, says what was wrong and what is allowed, and runs before the value sizes an allocation. Paths are
allowed only inside the roots the deployer configured. Uploaded images are checked before they are decoded,
converted to RGB, and fitted to the tokenizer's size.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from app.explorer import UserError
from maskbit.checkpoint import HUB_ID
from maskbit.config import SamplingConfig
from maskbit.images import fit_square
from maskbit.sampling import MAX_SEED

__all__ = [
    "load_upload",
    "whole_number",
    "real_number",
    "checked_seed",
    "bounded_text",
    "sampling_from",
    "inside",
    "checked_model_source",
    "public_message",
    "LIMITS",
    "SCHEDULES",
    "ANNEALING",
]

SCHEDULES = ["arccos", "cosine", "linear", "square"]
ANNEALING = ["none", "linear", "cosine"]


class LIMITS:
    """The bounds of every sized input of the app (the UI's sliders use the same numbers)."""

    steps = 256  # sampling steps
    k = 50  # neighbours
    walk_r = 256  # bits flipped per step of a walk
    walk_steps = 16
    report_images = (4, 256)
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
    if isinstance(value, bool) or value is None:
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


def sampling_from(steps, guidance, annealing, scale_pow, randomize, temperature, schedule) -> SamplingConfig:
    """The sampling knobs of the generate endpoint, each checked, as a SamplingConfig."""
    if annealing not in ANNEALING:
        raise UserError(f"annealing must be one of {', '.join(ANNEALING)}; got {_shown(annealing)}")
    if schedule not in SCHEDULES:
        raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}; got {_shown(schedule)}")
    return SamplingConfig(
        whole_number(steps, "steps", 1, LIMITS.steps),
        real_number(guidance, "guidance (scale)", 0, 15),
        annealing,
        real_number(scale_pow, "scale_pow", 0.01, 5),
        real_number(randomize, "randomize (temperature)", 0, 15),
        real_number(temperature, "temperature (softmax)", 0.01, 5),
        schedule,
    )


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
    """A model source a user may load: 'default'; a path inside `roots` (returned absolute and resolved; relative
    paths are relative to `base`, default the working directory); a hub id when `allow_hub`; or one of the
    `trusted` sources (those the deployer started the app with, returned unchanged). Anything else: a UserError
    that says where models may come from, without saying whether the path exists."""
    source = bounded_text(source, kind, LIMITS.source).strip()
    if source == "default" or (source and source in set(trusted)):
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
    too_large = f"the limit is {max_pixels / 1e6:.0f} megapixels"
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning (89 megapixels) is for its default limit; the app's lower one comes first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size  # read from the header, before any pixel is decoded
                if width * height > max_pixels:
                    raise UserError(f"the image is {width}×{height} pixels; {too_large}")
                image.seek(0)  # animations: the first frame
                image = ImageOps.exif_transpose(image)
                image = to_rgb(image)
    except UserError:
        raise
    except Image.DecompressionBombError:  # Pillow refuses to open more than 179 megapixels at all
        raise UserError(
            f"the image declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; {too_large}"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error).replace(str(path), path.name)
        raise UserError(f"cannot read the file as an image ({reason}); use PNG, JPEG, WebP, BMP or GIF") from None
    return fit_square(image, size)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode → RGB; transparency is composited on white, 16-bit and float images are scaled to 8 bits."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(array.astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
