"""Sampler speed: time per step and images per second, ours versus a plain re-statement of the official loop.

The reference restates `modeling/modules/sampling.py::sample` as written: separate conditional and unconditional
forwards on every step (also those whose guidance scale is 0), randomness from the global RNG, Gumbel noise drawn
on the CPU, one masked count taken from sample 0. Both run the same weights (random, official initialisation).

    .venv/bin/python -m bench.sampling_speed --configs maskbit_generator_12bit tiny --batch-sizes 1 8 --steps 4
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import time

import torch

from maskbit import GENERATOR_PRESETS, SAMPLING_PRESETS, Generator, iter_generate
from maskbit.sampling import guidance_weight, mask_ratio


@torch.no_grad()
def official_loop(generator: Generator, labels: torch.Tensor, sampling) -> torch.Tensor:
    c = generator.config
    b, total = len(labels), c.num_positions * c.num_groups
    tokens = torch.full((b, c.num_positions, c.num_groups), c.mask_token)
    for i in range(sampling.num_steps):
        progress = (i + 1) / sampling.num_steps
        cond = generator(tokens, labels.clone(), torch.zeros(b, dtype=torch.bool))
        uncond = generator(tokens, labels.clone(), torch.ones(b, dtype=torch.bool))
        logits = cond + guidance_weight(i, sampling) * (cond - uncond)
        probs = torch.softmax(logits / sampling.softmax_temperature, -1)
        sampled = torch.distributions.Categorical(probs=probs).sample()
        unknown = tokens == c.mask_token
        num_masked = int(unknown[0].sum())
        pred = torch.where(unknown, sampled, tokens)
        confidence = torch.gather(probs, -1, pred.clamp_max(c.mask_token - 1)[..., None])[..., 0]
        confidence = torch.where(unknown, confidence, torch.inf)
        gumbel = -torch.log(-torch.log(torch.rand(confidence.shape).clamp(1e-20, 1.0)))
        confidence = torch.log(confidence) + gumbel * sampling.randomize_temperature * (1 - progress)
        mask_len = max(1, min(num_masked - 1, math.floor(mask_ratio(progress, sampling.mask_schedule) * total)))
        threshold = torch.sort(confidence.view(b, -1), dim=-1).values[:, mask_len - 1 : mask_len]
        tokens = torch.where(confidence <= threshold[:, :, None], c.mask_token, pred)
    return pred


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run_ours(generator: Generator, labels: torch.Tensor, sampling) -> None:
    for _ in iter_generate(generator, labels, sampling, seed=0):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["maskbit_generator_12bit", "tiny"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=4, help="sampling steps timed per run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the minimum is reported")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| config | batch | steps | ours s/step | official-style s/step | speed-up | ours images/s (64 steps) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        generator = Generator(GENERATOR_PRESETS[name]).eval()
        base = SAMPLING_PRESETS.get(name, SAMPLING_PRESETS["maskbit_generator_12bit"])
        # Constant guidance, so that every timed step is a typical one (with cosine annealing, step 0 has scale 0 and
        # ours skips its unconditional half: 1 of 64 steps).
        sampling = dataclasses.replace(base, num_steps=args.steps, guidance_annealing="none")
        for batch in args.batch_sizes:
            labels = torch.randint(0, generator.config.num_classes, (batch,))
            run = (generator, labels, sampling)
            timings = [
                (seconds(run_ours, *run), seconds(official_loop, *run)) for _ in range(args.repeats)
            ]  # interleaved
            ours, reference = (min(column) for column in zip(*timings))
            per_step, ref_step = ours / args.steps, reference / args.steps
            print(
                f"| {name} | {batch} | {args.steps} | {per_step:.3f} | {ref_step:.3f} | {ref_step / per_step:.2f}× "
                f"| {batch / (per_step * 64):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
