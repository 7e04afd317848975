"""Uploaded images: checked before they are decoded, converted to RGB, and fitted to the tokenizer's size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from app.explorer import UserError
from maskbit.images import fit_square

__all__ = ["load_upload"]


def load_upload(path: str | Path | None, size: int, max_bytes: int, max_pixels: int) -> torch.Tensor:
    """An uploaded file → (3, size, size) float in [0, 1], or a UserError saying what is wrong with it."""
    if path is None or str(path) == "":
        raise UserError("no image given: upload one, pick a dataset image, or send a generated image here")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the uploaded file is gone ({path.name}); upload it again")
    if path.stat().st_size > max_bytes:
        raise UserError(f"the file is {path.stat().st_size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size  # read from the header, before any pixel is decoded
                if width * height > max_pixels:
                    raise UserError(
                        f"the image is {width}×{height} pixels; the limit is {max_pixels / 1e6:.0f} megapixels"
                    )
                image.seek(0)  # animations: the first frame
                image = ImageOps.exif_transpose(image)
                image = to_rgb(image)
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError("the image is too large to decode safely (a decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise UserError(f"cannot read the file as an image ({error}); use PNG, JPEG, WebP, BMP or GIF") from None
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
