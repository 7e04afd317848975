"""Sampler speed in one run: ours in float32 and in bf16 autocast against a plain re-statement of the official loop.

For each config (the real 12-bit generator with random weights, official initialisation; the bundled `default` model
with its weights): seconds per sampling step at each batch size for the official-style loop (float32), ours (float32)
and ours (bf16 autocast), interleaved, the minimum of the repeats; the bf16 guided logits' error against float32 at a
half-unmasked state; and for the bundled model, `generate` end to end (decode included, its `default` preset:
16 steps, guidance 4) for a few image counts, and how far bf16 samples are from float32 samples with the same seed.

The reference restates `modeling/modules/sampling.py::sample` as written: separate conditional and unconditional
forwards on every step (also those whose guidance scale is 0), randomness from the global RNG, Gumbel noise drawn
on the CPU, one masked count taken from sample 0.

    .venv/bin/python -m bench.sampling_speed --json bench/results/sampling_speed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from pathlib import Path

import torch

from maskbit import GENERATOR_PRESETS, SAMPLING_PRESETS, Generator, Tokenizer, generate, iter_generate
from maskbit.device import precision_autocast
from maskbit.sampling import guidance_weight, mask_ratio, prediction_to_indices

PRECISIONS = ("fp32", "bf16")


@torch.no_grad()
def official_loop(generator: Generator, labels: torch.Tensor, sampling, precision: str = "fp32") -> torch.Tensor:
    c, device = generator.config, generator.pos_emb.device
    b, total = len(labels), c.num_positions * c.num_groups
    labels = labels.to(device)
    tokens = torch.full((b, c.num_positions, c.num_groups), c.mask_token, device=device)
    for i in range(sampling.num_steps):
        progress = (i + 1) / sampling.num_steps
        with precision_autocast(precision, device):
            cond = generator(tokens, labels.clone(), torch.zeros(b, dtype=torch.bool, device=device)).float()
            uncond = generator(tokens, labels.clone(), torch.ones(b, dtype=torch.bool, device=device)).float()
        logits = cond + guidance_weight(i, sampling) * (cond - uncond)
        probs = torch.softmax(logits / sampling.softmax_temperature, -1)
        sampled = torch.distributions.Categorical(probs=probs).sample()
        unknown = tokens == c.mask_token
        num_masked = int(unknown[0].sum())
        pred = torch.where(unknown, sampled, tokens)
        confidence = torch.gather(probs, -1, pred.clamp_max(c.mask_token - 1)[..., None])[..., 0]
        confidence = torch.where(unknown, confidence, torch.inf)
        gumbel = -torch.log(-torch.log(torch.rand(confidence.shape).clamp(1e-20, 1.0))).to(device)  # on the CPU
        confidence = torch.log(confidence) + gumbel * sampling.randomize_temperature * (1 - progress)
        mask_len = max(1, min(num_masked - 1, math.floor(mask_ratio(progress, sampling.mask_schedule) * total)))
        threshold = torch.sort(confidence.view(b, -1), dim=-1).values[:, mask_len - 1 : mask_len]
        tokens = torch.where(confidence <= threshold[:, :, None], c.mask_token, pred)
    return pred


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run_ours(generator: Generator, labels: torch.Tensor, sampling, precision: str) -> torch.Tensor:
    for state in iter_generate(generator, labels, sampling, seed=0, precision=precision):
        pass
    return state.prediction


@torch.no_grad()
def guided_logits(generator: Generator, tokens: torch.Tensor, labels: torch.Tensor, scale: float, precision: str):
    b, labels = len(labels), labels.to(tokens.device)
    drop = torch.arange(2 * b, device=tokens.device) >= b
    with precision_autocast(precision, tokens.device):
        both = generator(tokens.repeat(2, 1, 1), labels.repeat(2), drop).float()
    return both[:b] + scale * (both[:b] - both[b:])


def logits_error(generator: Generator, labels: torch.Tensor, sampling) -> dict[str, float]:
    """bf16 against float32 guided logits at the input of the middle step of a float32 run."""
    states = list(iter_generate(generator, labels, sampling, seed=0, precision="fp32"))
    middle = sampling.num_steps // 2
    state, scale = states[middle - 1], guidance_weight(middle, sampling)
    exact = guided_logits(generator, state.tokens, labels, scale, "fp32")
    approx = guided_logits(generator, state.tokens, labels, scale, "bf16")
    p, q = exact.log_softmax(-1), approx.log_softmax(-1)
    return {
        "max_abs_error": float((approx - exact).abs().max()),
        "max_abs_logit": float(exact.abs().max()),
        "mean_kl": float((p.exp() * (p - q)).sum(-1).mean()),
        "argmax_agreement": float((exact.argmax(-1) == approx.argmax(-1)).float().mean()),
    }


def step_timings(name: str, generator: Generator, batch: int, steps: int, repeats: int) -> dict:
    base = SAMPLING_PRESETS.get(name, SAMPLING_PRESETS["maskbit_generator_12bit"])
    # Constant guidance, so that every timed step is a typical one (with cosine annealing, step 0 has scale 0 and
    # ours skips its unconditional half: 1 of 64 steps).
    sampling = dataclasses.replace(base, num_steps=steps, guidance_annealing="none")
    labels = torch.arange(batch) % generator.config.num_classes
    run = (generator, labels, sampling)
    runs = {"official-style fp32": lambda run=run: official_loop(*run)}
    runs |= {f"ours {p}": (lambda p=p, run=run: run_ours(*run, p)) for p in PRECISIONS}
    warm = (generator, labels, dataclasses.replace(sampling, num_steps=1))
    official_loop(*warm)  # first-call allocations and oneDNN kernels, one step each
    for precision in PRECISIONS:
        run_ours(*warm, precision)
    timings = {key: [] for key in runs}
    for _ in range(repeats):  # interleaved
        for key, fn in runs.items():
            timings[key].append(seconds(fn) / steps)
    return {key: min(values) for key, values in timings.items()}


def forward_flops(config, batch: int) -> float:
    """Multiply-adds × 2 of one generator forward: the linear layers and attention over N + 1 tokens."""
    n, d = config.num_positions + 1, config.hidden_dim
    per_layer = 2 * n * (4 * d * d + 2 * d * config.mlp_dim) + 4 * n * n * d
    head = 2 * n * d * d + 2 * config.num_positions * d * config.num_groups * config.group_vocab_size
    return batch * (config.depth * per_layer + head + 2 * config.num_positions * config.token_size * d)


@torch.no_grad()
def forward_timings(generator: Generator, batch: int, repeats: int) -> dict:
    """One forward of `batch` half-unmasked samples (a guided step of batch / 2 images), fp32 and bf16."""
    c = generator.config
    tokens = torch.randint(
        0, c.mask_token + 1, (batch, c.num_positions, c.num_groups), generator=torch.Generator().manual_seed(0)
    )
    labels, drop = torch.arange(batch) % c.num_classes, torch.arange(batch) >= batch // 2
    result = {}
    for precision in PRECISIONS:

        def forward(precision=precision):
            with precision_autocast(precision, tokens.device):
                generator(tokens, labels, drop)

        forward()
        best = min(seconds(forward) for _ in range(max(repeats, 5)))
        result[precision] = {"s": best, "gflop_per_s": forward_flops(c, batch) / best / 1e9}
    return result


def end_to_end(generator: Generator, tokenizer: Tokenizer, counts: list[int], repeats: int) -> dict:
    """`generate` with the bundled preset (16 steps, guidance 4), decode included; official loop + decode too."""
    sampling, threads = SAMPLING_PRESETS["default"], torch.get_num_threads()
    result = {}
    for count in counts:
        labels = torch.arange(count) % generator.config.num_classes

        def official(labels=labels):
            prediction = official_loop(generator, labels, sampling)
            return tokenizer.decode(prediction_to_indices(prediction, generator)).clamp(0, 1)

        def ours(precision, threads=threads, labels=labels):
            tokenizer.precision, previous = precision, torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                return generate(generator, tokenizer, labels, sampling, seed=0, precision=precision)
            finally:
                torch.set_num_threads(previous)

        runs = {"official-style fp32": official} | {f"ours {p}": (lambda p=p: ours(p)) for p in PRECISIONS}
        if threads > 1:  # thread settings: on 2 cores, is one thread (no OpenMP barriers) faster for this model?
            runs |= {f"ours {p}, 1 thread": (lambda p=p: ours(p, 1)) for p in PRECISIONS}
        for fn in runs.values():
            fn()
        timings = {key: [] for key in runs}
        for _ in range(repeats):
            for key, fn in runs.items():
                timings[key].append(seconds(fn))
        result[count] = {key: min(values) for key, values in timings.items()}
    tokenizer.precision = "auto"
    return result


@torch.no_grad()
def sample_agreement(generator: Generator, tokenizer: Tokenizer, count: int) -> dict[str, float]:
    """bf16 against float32 samples drawn with the same seed: identical token groups, and image PSNR."""
    sampling, labels = SAMPLING_PRESETS["default"], torch.arange(count) % generator.config.num_classes
    exact = run_ours(generator, labels, sampling, "fp32")
    approx = run_ours(generator, labels, sampling, "bf16")
    images = [tokenizer.decode(prediction_to_indices(p, generator)).clamp(0, 1) for p in (exact, approx)]
    mse = (images[0] - images[1]).pow(2).flatten(1).mean(1)
    identical = (exact == approx).flatten(1).all(1)
    return {
        "images": count,
        "identical_groups": float((exact == approx).float().mean()),
        "identical_images": float(identical.float().mean()),
        "median_psnr_db": float((10 * torch.log10(1 / mse.clamp_min(1e-12))).median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["maskbit_generator_12bit", "default"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=2, help="sampling steps timed per run (12-bit; default: 16)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the minimum is reported")
    parser.add_argument("--images", type=int, nargs="+", default=[1, 4, 8], help="bundled model end to end")
    parser.add_argument("--agreement-images", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"# {machine}")
    report: dict = {"machine": machine, "configs": {}}
    for name in args.configs:
        if name == "default":
            generator = Generator.from_pretrained("default").eval().requires_grad_(False)
            steps = max(args.steps, 16)
        else:
            generator = Generator(GENERATOR_PRESETS[name]).eval().requires_grad_(False)
            steps = args.steps
        entry = {"steps": steps, "s_per_step": {}}
        print(f"\n## {name} ({sum(p.numel() for p in generator.parameters()) / 1e6:.1f}M parameters), {steps} steps")
        print("| batch | official-style fp32 s/step | ours fp32 | ours bf16 | fp32 vs official | bf16 vs fp32 |")
        print("|---|---|---|---|---|---|")
        for batch in args.batch_sizes:
            t = step_timings(name, generator, batch, steps, args.repeats)
            entry["s_per_step"][batch] = t
            official, fp32, bf16 = t["official-style fp32"], t["ours fp32"], t["ours bf16"]
            print(
                f"| {batch} | {official:.4f} | {fp32:.4f} | {bf16:.4f} | {official / fp32:.2f}× | {fp32 / bf16:.2f}× |",
                flush=True,
            )
        labels = torch.arange(2) % generator.config.num_classes
        sampling = SAMPLING_PRESETS.get(name, SAMPLING_PRESETS["maskbit_generator_12bit"])
        entry["bf16_logits"] = logits_error(generator, labels, dataclasses.replace(sampling, num_steps=4))
        print(f"bf16 guided logits against fp32 (2 images, input of step 3 of 4): {entry['bf16_logits']}")
        if name == "default":
            entry["forward_batch_16"] = forward_timings(generator, 16, args.repeats)
            print(f"one forward at batch 16 (8 images with guidance): {entry['forward_batch_16']}")
            tokenizer = Tokenizer.from_pretrained("default").eval().requires_grad_(False)
            entry["end_to_end_s"] = end_to_end(generator, tokenizer, args.images, args.repeats)
            keys = list(next(iter(entry["end_to_end_s"].values())))
            print("\n| images (16 steps, decode included) | " + " | ".join(f"{k} s" for k in keys) + " |")
            print("|---|" + "---|" * len(keys))
            for count, t in entry["end_to_end_s"].items():
                print(f"| {count} | " + " | ".join(f"{t[k]:.2f}" for k in keys) + " |")
            entry["bf16_samples"] = sample_agreement(generator, tokenizer, args.agreement_images)
            print(f"bf16 samples against fp32, same seeds: {entry['bf16_samples']}")
        report["configs"][name] = entry
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
