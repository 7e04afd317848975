"""C_T at the sample sizes people use: is Meehan et al.'s statistic computed, and does it tell copies from fresh images?

C_T's cells must each hold more than 20 generated images (dgm-eval's τ = 20 / M). With the classes of the nearest
training images as cells, a report of 120 images in 10 classes has none, so C_T used to be left out below about 250
images. `indexes.audit.fit_c_t` now takes the finest partition that fits (classes, k-means cells of the training
tokens, fewer cells, one cell). This bench indexes the first --train images of the procedural train split with the
bundled tokenizer, then, for each report size M, computes reports (`indexes.report.report_inputs` +
`compute_report`, the CLI's recipe with --count M: M held-out images set the threshold and C_T) for

    copies   M exported training images (PNG files of indexed images, read back as the CLI reads --generated)
    fresh    M held-out test images that are not among the M held-out images of the report

over --draws disjoint draws each, and records per metric C_T and the partition it used.

    .venv/bin/python -m bench.c_t_sample_size --out bench/results      # 1,500 images, M = 32, 40, 120
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from data import split_images
from data.datasets import build_dataset, export_dataset
from indexes.build import build_dataset_index
from indexes.lpips_embedding import has_weights
from indexes.report import compute_report, report_inputs
from indexes.store import MANIFEST, ImageIndex, IndexOptions
from maskbit import Tokenizer
from maskbit.cli import whole


def open_or_build(directory: Path, tokenizer: Tokenizer, train: int) -> ImageIndex:
    metrics = ("hamming", "lpips", "pixel") if has_weights("alex") else ("hamming", "pixel")
    if (directory / MANIFEST).is_file():
        index = ImageIndex.open(directory, tokenizer)
        if len(index) == train:
            return index
    return build_dataset_index(directory, tokenizer, limit=train, options=IndexOptions(metrics=metrics))


def one_report(index: ImageIndex, generated, names, heldout) -> dict:
    report = compute_report(index, generated, heldout, generated_names=names).to_json()
    return {
        metric: {
            "c_t": data["c_t"],
            "partition": data["c_t_reason"]["partition"],
            "cells": data["c_t_reason"]["cells"],
            "kept_cells": data["c_t_reason"]["kept_cells"],
            "tried": [(t["partition"], t["cells"], t["problem"]) for t in data["c_t_reason"]["tried"]],
            "flagged_fraction": data["flagged_fraction"],
        }
        for metric, data in report["metrics"].items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=whole(100), default=1500, help="training images indexed")
    parser.add_argument("--sizes", type=whole(21), nargs="+", default=[32, 40, 120], help="report sizes M")
    parser.add_argument("--draws", type=whole(1), default=5, help="disjoint draws per size and kind")
    parser.add_argument("--index-root", type=Path, default=Path("runs/c_t_bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    if max(args.sizes) * args.draws > args.train:
        parser.error("--sizes × --draws exported training images must lie within the --train indexed images")
    tokenizer = Tokenizer.from_pretrained("default").inference("cpu", "auto")
    started = time.perf_counter()
    index = open_or_build(args.index_root / f"procedural-{args.train}", tokenizer, args.train)
    built = time.perf_counter() - started
    exported = args.index_root / "exported"
    if not (exported / "done").is_file():  # the CLI's --generated: PNG files of training images
        export_dataset(build_dataset("procedural", "train", 0, index.image_size), exported, limit=args.train)
        (exported / "done").write_text("")
    paths = sorted(exported.rglob("*.png"), key=lambda p: int(p.stem))  # <class>/<id>.png
    results = []
    for m in args.sizes:
        for draw in range(args.draws):
            started = time.perf_counter()
            copies = report_inputs(index, m, generated=[str(p) for p in paths[draw * m : (draw + 1) * m]])
            fresh_start = 1000 + draw * m  # the report's held-out images are the test split's first M
            fresh = split_images("procedural", "test", m, index.image_size, start=fresh_start)[0]
            for kind, generated, names in (
                ("copies", copies.generated, copies.names),
                ("fresh", fresh, [f"test:{fresh_start + i}" for i in range(m)]),
            ):
                metrics = one_report(index, generated, names, copies.heldout)
                results.append({"size": m, "draw": draw, "kind": kind, "metrics": metrics})
                line = ", ".join(f"{k} {v['c_t']:+.2f} ({v['partition']})" for k, v in metrics.items())
                print(f"M={m:4d} draw {draw} {kind:6s}: {line}", flush=True)
            results[-1]["seconds_both"] = time.perf_counter() - started
    summary = {}
    for m in args.sizes:
        for kind in ("copies", "fresh"):
            rows = [r for r in results if r["size"] == m and r["kind"] == kind]
            for metric in rows[0]["metrics"]:
                values = np.array([r["metrics"][metric]["c_t"] for r in rows], dtype=float)
                partitions = sorted({r["metrics"][metric]["partition"] for r in rows})
                summary[f"{m}/{kind}/{metric}"] = {
                    "mean": float(values.mean()),
                    "min": float(values.min()),
                    "max": float(values.max()),
                    "finite": bool(np.isfinite(values).all()),
                    "partitions": partitions,
                }
    args.out.mkdir(parents=True, exist_ok=True)
    value = {
        "train_images": len(index),
        "metrics": list(index.metrics),
        "index_seconds": built,
        "machine": platform.processor() or platform.machine(),
        "results": results,
        "summary": summary,
    }
    (args.out / "c_t_sample_size.json").write_text(json.dumps(value, indent=2) + "\n")
    for key, s in summary.items():
        print(
            f"{key:24s} C_T mean {s['mean']:+.2f} [{s['min']:+.2f}, {s['max']:+.2f}] "
            f"finite={s['finite']} {s['partitions']}"
        )


if __name__ == "__main__":
    main()
