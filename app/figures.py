"""The app's plotly figures: plain functions from numbers to figures, every axis titled, nothing computed here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "empty",
    "bars",
    "compare",
    "masked_fraction",
    "flip_psnr",
    "flip_distances",
    "walk",
    "token_indices",
    "hamming_map",
    "neighbour_scatter",
    "bit_usage",
    "code_usage",
    "umap",
    "training_curves",
]

HEIGHT = 320
COLOURS = ["#636efa", "#ef553b", "#00cc96", "#ab63fa"]  # plotly's first colours, named where two traces share one
ZERO_MARK = 0.03  # the height of the mark a zero bar gets, on a 0–1 axis


def _finite(values: Sequence[float]) -> list[float | None]:
    """Plotly cannot draw inf (the PSNR of identical images): leave a gap there."""
    return [float(v) if np.isfinite(v) else None for v in values]


def empty(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_layout(height=200, xaxis_visible=False, yaxis_visible=False, margin=dict(t=20, b=20))
    return figure


def bars(x: Sequence, series: dict[str, Sequence[float]], title: str, xaxis: str, yaxis: str) -> go.Figure:
    figure = go.Figure()
    for name, values in series.items():
        figure.add_bar(x=list(x), y=_finite(values), name=name)
    figure.update_layout(
        title=title, xaxis_title=xaxis, yaxis_title=yaxis, barmode="group", height=HEIGHT, margin=dict(t=50, b=40)
    )
    return figure


def compare(
    bit_ids: Sequence[int], series: dict[str, dict[int, float]], title: str, yaxis: str, zero_marks: bool = False
) -> go.Figure:
    """Bars per bit for several tokenizers; a tokenizer with fewer bits has no bar at the others' extra bits.
    `zero_marks`: a bar of height 0 is drawn as a short line in its colour (a 0 is an answer, not a missing bar)."""
    x = [str(b) for b in bit_ids]
    values = {name: [v.get(b, float("nan")) for b in bit_ids] for name, v in series.items()}
    figure = bars(x, values, title, "bit i flipped at the chosen tokens", yaxis)
    if zero_marks:
        colours = COLOURS
        for i, (name, ys) in enumerate(values.items()):
            figure.data[i].marker.color = colours[i % len(colours)]
            zeros = [b for b, y in zip(x, ys) if y == 0]
            figure.add_bar(
                x=zeros,
                y=[ZERO_MARK] * len(zeros),
                base=[-ZERO_MARK / 2] * len(zeros),
                marker_color=colours[i % len(colours)],
                name=f"{name}: 0",
                offsetgroup=str(i),
                showlegend=False,
                hovertemplate=f"{name}: 0<extra></extra>",
            )
            figure.data[i].offsetgroup = str(i)
    return figure.update_layout(legend=dict(orientation="h", y=-0.3), margin=dict(t=50, b=80))


# ---------------------------------------------------------------------------------------------------- generate


def masked_fraction(fractions: Sequence[float], current_step: int | None = None) -> go.Figure:
    """Fraction of (position, group) entries still masked after each step; the step shown is marked."""
    steps = list(range(1, len(fractions) + 1))
    figure = go.Figure(go.Scatter(x=steps, y=list(fractions), mode="lines+markers", name="masked"))
    if current_step is not None and 1 <= current_step <= len(fractions):
        figure.add_vline(x=current_step, line_dash="dot", line_color="firebrick")
        figure.add_scatter(
            x=[current_step],
            y=[fractions[current_step - 1]],
            mode="markers",
            marker=dict(size=12, color="firebrick"),
            name=f"step {current_step}",
        )
    figure.update_layout(
        title="masked fraction after each step",
        xaxis_title="step",
        yaxis_title="fraction still masked",
        yaxis_range=[0, 1],
        height=260,
        showlegend=False,
        margin=dict(t=50, b=40),
    )
    return figure


# ---------------------------------------------------------------------------------------------------- bit flips


def flip_psnr(bit_ids: Sequence[int], psnr: Sequence[float], num_positions: int, num_tokens: int) -> go.Figure:
    where = "every token" if num_positions == num_tokens else f"{num_positions} of {num_tokens} tokens"
    return bars(
        bit_ids,
        {"PSNR (dB)": psnr},
        f"bit i flipped at {where}: PSNR to the reconstruction (higher = less change)",
        "bit i",
        "PSNR (dB)",
    )


def flip_distances(bit_ids: Sequence[int], l2: Sequence[float], lpips: Sequence[float] | None) -> go.Figure:
    """L2 (left axis) and LPIPS (right axis: its values are a hundred times smaller) per flipped bit."""
    figure = go.Figure(go.Bar(x=list(bit_ids), y=_finite(l2), name="L2", offsetgroup=0))
    if lpips is not None:
        figure.add_bar(x=list(bit_ids), y=_finite(lpips), name="LPIPS", yaxis="y2", offsetgroup=1)
        figure.update_layout(yaxis2=dict(overlaying="y", side="right", title="LPIPS", rangemode="tozero"))
    figure.update_layout(
        title="distance to the reconstruction (higher = more change)",
        xaxis_title="bit i",
        yaxis_title="L2",
        barmode="group",
        height=HEIGHT,
        margin=dict(t=50, b=40),
    )
    return figure


def walk(hamming: Sequence[int], psnr: Sequence[float], lpips: Sequence[float] | None) -> go.Figure:
    figure = go.Figure(go.Scatter(x=list(hamming), y=_finite(psnr), mode="lines+markers", name="PSNR (dB)"))
    if lpips is not None:
        figure.add_scatter(x=list(hamming), y=_finite(lpips), mode="lines+markers", name="LPIPS", yaxis="y2")
        figure.update_layout(yaxis2=dict(overlaying="y", side="right", title="LPIPS"))
    figure.update_layout(
        title="random walk in Hamming space: change against the reconstruction",
        xaxis_title="bits flipped",
        yaxis_title="PSNR (dB)",
        height=HEIGHT,
        margin=dict(t=50, b=40),
    )
    return figure


def _grid_layout(figure: go.Figure, title: str) -> go.Figure:
    """Square token cells, row 0 on top, axes named."""
    figure.update_layout(
        title=title,
        xaxis=dict(title="token column", constrain="domain"),
        yaxis=dict(title="token row", autorange="reversed", scaleanchor="x", constrain="domain"),
        height=360,
        margin=dict(t=50, b=40),
    )
    return figure


def token_indices(indices: np.ndarray) -> go.Figure:
    figure = go.Figure(go.Heatmap(z=np.asarray(indices).tolist(), colorscale="Viridis", colorbar_title="index"))
    return _grid_layout(figure, "token indices")


def hamming_map(distances: np.ndarray, num_bits: int, title: str) -> go.Figure:
    heat = go.Heatmap(
        z=np.asarray(distances).tolist(), colorscale="Magma", zmin=0, zmax=num_bits, colorbar_title="bits"
    )
    return _grid_layout(go.Figure(heat), title)


# ---------------------------------------------------------------------------------------------------- neighbours


def neighbour_scatter(x: Sequence[float], y: Sequence[float], x_title: str, y_title: str, text: Sequence[str]):
    figure = go.Figure(go.Scatter(x=list(x), y=list(y), mode="markers", text=list(text)))
    figure.update_layout(
        title=f"the {len(x)} neighbours found by any metric",
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=340,
        margin=dict(t=50, b=40),
    )
    return figure


# ---------------------------------------------------------------------------------------------------- token space


def bit_usage(usage: Sequence[float], entropy: Sequence[float], images: int) -> go.Figure:
    k = range(len(usage))
    return bars(
        k,
        {"P(bit = 1)": usage, "entropy (bits)": entropy},
        f"per-bit usage and entropy over {images} indexed images",
        "bit",
        "probability / entropy",
    )


def code_usage(counts: Sequence[int], codes_used: int, num_codes: int, perplexity: float) -> go.Figure:
    figure = go.Figure(go.Scatter(x=list(range(1, len(counts) + 1)), y=list(counts), mode="lines"))
    figure.update_layout(
        title=f"code usage: {codes_used} of {num_codes} codes used, perplexity {perplexity:.0f}",
        xaxis_title="code rank (most used first)",
        yaxis=dict(title="tokens with this code", type="log", dtick=1, exponentformat="power"),
        height=HEIGHT,
        margin=dict(t=50, b=40),
    )
    return figure


def umap(projection: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> go.Figure:
    figure = go.Figure()
    labels = np.asarray(labels)
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == label)
        name = classes[label] if 0 <= label < len(classes) else str(label)
        figure.add_scattergl(
            x=projection[members, 0].tolist(),
            y=projection[members, 1].tolist(),
            mode="markers",
            name=name,
            marker=dict(size=4),
            customdata=members.tolist(),
            hovertemplate=f"{name} · id %{{customdata}}<extra></extra>",
        )
    figure.update_layout(
        title="UMAP of whole images' bit tokens (click a point to view its image)",
        xaxis_title="UMAP 1",
        yaxis_title="UMAP 2",
        height=520,
    )
    return figure


# ---------------------------------------------------------------------------------------------------- training


def training_curves(metrics: Sequence[dict], name: str) -> go.Figure:
    figure = go.Figure()
    keys = sorted({k for m in metrics for k in m if k.endswith("loss") or k == "eval_psnr"})
    for key in keys:
        points = [(m["step"], m[key]) for m in metrics if key in m]
        figure.add_scatter(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            mode="lines",
            name=key,
            yaxis="y2" if key == "eval_psnr" else "y",
        )
    figure.update_layout(
        title=f"{name}: losses" + (" and evaluation PSNR" if "eval_psnr" in keys else ""),
        xaxis_title="step",
        yaxis_title="loss",
        height=380,
        yaxis2=dict(overlaying="y", side="right", title="PSNR (dB)"),
        legend=dict(orientation="h", y=-0.25),  # below the plot: on the right it covers the PSNR axis
        margin=dict(t=50, b=90),
    )
    return figure
