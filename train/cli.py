"""`python -m train tokenizer | generator | pretokenize | export-dataset` (also under `accelerate launch -m train`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maskbit.cli import BATCH, IMAGE_SIZE, SEED, add_command, run_command, whole
from maskbit.device import pick_device
from train.config import (
    GENERATOR_TRAIN_PRESETS,
    TOKENIZER_TRAIN_PRESETS,
    DataConfig,
    GeneratorTrainConfig,
    TokenizerTrainConfig,
    apply_overrides,
    from_dict,
    load_train_config,
)
from train.rundir import RunDir

logger = logging.getLogger("train")

MAX_TOKEN_FILE = 10_000_000  # token grids one pretokenize run holds in memory (ImageNet's train split is 1.28M)

EXAMPLES = {
    "tokenizer": """examples:
  # the bundled model's tokenizer recipe on the procedural dataset
  python -m train tokenizer --preset default --run-dir runs/tokenizer
  # an official config on an ImageNet folder, 2 GPUs, bf16
  accelerate launch --num_processes 2 -m train tokenizer --config maskbit_tokenizer_12bit.yaml \\
      --set data.dataset=/data/imagenet training.mixed_precision=bf16 --run-dir runs/tok12
  # continue after an interruption (the run directory holds the config)
  python -m train tokenizer --run-dir runs/tokenizer --resume""",
    "generator": """examples:
  python -m train pretokenize --tokenizer runs/tokenizer/model --count 50000 --out runs/tokens.npz
  python -m train generator --preset default --set tokenizer=runs/tokenizer/model \\
      data.pretokenized=runs/tokens.npz --run-dir runs/generator""",
    "pretokenize": """examples:
  python -m train pretokenize --tokenizer runs/tokenizer/model --dataset procedural --count 50000 --out tokens.npz""",
    "export-dataset": """examples:
  python -m train export-dataset --dataset procedural --split test --out data/procedural-test
  python -m train export-dataset --dataset procedural --split train --limit 5000 --out data/procedural-train""",
}


def run_stage(args: argparse.Namespace) -> None:
    from train.engine import train

    run = RunDir(args.run_dir)
    cls = TokenizerTrainConfig if args.command == "tokenizer" else GeneratorTrainConfig
    if args.resume and run.config_path.is_file():
        if args.preset or args.config:
            raise ValueError("--resume reads the config from the run directory; drop --preset/--config")
        config = from_dict(cls, run.read_config())
    else:
        config = load_train_config(args.command, args.preset, args.config)
    config = apply_overrides(config, args.set or [])
    exported = train(config, run.path, resume=args.resume)
    print(f"finished: {exported} (load it with from_pretrained)")


def pretokenize(args: argparse.Namespace) -> None:
    """Encode `count` dataset images once; Stage II then trains on the token file."""
    from data.datasets import build_dataset
    from maskbit import Tokenizer
    from train.data import AugmentedImages

    device = pick_device()
    tokenizer = Tokenizer.from_pretrained(args.tokenizer, args.tokenizer_config).inference(device)
    resolution = args.resolution or tokenizer.config.image_size
    dataset = build_dataset(args.dataset, args.split, args.seed, resolution)
    data = DataConfig(
        dataset=args.dataset,
        split=args.split,
        seed=args.seed,
        resolution=resolution,
        random_crop=args.augment,
        random_flip=args.augment,
        aspect_ratio_aug=False,
    )
    view = AugmentedImages(dataset, data, seed=args.seed, train=args.augment)
    count = min(args.count or len(view), len(view), MAX_TOKEN_FILE)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(view, range(count)), batch_size=args.batch_size, num_workers=args.num_workers
    )
    indices, labels = [], []
    for images, batch_labels in tqdm(loader, desc="pretokenize", unit="batch"):
        indices.append(tokenizer.encode(images.to(device)).cpu())
        labels.append(batch_labels)
    indices, labels = torch.cat(indices), torch.cat(labels)
    # the smallest type that holds every index: int32 would wrap 32-bit tokens (BitDance) to negative numbers
    dtype = np.uint16 if tokenizer.num_bits <= 16 else np.int32 if tokenizer.num_bits <= 31 else np.int64
    meta = {
        "tokenizer": str(args.tokenizer),
        "tokenizer_identity": tokenizer.identity(),
        "num_bits": tokenizer.num_bits,
        "quantizer": tokenizer.quantizer_kind,
        "dataset": args.dataset,
        "split": args.split,
        "seed": args.seed,
        "resolution": resolution,
        "augment": args.augment,
        "count": count,
        "classes": list(getattr(dataset, "classes", [])),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, indices=indices.numpy().astype(dtype), labels=labels.numpy().astype(np.int64), meta=json.dumps(meta))
    tmp.replace(out)
    print(f"wrote {count} token grids {tuple(indices.shape[1:])} to {out}")


def export(args: argparse.Namespace) -> None:
    from data.datasets import build_dataset, export_dataset

    dataset = build_dataset(args.dataset, args.split, args.seed, args.resolution)
    out = export_dataset(dataset, args.out, limit=args.limit, start=args.start)
    print(f"wrote {args.split} split of {args.dataset} to {out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description="MaskBit training (Stage I and II)")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return add_command(commands, name, help, EXAMPLES[name])

    for name, presets in (("tokenizer", TOKENIZER_TRAIN_PRESETS), ("generator", GENERATOR_TRAIN_PRESETS)):
        p = command(name, f"train the {name} (Stage {'I' if name == 'tokenizer' else 'II'})")
        p.add_argument("--preset", choices=sorted(presets), help="a named recipe")
        p.add_argument("--config", help="a run's config.json or an official YAML file")
        p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="overrides, e.g. training.max_steps=100")
        p.add_argument("--run-dir", required=True, help="run directory (created; holds config, metrics, checkpoints)")
        p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
        p.set_defaults(run=run_stage)

    p = command("pretokenize", "encode a dataset once into a token file for Stage II")
    p.add_argument("--tokenizer", required=True, help="from_pretrained source")
    p.add_argument("--tokenizer-config", help="for an official .bin: preset or YAML")
    p.add_argument("--dataset", default="procedural")
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--resolution", type=IMAGE_SIZE, help="default: the tokenizer's image size")
    p.add_argument(
        "--count", type=whole(1, MAX_TOKEN_FILE), help="images to encode (default: the whole split, at most 10M)"
    )
    p.add_argument("--augment", action="store_true", help="random crop and flip (default: eval preprocessing)")
    p.add_argument("--batch-size", type=BATCH, default=64)
    p.add_argument("--num-workers", type=whole(0, 64), default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=pretokenize)

    p = command("export-dataset", "write a dataset split as <class>/<id>.png plus labels.csv")
    p.add_argument("--dataset", default="procedural")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--resolution", type=IMAGE_SIZE, default=64)
    p.add_argument("--start", type=whole(0), default=0)
    p.add_argument("--limit", type=whole(1))
    p.add_argument("--out", required=True)
    p.set_defaults(run=export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from maskbit.files import DiskFullError
    from train.engine import Stop
    from train.losses import MissingWeightsError

    try:
        return run_command(args, (ValueError, TypeError, FileNotFoundError, MissingWeightsError, DiskFullError))
    except Stop:  # SIGTERM/SIGINT: the run saved a checkpoint and stopped as asked
        return 0
