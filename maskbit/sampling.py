"""MaskBit's sampler: iterative parallel decoding of bit groups with classifier-free guidance (spec §3).

Start with every (position, group) entry masked. At step i of T (progress = (i+1)/T): predict every entry with
guided logits, keep decided entries, score the new predictions by their log-probability plus Gumbel noise annealed
to zero, and re-mask the least confident ones so that floor(ratio(progress)·M) entries stay masked. The final
prediction (all entries filled) is the result. Everything random goes through one explicit torch.Generator.

Differences from the official `sample()` that do not change its results: the number of entries to keep masked is
computed per sample (the official code uses sample 0's count for all; identical when counts agree, which they do
unless confidences tie), guidance runs as one batched forward, and no unconditional forward is spent on steps
whose guidance scale is 0.

Axes: B batch, N token positions, m groups, V = 2^(K/m) classes per group, M = N·m maskable entries.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from typing import NamedTuple

import torch

from maskbit import bits as bitops
from maskbit.config import GeneratorConfig, SamplingConfig
from maskbit.device import fit_threads, precision_autocast
from maskbit.generator import Generator
from maskbit.presets import SAMPLING_PRESETS
from maskbit.tokenizer import Tokenizer

__all__ = [
    "SamplingState",
    "mask_ratio",
    "guidance_weight",
    "masked_counts",
    "sampling_step",
    "iter_generate",
    "generate",
    "check_pair",
    "resolve_sampling",
    "MAX_SEED",
    "check_seed",
]

MAX_SEED = 2**63 - 1  # seeds are 0 … 2**63 − 1 (torch.Generator.manual_seed takes up to 2**64 − 1)


def check_seed(seed: int) -> int:
    """A seed in 0 … MAX_SEED as an int; else a ValueError that states the range."""
    try:
        value = operator.index(seed)  # ints, numpy ints; not floats
    except TypeError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED} (2**63 − 1), got {seed!r}")
    return value


# Fraction of entries masked at `progress` ∈ [0, 1] (spec §3 f), for `math` on a float or `torch` on a tensor.
_MASK_SCHEDULES = {
    "arccos": lambda p, m: m.acos(p) / (math.pi / 2),
    "cosine": lambda p, m: m.cos(math.pi / 2 * p),
    "linear": lambda p, m: 1 - p,
    "square": lambda p, m: 1 - p**2,
    "root": lambda p, m: 1 - m.sqrt(p),
}


def _mask_schedule(name: str):
    if name not in _MASK_SCHEDULES:
        raise ValueError(f"unknown mask schedule {name!r}; choose one of {', '.join(_MASK_SCHEDULES)}")
    return _MASK_SCHEDULES[name]


def mask_ratio(progress: float, schedule: str) -> float:
    """Fraction of entries still masked after a step at `progress` ∈ (0, 1], clamped to [1e-6, 1]."""
    return min(max(_mask_schedule(schedule)(progress, math), 1e-6), 1.0)


def training_mask_ratios(progress: torch.Tensor, schedule: str) -> torch.Tensor:
    """Each training sample's masking probability from its uniform draw `progress` (spec §2.4: "arccos")."""
    return _mask_schedule(schedule)(progress, torch)


def guidance_weight(step: int, sampling: SamplingConfig) -> float:
    """Guidance scale at step `step` (0-based); annealing uses step/T, which is 0 at the first step."""
    t = step / sampling.num_steps
    if sampling.guidance_annealing == "none":
        s = 1.0
    elif sampling.guidance_annealing == "linear":
        s = t
    elif sampling.guidance_annealing == "cosine":
        s = (1 - math.cos(math.pi * t**sampling.scale_pow)) / 2
    else:
        raise ValueError(f"unknown guidance annealing {sampling.guidance_annealing!r}")
    return sampling.guidance_scale * s


def num_to_keep_masked(step: int, num_masked: torch.Tensor, num_entries: int, sampling: SamplingConfig) -> torch.Tensor:
    """k = max(1, min(num_masked − 1, floor(ratio · M))) per sample: entries to re-mask after `step`."""
    ratio = mask_ratio((step + 1) / sampling.num_steps, sampling.mask_schedule)
    target = torch.full_like(num_masked, math.floor(ratio * num_entries))
    return torch.maximum(torch.ones_like(num_masked), torch.minimum(num_masked - 1, target))


def masked_counts(sampling: SamplingConfig, num_entries: int) -> list[int]:
    """Entries masked before each step, absent ties: [M, k_0, k_1, …, k_{T−2}]."""
    counts = [num_entries]
    for step in range(sampling.num_steps - 1):
        counts.append(int(num_to_keep_masked(step, torch.tensor(counts[-1]), num_entries, sampling)))
    return counts


class SamplingState(NamedTuple):
    """The state after one sampling step."""

    step: int  # 0-based index of the step just taken
    num_steps: int
    tokens: torch.Tensor  # (B, N, m) int64: decided groups, mask_token where still masked (the next step's input)
    mask: torch.Tensor  # (B, N, m) bool: True where `tokens` is masked
    prediction: torch.Tensor  # (B, N, m) int64: every entry filled; after the last step, the result

    @property
    def is_last(self) -> bool:
        return self.step == self.num_steps - 1


def sampling_step(
    tokens: torch.Tensor,
    logits: torch.Tensor,
    step: int,
    sampling: SamplingConfig,
    mask_token: int,
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One unmasking step. tokens (B, N, m), guided logits (B, N, m, V) → (prediction, re-masked tokens).

    Decided entries never change; each sample keeps its own number of masked entries.
    """
    b, n, m, v = logits.shape
    progress = (step + 1) / sampling.num_steps
    mask = tokens == mask_token
    probs = (logits.float() / sampling.softmax_temperature).softmax(-1)
    sampled = torch.multinomial(probs.view(-1, v), 1, generator=rng).view(b, n, m)
    prediction = torch.where(mask, sampled, tokens)

    chosen = probs.gather(-1, prediction.clamp_max(v - 1)[..., None])[..., 0]
    confidence = torch.where(mask, chosen.log(), torch.inf)
    uniform = torch.rand(confidence.shape, generator=rng, device=rng.device).to(confidence.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0)))
    confidence = confidence + gumbel * sampling.randomize_temperature * (1 - progress)

    num_masked = mask.flatten(1).sum(1)
    keep = num_to_keep_masked(step, num_masked, n * m, sampling)  # (B,)
    sorted_confidence = confidence.flatten(1).sort(dim=1).values
    threshold = sorted_confidence.gather(1, (keep - 1)[:, None])  # k-th smallest per sample
    remask = confidence <= threshold[:, :, None]  # ties can re-mask more, as in the official rule
    return prediction, torch.where(remask, mask_token, prediction)


def resolve_sampling(sampling: SamplingConfig | str | None) -> SamplingConfig:
    if sampling is None:
        return SamplingConfig()
    if isinstance(sampling, str):
        if sampling not in SAMPLING_PRESETS:
            raise ValueError(f"unknown sampling preset {sampling!r}; presets: {', '.join(SAMPLING_PRESETS)}")
        return SAMPLING_PRESETS[sampling]
    return sampling


@torch.no_grad()
def iter_generate(
    generator: Generator,
    labels: torch.Tensor | list[int],
    sampling: SamplingConfig | str | None = None,
    seed: int | None = None,
    rng: torch.Generator | None = None,
    precision: str | None = None,
) -> Iterator[SamplingState]:
    """Yield the state after every sampling step for class ids `labels` (B,).

    Randomness comes from `rng`, or from a new generator on the model's device seeded with `seed` (random seed
    if None). `precision` ("fp32", "bf16" or "auto", maskbit.device; default: `generator.precision`, itself "fp32"
    unless asked otherwise) sets the transformer's autocast; the sampling step itself always runs in float32.
    """
    sampling = resolve_sampling(sampling)
    config = generator.config
    device = generator.pos_emb.device
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).flatten()
    if labels.numel() == 0:
        raise ValueError("labels must hold at least one class id")
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise ValueError(f"class ids must be in [0, {config.num_classes}), got {labels.tolist()}")
    if rng is None:
        rng = torch.Generator(device=device)
        rng.manual_seed(check_seed(seed)) if seed is not None else rng.seed()
    generator.eval()
    b = labels.shape[0]
    tokens = torch.full((b, config.num_positions, config.num_groups), config.mask_token, device=device)
    keep_labels = torch.zeros(b, dtype=torch.bool, device=device)
    autocast = precision_autocast(precision or generator.precision, device)
    for step in range(sampling.num_steps):
        scale = guidance_weight(step, sampling)
        fit_threads(device)  # each step with the threads that fit the machine's load now
        with autocast:
            if scale == 0:
                logits = generator(tokens, labels, keep_labels).float()
            else:  # conditional and unconditional halves in one forward
                both = generator(
                    tokens.repeat(2, 1, 1), labels.repeat(2), torch.cat([keep_labels, ~keep_labels])
                ).float()
                cond, uncond = both[:b], both[b:]
                logits = cond + scale * (cond - uncond)
        prediction, tokens = sampling_step(tokens, logits, step, sampling, config.mask_token, rng)
        yield SamplingState(step, sampling.num_steps, tokens, tokens == config.mask_token, prediction)


def prediction_to_indices(prediction: torch.Tensor, generator: Generator) -> torch.Tensor:
    """(B, N, m) group tokens → (B, h, w) tokenizer indices."""
    side = generator.config.grid_size
    return bitops.combine_groups(prediction, generator.config.token_size).view(-1, side, side)


def check_pair(generator: Generator | GeneratorConfig, tokenizer: Tokenizer) -> None:
    """Raise ValueError unless `tokenizer` gives the tokens `generator` (or a generator of that config) models:
    lookup-free, with its bit count. The one check for sampling, the app and training."""
    k = getattr(generator, "config", generator).token_size
    if tokenizer.quantizer_kind != "lfq":
        raise ValueError(
            "a MaskBit generator predicts bit tokens, the signs of a lookup-free (LFQ) tokenizer's latent; this "
            "tokenizer is vector-quantised (VQ): the bits of its indices only name learned codes, and no generator "
            f"was trained on them. Pair the generator with an LFQ tokenizer of {k}-bit tokens, e.g. 'default' or "
            f"markweber/maskbit_tokenizer_{k}bit"
        )
    if tokenizer.num_bits != k:
        raise ValueError(f"the tokenizer has {tokenizer.num_bits}-bit tokens but the generator expects {k}-bit tokens")


@torch.no_grad()
def generate(
    generator: Generator,
    tokenizer: Tokenizer,
    labels: torch.Tensor | list[int],
    sampling: SamplingConfig | str | None = None,
    seed: int | None = None,
    rng: torch.Generator | None = None,
    precision: str | None = None,
) -> torch.Tensor:
    """Class-conditional images (B, 3, H, W), clamped to [0, 1], for class ids `labels` (B,).

    `precision` is this call's, for the sampler (see `iter_generate`) and the decoding; default: each model's own."""
    check_pair(generator, tokenizer)
    state = None
    for state in iter_generate(generator, labels, sampling, seed, rng, precision):
        pass
    return tokenizer.decode(prediction_to_indices(state.prediction, generator), precision).clamp(0, 1)
