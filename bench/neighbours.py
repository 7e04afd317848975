"""Do Hamming neighbours of bit tokens look alike? Hamming top-k against pixel top-k and k random training images.

MaskBit (Weber et al., TMLR 2024, App. G) says that Hamming distance between bit tokens finds perceptually near
neighbours: the training images whose tokens differ from a query's in the fewest bits should look like it. This
indexes N training images of a dataset with each tokenizer (`indexes.build.build_dataset_index`, metrics hamming and
pixel, LPIPS when its weights are on this machine), searches held-out test images, and reports per k:

    distance of the top-k Hamming neighbours    (what the claim is about)
    distance of k random training images        (the ceiling: what no search at all gives)
    distance of the top-k pixel (LPIPS) neighbours  (the floor: the best any search can do in that metric)
    score = (random − hamming) / (random − floor)   1: Hamming search is as good as searching the metric itself,
                                                     0: no better than chance (negative: worse)
    overlap@k = |H_k ∩ P_k| / k                    how many of the metric's own top-k the Hamming search finds

"Pixel" is the index's pixel metric: squared L2 between 16×16 area-downsampled thumbnails in [0, 1] (sum over the
768 values). The same sets are also measured in full-resolution mean squared error ("mse"; its floor column is the
thumbnail neighbours, close to but not exactly the full-resolution optimum) and by class agreement (the share of
neighbours with the query's class). The claim is the hypothesis, not the answer.

    .venv/bin/python -m bench.neighbours --out bench/results           # the bundled LFQ tokenizer and its VQ twin
    .venv/bin/python -m bench.neighbours --tokenizers markweber/maskbit_tokenizer_12bit markweber/vqgan_plus_12bit \
        --dataset /data/imagenet --train-size 20000 --out results/imagenet     # online, any tokenizers

Writes neighbours.json, neighbours.md (the table), neighbours.png (the curves) and neighbours_examples.png (queries
with their top-5 pixel and Hamming neighbours). Indexes are kept in --index-root (a stopped build continues).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from data import split_images
from indexes.build import build_dataset_index
from indexes.lpips_embedding import LPIPSEmbedding, has_weights
from indexes.sources import load_indexed_images
from indexes.store import MANIFEST, ImageIndex, IndexOptions, pixel_features, thumbnails
from maskbit import Tokenizer
from maskbit.cli import SEED, whole
from maskbit.device import add_precision_argument, describe_precision, resolve_precision
from maskbit.images import image_grid

KS = (1, 5, 10)

# ---------------------------------------------------------------------------------------------------- pure helpers


def short_name(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(source).rstrip("/").split("/")[-1])


def overlap_at_k(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """(Q,) |A_k ∩ B_k| / k per query, for id arrays a, b (Q, ≥ k) whose first k columns are the top-k."""
    return np.array([len(set(x[:k].tolist()) & set(y[:k].tolist())) / k for x, y in zip(a, b)])


def normalised_score(random: float, hamming: float, floor: float) -> float:
    """(random − hamming) / (random − floor): 1 when Hamming neighbours are as close as the metric's own top-k,
    0 when they are no closer than random images; NaN when random and floor coincide."""
    return (random - hamming) / (random - floor) if random != floor else float("nan")


def set_distances(queries: np.ndarray, stored: np.ndarray, ids: np.ndarray, chunk: int = 50) -> np.ndarray:
    """(Q, k) squared L2 between queries (Q, D) and the stored vectors (N, D) at ids (Q, k)."""
    parts = []
    for first in range(0, len(queries), chunk):
        q, i = queries[first : first + chunk], ids[first : first + chunk]
        parts.append(((stored[i].astype(np.float64) - q[:, None, :].astype(np.float64)) ** 2).sum(-1))
    return np.concatenate(parts)


def random_ids(count: int, queries: int, k: int, seed: int) -> np.ndarray:
    """(queries, k) ids of k distinct random training images per query."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(count, size=k, replace=False) for _ in range(queries)])


# ---------------------------------------------------------------------------------------------------- measuring


def full_resolution_mse(index: ImageIndex, images: torch.Tensor, sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """name → (Q, k) mean squared error over every pixel at full resolution, between each query and the indexed
    images of that set, read again from their sources."""
    found = {name: np.zeros(ids.shape) for name, ids in sets.items()}
    for q in range(len(images)):
        wanted = np.unique(np.concatenate([ids[q] for ids in sets.values()]))
        mse = ((load_indexed_images(index, wanted) - images[q].cpu()) ** 2).mean((1, 2, 3)).numpy()
        lookup = dict(zip(wanted.tolist(), mse.tolist()))
        for name, ids in sets.items():
            found[name][q] = [lookup[i] for i in ids[q].tolist()]
    return found


@torch.no_grad()
def neighbour_sets(
    index: ImageIndex, images: torch.Tensor, ks: tuple[int, ...], random: np.ndarray, batch_size: int = 100
) -> dict:
    """Search every query once at the largest k (plus one, to see ties) and measure the neighbour sets.

    Returns the per-query arrays: `ids` (set name → (Q, k_max)), `distances` (measure → set name → (Q, k_max)),
    `labels` (set name → (Q, k_max)), `tokens` (Q, h, w) and `hamming_next` (Q,), the (k_max + 1)-th Hamming
    distance, and `seconds` (encoding and search)."""
    started = time.time()
    k_max = max(ks)
    references = [m for m in ("pixel", "lpips") if m in index.metrics]
    tokens, found = [], {}
    for first in range(0, len(images), batch_size):
        batch = images[first : first + batch_size]
        batch_tokens = index.encode(batch).cpu()
        tokens.append(batch_tokens)
        for metric, neighbours in index.search(
            batch, batch_tokens, k=k_max + 1, metrics=["hamming", *references]
        ).items():
            found.setdefault(metric, []).append((neighbours.ids, neighbours.distances))
    seconds = time.time() - started
    ids = {m: np.concatenate([i for i, _ in parts])[:, :k_max] for m, parts in found.items()}
    hamming_all = np.concatenate([d for _, d in found["hamming"]])
    ids["random"] = random[:, :k_max]
    order = ["hamming", "random", *references]
    ids = {name: ids[name] for name in order}

    vectors = {"pixel": pixel_features(images)}
    if "lpips" in references:
        vectors["lpips"] = np.concatenate(
            [index.lpips(images[i : i + 64].to(index.device)).cpu().numpy() for i in range(0, len(images), 64)]
        )
    distances = {}
    for metric in references:
        stored = index.flat[metric].reconstruct_n(0, len(index))
        distances[metric] = {name: set_distances(vectors[metric], stored, i) for name, i in ids.items()}
    distances["mse"] = full_resolution_mse(index, images, ids)
    labels_of = np.array([s["label"] for s in index.sources])
    return {
        "ids": ids,
        "distances": distances,
        "labels": {name: labels_of[i] for name, i in ids.items()},
        "tokens": torch.cat(tokens),
        "hamming_distances": hamming_all[:, :k_max],
        "hamming_next": hamming_all[:, k_max] if hamming_all.shape[1] > k_max else np.full(len(images), np.inf),
        "seconds": seconds,
    }


def summarise(found: dict, query_labels: np.ndarray, ks: tuple[int, ...]) -> dict:
    """Per k, per measure: the mean distance of each set, the score, and overlap@k with each reference metric."""
    ids, distances = found["ids"], found["distances"]
    references = [m for m in ("pixel", "lpips") if m in ids]
    by_k = {}
    for k in ks:
        row = {}
        for measure, sets in distances.items():
            floor_set = "pixel" if measure == "mse" else measure
            means = {name: float(d[:, :k].mean()) for name, d in sets.items()}
            means["score"] = normalised_score(means["random"], means["hamming"], means[floor_set])
            row[measure] = means
        row["overlap"] = {m: float(overlap_at_k(ids["hamming"], ids[m], k).mean()) for m in references}
        row["overlap_random"] = {m: float(overlap_at_k(ids["random"], ids[m], k).mean()) for m in references}
        row["class_agreement"] = {
            name: float((labels[:, :k] == query_labels[:, None]).mean()) for name, labels in found["labels"].items()
        }
        # A tie across the k-th place makes the Hamming top-k one of several equally good sets.
        kth = found["hamming_distances"][:, k - 1]
        beyond = found["hamming_distances"][:, k] if k < found["hamming_distances"].shape[1] else found["hamming_next"]
        row["hamming_tie_at_k"] = float((kth == beyond).mean())
        row["hamming_bits"] = float(found["hamming_distances"][:, :k].mean())
        by_k[str(k)] = row
    return by_k


def open_index(
    root: Path, tokenizer: Tokenizer, source: str, dataset: str, size: int, resolution: int, metrics, lpips: str
) -> tuple[ImageIndex, dict]:
    """The index of the first `size` training images (built, continued or opened), and how long building took."""
    options = IndexOptions(metrics=tuple(metrics), random_lpips_backbone=lpips == "random")
    tag = "-".join(metrics) + ("-randomlpips" if lpips == "random" else "")
    directory = root / f"{short_name(source)}-{short_name(dataset)}-{resolution}px-{size}-{tag}"
    before = len(ImageIndex.open(directory, tokenizer)) if (directory / MANIFEST).is_file() else 0
    started = time.time()
    index = build_dataset_index(
        directory, tokenizer, dataset=dataset, resolution=resolution, limit=size, options=options
    )
    built = {"directory": str(directory), "indexed_now": len(index) - before, "seconds": time.time() - started}
    return index, built


# ---------------------------------------------------------------------------------------------------- writing


def write_table(report: dict, out: Path) -> None:
    results = report["tokenizers"]
    measures = [m for m in ("pixel", "lpips", "mse") if m in results[0]["by_k"][str(report["ks"][0])]]
    titles = {
        "pixel": "pixel (squared L2 of 16×16 thumbnails)",
        "lpips": "LPIPS",
        "mse": "full-resolution MSE (floor column: the thumbnail neighbours)",
    }
    lines = [
        f"{report['queries']} held-out queries ({report['dataset']}), {report['train_images']} training images "
        f"indexed, seed {report['seed']}. LPIPS: {report['lpips']}.",
    ]
    for reference in [m for m in ("pixel", "lpips") if m in measures]:
        name = "pixel" if reference == "pixel" else "LPIPS"
        lines += [
            "",
            f"| tokenizer | quantiser | k | Hamming top-k | k random | {name} top-k (floor) | score | overlap@k "
            f"(random's) | same class: Hamming / random / {name} |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            for k in report["ks"]:
                row = r["by_k"][str(k)]
                p, c = row[reference], row["class_agreement"]
                lines.append(
                    f"| {short_name(r['source'])} | {r['quantizer']} | {k} | {p['hamming']:.4g} | {p['random']:.4g} | "
                    f"{p[reference]:.4g} | **{p['score']:.2f}** | **{row['overlap'][reference]:.2f}** "
                    f"({row['overlap_random'][reference]:.3f}) | {c['hamming']:.0%} / {c['random']:.0%} / "
                    f"{c[reference]:.0%} |"
                )
    for measure in measures:
        floor = "pixel" if measure == "mse" else measure
        lines += ["", f"Mean distance, {titles[measure]}: Hamming top-k / k random / floor (score)", ""]
        lines += ["| tokenizer | " + " | ".join(f"k = {k}" for k in report["ks"]) + " |"]
        lines += ["|---|" + "---|" * len(report["ks"])]
        for r in results:
            cells = []
            for k in report["ks"]:
                m = r["by_k"][str(k)][measure]
                cells.append(f"{m['hamming']:.4g} / {m['random']:.4g} / {m[floor]:.4g} ({m['score']:.2f})")
            lines.append(f"| {short_name(r['source'])} | " + " | ".join(cells) + " |")
    lines += ["", "Hamming distance (bits) of the top-k, and the share of queries whose k-th and (k+1)-th Hamming "]
    lines += ["neighbours tie (the top-k set is then one of several equally near sets):", ""]
    lines += ["| tokenizer | " + " | ".join(f"k = {k}" for k in report["ks"]) + " |"]
    lines += ["|---|" + "---|" * len(report["ks"])]
    for r in results:
        cells = [
            f"{r['by_k'][str(k)]['hamming_bits']:.0f} bits, ties {r['by_k'][str(k)]['hamming_tie_at_k']:.0%}"
            for k in report["ks"]
        ]
        lines.append(f"| {short_name(r['source'])} | " + " | ".join(cells) + " |")
    (out / "neighbours.md").write_text("\n".join(lines) + "\n")


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, ks = report["tokenizers"], report["ks"]
    measures = [m for m in ("pixel", "lpips", "mse") if m in results[0]["by_k"][str(ks[0])]]
    titles = {"pixel": "squared L2, 16×16 thumbnails", "lpips": "LPIPS", "mse": "MSE, full resolution"}
    panels = len(measures) + 2
    columns = 2 if panels == 4 else 3
    figure, axes = plt.subplots(-(-panels // columns), columns, figsize=(5.2 * columns, 4.2 * -(-panels // columns)))
    axes = axes.flatten()
    for ax in axes[panels:]:
        ax.set_visible(False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, measure in zip(axes, measures):
        floor = "pixel" if measure == "mse" else measure
        for c, r in enumerate(results):
            values = [r["by_k"][str(k)][measure] for k in ks]
            name = f"{short_name(r['source'])} ({r['quantizer']})"
            ax.plot(ks, [v["hamming"] for v in values], "-o", color=colours[c], label=f"Hamming top-k, {name}")
        values = [results[0]["by_k"][str(k)][measure] for k in ks]
        ax.plot(ks, [v["random"] for v in values], ":s", color="grey", label="k random")
        ax.plot(ks, [v[floor] for v in values], "--^", color="black", label=f"{floor} top-k (floor)")
        ax.set_title(f"mean distance to the query\n{titles[measure]}")
        ax.set_xlabel("k")
        ax.set_xticks(ks)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    width = 0.8 / len(results)
    for panel, (key, title) in enumerate(
        [("score", "score = (random − Hamming) / (random − floor)"), ("overlap", "overlap@k, Hamming ∩ pixel top-k")]
    ):
        ax = axes[len(measures) + panel]
        for c, r in enumerate(results):
            if key == "score":
                values = [r["by_k"][str(k)]["pixel"]["score"] for k in ks]
            else:
                values = [r["by_k"][str(k)]["overlap"]["pixel"] for k in ks]
            x = np.arange(len(ks)) + (c - (len(results) - 1) / 2) * width
            ax.bar(x, values, width, color=colours[c], label=f"{short_name(r['source'])} ({r['quantizer']})")
        if key == "overlap":
            chance = [results[0]["by_k"][str(k)]["overlap_random"]["pixel"] for k in ks]
            ax.plot(np.arange(len(ks)), chance, "_", color="grey", ms=30, mew=2, label="k random")
        ax.set_xticks(np.arange(len(ks)), [f"k = {k}" for k in ks])
        ax.set_ylim(0, 1)
        ax.set_title(title + ("\n(pixel: thumbnails)" if key == "score" else ""))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "neighbours.png", dpi=110)
    plt.close(figure)


def plot_examples(examples: list[dict], out: Path, columns: int = 5) -> None:
    """Per query: the query, then its top-`columns` pixel neighbours and each tokenizer's Hamming neighbours, one
    image (a grid of 64-pixel thumbnails) with the rows named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, len(examples[0]["rows"][0][1]))
    rows = [(e["query"], label, thumbs[:columns]) for e in examples for label, thumbs in e["rows"]]
    pictures = [torch.from_numpy(np.stack([query, *thumbs])).permute(0, 3, 1, 2) for query, _, thumbs in rows]
    side = pictures[0].shape[-1]
    grid = image_grid(torch.cat(pictures).float() / 255, columns=columns + 1, padding=4)
    figure, ax = plt.subplots(figsize=(grid.shape[2] / 80 + 1.6, grid.shape[1] / 80 + 0.4))
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_yticks([4 + (side + 4) * r + side / 2 for r in range(len(rows))], [label for _, label, _ in rows])
    ax.set_xticks([4 + (side + 4) * c + side / 2 for c in range(columns + 1)])
    ax.set_xticklabels(["query", *(f"#{c + 1}" for c in range(columns))])
    ax.tick_params(length=0, labelsize=8)
    figure.tight_layout()
    figure.savefig(out / "neighbours_examples.png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizers", nargs="+", default=["default", "default-vq"], help="from_pretrained sources")
    parser.add_argument("--dataset", default="procedural", help="the training split is indexed, queries from --split")
    parser.add_argument("--split", default="test", help="the held-out split the queries come from")
    parser.add_argument("--train-size", type=whole(1), default=10_000, help="training images indexed")
    parser.add_argument("--queries", type=whole(1), default=500, help="held-out query images")
    parser.add_argument("--k", type=whole(1, 1000), nargs="+", default=list(KS))
    parser.add_argument(
        "--lpips", choices=["auto", "off", "random"], default="auto",
        help="auto: LPIPS with the AlexNet trunk (shipped); random: a random trunk (tests only, not the metric)",
    )  # fmt: skip
    parser.add_argument("--index-root", type=Path, default=Path("runs/neighbours"), help="kept between runs")
    parser.add_argument("--examples", type=whole(0, 50), default=4, help="queries shown in neighbours_examples.png")
    parser.add_argument("--seed", type=SEED, default=0, help="which training images are the random ones")
    add_precision_argument(parser, "what the tokenizers encode at")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    ks = tuple(sorted(set(args.k)))
    if max(ks) > args.train_size:
        parser.error(f"k = {max(ks)} is more than the {args.train_size} training images")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizers = [Tokenizer.from_pretrained(source).inference(precision=args.precision) for source in args.tokenizers]
    device = next(tokenizers[0].parameters()).device
    print(f"encoding in {describe_precision(args.precision, device)}", flush=True)
    sizes = {t.config.image_size for t in tokenizers}
    if len(sizes) > 1:
        parser.error(f"the tokenizers work at different image sizes ({sorted(sizes)}); compare tokenizers of one size")
    (resolution,) = sizes
    metrics = ["hamming", "pixel"]
    if args.lpips == "random" or (args.lpips == "auto" and has_weights("alex")):
        metrics.append("lpips")
        lpips_note = (
            "random AlexNet trunk (a test of the code, not the metric)"
            if args.lpips == "random"
            else f"AlexNet, {LPIPSEmbedding('alex').source}"
        )
    elif args.lpips == "auto":
        lpips_note = "not measured: no AlexNet weights on this machine (`python -m indexes fetch-weights`)"
    else:
        lpips_note = "off"
    images, labels = split_images(args.dataset, args.split, args.queries, resolution)
    random = random_ids(args.train_size, len(images), max(ks), args.seed)
    results, examples = [], [{"query": None, "rows": []} for _ in range(min(args.examples, len(images)))]
    for source, tokenizer in zip(args.tokenizers, tokenizers):
        index, built = open_index(
            args.index_root, tokenizer, source, args.dataset, args.train_size, resolution, metrics, args.lpips
        )
        print(f"{short_name(source)}: {index.describe()}; indexed {built['indexed_now']} in {built['seconds']:.0f} s")
        found = neighbour_sets(index, images, ks, random[:, : max(ks)])
        by_k = summarise(found, labels.numpy(), ks)
        results.append(
            {
                "source": str(source),
                "quantizer": tokenizer.quantizer_kind,
                "num_bits": tokenizer.num_bits,
                "index": built,
                "search_seconds": found["seconds"],
                "by_k": by_k,
            }
        )
        print(f"{short_name(source)}: " + json.dumps(by_k[str(max(ks))]), flush=True)
        for e, example in enumerate(examples):
            if example["query"] is None:
                example["query"] = thumbnails(images[e : e + 1])[0]
                example["rows"].append(("pixel top-k", index.thumbnails[found["ids"]["pixel"][e]]))
                if "lpips" in found["ids"]:
                    example["rows"].append(("LPIPS top-k", index.thumbnails[found["ids"]["lpips"][e]]))
            example["rows"].append((f"Hamming, {short_name(source)}", index.thumbnails[found["ids"]["hamming"][e]]))
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "precision": resolve_precision(args.precision, device),
        "dataset": f"{args.dataset} (train: first {args.train_size}; queries: {args.split}, first {len(images)})",
        "train_images": args.train_size,
        "queries": len(images),
        "ks": list(ks),
        "seed": args.seed,
        "pixel_metric": "squared L2 between 16×16 area-downsampled thumbnails in [0, 1], summed over 768 values",
        "mse_metric": "mean squared error over all pixels at full resolution, [0, 1] images",
        "lpips": lpips_note,
        "tokenizers": results,
        "seconds": time.time() - started,
    }
    (args.out / "neighbours.json").write_text(json.dumps(report, indent=2) + "\n")
    write_table(report, args.out)
    plot(report, args.out)
    if examples:
        plot_examples(examples, args.out)
    print(f"wrote neighbours.json, neighbours.md, neighbours.png, neighbours_examples.png to {args.out}")


def cpu_model() -> str:
    """The CPU's name as lscpu gives it ("Model name"), or the machine type where /proc/cpuinfo is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
