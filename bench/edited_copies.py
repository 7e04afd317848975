"""Edited and partial copies: recall of each Hamming window test (indexes/edited.py) on planted copies, its
false-positive rate on real held-out images, and its cost per query, against whole-grid Hamming, pixel and LPIPS.

The setup of the memorization report (indexes/report.py): an index of the first `--train` procedural training images
(the bundled tokenizer at the library's fp32; Hamming, pixel and LPIPS with the shipped AlexNet trunk), `--count`
held-out images that set each metric's threshold (their p-th percentile, for each of `--percentiles`; the report's
default is 1) and `--count` others among the copies (the report's split, also the hosts of the half-pasted copies);
`--plant` training images under each edit of indexes/plant.py (its `half_pasted` is the partial copy). The
false-positive rate is also measured on `--extra` further held-out images (a tighter estimate than `--count` gives),
with the recall at the threshold that flags at most 2 % of those. The last row flags an image when any of the
library's three tests flags it, each at its own threshold. Cost: milliseconds per query from the images (encoding
included) and from the token grids (the search alone; a test of the mirror image still encodes the mirror image).

    .venv/bin/python -m bench.edited_copies --out bench/results

Writes edited_copies.json, edited_copies.md (the tables) and edited_copies_distances.npz (every nearest distance, by
"<set>/<metric>"). The index is kept in --index (a stopped build continues).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from indexes import plant
from indexes.build import build_dataset_index
from indexes.edited import HALVES, TESTS, EditedSearch, WindowTest
from indexes.sources import load_indexed_images
from maskbit import Tokenizer

# the library's tests, then variants that show what each choice (window margin, windows, mirroring) buys
VARIANTS = [
    WindowTest("half, bits", "Hamming, best half", HALVES),
    WindowTest("half, relative", "Hamming, best half (relative, 50)", HALVES, relative=50),
    WindowTest(
        "strip 5, relative", "Hamming, best 5-token edge strip (relative, 50)", HALVES, part=0.3125, relative=50
    ),
    WindowTest("strip 6, bits", "Hamming, best 6-token edge strip", HALVES, part=0.375),
    WindowTest("edited, bits", "halves of the central 12×12, shifted ±2, flipped", HALVES, 2, (False, True)),
    WindowTest(
        "edited, relative",
        "5-token strips of the central 12×12, shifted ±2, flipped (relative)",
        HALVES,
        2,
        (False, True),
        2,
        0.375,
        50,
    ),
]
UNION = ("shifted", "flipped", "part")  # flag when any of them flags, each at its own threshold
BASELINES = ("hamming", "pixel", "lpips")
FALSE_POSITIVES = 0.02


def nearest(index, search: EditedSearch, tests, images: torch.Tensor, batch: int = 64) -> dict[str, np.ndarray]:
    """metric or test → (Q,) nearest-training distances."""
    out: dict[str, list] = {}
    for first in range(0, len(images), batch):
        part = images[first : first + batch]
        tokens = index.encode(part)
        for metric, found in index.search(part, tokens=tokens, k=1, metrics=BASELINES).items():
            out.setdefault(metric, []).append(found.distances[:, 0].astype(np.float64))
        for name, found in search.search(part, tokens, tests).items():
            out.setdefault(name, []).append(found.distances)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def cost(index, search: EditedSearch, tests, images: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """Milliseconds per query (the best of `repeats` runs over `images` in one batch): "total" from the images
    (encoding included), "search" from the token grids (for a test of the mirror image: its encoding and search)."""
    tokens = index.encode(images)
    by_name = {t.name: t for t in tests}

    def best(call, *args, **kwargs) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call(*args, **kwargs)
            times.append(time.perf_counter() - start)
        return 1000 * min(times) / len(images)

    timings = {"encode": {"total": best(index.encode, images)}}
    for name in BASELINES:
        timings[name] = {"total": best(index.search, images, k=1, metrics=[name])}
    timings["hamming"]["search"] = best(index.search, tokens=tokens, k=1, metrics=["hamming"])
    for name, test in by_name.items():
        timings[name] = {
            "total": best(search.search, images, tests=[test]),
            "search": best(search.search, images, tokens, tests=[test]),
        }
    return timings


def evaluate(distances: dict, metrics: list[str], edits: list[str], percentile: float) -> dict:
    """metric → recall per edit, false-positive rates, AUC at the `percentile`-th percentile of the calibration
    images' distances; and the union of UNION (flagged when any of them flags at its own threshold)."""
    results, flags = {}, {}
    for metric in metrics:
        threshold = float(np.percentile(distances["calibration"][metric], percentile))
        real = np.sort(distances["extra"][metric])
        # the largest threshold (flag when strictly closer) that flags at most 2 % of the extra held-out images
        at_2 = float(real[int(FALSE_POSITIVES * len(real))])
        everyone = np.concatenate([distances["controls"][metric], real])
        results[metric] = {
            "threshold": threshold,
            "recall": {e: float((distances[e][metric] < threshold).mean()) for e in edits},
            "false_positive_rate": float((distances["controls"][metric] < threshold).mean()),
            "false_positive_rate_extra": float((real < threshold).mean()),
            "threshold_at_2pct": at_2,
            "recall_at_2pct": {e: float((distances[e][metric] < at_2).mean()) for e in edits},
            "auc": {e: plant.roc_auc(distances[e][metric], everyone) for e in edits},
        }
        flags[metric] = {name: found[metric] < threshold for name, found in distances.items()}
    union = {name: np.any([flags[m][name] for m in UNION], axis=0) for name in distances}
    results[" or ".join(UNION)] = {
        "recall": {e: float(union[e].mean()) for e in edits},
        "false_positive_rate": float(union["controls"].mean()),
        "false_positive_rate_extra": float(union["extra"].mean()),
    }
    return results


def main(args: argparse.Namespace) -> None:
    from data import heldout_images

    torch.manual_seed(0)
    tokenizer = Tokenizer.from_pretrained("default")
    start = time.perf_counter()
    index = build_dataset_index(args.index, tokenizer, limit=args.train)
    print(f"{index.describe()} ({time.perf_counter() - start:.0f} s)")
    held = heldout_images("procedural", 2 * args.count + args.extra, index.image_size, args.seed)
    calibration, controls, extra = held[0 : 2 * args.count : 2], held[1 : 2 * args.count : 2], held[2 * args.count :]
    ids = plant.planted_ids(len(index), args.plant, args.seed)
    originals = load_indexed_images(index, ids)
    hosts = controls[np.arange(len(ids)) % len(controls)]
    copies = plant.plant_copies(originals, tokenizer, hosts, args.seed)
    tests = [*TESTS.values(), *VARIANTS]
    search = EditedSearch(index)
    start = time.perf_counter()
    search.search(calibration[:1], tests=tests)  # builds every window index once
    build_seconds = time.perf_counter() - start

    sets = {"calibration": calibration, "controls": controls, "extra": extra, **copies}
    distances = {}
    for name, images in sets.items():
        start = time.perf_counter()
        distances[name] = nearest(index, search, tests, images)
        print(f"{name}: {len(images)} queries, {time.perf_counter() - start:.1f} s", flush=True)
    timings = cost(index, search, tests, calibration, args.repeats)

    metrics = [*BASELINES, *(t.name for t in tests)]
    results = {f"{p:g}": evaluate(distances, metrics, list(copies), p) for p in args.percentiles}
    for metric in metrics:
        for r in results.values():
            r[metric]["ms_per_query"] = timings[metric]["total"]
            r[metric]["search_ms_per_query"] = timings[metric].get("search")
    labels = {t.name: t.label for t in tests}
    report = {
        "machine": args.machine or f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "index": {"images": len(index), "grid": list(index.grid), "precision": index.precision},
        "count": args.count,
        "extra": args.extra,
        "plant": args.plant,
        "percentiles": args.percentiles,
        "encode_ms_per_query": timings["encode"]["total"],
        "window_indexes_seconds": build_seconds,
        "labels": labels,
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "edited_copies.json").write_text(json.dumps(report, indent=1))
    np.savez_compressed(
        out / "edited_copies_distances.npz",
        **{f"{s}/{m}": d for s, found in distances.items() for m, d in found.items()},
    )
    table = "\n".join(markdown(report, list(copies), p) for p in results)
    (out / "edited_copies.md").write_text(table)
    print(table)


def markdown(report: dict, edits: list[str], percentile: str) -> str:
    results = report["results"][percentile]
    head = "| metric | " + " | ".join(edits) + " | FPR (controls / extra) | ms per query (search) |\n"
    rule = "|---" * (len(edits) + 3) + "|\n"
    rows = []
    for metric, r in results.items():
        at_2 = r.get("recall_at_2pct")
        cells = [f"{100 * r['recall'][e]:.0f}" + (f" ({100 * at_2[e]:.0f})" if at_2 else "") for e in edits]
        fpr = f"{100 * r['false_positive_rate']:.1f} / {100 * r['false_positive_rate_extra']:.1f} %"
        ms = f"{r['ms_per_query']:.1f}" if "ms_per_query" in r else ""
        if r.get("search_ms_per_query") is not None:
            ms += f" ({r['search_ms_per_query']:.2f})"
        rows.append(f"| {metric} | " + " | ".join(cells) + f" | {fpr} | {ms} |\n")
    note = (
        f"Recall in % at the p{percentile} threshold of {report['count']} held-out images (in brackets: at the "
        f"threshold that flags at most 2 % of {report['extra']} further held-out images); {report['plant']} planted "
        f"copies per edit; index of {report['index']['images']} images; encoding alone "
        f"{report['encode_ms_per_query']:.1f} ms per query.\n\n"
    )
    return note + head + rule + "".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="runs/edited-copies/index-1500", help="index directory (built if missing)")
    parser.add_argument("--train", type=int, default=1500, help="training images indexed")
    parser.add_argument(
        "--count", type=int, default=120, help="held-out images setting the threshold (and as many controls)"
    )
    parser.add_argument("--extra", type=int, default=1000, help="further held-out images for the false-positive rate")
    parser.add_argument("--plant", type=int, default=120, help="training images copied under each edit")
    parser.add_argument("--percentiles", type=float, nargs="+", default=[1.0, 2.0], help="thresholds (held-out %%)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per metric (the best is kept)")
    parser.add_argument("--machine", default="", help="how the machine is described in the results")
    parser.add_argument("--out", default="bench/results")
    main(parser.parse_args())
