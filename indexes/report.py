"""Memorization report: how close are generated images to the training set, compared with real held-out images?

For every metric, the distance from each image to its nearest indexed (training) image is computed for N
generated images and for N held-out real images. A generated image is flagged when it is closer to a training image
than the p-th percentile of the held-out distances (p = 1 by default): real images the model never saw are rarely
that close, so such a generation is a memorization candidate. Writes report.json, a plotly HTML page, a PNG of the
distance histograms, and a gallery of the closest generated/training pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from indexes.store import ImageIndex
from maskbit.files import atomic_write, write_json_atomic
from maskbit.images import image_grid, save_image

__all__ = ["memorization_report"]

AXIS_NAMES = {"hamming": "Hamming distance (bits)", "lpips": "LPIPS", "pixel": "squared pixel L2 (16×16)"}


def memorization_report(
    index: ImageIndex,
    generated: torch.Tensor,
    heldout: torch.Tensor,
    out: str | Path,
    percentile: float = 1.0,
    gallery_size: int = 8,
    generated_names: list[str] | None = None,
) -> dict:
    """generated, heldout: (N, 3, S, S) in [0, 1]. Returns (and writes) the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generated, heldout = generated.cpu(), heldout.cpu()  # the index searches on its own device
    names = generated_names or [f"generated:{i}" for i in range(len(generated))]
    near_generated = _nearest(index, generated)
    near_heldout = _nearest(index, heldout)
    report = {
        "percentile": percentile,
        "generated_images": len(generated),
        "heldout_images": len(heldout),
        "index": str(index.directory),
        "indexed_images": len(index),
        "metrics": {},
    }
    for metric, (gen_ids, gen_distances) in near_generated.items():
        held_distances = near_heldout[metric][1]
        threshold = float(np.percentile(held_distances, percentile))
        flagged = np.flatnonzero(gen_distances < threshold)
        report["metrics"][metric] = {
            "threshold": threshold,
            "generated": _summary(gen_distances),
            "heldout": _summary(held_distances),
            "flagged_fraction": float(len(flagged) / len(gen_distances)),
            "flagged": [
                {
                    "generated": names[i],
                    "distance": float(gen_distances[i]),
                    "nearest": index.sources[gen_ids[i]]["source"],
                    "label": index.sources[gen_ids[i]]["label"],
                }
                for i in flagged[np.argsort(gen_distances[flagged])]
            ],
            "generated_distances": gen_distances.tolist(),
            "heldout_distances": held_distances.tolist(),
        }
        _gallery(index, generated, gen_ids, gen_distances, gallery_size, out / f"closest_{metric}.png")
    write_json_atomic(out / "report.json", report)
    _plots(report, out)
    return report


def _nearest(index: ImageIndex, images: torch.Tensor, batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ids: dict[str, list] = {}
    distances: dict[str, list] = {}
    for first in range(0, len(images), batch_size):
        for metric, found in index.search(images[first : first + batch_size], k=1).items():
            ids.setdefault(metric, []).append(found.ids[:, 0])
            distances.setdefault(metric, []).append(found.distances[:, 0].astype(np.float64))
    return {m: (np.concatenate(ids[m]), np.concatenate(distances[m])) for m in ids}


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
    atomic_write(out / "report.html", lambda p: figure.write_html(p, include_plotlyjs=True))
    fig_png.tight_layout()
    atomic_write(out / "report.png", lambda p: fig_png.savefig(p, format="png", dpi=100))
    plt.close(fig_png)
