"""Image files ↔ tensors: float RGB in [0, 1], (3, H, W) per image, (B, 3, H, W) per batch.

`read_image` is the one reader of image files: the CLI, the datasets (image folders, tar shards), the indexes and
the app's uploads all go through it, so one file is one tensor wherever it enters. Its rule:
- the first frame of an animation;
- the EXIF orientation applied (a photo shows as its camera meant it);
- 16-bit and 32-bit integer images scaled by 255 / 65,535 (clipped), float images from [0, 1] (or stretched from
  their own minimum to maximum when they leave that range);
- transparency (RGBA, LA, PA, a palette's transparent colour) composited on white;
- palette, grayscale, bilevel and CMYK images converted to RGB.
`fit_square` is the one resize: the shorter side to `size` with torchvision's `Resize(int)` arithmetic, then the
centre crop, as the official evaluation preprocessing (spec §6).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageTooLarge",
    "find_images",
    "read_image",
    "load_image",
    "fit_square",
    "resize_center_crop",
    "to_tensor",
    "to_array",
    "to_pil",
    "save_image",
    "image_grid",
    "psnr",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def find_images(paths: list[str | Path]) -> list[Path]:
    """Image files among `paths`, directories searched recursively, in sorted order."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    if not found:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, paths))}")
    return found


class ImageTooLarge(ValueError):
    """The image's header declares more pixels than the reader was allowed; nothing was decoded."""

    def __init__(self, width: int | None, height: int | None, max_pixels: int):
        self.width, self.height, self.max_pixels = width, height, max_pixels
        size = f"{width}×{height} pixels" if width else f"more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
        super().__init__(f"the image is {size}; the limit is {max_pixels / 1e6:.0f} megapixels")


def read_image(source: str | Path | bytes | io.BytesIO, max_pixels: int | None = None) -> Image.Image:
    """An image file (path, bytes or a binary stream) → a fully decoded PIL RGB image, by the rule above.

    With `max_pixels`, the size is read from the header and checked before any pixel is decoded (ImageTooLarge).
    An unreadable or truncated file raises ValueError naming the cause."""
    name = str(source) if isinstance(source, (str, Path)) else "the image"
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow's bomb warning is for its own default limit; `max_pixels`, when given, is checked first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageTooLarge(width, height, max_pixels)
                image.seek(0)
                return _to_rgb(ImageOps.exif_transpose(image))  # converting decodes fully: truncation fails here
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError:  # Pillow refuses more than twice its limit before decoding anything
        raise ImageTooLarge(None, None, limit) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot read {name} as an image: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit PNG, TIFF) and I (32-bit): 65,535 is white
        array = np.clip(np.asarray(image, dtype=np.float64), 0, 65_535) * (255 / 65_535)
        image = Image.fromarray((array + 0.5).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if low < 0 or high > 1:  # not a [0, 1] image: stretch its own range
            array = (array - low) / (high - low) if high > low else np.zeros_like(array)
        image = Image.fromarray((np.nan_to_num(array) * 255 + 0.5).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Read an image file (`read_image`) as (3, H, W) float in [0, 1]; with `size`, `fit_square` it."""
    image = read_image(path)
    return fit_square(image, size) if size else to_tensor(image)


def fit_square(image: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BILINEAR) -> torch.Tensor:
    """Resize an RGB image's shorter side to `size` and centre-crop: (3, size, size) in [0, 1].

    torchvision's `Resize(size)` + `CenterCrop(size)` arithmetic on PIL images (the longer side truncated, the crop
    offset rounded), so that results match the official evaluation preprocessing pixel for pixel."""
    return to_tensor(resize_center_crop(image, size, resample))


def resize_center_crop(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_long = int(size * long / short)
        w, h = (size, new_long) if w <= h else (new_long, size)
        image = image.resize((w, h), resample)
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """A PIL RGB image or an (H, W, 3) uint8 array → (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def to_array(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float (clamped to [0, 1]) → (H, W, 3) uint8, rounded to the nearest level."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float (clamped to [0, 1]) → PIL RGB image."""
    return Image.fromarray(to_array(image))


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)
    return path


def image_grid(images: torch.Tensor, columns: int, padding: int = 2) -> torch.Tensor:
    """(B, 3, H, W) → one (3, H', W') image with `columns` images per row and white padding."""
    b, c, h, w = images.shape
    rows = -(-b // columns)
    grid = images.new_ones(c, rows * (h + padding) + padding, columns * (w + padding) + padding)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = image.clamp(0, 1)
    return grid


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (data range 1), both clamped to [0, 1]; inf when identical."""
    mse = (images.clamp(0, 1) - references.clamp(0, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)
