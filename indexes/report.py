"""Memorization report: how close are generated images to the training set, compared with real held-out images?

For every metric, the distance from each image to its nearest indexed (training) image is computed for M
generated images and for N held-out real images. A generated image is flagged when it is closer to a training image
than the p-th percentile of the held-out distances (p = 1 by default): real images the model never saw are rarely
that close, so such a generation is a memorization candidate. Per metric the report adds the statistics of
`indexes.audit` (Meehan's C_T, AuthPct, Carlini's relative-distance flags, cliques of near-identical generations)
and one verdict sentence over all metrics. Writes report.json, an HTML page (verdict, table, plotly histograms), a
PNG of the distance histograms, and a gallery of the closest generated/training pairs.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binom

from indexes import audit
from indexes.store import ImageIndex, IndexError_, pixel_features
from maskbit import bits
from maskbit.files import atomic_write, write_json_atomic
from maskbit.images import image_grid, save_image

__all__ = ["memorization_report"]

AXIS_NAMES = {"hamming": "Hamming distance (bits)", "lpips": "LPIPS", "pixel": "squared pixel L2 (16×16)"}
COPYING_C_T = -3.0  # C_T below this reads as copying (about N(0, 1) under H0)
EXCESS_P_VALUE = 1e-3  # a flagged count this unlikely at the held-out rate p / 100 reads as copying


def memorization_report(
    index: ImageIndex,
    generated: torch.Tensor,
    heldout: torch.Tensor,
    out: str | Path,
    percentile: float = 1.0,
    gallery_size: int = 8,
    generated_names: list[str] | None = None,
    tau: float | None = None,
) -> dict:
    """generated (M, 3, S, S), heldout (N, 3, S, S) in [0, 1]. Returns (and writes) the report. tau: Meehan's
    minimum share of the generated images for a cell to enter C_T (default 20 / M, as dgm-eval)."""
    if len(generated) == 0:
        raise ValueError("generated is empty: the report needs at least one generated image")
    if len(heldout) == 0:
        raise ValueError("heldout is empty: the report needs held-out real images to calibrate against")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generated, heldout = generated.cpu(), heldout.cpu()  # the index searches on its own device
    names = generated_names or [f"generated:{i}" for i in range(len(generated))]
    neighbours = min(audit.CARLINI_NEIGHBOURS, len(index))  # Carlini's n, or all there is in a small index
    near_generated, generated_tokens = _nearest(index, generated, k=neighbours)
    near_heldout, _ = _nearest(index, heldout, k=1)
    cells, cells_described = _cell_labels(index)
    report = {
        "verdict": "",
        "percentile": percentile,
        "generated_images": len(generated),
        "heldout_images": len(heldout),
        "index": str(index.directory),
        "indexed_images": len(index),
        "metrics": {},
    }
    for metric, (gen_ids, gen_neighbours) in near_generated.items():
        gen_distances, nearest_ids = gen_neighbours[:, 0], gen_ids[:, 0]
        held_ids, held_distances = near_heldout[metric][0][:, 0], near_heldout[metric][1][:, 0]
        threshold = float(np.percentile(held_distances, percentile))
        flagged = np.flatnonzero(gen_distances < threshold)
        c_t, c_t_note = _c_t(held_distances, cells[held_ids], gen_distances, cells[nearest_ids], tau)
        authenticity, authenticity_note = _auth_pct(index, metric, gen_distances, nearest_ids)
        relative, relative_note = _relative_flagged(metric, gen_neighbours)
        pairwise = _pairwise_distances(index, metric, generated, generated_tokens)
        report["metrics"][metric] = {
            "threshold": threshold,
            "generated": _summary(gen_distances),
            "heldout": _summary(held_distances),
            "flagged_fraction": float(len(flagged) / len(gen_distances)),
            "flagged_p_value": _excess_p_value(len(flagged), len(gen_distances), percentile),
            "flagged": [
                {
                    "generated": names[i],
                    "distance": float(gen_distances[i]),
                    "nearest": index.sources[nearest_ids[i]]["source"],
                    "label": index.sources[nearest_ids[i]]["label"],
                }
                for i in flagged[np.argsort(gen_distances[flagged])]
            ],
            "c_t": c_t,
            "c_t_cells": cells_described,
            "c_t_note": c_t_note,
            "auth_pct": authenticity,
            "auth_pct_note": authenticity_note,
            "relative_flagged_fraction": relative,
            "relative_neighbours": neighbours,
            "relative_alpha": audit.CARLINI_ALPHA,
            "relative_note": relative_note,
            "cliques": [[names[i] for i in group] for group in audit.cliques(pairwise, threshold)],
            "generated_distances": gen_distances.tolist(),
            "heldout_distances": held_distances.tolist(),
        }
        _gallery(index, generated, nearest_ids, gen_distances, gallery_size, out / f"closest_{metric}.png")
    report["verdict"] = verdict(report)
    write_json_atomic(out / "report.json", report)
    _plots(report, out)
    return report


def verdict(report: dict) -> str:
    """One sentence over all metrics: copying when some C_T < −3 or some metric flags far more generations than the
    held-out percentile would (binomial p < 0.001), else no sign of it."""
    metrics = report["metrics"]
    copying = [
        m
        for m, d in metrics.items()
        if (d["c_t"] is not None and d["c_t"] < COPYING_C_T) or d["flagged_p_value"] < EXCESS_P_VALUE
    ]
    c_t = ", ".join(f"{d['c_t']:.1f} ({m})" for m, d in metrics.items() if d["c_t"] is not None) or "not computed"
    flagged = ", ".join(f"{100 * d['flagged_fraction']:.1f} % ({m})" for m, d in metrics.items())
    head = f"Possible copying by {', '.join(copying)}" if copying else "No sign of copying"
    return (
        f"{head}: C_T is {c_t} and {flagged} of generated images are closer than the "
        f"{_ordinal(report['percentile'])} percentile of held-out images."
    )


# ---------------------------------------------------------------------------------------------------- search


def _nearest(
    index: ImageIndex, images: torch.Tensor, k: int, batch_size: int = 64
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], torch.Tensor]:
    """metric → (ids (Q, k), distances (Q, k) float64), and the images' token grids (Q, h, w), encoded once."""
    ids: dict[str, list] = {}
    distances: dict[str, list] = {}
    tokens = []
    for first in range(0, len(images), batch_size):
        batch = images[first : first + batch_size].to(index.device)
        batch_tokens = index.tokenizer.encode(batch)
        tokens.append(batch_tokens.cpu())
        for metric, found in index.search(batch, tokens=batch_tokens, k=k).items():
            ids.setdefault(metric, []).append(found.ids)
            distances.setdefault(metric, []).append(found.distances.astype(np.float64))
    found = {m: (np.concatenate(ids[m]), np.concatenate(distances[m])) for m in ids}
    return found, torch.cat(tokens)


def _cell_labels(index: ImageIndex) -> tuple[np.ndarray, str]:
    """C_T's partition: each image's cell is the label of its nearest training image, so its distance to the
    nearest training image in its own cell is its nearest distance. (N_index,) int64 cell of each indexed image."""
    labels = [source.get("label") for source in index.sources]
    if all(isinstance(label, int | np.integer) and label >= 0 for label in labels):
        return np.asarray(labels, dtype=np.int64), "label of the nearest training image"
    return np.zeros(len(labels), dtype=np.int64), "one cell (not every indexed image has a label)"


# ---------------------------------------------------------------------------------------------------- statistics


def _c_t(
    heldout_distances, heldout_cells, generated_distances, generated_cells, tau
) -> tuple[float | None, str | None]:
    try:
        return audit.c_t(heldout_distances, heldout_cells, generated_distances, generated_cells, tau), None
    except ValueError as error:  # too few generated images per cell for tau, or a kept cell without held-out images
        return None, f"C_T not computed: {error}"


def _auth_pct(
    index: ImageIndex, metric: str, distances: np.ndarray, matched: np.ndarray
) -> tuple[float | None, str | None]:
    """AuthPct from each matched training image's distance to its nearest other training image."""
    unique = np.unique(matched)
    if len(index) < 2:
        return None, "AuthPct not computed: the index holds a single image"
    try:
        if metric == "lpips" and index.sketch is not None:  # only sketches are stored: search with the images again
            found = index.search(index.load_images(unique), k=2, metrics=["lpips"])["lpips"]
            found_distances, found_ids = found.distances, found.ids
        else:  # the stored vectors (packed codes, thumbnails, φ) are the queries
            vectors = np.stack([index.flat[metric].reconstruct(int(i)) for i in unique])
            found_distances, found_ids = index.flat[metric].search(vectors, 2)
    except IndexError_ as error:
        return None, f"AuthPct not computed: {error}"
    # the nearest *other* image: drop the image itself wherever it comes (an exact duplicate may come first)
    other = np.asarray(found_ids) != unique[:, None]
    nearest_other = np.asarray(found_distances, dtype=np.float64)[np.arange(len(unique)), other.argmax(1)]
    return audit.auth_pct(distances, matched, nearest_other[np.searchsorted(unique, matched)]), None


def _relative_flagged(metric: str, distances: np.ndarray) -> tuple[float | None, str | None]:
    """Carlini's flagged fraction over each generation's K nearest distances (M, K); ℓ2, not squared, for pixels."""
    if distances.shape[1] < 2:
        return None, "relative distance not computed: the index holds fewer than 2 images"
    if metric == "pixel":
        distances = np.sqrt(distances)
    try:
        return float(audit.relative_flagged(distances, neighbours=distances.shape[1]).mean()), None
    except ValueError as error:  # e.g. a compressed LPIPS index that found fewer neighbours than asked
        return None, f"relative distance not computed: {error}"


def _excess_p_value(flagged: int, total: int, percentile: float) -> float:
    """P(at least `flagged` of `total` flags) if each generation were flagged at the held-out rate p / 100."""
    return float(binom.sf(flagged - 1, total, percentile / 100)) if flagged else 1.0


@torch.no_grad()
def _pairwise_distances(
    index: ImageIndex, metric: str, images: torch.Tensor, tokens: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """(M, M) distances among the generated images, in the metric's units (for the cliques)."""
    if metric == "hamming":
        codes = bits.pack_bits(tokens, index.tokenizer.num_bits).numpy()
        rows = [
            np.bitwise_count(codes[i : i + batch_size, None] ^ codes[None]).sum(-1)
            for i in range(0, len(codes), batch_size)
        ]
        return np.concatenate(rows).astype(np.float64)
    if metric == "lpips":
        features = torch.cat(
            [index.lpips(images[i : i + batch_size].to(index.device)).cpu() for i in range(0, len(images), batch_size)]
        )
    else:
        features = torch.from_numpy(pixel_features(images))
    features = features.double()
    squared = features.pow(2).sum(1)
    return (squared[:, None] + squared[None] - 2 * features @ features.T).clamp(min=0).numpy()


# ---------------------------------------------------------------------------------------------------- output


def _ordinal(number: float) -> str:
    text = f"{number:g}"
    if not float(number).is_integer() or 10 <= int(number) % 100 <= 20:
        return f"{text}th"
    return text + {1: "st", 2: "nd", 3: "rd"}.get(int(number) % 10, "th")


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "p1": float(np.percentile(values, 1)),
        "p5": float(np.percentile(values, 5)),
    }


def _gallery(index, generated, ids, distances, size, path) -> None:
    """Rows of (generated, nearest training image) for the closest pairs."""
    order = np.argsort(distances)[:size]
    pairs = []
    for i in order:
        thumb = torch.from_numpy(index.thumbnails[ids[i]]).permute(2, 0, 1).float() / 255
        image = torch.nn.functional.interpolate(generated[i : i + 1], size=thumb.shape[-2:], mode="area")[0]
        pairs += [image, thumb]
    save_image(image_grid(torch.stack(pairs), columns=2), path)


def _plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = list(report["metrics"])
    figure = make_subplots(rows=1, cols=len(metrics), subplot_titles=[f"{m} distance to nearest" for m in metrics])
    fig_png, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for col, metric in enumerate(metrics):
        data = report["metrics"][metric]
        for name, values, color in (
            ("generated", data["generated_distances"], "#d62728"),
            ("held-out real", data["heldout_distances"], "#1f77b4"),
        ):
            figure.add_trace(
                go.Histogram(
                    x=values, name=name, opacity=0.6, marker_color=color, showlegend=col == 0, legendgroup=name
                ),
                row=1,
                col=col + 1,
            )
            axes[0, col].hist(values, bins=30, alpha=0.6, color=color, label=name)
        figure.add_vline(x=data["threshold"], line_dash="dash", row=1, col=col + 1)
        axes[0, col].axvline(
            data["threshold"], color="black", linestyle="--", label=f"p{report['percentile']:g} of held-out"
        )
        axes[0, col].set_title(f"{metric}: {data['flagged_fraction']:.1%} flagged")
        axes[0, col].set_xlabel(f"{AXIS_NAMES.get(metric, metric)} to the nearest training image")
        axes[0, col].set_ylabel("images")
        axes[0, col].legend(fontsize=7)
        figure.update_xaxes(title_text=AXIS_NAMES.get(metric, metric), row=1, col=col + 1)
        figure.update_yaxes(title_text="images", row=1, col=col + 1)
    figure.update_layout(barmode="overlay", title="Nearest-training-image distances: generated vs held-out")
    page = _html_page(report, figure.to_html(full_html=False, include_plotlyjs=True))
    atomic_write(out / "report.html", lambda p: Path(p).write_text(page, encoding="utf-8"))
    fig_png.tight_layout()
    atomic_write(out / "report.png", lambda p: fig_png.savefig(p, format="png", dpi=100))
    plt.close(fig_png)


def _html_page(report: dict, plots: str) -> str:
    """The verdict, a table of the per-metric statistics, then the histograms."""

    def cell(value, form: str) -> str:
        return "—" if value is None else format(value, form)

    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{d['threshold']:.4g}</td><td>{100 * d['flagged_fraction']:.1f} %</td>"
        f"<td title='{html.escape(d['c_t_note'] or d['c_t_cells'])}'>{cell(d['c_t'], '.2f')}</td>"
        f"<td title='{html.escape(d['auth_pct_note'] or '')}'>{cell(d['auth_pct'], '.1f')}</td>"
        f"<td>{cell(None if d['relative_flagged_fraction'] is None else 100 * d['relative_flagged_fraction'], '.1f')}"
        f" %</td><td>{len(d['cliques'])}</td></tr>"
        for m, d in report["metrics"].items()
    )
    p = f"{report['percentile']:g}"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Memorization report</title>
<style>body{{font-family:sans-serif;margin:1.5em}} td,th{{padding:0.2em 0.8em;text-align:right}}</style></head>
<body><h2>Memorization report</h2>
<p><b>{html.escape(report["verdict"])}</b></p>
<p>{report["generated_images"]} generated and {report["heldout_images"]} held-out images against
{report["indexed_images"]} indexed images ({html.escape(report["index"])}).</p>
<table><tr><th>metric</th><th>threshold (p{p} of held-out)</th><th>flagged</th><th>C_T (Meehan)</th>
<th>AuthPct</th><th>Carlini flagged</th><th>cliques</th></tr>{rows}</table>
{plots}
</body></html>
"""
