"""The memorization report as people read it: HTML page, plots, PNG pictures, markdown and plain-text tables.

Everything here reads report.json's content (the dict `indexes.report.Report.to_json` returns), so a report written
earlier renders the same, and nothing here computes a statistic. Each metric's label comes with it in report.json (from
`indexes.report.REPORT_METRICS`), one function gives the planted rows (`planted_rows`) to every renderer, one
function says what C_T rests on (`c_t_text`, from the structured `c_t_reason`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from indexes import plant as plant_module
from maskbit.files import atomic_write
from maskbit.images import to_pil

__all__ = [
    "PlantedRow",
    "c_t_text",
    "figures",
    "html_page",
    "ordinal",
    "planted_markdown",
    "planted_rows",
    "planted_text",
    "save_png",
    "text_summary",
    "write_plots",
]

PARTITIONS = {
    "classes": "the classes of the nearest training images ({cells} cells)",
    "k-means": "{cells} k-means cells of the training images' bit tokens",
    "one cell": "one cell of all images (the Mann–Whitney test itself)",
}
PROBLEMS = {
    "no_kept_cell": "no cell holds more than {fewest} of the {m} generated images",
    "low_coverage": "its cells holding more than {fewest} generated images hold only {kept} of the {m}",
    "thin_heldout": "a cell holding more than {fewest} generated images holds fewer than {min_heldout} held-out ones",
}


def ordinal(number: float) -> str:
    text = f"{number:g}"
    if not float(number).is_integer() or 10 <= int(number) % 100 <= 20:
        return f"{text}th"
    return text + {1: "st", 2: "nd", 3: "rd"}.get(int(number) % 10, "th")


# ---------------------------------------------------------------------------------------------------- C_T


def c_t_text(data: dict, generated_images: int, heldout_images: int) -> str:
    """One metric's C_T and what it rests on, from its `c_t` and `c_t_reason` in report.json."""
    reason = data["c_t_reason"]
    fewest = reason["min_generated"] - 1
    if reason["code"] == "too_few_generated":
        return (
            f"C_T not computed: every cell of Meehan et al.'s test must hold more than {fewest} generated images "
            f"(τ = {reason['tau']:.3g} of them), and there are {generated_images}; ask for more images"
        )
    if reason["code"] == "too_few_heldout":
        return (
            f"C_T not computed: it needs at least {reason['min_heldout']} held-out images, got {heldout_images}; "
            "give more held-out images"
        )
    rejected = [
        f"not {t['partition']}: "
        + PROBLEMS[t["problem"]].format(
            fewest=fewest, m=generated_images, kept=t["kept_generated"], min_heldout=reason["min_heldout"]
        )
        for t in reason["tried"]
        if t["problem"]
    ]
    used = PARTITIONS[reason["partition"]].format(cells=reason["cells"])
    kept = "" if reason["partition"] == "one cell" else f", {reason['kept_cells']} of them kept"
    why = f" ({'; '.join(rejected)})" if rejected else ""
    return f"C_T = {data['c_t']:.2f} over {used}{kept}{why}"


# ---------------------------------------------------------------------------------------------------- planted


class PlantedRow(NamedTuple):
    """One row of the planted table: an edit (or the real images, edit None) and per metric (recall, AUC) or, for
    the real images, the false-positive rate with AUC None."""

    edit: str | None
    label: str
    cells: dict[str, tuple[float, float | None]]


def planted_rows(planted: dict) -> list[PlantedRow]:
    """The planted table, one source for every renderer: a row per edit, then the real images flagged."""
    metrics = planted["metrics"]
    rows = [
        PlantedRow(name, edit["label"], {m: (d["recall"][name], d["auc"][name]) for m, d in metrics.items()})
        for edit in planted["edits"]
        for name in [edit["name"]]
    ]
    real = {m: (d["false_positive_rate"], None) for m, d in metrics.items()}
    return [*rows, PlantedRow(None, "real images flagged (false-positive rate)", real)]


def planted_markdown(planted: dict) -> str:
    metrics = list(planted["metrics"])
    lines = ["| edit | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for row in planted_rows(planted):
        cells = (f"{r:.0%}" if auc is None else f"{r:.0%} ({auc:.2f})" for r, auc in row.cells.values())
        lines.append(f"| {row.edit or row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def planted_text(planted: dict) -> str:
    metrics = list(planted["metrics"])
    lines = [
        f"planted copies of {planted['count']} training images: recall (AUC) at the report's threshold",
        f"  {'edit':16s}" + "".join(f"{m:>18s}" for m in metrics),
    ]
    for row in planted_rows(planted):
        if row.edit is None:
            rates = "".join(f"{100 * r:>16.1f} %" for r, _ in row.cells.values())
            lines.append(f"  {'real images':16s}{rates}   (false-positive rate, {planted['controls']} held-out images)")
        else:
            lines.append(f"  {row.edit:16s}" + "".join(f"{100 * r:>10.0f} % ({a:.2f})" for r, a in row.cells.values()))
    return "\n".join(lines)


def _planted_html(planted: dict) -> str:
    metrics = list(planted["metrics"])
    head = "".join(f"<th>{html.escape(m)} recall</th><th>{html.escape(m)} AUC</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{html.escape(row.label)}</td>"
        + "".join(f"<td>{100 * r:.0f} %</td><td>{'' if a is None else f'{a:.3f}'}</td>" for r, a in row.cells.values())
        + "</tr>"
        for row in planted_rows(planted)
    )
    return f"""<h3>Planted copies</h3>
<p>{planted["count"]} training images copied under each edit, among {planted["controls"]} real held-out images that
did not set the threshold ({html.escape(planted["split"])}). Recall: the share of copies closer than the report's
threshold; AUC: P(copy closer than a real image).</p>
<table><tr><th>edit</th>{head}</tr>{body}</table>
"""


# ---------------------------------------------------------------------------------------------------- text


def text_summary(report: dict) -> str:
    """What `python -m indexes report` prints: per metric the threshold, the flagged share and C_T, the planted
    table, the verdict."""
    m, n = report["generated_images"], report["heldout_images"]
    lines = []
    for metric, data in report["metrics"].items():
        lines.append(
            f"{metric:8s} threshold {data['threshold']:.4g} (p{report['percentile']:g} of held-out): "
            f"{data['flagged_fraction']:.1%} of {m} generated images flagged"
        )
        lines.append(f"{'':8s} {c_t_text(data, m, n)}")
    if report.get("planted"):
        lines.append(planted_text(report["planted"]))
    lines.append(report["verdict"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- pictures


def save_png(image: torch.Tensor, path: Path) -> None:
    atomic_write(path, lambda p: to_pil(image).save(p, format="PNG"))


def write_plots(report: dict, out: Path) -> None:
    """report.html and report.png: per metric the distance histograms and, with planted copies, the ROC curves."""
    import matplotlib.pyplot as plt

    figure, fig_png = figures(report)
    page = html_page(report, figure.to_html(full_html=False, include_plotlyjs=True))
    atomic_write(out / "report.html", lambda p: Path(p).write_text(page, encoding="utf-8"))
    atomic_write(out / "report.png", lambda p: fig_png.savefig(p, format="png", dpi=100))
    plt.close(fig_png)


def figures(report: dict):
    """(plotly figure for report.html, matplotlib figure for report.png). Each histogram shows the share of its own
    images per bin on bins shared by both sets (32 generated images beside 500 held-out ones: counts would leave the
    generated bars flat), the generated drawn over the held-out; the ROC legends sit under their plots, clear of the
    curves."""
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
        axes[0, col].set_xlabel(f"{data['label']} to the nearest training image")
        axes[0, col].set_ylabel("share of its images")
        axes[0, col].legend(fontsize=7)
        figure.update_xaxes(title_text=data["label"], row=1, col=col + 1)
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
    for i, edit in enumerate(planted["edits"]):
        name = edit["name"]
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


def html_page(report: dict, plots: str) -> str:
    """The verdict, a table of the per-metric statistics, the planted copies' recall, then the plots."""

    def cell(value, form: str) -> str:
        return "—" if value is None else format(value, form)

    m, n = report["generated_images"], report["heldout_images"]
    rows = "".join(
        f"<tr><td>{html.escape(metric)}</td><td>{d['threshold']:.4g}</td><td>{100 * d['flagged_fraction']:.1f} %</td>"
        f"<td title='{html.escape(c_t_text(d, m, n))}'>{cell(d['c_t'], '.2f')}</td>"
        f"<td>{html.escape(d['c_t_reason']['partition'] or '—')}</td>"
        f"<td title='{html.escape(d['auth_pct_note'] or '')}'>{cell(d['auth_pct'], '.1f')}</td>"
        f"<td>{cell(None if d['relative_flagged_fraction'] is None else 100 * d['relative_flagged_fraction'], '.1f')}"
        f" %</td><td>{len(d['cliques'])}</td></tr>"
        for metric, d in report["metrics"].items()
    )
    c_t = "".join(f"<li>{html.escape(k)}: {html.escape(c_t_text(d, m, n))}</li>" for k, d in report["metrics"].items())
    planted = _planted_html(report["planted"]) if report.get("planted") else ""
    p = f"{report['percentile']:g}"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Memorization report</title>
<style>body{{font-family:sans-serif;margin:1.5em}} td,th{{padding:0.2em 0.8em;text-align:right}}</style></head>
<body><h2>Memorization report</h2>
<p><b>{html.escape(report["verdict"])}</b></p>
<p>{m} generated and {n} held-out images against {report["indexed_images"]} indexed images
({html.escape(report["index"])}).</p>
<table><tr><th>metric</th><th>threshold (p{p} of held-out)</th><th>flagged</th><th>C_T (Meehan)</th>
<th>C_T partition</th><th>AuthPct</th><th>Carlini flagged</th><th>cliques</th></tr>{rows}</table>
<ul>{c_t}</ul>
{planted}
{plots}
</body></html>
"""
