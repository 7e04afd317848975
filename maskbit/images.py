"""Image files ↔ tensors: float RGB in [0, 1], (3, H, W) per image, (B, 3, H, W) per batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGE_SUFFIXES",
    "find_images",
    "load_image",
    "fit_square",
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


def load_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """Read an image as (3, H, W) float in [0, 1]; with `size`, resize the shorter side and center-crop."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read {path} as an image: {error}") from None
    return fit_square(image, size) if size else to_tensor(image)


def fit_square(image: Image.Image, size: int) -> torch.Tensor:
    """Resize an RGB image's shorter side to `size` (bicubic) and center-crop: (3, size, size) in [0, 1]."""
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return to_tensor(image.crop((left, top, left + size, top + size)))


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
