"""What the explorer does, free of any UI: load models, generate, flip bits, find neighbours, token statistics.

The Gradio callbacks (app/ui.py) only validate, call these and format. Images cross this boundary as float
tensors (3, H, W) in [0, 1]; results are small dataclasses of tensors, arrays and numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexes.store import ImageIndex
from maskbit import Generator, Tokenizer, bits
from maskbit.checkpoint import DEFAULT_MODEL_DIR
from maskbit.config import GENERATOR_PRESETS, SAMPLING_PRESETS, SamplingConfig
from maskbit.device import pick_device
from maskbit.sampling import iter_generate, prediction_to_indices

__all__ = [
    "UserError",
    "Models",
    "load_models",
    "OFFICIAL_PAIRS",
    "generate",
    "flip_each_bit",
    "bit_planes",
    "bit_walk",
    "neighbours",
    "token_statistics",
]

# One click loads a published pair: tokenizer and generator hub ids of the paper's configurations.
OFFICIAL_PAIRS = {
    f"official {k}-bit (ImageNet 256)": (f"markweber/maskbit_tokenizer_{k}bit", f"markweber/maskbit_generator_{k}bit")
    for k in (10, 12, 14, 16, 18)
}


class UserError(ValueError):
    """Bad input or an impossible request; the message says what was wrong and what to do."""


# ---------------------------------------------------------------------------------------------------- models


@dataclass
class Models:
    """The loaded tokenizer, and a generator when one is loaded and fits the tokenizer."""

    tokenizer: Tokenizer
    generator: Generator | None
    tokenizer_source: str
    generator_source: str
    class_names: list[str]
    sampling: SamplingConfig  # the generator's own preset (or the defaults)
    image_size: int  # the generator's grid × the tokenizer's downsampling; else the tokenizer config's size
    problem: str = ""  # why generation is unavailable, if it is

    @property
    def can_generate(self) -> bool:
        return self.generator is not None and not self.problem

    @property
    def device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.tokenizer.downsample_factor
        return side, side

    def class_id(self, name_or_id: str | int) -> int:
        """A class given by name (as listed) or by id."""
        if isinstance(name_or_id, int) or str(name_or_id).strip().lstrip("-").isdigit():
            class_id = int(name_or_id)
            if not 0 <= class_id < len(self.class_names):
                raise UserError(
                    f"class id {class_id} is out of range: this model has classes 0–{len(self.class_names) - 1}"
                )
            return class_id
        name = str(name_or_id).strip()
        if name in self.class_names:
            return self.class_names.index(name)
        lowered = [c.lower() for c in self.class_names]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        close = [c for c in self.class_names if name.lower() in c.lower()][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Classes: {', '.join(self.class_names[:12])}…"
        raise UserError(f"unknown class {name!r}.{hint}")

    def describe(self) -> dict:
        t = self.tokenizer
        info = {
            "tokenizer": self.tokenizer_source,
            "tokenizer_parameters": sum(p.numel() for p in t.parameters()),
            "bits_per_token": t.num_bits,
            "token_grid": list(self.grid),
            "image_size": self.image_size,
            "tokenizer_identity": t.identity()[:16],
            "generator": self.generator_source or None,
            "device": str(self.device),
        }
        if self.generator is not None:
            g = self.generator.config
            info |= {
                "generator_parameters": sum(p.numel() for p in self.generator.parameters()),
                "classes": len(self.class_names),
                "groups_per_token": g.codebook_splits,
                "sampling_preset": dataclasses.asdict(self.sampling),
            }
        if self.problem:
            info["generation"] = f"unavailable: {self.problem}"
        return info


def load_models(
    tokenizer_source: str,
    generator_source: str = "",
    tokenizer_config: str | None = None,
    generator_config: str | None = None,
    device: torch.device | None = None,
    precision: str = "auto",
) -> Models:
    """Load a tokenizer and optionally a generator (any `from_pretrained` source); say why they do not fit.
    `precision` (maskbit.device) is what both models encode, decode and sample at."""
    device = device or pick_device()
    try:
        tokenizer = Tokenizer.from_pretrained(tokenizer_source, tokenizer_config)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the tokenizer {tokenizer_source!r}: {error}") from None
    tokenizer = tokenizer.requires_grad_(False).eval().to(device)
    tokenizer.precision = precision
    generator, names, problem = None, [], ""
    sampling = SAMPLING_PRESETS["default"]
    image_size = tokenizer.config.image_size
    if generator_source:
        try:
            generator = Generator.from_pretrained(generator_source, generator_config)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the generator {generator_source!r}: {error}") from None
        generator = generator.requires_grad_(False).eval().to(device)
        generator.precision = precision
        names = class_names(generator_source, generator.config.num_classes)
        sampling = sampling_preset(generator_source)
        g = generator.config
        if g.token_size != tokenizer.num_bits:
            problem = (
                f"the generator expects {g.token_size}-bit tokens, the tokenizer gives {tokenizer.num_bits}-bit "
                "tokens; load a matching pair"
            )
        else:  # the tokenizer is fully convolutional: the generator's grid sets the image size
            image_size = g.grid_size * tokenizer.downsample_factor
    return Models(
        tokenizer, generator, str(tokenizer_source), str(generator_source), names, sampling, image_size, problem
    )


def model_directory(source: str, kind: str = "generator") -> Path | None:
    if source == "default":
        return DEFAULT_MODEL_DIR / kind
    path = Path(source)
    return path if path.is_dir() else path.parent if path.is_file() else None


def class_names(generator_source: str, num_classes: int) -> list[str]:
    """classes.json beside the model (the bundled model, training runs), ImageNet's names, or 'class i'."""
    directory = model_directory(generator_source)
    if directory is not None and (directory / "classes.json").is_file():
        names = json.loads((directory / "classes.json").read_text())
        if isinstance(names, list) and len(names) >= num_classes:
            return [str(n) for n in names[:num_classes]]
    if num_classes == 1000:
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    return [f"class {i}" for i in range(num_classes)]


def sampling_preset(generator_source: str) -> SamplingConfig:
    """The paper's preset for an official generator, the training run's sampling for a run, else the defaults."""
    name = str(generator_source).rstrip("/").split("/")[-1].removesuffix(".bin")
    if generator_source == "default":
        return SAMPLING_PRESETS["default"]
    if name in SAMPLING_PRESETS and name in GENERATOR_PRESETS:
        return SAMPLING_PRESETS[name]
    directory = model_directory(generator_source)
    run_config = directory.parent / "config.json" if directory is not None else None
    if run_config is not None and run_config.is_file():
        try:
            stored = json.loads(run_config.read_text()).get("sampling")
            if isinstance(stored, dict):
                return SamplingConfig(**{f.name: stored[f.name] for f in dataclasses.fields(SamplingConfig)})
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    return SamplingConfig()


# ---------------------------------------------------------------------------------------------------- generate


@dataclass
class Generation:
    images: torch.Tensor  # (B, 3, H, W) in [0, 1]
    frames: list[torch.Tensor]  # per step: (B, 3, H, W), the current guess with still-masked tokens greyed out
    masked_fraction: list[float]  # per step, after the step: fraction of (position, group) entries still masked
    tokens: torch.Tensor  # (B, h, w) final token indices


@torch.no_grad()
def generate(
    models: Models, class_ids: list[int], sampling: SamplingConfig, seed: int, frames: bool = True
) -> Generation:
    if not models.can_generate:
        raise UserError(models.problem or "no generator is loaded; load one in the model panel")
    generator, tokenizer = models.generator, models.tokenizer
    side = generator.config.grid_size
    shown, fractions, state = [], [], None
    for state in iter_generate(generator, class_ids, sampling, seed=seed):
        # after the last step the result is the prediction; its re-masked tokens (the official rule keeps at least
        # one entry masked per sample) are never used
        fractions.append(0.0 if state.is_last else float(state.mask.float().mean()))
        if frames or state.is_last:
            images = tokenizer.decode(prediction_to_indices(state.prediction, generator)).clamp(0, 1)
            if frames and not state.is_last:
                masked = state.mask.any(-1).view(-1, 1, side, side).float()  # a token is undecided if any group is
                masked = torch.nn.functional.interpolate(masked, size=images.shape[-2:], mode="nearest")
                images = images * (1 - 0.65 * masked) + 0.5 * 0.65 * masked
            shown.append(images)
    tokens = prediction_to_indices(state.prediction, generator)
    return Generation(shown[-1], shown if frames else [shown[-1]], fractions, tokens)


# ---------------------------------------------------------------------------------------------------- bit flips


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between images in [0, 1] pixel units, over all values."""
    return (a - b).flatten(1).norm(dim=1)


@dataclass
class FlipResult:
    original: torch.Tensor  # (3, H, W)
    reconstruction: torch.Tensor  # (3, H, W)
    tokens: torch.Tensor  # (h, w)
    bit_ids: list[int]
    flipped: torch.Tensor  # (len(bit_ids), 3, H, W)
    psnr: np.ndarray  # against the reconstruction, dB
    l2: np.ndarray
    lpips: np.ndarray | None
    positions: int  # how many tokens were flipped


def parse_ids(text: str | list | None, limit: int, what: str) -> list[int] | None:
    """'all' or '' → None (all); '0, 3, 5-7' → [0, 3, 5, 6, 7]; each in [0, limit)."""
    if text is None:
        return None
    if isinstance(text, list | tuple):
        values = [int(v) for v in text]
    else:
        text = str(text).strip().lower()
        if text in ("", "all"):
            return None
        values = []
        for part in text.replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    lo, hi = part.split("-", 1)
                    values += list(range(int(lo), int(hi) + 1))
                else:
                    values.append(int(part))
            except ValueError:
                raise UserError(f"{what}: {part!r} is not a number or a range like 3-7") from None
    bad = [v for v in values if not 0 <= v < limit]
    if bad:
        raise UserError(f"{what} must be in 0–{limit - 1}; got {bad[:5]}")
    if not values:
        raise UserError(f"no {what} chosen")
    return sorted(set(values))


def distances(
    images: torch.Tensor, reference: torch.Tensor, lpips=None, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """PSNR, L2 and (with an LPIPS embedding) LPIPS of images (B, 3, H, W) against reference (3, H, W)."""
    reference = reference[None].to(images.device)
    p, d = psnr(images, reference).cpu().numpy(), l2(images, reference).cpu().numpy()
    lp = None
    if lpips is not None:  # on the embedding's device (the models' one: AppState)
        device = next(lpips.parameters()).device
        ref = lpips(reference.to(device))
        lp = np.concatenate(
            [
                (lpips(images[i : i + batch_size].to(device)) - ref).pow(2).sum(1).cpu().numpy()
                for i in range(0, len(images), batch_size)
            ]
        )
    return p, d, lp


@torch.no_grad()
def flip_each_bit(
    models: Models,
    image: torch.Tensor,
    bit_ids: list[int] | None = None,
    positions: list[int] | None = None,
    lpips=None,
) -> FlipResult:
    """Encode, then for each chosen bit i decode the tokens with bit i flipped (at every or the chosen tokens)."""
    tokenizer = models.tokenizer
    image = image.to(models.device)
    tokens = tokenizer.encode(image[None])  # (1, h, w)
    reconstruction = tokenizer.decode(tokens).clamp(0, 1)[0]
    bit_ids = bit_ids if bit_ids is not None else list(range(tokenizer.num_bits))
    flipped_tokens = torch.cat([bits.flip_bits(tokens, i, tokenizer.num_bits, positions) for i in bit_ids])
    flipped = torch.cat(
        [tokenizer.decode(flipped_tokens[i : i + 16]).clamp(0, 1) for i in range(0, len(flipped_tokens), 16)]
    )
    p, d, lp = distances(flipped, reconstruction, lpips)
    count = tokens[0].numel() if positions is None else len(positions)
    return FlipResult(image.cpu(), reconstruction.cpu(), tokens[0].cpu(), bit_ids, flipped.cpu(), p, d, lp, count)


def bit_planes(tokens: torch.Tensor, num_bits: int) -> torch.Tensor:
    """(h, w) indices → (K, h, w) bool: plane k is bit k of every token (True = +1)."""
    return bits.indices_to_bits(tokens, num_bits).permute(2, 0, 1) > 0


@dataclass
class Walk:
    images: torch.Tensor  # (steps + 1, 3, H, W): the reconstruction, then after r, 2r, … flipped bits
    hamming: list[int]
    psnr: np.ndarray
    lpips: np.ndarray | None


@torch.no_grad()
def bit_walk(models: Models, image: torch.Tensor, r: int, steps: int, seed: int, lpips=None) -> Walk:
    """A random walk in Hamming space: each step flips r more random bits (never one already flipped)."""
    tokenizer = models.tokenizer
    tokens = tokenizer.encode(image[None].to(models.device))
    k, total = tokenizer.num_bits, tokens.numel() * tokenizer.num_bits
    if not 1 <= r * steps <= total:
        raise UserError(f"r × steps must be between 1 and the image's {total} bits; got {r} × {steps}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    walked = [tokens[0]]
    for step in range(1, steps + 1):
        chosen = order[: step * r]
        masks = torch.zeros(total, dtype=torch.long)
        masks[chosen] = 1
        per_token = (masks.view(-1, k) << torch.arange(k)).sum(1).view_as(tokens[0]).to(tokens.device)
        walked.append(tokens[0] ^ per_token)
    grid = torch.stack(walked)
    images = tokenizer.decode(grid).clamp(0, 1)
    p, _, lp = distances(images, images[0], lpips)
    return Walk(images.cpu(), [step * r for step in range(steps + 1)], p, lp)


# ---------------------------------------------------------------------------------------------------- neighbours


@dataclass
class NeighbourResult:
    query: torch.Tensor  # (3, H, W)
    tokens: torch.Tensor  # (h, w)
    found: dict  # metric → Neighbours (one query)
    overlap: dict[str, float]  # "hamming∩lpips" → fraction of the top-k shared
    shortlist: dict[str, np.ndarray]  # metric → exact distances over the union of all top-k ids (and "ids")
    heatmap: np.ndarray  # (h, w) per-token Hamming distance to the nearest Hamming neighbour
    verdicts: dict[str, dict]  # metric → nearest distance, threshold, memorized?


@torch.no_grad()
def neighbours(index: ImageIndex, image: torch.Tensor, k: int) -> NeighbourResult:
    tokenizer = index.tokenizer
    device = next(tokenizer.parameters()).device
    size = index.manifest["image_size"]
    query = image[None].to(device)
    if query.shape[-1] != size:
        query = torch.nn.functional.interpolate(query, size=(size, size), mode="bicubic").clamp(0, 1)
    tokens = tokenizer.encode(query)
    found = index.search(images=query, k=k)
    metrics = list(found)
    overlap = {}
    for i, a in enumerate(metrics):
        for b in metrics[i + 1 :]:
            overlap[f"{a}∩{b}"] = len(set(found[a].ids[0]) & set(found[b].ids[0])) / len(found[a].ids[0])
    ids = np.unique(np.concatenate([found[m].ids[0] for m in metrics]))
    shortlist = {"ids": ids, **{metric: index.exact_distances(metric, query, tokens, ids) for metric in metrics}}
    nearest = int(found["hamming"].ids[0, 0])
    heatmap = index.token_distance_map(tokens[0], nearest)
    calibration = index.manifest.get("calibration", {})
    verdicts = {}
    for metric in metrics:
        distance = float(found[metric].distances[0, 0])
        threshold = calibration.get(metric, {}).get("threshold")
        verdicts[metric] = {
            "nearest_distance": distance,
            "threshold": threshold,
            "memorized": None if threshold is None else distance < threshold,
        }
    return NeighbourResult(query[0].cpu(), tokens[0].cpu(), found, overlap, shortlist, heatmap, verdicts)


# ---------------------------------------------------------------------------------------------------- token space


@dataclass
class TokenStatistics:
    images: int
    num_bits: int
    bit_usage: np.ndarray  # (K,) fraction of tokens with bit k = +1
    bit_entropy: np.ndarray  # (K,) binary entropy of bit k, in bits
    code_counts: np.ndarray  # counts of the used codes, descending
    codes_used: int
    code_entropy: float  # of the empirical code distribution, in bits (max K)
    perplexity: float


def token_statistics(tokens: np.ndarray, num_bits: int) -> TokenStatistics:
    """Usage and entropy of every bit and every code over (N, h, w) token indices."""
    flat = torch.from_numpy(tokens.reshape(-1).astype(np.int64))
    usage = (bits.indices_to_bits(flat, num_bits) > 0).float().mean(0).numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(usage * np.log2(usage)) - np.nan_to_num((1 - usage) * np.log2(1 - usage))
    counts = (
        np.bincount(flat.numpy(), minlength=1 << num_bits) if num_bits <= 24 else np.unique(flat, return_counts=True)[1]
    )
    used = counts[counts > 0]
    p = used / used.sum()
    code_entropy = float(-(p * np.log2(p)).sum())
    return TokenStatistics(
        len(tokens), num_bits, usage, entropy, np.sort(used)[::-1], len(used), code_entropy, math.pow(2, code_entropy)
    )
