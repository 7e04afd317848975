"""`python -m maskbit generate | encode | decode | flip | convert`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maskbit import analysis
from maskbit.checkpoint import CheckpointError, default_sampling, load_official_state_dict
from maskbit.config import GUIDANCE_ANNEALINGS, MASK_SCHEDULES, SamplingConfig
from maskbit.device import add_device_arguments, describe_precision, pick_device
from maskbit.generator import Generator
from maskbit.images import find_images, image_grid, load_image, save_image
from maskbit.presets import SAMPLING_PRESETS
from maskbit.sampling import MAX_SEED, check_pair, iter_generate, prediction_to_indices
from maskbit.tokenizer import Tokenizer

logger = logging.getLogger("maskbit")

EXAMPLES = {
    "generate": """examples:
  # the bundled model, 2 images each of classes 0 and 3
  python -m maskbit generate --labels 0 3 --per-class 2 --out outputs/generate
  # the published 12-bit models (downloaded from the hub), with the official 12-bit sampling preset
  python -m maskbit generate --tokenizer markweber/maskbit_tokenizer_12bit \\
      --generator markweber/maskbit_generator_12bit --labels 1 7 282 --device cuda --precision bf16
  # the bundled model in float32 even on a CPU with native bf16, where auto means bf16 (bench/README.md)
  python -m maskbit generate --labels 0 1 2 3 --precision fp32
  # real-size 12-bit architecture with random weights, 2 steps (plumbing and speed checks)
  python -m maskbit generate --tokenizer maskbit_tokenizer_12bit --generator maskbit_generator_12bit \\
      --random-init --labels 1 --num-steps 2""",
    "encode": """examples:
  python -m maskbit encode photo.png more_photos/ --tokenizer default --out tokens.npy""",
    "decode": """examples:
  python -m maskbit decode tokens.npy --tokenizer default --out outputs/decoded""",
    "flip": """examples:
  # flip each bit of every token in turn, measure PSNR against the reconstruction
  python -m maskbit flip photo.png --tokenizer default --out outputs/flip
  # flip bits 0 and 5 only at token positions 0..7 (row-major)
  python -m maskbit flip photo.png --bit-ids 0 5 --positions 0 1 2 3 4 5 6 7 --out outputs/flip""",
    "convert": """examples:
  python -m maskbit convert maskbit_tokenizer_12bit.bin --config maskbit_tokenizer_12bit --out models/tok12
  python -m maskbit convert my_generator.bin --config maskbit_generator_14bit.yaml --out models/gen14
  # the vector-quantised tokenizers: VQGAN+, MaskGIT, and Taming's Lightning checkpoint
  python -m maskbit convert vqgan_plus_12bit.bin --config vqgan_plus_12bit --out models/vqgan_plus_12bit
  python -m maskbit convert taming_vqgan.ckpt --config taming_vqgan --out models/taming_vqgan
  # the bit-token family: Open-MAGVIT2 and IBQ Lightning checkpoints (their EMA weights), BitDance's autoencoder
  python -m maskbit convert imagenet_256_L.ckpt --config open_magvit2_256_L --out models/open_magvit2_256_L
  python -m maskbit convert imagenet_256_L.ckpt --config imagenet_lfqgan_256_L.yaml --weights raw --out models/om2_raw
  python -m maskbit convert imagenet256_16384.ckpt --config ibq_16384 --out models/ibq_16384
  python -m maskbit convert ae_d16c32.pt --config bitdance_ae_d16c32 --out models/bitdance_ae_d16c32""",
}


# ------------------------------------------------------------------------------------------------------ bounds
# Every option that sizes an allocation (counts, batch sizes, image sizes, steps) or seeds a generator is bounded
# here, so a typo gets argparse's "argument --x: ..." message instead of a traceback or an exhausted machine.

MAX_BATCH = 4096
MAX_IMAGE_SIZE = 4096  # pixels per side
MAX_STEPS = 1024  # sampling steps
MAX_IMAGES = 10_000  # images one `generate` or `report` run holds in memory
MAX_GRID = 256  # tokens per side of a token grid read from a file


def whole(low: int, high: int | None = None):
    """An argparse `type`: a whole number in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text[:40]!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def real(low: float, high: float):
    """An argparse `type`: a finite number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text[:40]!r}") from None
        if not low <= value <= high:  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be a number from {low:g} to {high:g}, got {text[:40]}")
        return value

    return parse


SEED = whole(0, MAX_SEED)
BATCH = whole(1, MAX_BATCH)
IMAGE_SIZE = whole(8, MAX_IMAGE_SIZE)


# ------------------------------------------------------------------------------------------------------ helpers


def load_model(cls, source: str, config: str | None, random_init: bool, device: torch.device, precision: str):
    if random_init:
        name = config or source
        if name not in cls.presets:
            raise ValueError(f"--random-init needs a {cls.kind} preset name, one of: {', '.join(cls.presets)}")
        model = cls(cls.presets[name])
    else:
        model = cls.from_pretrained(source, config)
    return model.inference(device, precision)


def load_indices(path: Path) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as a .npy array of token indices: {error}") from None
    if array.dtype.kind not in "iu" or array.ndim not in (2, 3):
        raise ValueError(
            f"{path} must hold integer indices of shape (B, h, w) or (h, w), got {array.dtype} {array.shape}"
        )
    if max(array.shape[-2:]) > MAX_GRID:
        raise ValueError(
            f"{path} holds {array.shape[-2]}×{array.shape[-1]} token grids; grids of at most {MAX_GRID}×{MAX_GRID} "
            "tokens are decoded (a 16× tokenizer makes 4096×4096 images of those)"
        )
    indices = torch.from_numpy(array.astype(np.int64))
    return indices[None] if indices.dim() == 2 else indices


def add_tokenizer_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer",
        default="default",
        help="'default', 'default-vq', 'default-omv', 'default-ibq', a hub id, a directory, or an official .bin/.ckpt",
    )
    parser.add_argument("--tokenizer-config", help="preset name or official YAML for an official .bin / .ckpt")
    add_device_arguments(parser)


def add_resolution_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resolution",
        "--size",  # its old name
        dest="resolution",
        type=whole(0, MAX_IMAGE_SIZE),
        help="resize shorter side and center-crop (default: the tokenizer's; 0: keep)",
    )


# ------------------------------------------------------------------------------------------------------ commands


def cmd_generate(args: argparse.Namespace) -> None:
    if len(args.labels) * args.per_class > MAX_IMAGES:
        raise ValueError(
            f"--labels × --per-class asks for {len(args.labels) * args.per_class:,} images; one run makes at most "
            f"{MAX_IMAGES:,} (they are all held for the grid): run several times with other --seed values"
        )
    device = pick_device(args.device)
    tokenizer = load_model(Tokenizer, args.tokenizer, args.tokenizer_config, args.random_init, device, args.precision)
    generator = load_model(Generator, args.generator, args.generator_config, args.random_init, device, args.precision)
    check_pair(generator, tokenizer)
    sampling = sampling_from_args(args)
    labels = [label for label in args.labels for _ in range(args.per_class)]
    out = Path(args.out)
    batches = [labels[i : i + args.batch_size] for i in range(0, len(labels), args.batch_size)]
    images, indices = [], []
    rng = torch.Generator(device=device)
    rng.manual_seed(args.seed)
    with tqdm(total=len(batches) * sampling.num_steps, desc="sampling", unit="step", disable=args.quiet) as bar:
        for batch in batches:
            for state in iter_generate(generator, batch, sampling, rng=rng):
                bar.update()
            batch_indices = prediction_to_indices(state.prediction, generator)
            indices.append(batch_indices.cpu())
            images.append(tokenizer.decode(batch_indices).clamp(0, 1).cpu())
    images, indices = torch.cat(images), torch.cat(indices)
    for n, (image, label) in enumerate(zip(images, labels)):
        save_image(image, out / f"{n:04d}_class{label}.png")
    save_image(
        image_grid(images, columns=args.per_class if len(args.labels) > 1 else min(8, len(labels))), out / "grid.png"
    )
    np.save(out / "indices.npy", indices.numpy())
    print(f"wrote {len(labels)} images, grid.png and indices.npy to {out} (sampling: {sampling})")


def add_sampling_args(parser: argparse.ArgumentParser, sampling: str | None = None) -> None:
    """--sampling (a preset) and one option per sampling knob, each overriding the preset; see sampling_from_args."""
    help = "sampling preset" + ("" if sampling else " (default: the generator's own, see default_sampling)")
    parser.add_argument("--sampling", choices=sorted(SAMPLING_PRESETS), default=sampling, help=help)
    parser.add_argument("--num-steps", type=whole(1, MAX_STEPS))
    parser.add_argument("--guidance-scale", type=real(0, 100))
    parser.add_argument("--guidance-annealing", choices=GUIDANCE_ANNEALINGS)
    parser.add_argument("--scale-pow", type=real(1e-6, 100))
    parser.add_argument("--randomize-temperature", type=real(0, 100))
    parser.add_argument("--softmax-temperature", type=real(1e-6, 100))
    parser.add_argument("--mask-schedule", choices=MASK_SCHEDULES)


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    """The --sampling preset, else the generator's own sampling, with the single knobs given applied on top."""
    if args.sampling:
        sampling = SAMPLING_PRESETS[args.sampling]
    else:
        sampling = default_sampling(args.generator, getattr(args, "generator_config", None))
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingConfig)}
    return dataclasses.replace(sampling, **{k: v for k, v in overrides.items() if v is not None})


def cmd_encode(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    tokenizer = load_model(Tokenizer, args.tokenizer, args.tokenizer_config, False, device, args.precision)
    paths = find_images(args.images)
    size = tokenizer.config.image_size if args.resolution is None else args.resolution
    indices = []
    for path in tqdm(paths, desc="encoding", unit="image", disable=args.quiet):
        indices.append(tokenizer.encode(load_image(path, size)[None].to(device)).cpu())
    shapes = {tuple(i.shape) for i in indices}
    if len(shapes) > 1:
        raise ValueError(f"images give different token grids {sorted(shapes)}; pass --size to make them equal")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, torch.cat(indices).numpy())
    out.with_suffix(".txt").write_text("".join(f"{p}\n" for p in paths))
    print(f"wrote indices {tuple(torch.cat(indices).shape)} to {out} (sources in {out.with_suffix('.txt')})")


def cmd_decode(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    tokenizer = load_model(Tokenizer, args.tokenizer, args.tokenizer_config, False, device, args.precision)
    indices = load_indices(Path(args.indices))
    out = Path(args.out)
    for n in tqdm(range(len(indices)), desc="decoding", unit="image", disable=args.quiet):
        save_image(tokenizer.decode(indices[n : n + 1].to(device))[0], out / f"{n:04d}.png")
    print(f"wrote {len(indices)} images to {out}")


def cmd_flip(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    tokenizer = load_model(Tokenizer, args.tokenizer, args.tokenizer_config, False, device, args.precision)
    source = Path(args.source)
    if source.suffix == ".npy":
        indices = load_indices(source)[0]
    else:
        size = tokenizer.config.image_size if args.resolution is None else args.resolution
        indices = tokenizer.encode(load_image(source, size)[None].to(device))[0]
    flips = analysis.flip_each_bit(tokenizer, indices, args.bit_ids, args.positions)
    out = Path(args.out)
    save_image(flips.reconstruction, out / "reconstruction.png")
    rows = ["bit,psnr_db,l2"]
    for bit, image, p, d in zip(flips.bit_ids, flips.flipped, flips.distances.psnr, flips.distances.l2):
        save_image(image, out / f"flip_bit{bit:02d}.png")
        rows.append(f"{bit},{p:.3f},{d:.4f}")
    grid = image_grid(torch.cat([flips.reconstruction[None], flips.flipped]), columns=min(8, len(flips.bit_ids) + 1))
    save_image(grid, out / "grid.png")
    (out / "distances.csv").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"wrote reconstruction.png, {len(flips.bit_ids)} flipped images, grid.png and distances.csv to {out}")


def cmd_convert(args: argparse.Namespace) -> None:
    kind = args.kind
    if kind == "auto":
        keys = load_official_state_dict(args.checkpoint).keys()
        kind = "tokenizer" if any(k.startswith(("encoder.", "model_ema.encoder")) for k in keys) else "generator"
    cls = Tokenizer if kind == "tokenizer" else Generator
    model = cls.from_pretrained(args.checkpoint, args.config, weights=args.weights)
    if kind == "generator":  # the sampling it was made for (its YAML's, or its paper preset's) goes with it
        model.save_pretrained(args.out, sampling=default_sampling(args.checkpoint, args.config))
    else:
        model.save_pretrained(args.out)
    print(f"converted {args.checkpoint} ({kind}, {model.config}) to {args.out}")


# ------------------------------------------------------------------------------------------------------ parser


def add_command(commands, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its description and examples (shared by the project's CLIs)."""
    return commands.add_parser(
        name, help=help, description=help, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def run_command(args: argparse.Namespace, expected: tuple[type[BaseException], ...]) -> int:
    """Run args.run; the errors a user can cause become `error: ...` and exit status 2, not a traceback."""
    try:
        if hasattr(args, "precision"):  # the programs default to "auto": say what it picked
            logger.info("computing in %s", describe_precision(args.precision, pick_device(args.device)))
        args.run(args)
    except expected as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maskbit", description="MaskBit bit-token models")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = add_command(commands, name, help, EXAMPLES[name])
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
        return p

    p = command("generate", "class-conditional generation, written as PNGs, a grid and indices.npy")
    add_tokenizer_args(p)
    p.add_argument("--generator", default="default", help="'default', a hub id, a directory or an official .bin")
    p.add_argument("--generator-config", help="preset name or official YAML for an official .bin")
    p.add_argument("--random-init", action="store_true", help="build --tokenizer/--generator presets, random weights")
    p.add_argument("--labels", type=whole(0), nargs="+", default=[0], help="class ids")
    p.add_argument("--per-class", type=whole(1, MAX_IMAGES), default=1, help="images per class id")
    add_sampling_args(p)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--batch-size", type=BATCH, default=8)
    # the old name of --precision bf16
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help=argparse.SUPPRESS)
    p.add_argument("--out", default="outputs/generate")
    p.set_defaults(run=cmd_generate)

    p = command("encode", "images → token indices (.npy, shape (B, h, w))")
    add_tokenizer_args(p)
    p.add_argument("images", nargs="+", help="image files or directories")
    add_resolution_argument(p)
    p.add_argument("--out", default="outputs/indices.npy")
    p.set_defaults(run=cmd_encode)

    p = command("decode", "token indices (.npy) → PNG images")
    add_tokenizer_args(p)
    p.add_argument("indices", help=".npy file of shape (B, h, w) or (h, w)")
    p.add_argument("--out", default="outputs/decoded")
    p.set_defaults(run=cmd_decode)

    p = command("flip", "flip bits of an image's tokens, decode, and measure the change")
    add_tokenizer_args(p)
    p.add_argument("source", help="an image, or a .npy of indices")
    p.add_argument("--bit-ids", type=whole(0), nargs="+", help="bits to flip, one at a time (default: all)")
    p.add_argument("--positions", type=whole(0), nargs="+", help="flat token positions to flip (default: all)")
    add_resolution_argument(p)
    p.add_argument("--out", default="outputs/flip")
    p.set_defaults(run=cmd_flip)

    p = command("convert", "official .bin/.pt state dict or Lightning .ckpt → config.json + model.safetensors")
    p.add_argument(
        "checkpoint", help="official .bin file, a Lightning .ckpt (Taming VQGAN, Open-MAGVIT2, IBQ) or BitDance's .pt"
    )
    p.add_argument("--config", help="official YAML or preset name (default: the preset whose shapes match)")
    p.add_argument("--kind", default="auto", choices=["auto", "tokenizer", "generator"])
    p.add_argument(
        "--weights",
        choices=["ema", "raw"],
        help="of a checkpoint with EMA weights (model_ema.*): the EMA copy (default where there is one, as the "
        "official evaluation) or the raw training weights (as the Open-MAGVIT2 AR stage)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(run=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    return run_command(args, (ValueError, TypeError, FileNotFoundError, CheckpointError))


__all__ = ["main", "build_parser", "whole", "real", "SEED", "BATCH", "IMAGE_SIZE"]
