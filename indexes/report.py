"""Memorization report: how close are generated images to the training set, compared with real held-out images?

For every metric, the distance from each image to its nearest indexed (training) image is computed for M
generated images and for N held-out real images. A generated image is flagged when it is closer to a training image
than the p-th percentile of the held-out distances (p = 1 by default): real images the model never saw are rarely
that close, so such a generation is a memorization candidate. Per metric the report adds the statistics of
`indexes.audit` (Meehan's C_T, AuthPct, Carlini's relative-distance flags, cliques of near-identical generations)
and one verdict sentence over all metrics. With `plant=N` it also plants copies of N training images under the edits
of `indexes.plant` among held-out images that did not set the threshold, and measures each metric's recall, ROC AUC
and false-positive rate. Writes report.json, an HTML page (verdict, tables, plotly histograms and ROC curves), a PNG
of the same plots, a gallery of the closest generated/training pairs per metric and, with planted copies,
planted.png (the first planted image under every edit).

The verdict. A metric finds the generations *closer* to the training set than held-out images when C_T < −3 (C_T is
about N(0, 1) when the model neither copies nor underfits) or when it flags far more generations than the held-out
percentile would (binomial p < 0.001). Closer is not the same as copied: a generator whose samples are smooth or
blurry is close in pixel distance (and LPIPS) to the smooth training images without copying any one of them; the
bundled generator once measured 13.8 % flagged and C_T −4.3 by pixel distance while Hamming C_T was +2.5. So:
- "Possible copying by ..." needs the Hamming distance between bit tokens among the metrics that find the
  generations closer, or, in a metric that finds them closer, Carlini's relative criterion (a generation much closer
  to one training image than to its other near neighbours: a copy of *that* image, not of a smooth region of the
  training set) flagging far more generations than held-out images (binomial p < 0.001 at the held-out rate);
- "No copy confirmed: ..." when only pixel distance or LPIPS finds them closer, naming which metric says what;
- "No sign of copying: ..." otherwise.
Each sentence gives every metric's C_T and flagged share.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binom

from indexes import audit
from indexes import plant as plant_module
from indexes.sources import load_indexed_images
from indexes.store import ImageIndex, IndexError_, pixel_features
from maskbit import bits
from maskbit.files import atomic_directory, atomic_write, explain_full_disk, write_json_atomic
from maskbit.images import image_grid, to_pil

__all__ = ["memorization_report", "verdict"]

AXIS_NAMES = {"hamming": "Hamming distance (bits)", "lpips": "LPIPS", "pixel": "squared pixel L2 (16×16)"}
COPYING_C_T = -3.0  # C_T below this reads as closer than held-out images (about N(0, 1) under H0)
EXCESS_P_VALUE = 1e-3  # a flagged count this unlikely at the held-out rate reads as an excess
MIN_CELL_HELDOUT = 2  # held-out images a C_T cell needs (one gives no spread to rank against)
REPORT_FILE = re.compile(r"^(report\.(json|html|png)|closest_\w+\.png|planted\.png)$")
PLOT_BYTES = 8 << 20  # about what the HTML page (plotly inline) and the PNG of the plots take


def memorization_report(
    index: ImageIndex,
    generated: torch.Tensor,
    heldout: torch.Tensor,
    out: str | Path,
    percentile: float = 1.0,
    gallery_size: int = 8,
    generated_names: list[str] | None = None,
    tau: float | None = None,
    *,
    plant: int = 0,
    plant_seed: int = 0,
) -> dict:
    """generated (M, 3, S, S), heldout (N, 3, S, S) in [0, 1]. Returns (and writes) the report. tau: Meehan's
    minimum share of the generated images for a cell to enter C_T (default 20 / M, as dgm-eval).

    plant: also plant that many copies of training images under each edit of `indexes.plant` and measure how many
    the threshold finds (report["planted"]). The held-out images are then split by position: those at even positions
    (0, 2, 4, ...) set the threshold and C_T, those at odd positions are the real images mixed with the copies (and
    the hosts of the half-pasted copies), so that the false-positive rate is measured on images the threshold never
    saw. plant_seed draws the planted images and the noise.

    Bad input raises ValueError naming the parameter before any file is written; the files are written at the end
    into a folder beside `out` that replaces `out` in one step (a kill or a full disk leaves the previous report;
    a full disk raises DiskFullError saying so). A statistic that the data cannot support is left out with a note that
    says why (e.g. `c_t_note` when a cell that enters C_T holds fewer than 2 held-out images: which cells enter
    depends on where the generations fall, so the rest of the report is kept)."""
    generated, heldout = generated.cpu(), heldout.cpu()  # the index searches on its own device
    out = Path(out)
    _check_out(out)
    _check_images(generated, "generated")
    _check_images(heldout, "heldout")
    if tau is not None and not 0 < tau < 1:  # also refuses NaN
        raise ValueError(f"tau must lie in (0, 1), got {tau}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    controls = None
    if plant:
        ids = plant_module.planted_ids(len(index), plant, plant_seed)  # refuses plant > len(index) by name
        if len(heldout) < 4:
            raise ValueError(
                f"heldout: --plant splits the held-out images in two (threshold / real images among the copies); "
                f"give at least 4, got {len(heldout)}"
            )
        heldout, controls = heldout[0::2], heldout[1::2]
    names = generated_names or [f"generated:{i}" for i in range(len(generated))]
    neighbours = min(audit.CARLINI_NEIGHBOURS, len(index))  # Carlini's n, or all there is in a small index
    near_generated, generated_tokens = _nearest(index, generated, k=neighbours)
    near_heldout, _ = _nearest(index, heldout, k=neighbours)
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
    galleries = {}
    for metric, (gen_ids, gen_neighbours) in near_generated.items():
        held_ids, held_neighbours = near_heldout[metric]
        _check_distances(gen_neighbours, f"generated ({metric} distances)")
        _check_distances(held_neighbours, f"heldout ({metric} distances)")
        gen_distances, nearest_ids = gen_neighbours[:, 0], gen_ids[:, 0]
        held_distances = held_neighbours[:, 0]
        threshold = float(np.percentile(held_distances, percentile))
        flagged = np.flatnonzero(gen_distances < threshold)
        gen_cells, held_cells = cells[nearest_ids], cells[held_ids[:, 0]]
        c_t, c_t_note = _c_t(held_distances, held_cells, gen_distances, gen_cells, tau, planted=bool(plant))
        authenticity, authenticity_note = _auth_pct(index, metric, gen_distances, nearest_ids)
        relative, relative_note = _relative_flagged(metric, gen_neighbours)
        held_relative, _ = _relative_flagged(metric, held_neighbours)
        pairwise = _pairwise_distances(index, metric, generated, generated_tokens)
        report["metrics"][metric] = {
            "threshold": threshold,
            "generated": _summary(gen_distances),
            "heldout": _summary(held_distances),
            "flagged_fraction": float(len(flagged) / len(gen_distances)),
            "flagged_p_value": _excess_p_value(len(flagged), len(gen_distances), percentile / 100),
            "flagged": [
                {
                    "generated": names[i],
                    "generated_position": int(i),  # in `generated`
                    "distance": float(gen_distances[i]),
                    "nearest_id": int(nearest_ids[i]),  # in the index
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
            "heldout_relative_flagged_fraction": held_relative,
            "relative_p_value": _relative_p_value(relative, held_relative, len(gen_distances), len(held_distances)),
            "relative_neighbours": neighbours,
            "relative_alpha": audit.CARLINI_ALPHA,
            "relative_note": relative_note,
            "cliques": [[names[i] for i in group] for group in audit.cliques(pairwise, threshold)],
            "generated_distances": gen_distances.tolist(),
            "heldout_distances": held_distances.tolist(),
        }
        galleries[metric] = _gallery(index, generated, nearest_ids, gen_distances, gallery_size)
    examples = None
    if plant:
        report["planted"], examples = _planted(index, ids, controls, report, plant_seed)
    report["verdict"] = verdict(report)

    # Everything is computed: write the files into a folder beside `out`, which then replaces it in one step.
    pictures = [*galleries.values(), *([examples] if examples is not None else [])]
    needed = sum(p.numel() for p in pictures) + 3 * len(json.dumps(report)) + PLOT_BYTES
    kept = f"{out} is as it was (no new report was written); free space and run the same command"
    with explain_full_disk(out, needed, kept), atomic_directory(out) as folder:
        for metric, grid in galleries.items():
            _save_png(grid, folder / f"closest_{metric}.png")
        if examples is not None:
            _save_png(examples, folder / "planted.png")
        _plots(report, folder)
        write_json_atomic(folder / "report.json", report)
    return report


def _check_out(out: Path) -> None:
    """`out` is replaced as a whole: refuse a folder that holds anything but a report's files."""
    if out.is_file():
        raise ValueError(f"out: {out} is a file; give a folder for the report")
    others = sorted(p.name for p in out.iterdir() if not REPORT_FILE.match(p.name)) if out.is_dir() else []
    if others:
        raise ValueError(
            f"out: {out} holds other files than a report ({', '.join(others[:3])}...), which writing a report there "
            "would replace; choose a new folder"
        )


def verdict(report: dict) -> str:
    """One sentence over all metrics.

    A metric places the generations *closer* to the training set than held-out images when its C_T < −3 or it flags
    far more generations than the held-out percentile would (binomial p < 0.001). Closeness alone is not copying: a
    generator of smooth or blurry images is close in pixel distance (and LPIPS) to the smooth training images, without
    copying any of them. So the verdict says "Possible copying" only when the Hamming distance between bit tokens is
    among the metrics that find the generations closer, or when Carlini's relative criterion (a generation much
    closer to one training image than to its other near neighbours) flags far more generations than held-out images
    (p < 0.001) in a metric that finds them closer. When only pixel distance or LPIPS finds them closer, it says "No
    copy confirmed" and names which metric says what."""
    metrics = report["metrics"]
    closer = [
        m
        for m, d in metrics.items()
        if (d["c_t"] is not None and d["c_t"] < COPYING_C_T) or d["flagged_p_value"] < EXCESS_P_VALUE
    ]
    relative = [
        m
        for m in closer
        if (d := metrics[m]).get("relative_p_value") is not None and d["relative_p_value"] < EXCESS_P_VALUE
    ]
    confirmed = closer if "hamming" in closer else relative
    c_t = ", ".join(f"{d['c_t']:.1f} ({m})" for m, d in metrics.items() if d["c_t"] is not None) or "not computed"
    flagged = ", ".join(f"{100 * d['flagged_fraction']:.1f} % ({m})" for m, d in metrics.items())
    evidence = (
        f"C_T is {c_t} and {flagged} of generated images are closer than the "
        f"{_ordinal(report['percentile'])} percentile of held-out images"
    )
    if confirmed:
        why = (
            "Hamming distance between bit tokens agrees"
            if "hamming" in confirmed
            else (
                "Carlini's relative criterion agrees ("
                + ", ".join(_relative_text(m, metrics[m]) for m in relative)
                + ")"
            )
        )
        return f"Possible copying by {', '.join(confirmed)}: {evidence}; {why}."
    if closer:
        hamming = (
            "Hamming distance between bit tokens does not"
            if "hamming" in metrics
            else "the index has no Hamming metric to check"
        )
        return (
            f"No copy confirmed: {' and '.join(closer)} alone place{'s' if len(closer) == 1 else ''} the generations "
            f"closer to the training set than held-out images, which smooth or blurry samples also do; {hamming}, and "
            f"Carlini's relative criterion flags no more generations than held-out images: {evidence}."
        )
    return f"No sign of copying: {evidence}."


def _relative_text(metric: str, data: dict) -> str:
    return (
        f"{100 * data['relative_flagged_fraction']:.1f} % of generations against "
        f"{100 * data['heldout_relative_flagged_fraction']:.1f} % of held-out images by {metric}"
    )


# ---------------------------------------------------------------------------------------------------- input checks


def _check_images(images: torch.Tensor, name: str) -> None:
    if len(images) == 0:
        what = "generated images to audit" if name == "generated" else "held-out real images to calibrate against"
        raise ValueError(f"{name} is empty: the report needs {what}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, S, S), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} holds NaN or infinite pixels")


def _check_distances(distances: np.ndarray, name: str) -> None:
    if np.isnan(distances).any():
        raise ValueError(f"{name}: the search returned NaN distances; check the images and the index")


def _thin_cells(heldout_cells, generated_cells, tau, planted: bool) -> str | None:
    """Why C_T is not computed when a cell that enters it holds fewer than MIN_CELL_HELDOUT held-out images (one
    held-out image gives a Z of no meaning), or None. Which cells enter C_T depends on where the generations fall,
    known only after generating and searching, so this is a note in the report, not an error that throws away the
    generated images and the other statistics."""
    m = len(generated_cells)
    if tau is None and m <= audit.MEEHAN_MIN_GENERATED:
        return None  # C_T is not computed anyway; audit.c_t says why
    share = tau if tau is not None else audit.MEEHAN_MIN_GENERATED / m
    labels, counts = np.unique(generated_cells, return_counts=True)
    kept = labels[counts / m > share]
    held = np.array([(heldout_cells == label).sum() for label in kept], dtype=int)
    thin = held < MIN_CELL_HELDOUT
    if not thin.any():
        return None
    split = " (--plant keeps half of them for the threshold)" if planted else ""
    return (
        f"C_T not computed: heldout: cells {kept[thin].tolist()} hold more than tau = {share:.3g} of the generated "
        f"images but only {held[thin].tolist()} held-out images{split}, fewer than {MIN_CELL_HELDOUT}; give more "
        "held-out images (--count) or a larger --tau"
    )


# ---------------------------------------------------------------------------------------------------- planted copies


def _planted(index: ImageIndex, ids: np.ndarray, controls: torch.Tensor, report: dict, seed: int):
    """report["planted"] and a picture of the first planted image under every edit."""
    originals = load_indexed_images(index, ids).cpu()
    hosts = controls[np.arange(len(ids)) % len(controls)]
    copies = plant_module.plant_copies(originals, index.tokenizer, hosts, seed)
    near_controls, _ = _nearest(index, controls, k=1)
    near_copies = {name: _nearest(index, images, k=1)[0] for name, images in copies.items()}
    planted = {
        "count": len(ids),
        "transforms": list(copies),
        "controls": len(controls),
        "split": "held-out images at even positions set the threshold; those at odd positions are the real images",
        "ids": ids.tolist(),
        "metrics": {},
    }
    for metric, data in report["metrics"].items():
        real = near_controls[metric][1][:, 0]
        _check_distances(real, f"heldout ({metric} distances of the real images among the copies)")
        found = {name: near[metric][1][:, 0] for name, near in near_copies.items()}
        for name, distances in found.items():
            _check_distances(distances, f"plant ({metric} distances of the {name} copies)")
        scores = plant_module.planted_scores(found, real, data["threshold"])
        planted["metrics"][metric] = {
            "recall": scores.recall,
            "auc": scores.auc,
            "false_positive_rate": scores.false_positive_rate,
            "copy_distances": {name: d.tolist() for name, d in found.items()},
            "real_distances": real.tolist(),
        }
    pictures = torch.stack([copies[name][0] for name in copies])
    return planted, image_grid(pictures, columns=len(pictures))


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
        batch_tokens = index.encode(batch)
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
    heldout_distances, heldout_cells, generated_distances, generated_cells, tau, planted: bool = False
) -> tuple[float | None, str | None]:
    thin = _thin_cells(heldout_cells, generated_cells, tau, planted)
    if thin:
        return None, thin
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
            found = index.search(load_indexed_images(index, unique), k=2, metrics=["lpips"])["lpips"]
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


def _excess_p_value(flagged: int, total: int, rate: float) -> float:
    """P(at least `flagged` of `total` flags) if each generation were flagged at the held-out `rate`."""
    return float(binom.sf(flagged - 1, total, rate)) if flagged else 1.0


def _relative_p_value(generated: float | None, heldout: float | None, m: int, n: int) -> float | None:
    """Carlini's flags among M generations against their rate among N held-out images ((k + ½) / (N + 1), so that a
    rate of 0 seen in N images is not taken for certain)."""
    if generated is None or heldout is None:
        return None
    return _excess_p_value(round(generated * m), m, (heldout * n + 0.5) / (n + 1))


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


def _gallery(index, generated, ids, distances, size) -> torch.Tensor:
    """Rows of (generated, nearest training image) for the closest pairs, as one image (3, H, W)."""
    order = np.argsort(distances)[:size]
    pairs = []
    for i in order:
        thumb = torch.from_numpy(index.thumbnails[ids[i]]).permute(2, 0, 1).float() / 255
        image = torch.nn.functional.interpolate(generated[i : i + 1], size=thumb.shape[-2:], mode="area")[0]
        pairs += [image, thumb]
    return image_grid(torch.stack(pairs), columns=2)


def _save_png(image: torch.Tensor, path: Path) -> None:
    atomic_write(path, lambda p: to_pil(image).save(p, format="PNG"))


def _plots(report: dict, out: Path) -> None:
    """report.html and report.png: per metric the distance histograms and, with planted copies, the ROC curves."""
    figure, fig_png = _figures(report)
    page = _html_page(report, figure.to_html(full_html=False, include_plotlyjs=True))
    atomic_write(out / "report.html", lambda p: Path(p).write_text(page, encoding="utf-8"))
    atomic_write(out / "report.png", lambda p: fig_png.savefig(p, format="png", dpi=100))
    import matplotlib.pyplot as plt

    plt.close(fig_png)


def _figures(report: dict):
    """(plotly figure for report.html, matplotlib figure for report.png). Each histogram shows the share of its own
    images per bin (32 generated images beside 500 held-out ones: counts would leave the generated bars flat), the
    generated drawn over the held-out; the ROC legends sit under their plots, clear of the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = list(report["metrics"])
    planted = report.get("planted")
    rows = 2 if planted else 1
    titles = [f"{m} distance to nearest" for m in metrics]
    if planted:
        titles += [f"{m}: planted copies against real images (ROC)" for m in metrics]
    figure = make_subplots(rows=rows, cols=len(metrics), subplot_titles=titles)
    height = 3.5 * rows + (2.0 if planted else 0)  # the ROC legends below their plots
    fig_png, axes = plt.subplots(
        rows, len(metrics), figsize=(5 * len(metrics), height), squeeze=False, layout="constrained"
    )
    for col, metric in enumerate(metrics):
        data = report["metrics"][metric]
        bins = np.histogram_bin_edges(np.concatenate([data["generated_distances"], data["heldout_distances"]]), 30)
        for name, values, color in (  # the held-out first, the generated on top
            ("held-out real", data["heldout_distances"], "#1f77b4"),
            ("generated", data["generated_distances"], "#d62728"),
        ):
            label = f"{name} ({len(values)})"
            figure.add_trace(
                go.Histogram(
                    x=values,
                    name=label,
                    histnorm="probability",
                    opacity=0.6,
                    marker_color=color,
                    showlegend=col == 0,
                    legendgroup=name,
                ),
                row=1,
                col=col + 1,
            )
            weights = np.full(len(values), 1 / max(1, len(values)))
            axes[0, col].hist(values, bins=bins, weights=weights, alpha=0.6, color=color, label=label)
        figure.add_vline(x=data["threshold"], line_dash="dash", row=1, col=col + 1)
        axes[0, col].axvline(
            data["threshold"], color="black", linestyle="--", label=f"p{report['percentile']:g} of held-out"
        )
        axes[0, col].set_title(f"{metric}: {data['flagged_fraction']:.1%} flagged")
        axes[0, col].set_xlabel(f"{AXIS_NAMES.get(metric, metric)} to the nearest training image")
        axes[0, col].set_ylabel("share of its images")
        axes[0, col].legend(fontsize=7)
        figure.update_xaxes(title_text=AXIS_NAMES.get(metric, metric), row=1, col=col + 1)
        figure.update_yaxes(title_text="share of its images", row=1, col=col + 1)
        if planted:
            _roc_plots(planted, metric, figure, axes[1, col], col, go)
    figure.update_layout(
        barmode="overlay", title="Nearest-training-image distances: generated vs held-out", height=450 * rows
    )
    return figure, fig_png


def _roc_plots(planted: dict, metric: str, figure, axis, col: int, go) -> None:
    """One ROC curve per edit (copies against the real images), and the report's operating point."""
    import matplotlib.pyplot as plt

    data = planted["metrics"][metric]
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(planted["transforms"]):
        fpr, tpr = plant_module.roc_curve(data["copy_distances"][name], data["real_distances"])
        label = f"{name} (AUC {data['auc'][name]:.2f})"
        color = _hex(colors(i % 10))
        axis.step(fpr, tpr, where="post", color=color, label=label, linewidth=1)
        figure.add_trace(
            go.Scatter(x=fpr, y=tpr, mode="lines", line={"shape": "hv", "color": color}, name=label, showlegend=True),
            row=2,
            col=col + 1,
        )
    axis.axvline(data["false_positive_rate"], color="black", linestyle="--", linewidth=0.8, label="report threshold")
    axis.set_xlabel("false-positive rate (real held-out images flagged)")
    axis.set_ylabel("recall (copies flagged)")
    axis.set_title(f"{metric}: planted copies")
    axis.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
    figure.add_vline(x=data["false_positive_rate"], line_dash="dash", row=2, col=col + 1)
    figure.update_xaxes(title_text="false-positive rate", row=2, col=col + 1)
    figure.update_yaxes(title_text="recall", row=2, col=col + 1)


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


def _planted_table(planted: dict) -> str:
    """Recall at the report's threshold (and the ROC AUC) of every edit under every metric."""
    metrics = list(planted["metrics"])
    head = "".join(f"<th>{html.escape(m)} recall</th><th>{html.escape(m)} AUC</th>" for m in metrics)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(
            f"<td>{100 * d['recall'][name]:.0f} %</td><td>{d['auc'][name]:.3f}</td>"
            for d in planted["metrics"].values()
        )
        + "</tr>"
        for name in planted["transforms"]
    )
    fpr = "".join(f"<td>{100 * planted['metrics'][m]['false_positive_rate']:.1f} %</td><td></td>" for m in metrics)
    return f"""<h3>Planted copies</h3>
<p>{planted["count"]} training images copied under each edit, among {planted["controls"]} real held-out images that
did not set the threshold ({html.escape(planted["split"])}). Recall: the share of copies closer than the report's
threshold; AUC: P(copy closer than a real image).</p>
<table><tr><th>edit</th>{head}</tr>{rows}<tr><td>real images flagged (false-positive rate)</td>{fpr}</tr></table>
"""


def _html_page(report: dict, plots: str) -> str:
    """The verdict, a table of the per-metric statistics, the planted copies' recall, then the plots."""

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
    planted = _planted_table(report["planted"]) if report.get("planted") else ""
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
{planted}
{plots}
</body></html>
"""
