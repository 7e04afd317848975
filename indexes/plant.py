"""Planted copies: does the memorization report catch a copy, and under which edits?

A report that has never been shown a copy cannot claim to find one. `python -m indexes report --plant N` takes N
training images from the index, copies each under the edits a copier makes (below), mixes the copies with real
held-out images that did *not* set the threshold, and measures per metric and edit:

- recall: the share of copies flagged, i.e. closer to a training image than the report's threshold (the p-th
  percentile of the other held-out images' nearest distances, the calibration of Somepalli et al., "Diffusion Art or
  Digital Forgery?", CVPR 2023);
- the false-positive rate: the share of those real held-out images flagged (about p / 100 when the threshold holds);
- the ROC AUC of "closer to the training set" separating the copies from the real images, P(d_copy < d_real) with
  ties ½: 1 finds every copy at some threshold, 0.5 is chance.

The edits are one table, `EDITS`: each a name (the key in report.json's `planted`), a pure function of images
(B, 3, S, S) in [0, 1], its constant and the constant's meaning. Each function takes (images, constant, context),
where the context holds what some edits need: the index's tokenizer, the real host images, a torch.Generator.

    exact             the training image itself
    horizontal_flip   mirrored left-right
    crop              the central 90 % square, resized back to S (maskbit.images.fit_square, bilinear)
    shift             moved 4 pixels right and down, the border repeated into the gap
    jpeg              written as JPEG at quality 50 and read back (maskbit.images.read_image)
    brighter          × 1.1, clipped to [0, 1]
    darker            × 0.9
    noise             + Gaussian noise of σ = 0.02, clipped (seeded)
    reconstruction    the index's tokenizer's own decode(encode(x)), clipped: what a copy made by the model looks like
    half_pasted       the left half of the training image pasted over the left half of a real held-out image

A new edit is one row of `EDITS`.

Axes: N planted training images, C real held-out images ("controls") not used for the threshold.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from indexes.audit import mann_whitney_u
from maskbit.images import fit_square, read_image, to_pil, to_tensor

__all__ = [
    "EDITS",
    "EDIT_NAMES",
    "Edit",
    "EditContext",
    "PlantedScores",
    "brightness",
    "crop_resize",
    "gaussian_noise",
    "half_pasted",
    "jpeg",
    "plant_copies",
    "planted_ids",
    "planted_scores",
    "roc_auc",
    "roc_curve",
    "shift",
]

CROP_FRACTION = 0.9
SHIFT_PIXELS = 4
JPEG_QUALITY = 50
BRIGHTNESS = 0.1
NOISE_SIGMA = 0.02

# ---------------------------------------------------------------------------------------------------- edits


def crop_resize(images: torch.Tensor, fraction: float = CROP_FRACTION) -> torch.Tensor:
    """The central `fraction` of each image (a square of round(fraction · S) pixels), resized back to S by the one
    resize of the project (`fit_square`, bilinear)."""
    size = images.shape[-1]
    side = max(1, round(fraction * size))
    top = (size - side) // 2
    crops = [to_pil(image).crop((top, top, top + side, top + side)) for image in images]
    return torch.stack([fit_square(crop, size) for crop in crops])


def shift(images: torch.Tensor, pixels: int = SHIFT_PIXELS) -> torch.Tensor:
    """Each image moved `pixels` right and down; the top rows and left columns repeat the border (no wrap-around)."""
    padded = F.pad(images, (pixels, 0, pixels, 0), mode="replicate")  # (B, 3, S + p, S + p)
    return padded[..., : images.shape[-2], : images.shape[-1]]


def jpeg(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """Each image written as a JPEG file at `quality` (8-bit, 4:2:0 as Pillow writes it) and read back."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="JPEG", quality=quality)
        out.append(to_tensor(read_image(buffer.getvalue())))
    return torch.stack(out)


def brightness(images: torch.Tensor, change: float) -> torch.Tensor:
    """Every pixel × (1 + change), clipped to [0, 1]: change 0.1 is 10 % brighter, −0.1 10 % darker."""
    return (images * (1 + change)).clamp(0, 1)


def gaussian_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Independent N(0, σ²) noise on every pixel, clipped to [0, 1]; drawn on the CPU from `generator`."""
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
    return (images + sigma * noise.to(images.device)).clamp(0, 1)


def half_pasted(images: torch.Tensor, hosts: torch.Tensor) -> torch.Tensor:
    """The left half (columns < S / 2) of each image over the same place of its host (B, 3, S, S), a real image."""
    if hosts.shape != images.shape:
        raise ValueError(f"hosts: expected shape {tuple(images.shape)} like the images, got {tuple(hosts.shape)}")
    pasted = hosts.clone()
    half = images.shape[-1] // 2
    pasted[..., :half] = images[..., :half]
    return pasted


@torch.no_grad()
def reconstruction(images: torch.Tensor, tokenizer, batch_size: int = 64) -> torch.Tensor:
    """decode(encode(images)) by `tokenizer` on its own device, clipped to [0, 1]; returned on the images' device."""
    device = next(tokenizer.parameters()).device
    parts = [
        tokenizer.decode(tokenizer.encode(images[i : i + batch_size].to(device))).float().clamp(0, 1).to(images.device)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


class EditContext(NamedTuple):
    """What some edits need besides the images: the index's tokenizer, the real images (N, 3, S, S) that half of each
    training image is pasted onto, and the generator of the noise."""

    tokenizer: torch.nn.Module
    hosts: torch.Tensor
    generator: torch.Generator


class Edit(NamedTuple):
    """One edit a copier makes: `apply(images, constant, context)` → images of the same shape in [0, 1]."""

    name: str
    apply: Callable[[torch.Tensor, float | None, EditContext], torch.Tensor]
    constant: float | None
    description: str  # what the edit does, with "{}" where its constant goes

    @property
    def label(self) -> str:
        """The name and what it does, for tables: "crop (central 90 % kept, resized back)"."""
        return f"{self.name} ({self.description.format(self.constant)})"

    def to_json(self) -> dict:
        return {"name": self.name, "constant": self.constant, "label": self.label}


EDITS = (
    Edit("exact", lambda x, k, c: x.clone(), None, "the training image itself"),
    Edit("horizontal_flip", lambda x, k, c: x.flip(-1), None, "mirrored left-right"),
    Edit("crop", lambda x, k, c: crop_resize(x, k), CROP_FRACTION, "central {:.0%} kept, resized back"),
    Edit("shift", lambda x, k, c: shift(x, k), SHIFT_PIXELS, "{} px right and down"),
    Edit("jpeg", lambda x, k, c: jpeg(x, k), JPEG_QUALITY, "JPEG at quality {}"),
    Edit("brighter", lambda x, k, c: brightness(x, k), BRIGHTNESS, "every pixel × (1 + {:g})"),
    Edit("darker", lambda x, k, c: brightness(x, -k), BRIGHTNESS, "every pixel × (1 − {:g})"),
    Edit("noise", lambda x, k, c: gaussian_noise(x, k, c.generator), NOISE_SIGMA, "Gaussian noise, σ = {:g}"),
    Edit("reconstruction", lambda x, k, c: reconstruction(x, c.tokenizer), None, "the tokenizer's decode(encode(x))"),
    Edit("half_pasted", lambda x, k, c: half_pasted(x, c.hosts), None, "left half onto a held-out image"),
)
EDIT_NAMES = tuple(edit.name for edit in EDITS)


def planted_ids(index_size: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` distinct ids of an index of `index_size` images, drawn with numpy's PCG64 from `seed`, ascending."""
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise ValueError(f"plant must be a whole number ≥ 1, got {count!r}")
    if count > index_size:
        raise ValueError(
            f"plant={count} is larger than the index ({index_size} images): plant at most {index_size} copies"
        )
    return np.sort(np.random.default_rng(seed).choice(index_size, size=count, replace=False))


def plant_copies(originals: torch.Tensor, tokenizer, hosts: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """edit name → (N, 3, S, S) copies of the training images `originals` (N, 3, S, S) in [0, 1], in EDITS order.
    hosts (N, 3, S, S): the real held-out images that half of each original is pasted onto; seed: the noise's."""
    context = EditContext(tokenizer, hosts, torch.Generator().manual_seed(seed))
    return {edit.name: edit.apply(originals, edit.constant, context) for edit in EDITS}


# ---------------------------------------------------------------------------------------------------- scores


def _checked(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of distances, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name} holds NaN distances")
    return array


def roc_auc(copy_distances: np.ndarray, real_distances: np.ndarray) -> float:
    """P(d_copy < d_real) + ½ P(d_copy = d_real) over all (copy, real) pairs: the area under the ROC curve of the
    rule "flag when closer than a threshold". Exact (sorted counts, no interpolation)."""
    copies, real = _checked(copy_distances, "copy_distances"), _checked(real_distances, "real_distances")
    return mann_whitney_u(real, copies) / (len(copies) * len(real))  # #{real farther than copy} + ½ ties


def roc_curve(copy_distances: np.ndarray, real_distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of "flag when distance ≤ t" for every distinct t, from (0, 0) to
    (1, 1), both ascending."""
    copies, real = _checked(copy_distances, "copy_distances"), _checked(real_distances, "real_distances")
    thresholds = np.unique(np.concatenate([copies, real]))
    tpr = np.searchsorted(np.sort(copies), thresholds, side="right") / len(copies)
    fpr = np.searchsorted(np.sort(real), thresholds, side="right") / len(real)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


class PlantedScores(NamedTuple):
    """One metric's planted-copy figures; recall and auc map each edit's name to its value."""

    recall: dict[str, float]
    auc: dict[str, float]
    false_positive_rate: float


def planted_scores(
    copy_distances: dict[str, np.ndarray], real_distances: np.ndarray, threshold: float
) -> PlantedScores:
    """copy_distances: edit name → (N,) nearest-training distances of the copies; real_distances (C,): the held-out
    controls'. Flagged means strictly closer than `threshold`, as in the report."""
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    real = _checked(real_distances, "real_distances")
    recall = {
        name: float((_checked(d, f"copy_distances[{name}]") < threshold).mean()) for name, d in copy_distances.items()
    }
    auc = {name: roc_auc(d, real) for name, d in copy_distances.items()}
    return PlantedScores(recall, auc, float((real < threshold).mean()))
