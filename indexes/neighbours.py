"""The nearest indexed images of query images, by every metric, with the memorization verdict of each metric.

What `python -m indexes search` prints and writes as JSON, and what the app's Neighbours tab shows, come from
`find_neighbours`: per query and metric the top-k rows (id, distance, source, label, class name; for Hamming
neighbours the per-token Hamming map), the top-k overlap between metrics, and per metric the verdict against the
index's calibrated threshold (`indexes.build.calibrate`: the p-th percentile of held-out images' nearest distances).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from indexes.store import Calibration, ImageIndex, Neighbours

__all__ = ["Neighbour", "Verdict", "QueryNeighbours", "find_neighbours", "union_distances"]


@dataclass
class Neighbour:
    id: int
    distance: float  # Hamming: differing bits; LPIPS; pixel: squared L2 between 16×16 thumbnails
    source: str
    label: int
    class_name: str
    token_distance_map: np.ndarray | None = None  # Hamming neighbours: (h, w) differing bits per token

    @property
    def same_tokens(self) -> float | None:
        """Fraction of positions whose token equals the query's: the measure natural to a VQ tokenizer, whose index
        bits (and so Hamming distances) carry no meaning."""
        return None if self.token_distance_map is None else float((self.token_distance_map == 0).mean())

    def to_json(self) -> dict:
        row = {"id": self.id, "distance": self.distance, "source": self.source, "label": self.label}
        row["class_name"] = self.class_name
        if self.token_distance_map is not None:
            row["token_distance_map"] = self.token_distance_map.tolist()
            row["same_tokens"] = self.same_tokens
        return row


@dataclass
class Verdict:
    """Is the nearest indexed image closer than all but p % of held-out real images are to theirs?"""

    nearest_distance: float
    threshold: float | None  # None: the index was not calibrated
    percentile: float | None
    memorized: bool | None

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("nearest_distance", "threshold", "percentile", "memorized")}


@dataclass
class QueryNeighbours:
    query: str
    tokens: torch.Tensor  # (h, w) the query's token grid
    rows: dict[str, list[Neighbour]]  # metric → top-k, nearest first
    verdicts: dict[str, Verdict]
    overlap: dict[str, float] = field(default_factory=dict)  # "hamming∩lpips" → fraction of the top-k shared

    def ids(self, metric: str) -> list[int]:
        return [row.id for row in self.rows[metric]]

    def to_json(self) -> dict:
        return {
            "query": self.query,
            **{metric: [row.to_json() for row in rows] for metric, rows in self.rows.items()},
            "verdicts": {metric: verdict.to_json() for metric, verdict in self.verdicts.items()},
            "overlap": self.overlap,
        }


def fit_to_index(index: ImageIndex, images: torch.Tensor) -> torch.Tensor:
    """Images (Q, 3, H, W) resized (bicubic, clamped) to the index's square image size, on the index's device."""
    size = index.image_size
    images = images.to(index.device)
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bicubic").clamp(0, 1)
    return images


@torch.no_grad()
def find_neighbours(
    index: ImageIndex,
    images: torch.Tensor | None = None,
    tokens: torch.Tensor | None = None,
    names: Sequence[str] | None = None,
    k: int = 10,
    metrics: Sequence[str] | None = None,
    token_maps: bool = True,
    **search_options,
) -> list[QueryNeighbours]:
    """Top-k indexed images of each query: images (Q, 3, H, W) in [0, 1] (resized to the index's size), or token
    grids (Q, h, w) (Hamming only). `search_options` go to `ImageIndex.search` (approximate, ef_search,
    lpips_shortlist, nprobe); `token_maps` adds each Hamming neighbour's per-token distance map."""
    if images is not None:
        images = fit_to_index(index, images)
        if tokens is None:
            tokens = index.encode(images)
    if tokens is None:
        raise ValueError("give images or token grids")
    found = index.search(images, tokens=tokens, k=k, metrics=metrics, **search_options)
    classes, calibration = index.classes, index.calibration
    names = list(names) if names is not None else [f"query {q}" for q in range(len(tokens))]
    results = []
    for q, name in enumerate(names):
        rows = {
            metric: _rows(index, neighbours, q, classes, token_maps, tokens[q]) for metric, neighbours in found.items()
        }
        verdicts = {metric: _verdict(rows[metric], calibration.get(metric)) for metric in rows}
        results.append(QueryNeighbours(name, tokens[q].cpu(), rows, verdicts, _overlap(rows)))
    return results


def _rows(index, hits: Neighbours, q: int, classes, token_maps: bool, tokens: torch.Tensor) -> list[Neighbour]:
    rows = []
    for i, d, source, label in zip(hits.ids[q], hits.distances[q], hits.sources[q], hits.labels[q]):
        if i < 0:  # an IVF index found fewer than k
            continue
        name = classes[label] if 0 <= label < len(classes) else str(label)
        token_map = index.token_distance_map(tokens, int(i)) if token_maps and hits.metric == "hamming" else None
        rows.append(Neighbour(int(i), float(d), source, int(label), name, token_map))
    return rows


def _verdict(rows: list[Neighbour], calibration: Calibration | None) -> Verdict:
    nearest = rows[0].distance if rows else float("inf")
    if calibration is None:
        return Verdict(nearest, None, None, None)
    return Verdict(nearest, calibration.threshold, calibration.percentile, nearest < calibration.threshold)


def _overlap(rows: dict[str, list[Neighbour]]) -> dict[str, float]:
    metrics, overlap = list(rows), {}
    for i, a in enumerate(metrics):
        for b in metrics[i + 1 :]:
            shared = {r.id for r in rows[a]} & {r.id for r in rows[b]}
            overlap[f"{a}∩{b}"] = len(shared) / max(1, len(rows[a]))
    return overlap


@torch.no_grad()
def union_distances(index: ImageIndex, image: torch.Tensor, result: QueryNeighbours) -> dict[str, np.ndarray]:
    """Exact distances by every metric of `result` from one query image (3, H, W) to the union of its top-k ids:
    {"ids": (n,), metric: (n,)}, for plotting one metric against another."""
    ids = np.unique(np.concatenate([result.ids(metric) for metric in result.rows]))
    query = fit_to_index(index, image[None])
    tokens = result.tokens[None]
    return {"ids": ids, **{metric: index.exact_distances(metric, query, tokens, ids) for metric in result.rows}}
