"""Datasets: the procedural shapes dataset, image folders, webdataset tar shards and MaskBit's preprocessing.

Every dataset is a map-style `torch.utils.data.Dataset` of `(PIL RGB image, int label)` with `classes: list[str]`
(index = label); `build_dataset` picks one from a string. `Preprocessing` turns an image into a (3, H, W) float
tensor in [0, 1] with the official transforms (spec §6: `RandomResizedCrop` + horizontal flip for training,
resize + center crop for evaluation), its randomness drawn from an explicit `np.random.Generator` so that a run
resumes exactly. `export_dataset` writes any dataset as `<class>/<index>.png` plus `labels.csv`.

`ProceduralShapes` is the bundled model's dataset (docs/ARCHITECTURE.md, "The bundled default"): ten shape classes
with random colours, gradients, sizes, positions and rotations on solid or gradient backgrounds, with softly
anti-aliased edges, a pure function of (seed, split, index), so the train split is effectively unlimited and the test
split fixed.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from maskbit.files import atomic_directory, atomic_write, explain_full_disk, partial_directory, write_json_atomic
from maskbit.images import IMAGE_SUFFIXES, fit_square, read_image, resize_center_crop, to_tensor

__all__ = [
    "PROCEDURAL_CLASSES",
    "ShapeSample",
    "ProceduralShapes",
    "ImageFolder",
    "TarShards",
    "write_tar_shards",
    "build_dataset",
    "Preprocessing",
    "random_resized_crop_params",
    "export_dataset",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Procedural shapes
# ---------------------------------------------------------------------------------------------------------------------

PROCEDURAL_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "hexagon",
    "crescent",
    "arrow",
    "heart",
)
PROCEDURAL_SPLITS = {"train": (0, 1_000_000), "test": (1, 2_000)}  # split → (split id in the seed, default size)
SUPERSAMPLING = 4  # masks are drawn at 4× and box-filtered down: anti-aliased edges, no high frequencies
# ... then blurred a little: a ramp of about two pixels instead of one, the same shapes to the eye. The bundled
# tokenizer (4×4 pixels per 12-bit token) spent 63 % of its squared error within 2 px of an edge with one-pixel
# ramps; at 600 training steps this blur alone gave +0.45 dB (bench/README.md).
EDGE_SIGMA = 0.5  # pixels
# Shapes are large and near the middle: outer radius 0.30–0.40 of the image, centre within ±0.08 of it. With radii
# from 0.22 and centres anywhere that fits, the bundled generator drew its requested class less than half as often
# for the same training time (23.2 % against 51.4 %; model card).
SHAPE_RADIUS = (0.30, 0.40)
SHAPE_OFFSET = 0.08
MIN_CONTRAST = 0.35  # RGB distance in [0, 1]^3 between the shape's and the background's mean colours


def _regular_polygon(corners: int, radii: Sequence[float] = (1.0,)) -> np.ndarray:
    """(corners·len(radii), 2) vertices alternating between `radii`, first vertex pointing up (image y down)."""
    n = corners * len(radii)
    angles = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
    r = np.resize(np.asarray(radii, dtype=np.float64), n)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _heart(points: int = 48) -> np.ndarray:
    t = 2 * np.pi * np.arange(points) / points
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))  # minus: image y points down
    return np.stack([x, y], axis=1)


def _plus_sign(arm: float) -> np.ndarray:
    """12 vertices of a plus sign of half-extent 1 whose arms are 2·arm wide (arm = arm width / diameter)."""
    quarter = np.array([(-arm, -1.0), (arm, -1.0), (arm, -arm)])  # the top arm's end and the corner after it
    quarter_turn = np.array([[0.0, 1.0], [-1.0, 0.0]])  # (x, y) → (−y, x) as a row-vector product
    return np.concatenate([quarter @ np.linalg.matrix_power(quarter_turn, k) for k in range(4)])


def _fit_unit_circle(vertices: np.ndarray) -> np.ndarray:
    """Vertices moved to their bounding-box centre and scaled so that the farthest one is at radius 1."""
    vertices = vertices - (vertices.min(0) + vertices.max(0)) / 2
    return vertices / np.linalg.norm(vertices, axis=1).max()


# Outlines at outer radius 1 around the origin (the rotation is random, so the orientation here does not matter).
_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": _regular_polygon(4),
    "triangle": _regular_polygon(3),
    "star": _regular_polygon(5, radii=(1.0, 0.45)),
    "cross": _fit_unit_circle(_plus_sign(arm=0.38)),
    "hexagon": _regular_polygon(6),
    "arrow": _fit_unit_circle(
        np.array([(-1, -0.22), (0.1, -0.22), (0.1, -0.6), (1, 0), (0.1, 0.6), (0.1, 0.22), (-1, 0.22)])
    ),
    "heart": _fit_unit_circle(_heart()),
}


class ShapeSample(NamedTuple):
    """One procedural sample as float arrays in [0, 1]: image = background·(1 − alpha) + foreground·alpha."""

    image: np.ndarray  # (H, W, 3) float32
    alpha: np.ndarray  # (H, W) float32, the anti-aliased shape mask
    foreground: np.ndarray  # (H, W, 3) float32, the shape's fill over the whole image
    background: np.ndarray  # (H, W, 3) float32
    label: int


def _draw_mask(name: str, center: np.ndarray, radius: float, angle: float, size: int) -> Image.Image:
    """Binary mask ("L", size × size, 0 or 255) of shape `name` with outer radius `radius` pixels, rotated by
    `angle` radians (clockwise on screen) about `center` (x, y) pixels."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = center
    if name in ("circle", "ring", "crescent"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        if name == "ring":
            r = 0.55 * radius
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=0)
        elif name == "crescent":  # the disc minus a smaller disc pushed towards `angle`
            r = 0.85 * radius
            x, y = cx + 0.45 * radius * math.cos(angle), cy + 0.45 * radius * math.sin(angle)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    else:
        c, s = math.cos(angle), math.sin(angle)
        vertices = _UNIT_POLYGONS[name] @ np.array([[c, s], [-s, c]]) * radius + center
        draw.polygon([tuple(v) for v in vertices.tolist()], fill=255)
    return mask


def _linear_gradient(grid: np.ndarray, color0: np.ndarray, color1: np.ndarray, angle: float) -> np.ndarray:
    """(H, W, 3) blend from color0 to color1 along direction `angle` across the whole image."""
    t = grid[..., 0] * math.cos(angle) + grid[..., 1] * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-8)
    return color0 + (color1 - color0) * t[..., None]


class ProceduralShapes(Dataset):
    """Ten shape classes (`PROCEDURAL_CLASSES`) drawn on solid, linear- or radial-gradient backgrounds.

    Sample `index` is a pure function of (seed, split, index): label = index % 10 (balanced), everything else drawn
    from `np.random.default_rng([seed, split_id, index])`. Shapes have outer radius `SHAPE_RADIUS` of the image, a
    centre within `SHAPE_OFFSET` of the image's (so they lie inside it), are rotated uniformly, and differ from the
    background by at least `MIN_CONTRAST` in mean colour (both over the whole image and under the shape). Images are
    smooth: anti-aliased edges and gradients, no textures.

    Splits: "train" (1,000,000 samples by default, effectively unlimited) and "test" (2,000, fixed held out).
    """

    def __init__(self, split: str = "train", seed: int = 0, size: int | None = None, resolution: int = 64) -> None:
        if split not in PROCEDURAL_SPLITS:
            raise ValueError(
                f"unknown split {split!r} for the procedural dataset; valid splits: {list(PROCEDURAL_SPLITS)}"
            )
        self.split, self.seed, self.resolution = split, int(seed), int(resolution)
        self.split_id, default_size = PROCEDURAL_SPLITS[split]
        self.size = default_size if size is None else int(size)
        self.classes: list[str] = list(PROCEDURAL_CLASSES)
        # Pixel-centre coordinates in [0, 1], shared by all gradients: (H, W, 2) as (x, y).
        axis = (np.arange(self.resolution, dtype=np.float32) + 0.5) / self.resolution
        self._grid = np.stack(np.meshgrid(axis, axis, indexing="xy"), axis=-1)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (
            f"ProceduralShapes(split={self.split!r}, seed={self.seed}, size={self.size}, resolution={self.resolution})"
        )

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        sample = self.render(index)
        image = Image.fromarray((sample.image * 255 + 0.5).astype(np.uint8))
        return image, sample.label

    def render(self, index: int) -> ShapeSample:
        """Sample `index` as float arrays (image, alpha mask, foreground, background) in [0, 1]."""
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self!r}")
        rng = np.random.default_rng([self.seed, self.split_id, index])
        label = index % len(PROCEDURAL_CLASSES)
        alpha = self._alpha(PROCEDURAL_CLASSES[label], rng)
        background = self._background(rng)
        foreground = self._foreground(rng, background, alpha)
        a = alpha[..., None]
        image = background * (1 - a) + foreground * a
        return ShapeSample(image.astype(np.float32), alpha, foreground, background, label)

    def _alpha(self, name: str, rng: np.random.Generator) -> np.ndarray:
        """(H, W) float32 anti-aliased mask: drawn at SUPERSAMPLING× resolution and box-filtered down."""
        res = self.resolution
        radius = rng.uniform(*SHAPE_RADIUS) * res
        # At most 0.40 + 0.08 from the middle: the whole shape lies inside the image, 0.02 clear of its border.
        center = res / 2 + rng.uniform(-SHAPE_OFFSET, SHAPE_OFFSET, size=2) * res
        angle = rng.uniform(0, 2 * np.pi)  # drawn for every class so that all classes use the rng alike
        big = res * SUPERSAMPLING
        mask = _draw_mask(name, center * SUPERSAMPLING, radius * SUPERSAMPLING, angle, big)
        mask = mask.resize((res, res), Image.Resampling.BOX)
        alpha = gaussian_filter(np.asarray(mask, dtype=np.float32) / 255, EDGE_SIGMA)
        return np.round(alpha * 255) / 255  # 8-bit steps, so that 0 and 1 stay exact

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        kind = rng.integers(3)  # 0 solid, 1 linear gradient, 2 radial gradient
        color0, color1 = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
        if kind == 0:
            return np.broadcast_to(color0, self._grid.shape[:2] + (3,)).copy()
        if kind == 1:
            return _linear_gradient(self._grid, color0, color1, rng.uniform(0, 2 * np.pi))
        center = rng.uniform(0, 1, size=2).astype(np.float32)
        distance = np.linalg.norm(self._grid - center, axis=-1)
        t = distance / distance.max()
        return color0 + (color1 - color0) * t[..., None]

    def _foreground(self, rng: np.random.Generator, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """The shape's fill, resampled until its mean colour is MIN_CONTRAST away from the background's."""
        weights = alpha / max(float(alpha.sum()), 1e-8)
        targets = (background.mean((0, 1)), np.einsum("hw,hwc->c", weights, background))  # global, under the shape

        def contrast(fill: np.ndarray) -> float:
            means = (fill.mean((0, 1)), np.einsum("hw,hwc->c", weights, fill))
            return min(float(np.linalg.norm(m - t)) for m, t in zip(means, targets))

        for _ in range(100):
            color0 = rng.uniform(0, 1, size=3).astype(np.float32)
            if rng.random() < 0.5:
                fill = np.broadcast_to(color0, background.shape)
            else:  # a gentle gradient between two similar colours
                color1 = np.clip(color0 + rng.normal(0, 0.12, size=3), 0, 1).astype(np.float32)
                fill = _linear_gradient(self._grid, color0, color1, rng.uniform(0, 2 * np.pi))
            if contrast(fill) >= MIN_CONTRAST:
                return np.ascontiguousarray(fill, dtype=np.float32)
        # Practically unreachable; a cube corner is ≥ 0.5 from both means for at least 6 of the 8 corners.
        corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1).T.astype(np.float32)
        best = max(corners, key=lambda c: contrast(np.broadcast_to(c, background.shape)))
        return np.broadcast_to(best, background.shape).copy()


# ---------------------------------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------------------------------

EXPORT_MARKER = ".export.json"  # in an unfinished export: what it exports (a resume reuses only the same export)
CLASS_LIST = "classes.txt"  # optional, one class name per line: fixes the label order (written by export_dataset)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageFolder(Dataset):
    """ImageNet-style folder `root/<class_name>/<image file>` (files found recursively inside each class folder).

    `classes` are the sorted subfolder names, or the order of `root/classes.txt` when present (so that a folder
    written by `export_dataset` keeps its labels). Files with non-image suffixes are skipped and counted in
    `skipped`. Unreadable images are found lazily: `__getitem__` logs a warning once per file, records the path in
    `corrupt` and returns the next readable sample instead.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        layout = "expected an ImageNet-style layout root/<class_name>/<image file>"
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist; {layout}")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.classes: list[str] = folders
        class_list = self.root / CLASS_LIST
        if class_list.is_file():
            self.classes = [line for line in class_list.read_text().splitlines() if line]
            if unknown := set(folders) - set(self.classes):
                raise ValueError(f"{class_list} does not list the class folders {sorted(unknown)}")
        if not self.classes:
            raise ValueError(f"no class folders in {self.root}; {layout}")
        self.samples: list[tuple[Path, int]] = []
        self.skipped = 0
        for label, name in enumerate(self.classes):
            folder = self.root / name
            files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
            for path in files:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self.samples.append((path, label))
                else:
                    self.skipped += 1
        if not self.samples:
            raise ValueError(
                f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {self.root}; {layout}"
            )
        if self.skipped:
            logger.warning("%s: skipped %d files without an image suffix", self.root, self.skipped)
        self.corrupt: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        n = len(self.samples)
        index = index + n if index < 0 else index
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} images in {self.root}")
        for offset in range(n):
            path, label = self.samples[(index + offset) % n]
            if path in self.corrupt:
                continue
            try:
                return read_image(path), label
            except _DECODE_ERRORS as error:
                self.corrupt.add(path)
                logger.warning("cannot read %s (%s); using the next image instead", path, error)
        raise RuntimeError(f"none of the {n} image files in {self.root} can be read")


# ---------------------------------------------------------------------------------------------------------------------
# Webdataset tar shards
# ---------------------------------------------------------------------------------------------------------------------

TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


MAX_SHARDS = 100_000  # names a shard pattern may expand to


def expand_braces(pattern: str) -> list[str]:
    """Webdataset shard notation: "a-{0000..0002}.tar" → a-0000.tar, a-0001.tar, a-0002.tar; "{x,y}" lists too.

    The number of names is counted before any is built: a pattern of more than MAX_SHARDS names is a ValueError."""
    count = 1
    for body in re.findall(r"\{([^{}]*)\}", pattern):
        numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        count *= max(0, int(numbers[2]) - int(numbers[1]) + 1) if numbers else body.count(",") + 1
        if count > MAX_SHARDS:
            raise ValueError(f"the shard pattern {pattern[:200]!r} names more than {MAX_SHARDS:,} files; split it up")
    return _expand(pattern)


def _expand(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    if numbers := re.fullmatch(r"(\d+)\.\.(\d+)", body):
        first, last = numbers.groups()
        options = [str(i).zfill(len(first)) for i in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in _expand(head + option + tail)]


def shard_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        text = str(paths)
        if Path(text).is_dir():
            found = sorted(Path(text).glob("*.tar"))
        elif any(c in text for c in "*?[{"):
            found = [Path(p) for pattern in expand_braces(text) for p in sorted(glob.glob(pattern))]
            found = list(dict.fromkeys(found))
        else:
            found = [Path(text)]
    else:
        found = [Path(p) for p in paths]
    if not found:
        raise FileNotFoundError(f"no .tar shards found at {paths}")
    if missing := [str(p) for p in found if not p.is_file()]:
        raise FileNotFoundError(f"missing tar shards: {', '.join(missing)}")
    return found


class TarShards(Dataset):
    """Webdataset tar shards in the official MaskBit format: per sample `<key>.jpg` (image bytes; also .jpeg, .png,
    .webp) and `<key>.cls` (ASCII integer class id).

    `paths`: a directory (all `*.tar` in it, sorted), a glob or brace pattern ("imagenet-train-{0000..0252}.tar"),
    or a list of tar files (uncompressed). An index of (shard, offset, size, label) is built once by scanning the
    shards; `__getitem__` seeks to the image bytes and decodes them. `classes` = "0" … str(max label).
    """

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        self.shards = shard_paths(paths)
        self.samples: list[tuple[int, int, int, int]] = []  # (shard number, data offset, size, label)
        incomplete = 0
        for shard_id, shard in enumerate(self.shards):
            images: dict[str, tuple[int, int]] = {}
            labels: dict[str, int] = {}
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    directory, _, base = member.name.rpartition("/")
                    stem, _, extension = base.partition(".")  # webdataset: the key ends at the first dot
                    key, extension = f"{directory}/{stem}", extension.lower()
                    if extension in TAR_IMAGE_EXTENSIONS:
                        images[key] = (member.offset_data, member.size)
                    elif extension == "cls":
                        labels[key] = int(tar.extractfile(member).read().decode("ascii").strip())
            for key, (offset, size) in images.items():
                if key in labels:
                    self.samples.append((shard_id, offset, size, labels[key]))
            incomplete += len(images.keys() ^ labels.keys())
        if not self.samples:
            raise ValueError(f"no samples (<key>.jpg + <key>.cls) in the tar shards {[str(s) for s in self.shards]}")
        if incomplete:
            logger.warning("tar shards: skipped %d keys without both an image and a .cls entry", incomplete)
        self.classes: list[str] = [str(i) for i in range(max(s[3] for s in self.samples) + 1)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        shard_id, offset, size, label = self.samples[index]
        with open(self.shards[shard_id], "rb") as file:
            file.seek(offset)
            data = file.read(size)
        return read_image(data), label


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644  # mtime 0: same samples → byte-identical shards
    tar.addfile(info, io.BytesIO(data))


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _finish_shard(tar: tarfile.TarFile, path: Path) -> None:
    tar.close()
    os.replace(_partial(path), path)  # readers globbing *.tar never see a half-written shard


def write_tar_shards(
    samples: Iterable[tuple[Image.Image, int]],
    out_dir: str | Path,
    prefix: str = "shard",
    max_per_shard: int = 1000,
) -> list[Path]:
    """Write (image, label) pairs as tar shards `out_dir/<prefix>-0000.tar`, … in the official format: keys are
    7-digit running numbers, images JPEG quality 95, labels ASCII in `.cls`. Returns the shard paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    tar: tarfile.TarFile | None = None
    try:
        for n, (image, label) in enumerate(samples):
            if n % max_per_shard == 0:
                if tar is not None:
                    _finish_shard(tar, shards[-1])
                shards.append(out_dir / f"{prefix}-{len(shards):04d}.tar")
                tar = tarfile.open(_partial(shards[-1]), "w", format=tarfile.USTAR_FORMAT)
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
            _add_member(tar, f"{n:07d}.jpg", buffer.getvalue())
            _add_member(tar, f"{n:07d}.cls", str(int(label)).encode("ascii"))
        if tar is not None:
            _finish_shard(tar, shards[-1])
    finally:
        if tar is not None:
            tar.close()  # no-op when finished; on an error the partial shard stays as <name>.tar.tmp
    return shards


# ---------------------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------------------


def build_dataset(spec: str, split: str = "train", seed: int = 0, resolution: int = 64) -> Dataset:
    """The dataset named by `spec`: "procedural" (`seed`, `resolution` apply), tar shards (a `.tar` file, a glob or
    brace pattern, or a directory holding `*.tar`) or an image folder (a directory of class folders). For a
    directory, `<spec>/<split>` is used when it exists."""
    if spec == "procedural":
        return ProceduralShapes(split, seed=seed, resolution=resolution)
    path = Path(spec)
    if path.is_file() and path.suffix == ".tar":
        return TarShards([path])
    if not path.exists() and any(c in spec for c in "*?[{"):
        return TarShards(spec)
    if path.is_dir():
        if (path / split).is_dir():
            path = path / split
        if any(path.glob("*.tar")):
            return TarShards(path)
        if any(p.is_dir() for p in path.iterdir()):
            return ImageFolder(path)
        raise ValueError(f"{path} holds neither *.tar shards nor class folders (<class_name>/<image file>)")
    raise FileNotFoundError(
        f"unknown dataset {spec!r}: expected 'procedural', a directory of class folders, a directory of *.tar "
        "shards, a .tar file or a shard pattern"
    )


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------------

_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def random_resized_crop_params(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop: torchvision's `RandomResizedCrop.get_params` algorithm (10 tries at a
    random area fraction in `scale` and log-uniform aspect ratio in `ratio`, then a center crop clamped to `ratio`),
    drawing from `rng` instead of torch's global generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class Preprocessing:
    """MaskBit's image transforms (spec §6). Training: `RandomResizedCrop(resolution, scale=(min_scale, 1),
    ratio=(3/4, 4/3) if aspect_ratio_aug else (1, 1))` (the eval transform instead when `random_crop` is off), then
    a horizontal flip with probability 0.5 if `random_flip`. Evaluation: resize the shorter side to `resolution`,
    center crop. Randomness only from the `rng` passed in, so (sample, rng seed) → the same tensor."""

    resolution: int = 256
    random_crop: bool = True
    min_scale: float = 0.8
    aspect_ratio_aug: bool = True
    random_flip: bool = True
    interpolation: str = "bilinear"  # or "bicubic"

    def __post_init__(self) -> None:
        if self.interpolation.lower() not in _RESAMPLING:
            raise ValueError(f"interpolation must be one of {list(_RESAMPLING)}, got {self.interpolation!r}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")

    @property
    def resample(self) -> Image.Resampling:
        return _RESAMPLING[self.interpolation.lower()]

    def train(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """(3, resolution, resolution) float32 in [0, 1], randomly cropped and flipped."""
        image = image.convert("RGB")
        if self.random_crop:
            ratio = (3 / 4, 4 / 3) if self.aspect_ratio_aug else (1.0, 1.0)
            top, left, h, w = random_resized_crop_params(image.height, image.width, (self.min_scale, 1.0), ratio, rng)
            image = image.crop((left, top, left + w, top + h))
            image = image.resize((self.resolution, self.resolution), self.resample)
        else:
            image = resize_center_crop(image, self.resolution, self.resample)
        if self.random_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image)

    def eval(self, image: Image.Image) -> torch.Tensor:
        """(3, resolution, resolution) float32 in [0, 1]: shorter side resized to `resolution`, center crop."""
        return fit_square(image.convert("RGB"), self.resolution, self.resample)


# ---------------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------------


def export_dataset(
    dataset: Dataset,
    out_dir: str | Path,
    limit: int | None = None,
    start: int = 0,
    progress: bool = True,
) -> Path:
    """Write samples [start, start + limit) (to the end when `limit` is None) as `out_dir/<class>/<index:07d>.png`,
    with `labels.csv` (path,label,class_name; paths relative to `out_dir`) and `classes.txt` (the label order), so
    that `ImageFolder(out_dir)` reads the same labels and class names back. Returns `out_dir`.

    All or nothing: the files go into a hidden folder beside `out_dir`, which replaces `out_dir` in one step when
    every image is there. A kill or a full disk leaves `out_dir` as it was; the same call continues where it stopped
    (each image is written whole, and one of another export is never reused). A full disk raises DiskFullError."""
    out_dir = Path(out_dir)
    classes = list(getattr(dataset, "classes", []))
    stop = len(dataset) if limit is None else min(len(dataset), start + limit)
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "labels.csv").is_file()):
        raise ValueError(f"out: {out_dir} exists and is not a dataset export, which would be replaced; choose another")
    first, _ = dataset[start] if stop > start else (None, None)
    export = {
        "dataset": type(dataset).__name__,
        "length": len(dataset),
        "classes": classes,
        "start": start,
        "stop": stop,
        "first": hashlib.sha256(first.tobytes()).hexdigest() if first is not None else None,
    }
    partial = partial_directory(out_dir)
    marker = partial / EXPORT_MARKER
    same = marker.is_file() and json.loads(marker.read_text()) == export
    rows, written = [], []

    def needed() -> int:  # the images still to write, at the size of those written
        sizes = [(partial / relative).stat().st_size for relative in written[-100:] if (partial / relative).exists()]
        return int((stop - start - len(written)) * (sum(sizes) / len(sizes) if sizes else 0)) or None

    kept = (
        f"{out_dir} is as it was; the images exported so far are kept in {partial}; free space and run the same "
        "command to continue"
    )
    with explain_full_disk(partial, needed, kept), atomic_directory(out_dir, resume=same, keep_on_error=True) as folder:
        write_json_atomic(marker, export)
        for name in classes:
            (folder / name).mkdir(exist_ok=True)
        for index in tqdm(range(start, stop), desc=f"export → {out_dir}", disable=not progress):
            image, label = dataset[index]
            name = classes[label] if label < len(classes) else str(label)
            relative = f"{name}/{index:07d}.png"
            if not (folder / relative).is_file():  # else written whole by an export that was stopped
                (folder / name).mkdir(parents=True, exist_ok=True)
                atomic_write(folder / relative, lambda tmp, image=image: image.save(tmp, format="PNG"))
            rows.append((relative, label, name))
            written.append(relative)
        if classes:
            atomic_write(folder / CLASS_LIST, lambda tmp: Path(tmp).write_text("".join(f"{c}\n" for c in classes)))

        def write_labels(tmp: str) -> None:
            with open(tmp, "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(("path", "label", "class_name"))
                writer.writerows(rows)

        atomic_write(folder / "labels.csv", write_labels)
        marker.unlink()
    logger.info("exported %d images to %s", len(rows), out_dir)
    return out_dir
