"""Memorization audit: statistics over nearest-training-image distances that are known to catch copies.

The report (`indexes.report`) flags a generated image closer to a training image than the p-th percentile of
held-out real images' nearest distances, the calibration of Somepalli et al., "Diffusion Art or Digital Forgery?"
(CVPR 2023, https://arxiv.org/abs/2212.03860). This module adds four statistics, per metric, over distance arrays
that the caller computed with whatever index (nothing here searches a training set; numpy and scipy only):

- `c_t`, `fit_c_t`: Meehan, Chaudhuri, Dasgupta, "A Non-Parametric Test to Detect Data-Copying in Generative Models"
  (AISTATS 2020, https://arxiv.org/abs/2004.05675), as in their code (github.com/casey-meehan/data-copying,
  `data_copying_tests.py`) and its copy in layer6ai-labs/dgm-eval (`dgm_eval/metrics/ct.py`). Per cell π of a
  partition, the Mann–Whitney U of the generated images' nearest-training distances against the held-out ones,
  Z-scored under H0; C_T averages the Z of the cells holding more than a fraction τ of the generated images,
  weighted by their share of held-out images. C_T ≪ 0: the model copies; C_T ≫ 0: it underfits. `fit_c_t` picks the
  partition to fit the sample: the finest of the training set's classes, k-means cells of its features (Meehan et al.
  partition by k-means), fewer k-means cells, and one cell (where C_T is the Mann–Whitney test itself), in which the
  kept cells hold at least half of the generated images and every kept cell at least 2 held-out images.
- `relative_distance`, `relative_flagged`: Carlini et al., "Extracting Training Data from Diffusion Models"
  (USENIX Security 2023, https://arxiv.org/abs/2301.13188), §5 (CIFAR-10): x̂ is extracted when
  ℓ2(x̂, x₁) / (α · mean of ℓ2(x̂, y) over its n nearest training images y) < 1, with n = 50 and α = 0.5.
- `authentic`, `auth_pct`: AuthPct of Jiralerspong et al., "Feature Likelihood Divergence" (NeurIPS 2023,
  https://arxiv.org/abs/2302.04440), as in dgm-eval `dgm_eval/metrics/authpct.py`.
- `cliques`: groups of near-identical generations (Carlini et al. §4 flag a prompt whose generations form a large
  clique of mutually close images). Here connected components of the graph of generations closer than a
  threshold: each clique lies in one component, found without a clique search; a chain of close pairs can join
  different images, so a component may be larger than its largest clique.

Conventions, each as in the reference code:
- U counts the (generated, held-out) pairs with generated > held-out, ties ½ (scipy's U1 of the generated sample,
  which Meehan's `mannwhitneyu(LQm, LPn, alternative="less")` returns); Z = (U − (n·m/2 − 0.5)) / √(n·m·(n+m+1)/12)
  with n, m the cell's held-out and generated counts (Meehan's "continuity correction"; no tie correction).
- A cell is kept when m_cell / m > τ (strictly); dgm-eval's default τ = 20 / m keeps cells with more than 20
  generated images. Weights are P_n(π) = n_cell / n, renormalised over the kept cells (Σ P_n(π)·Z / Σ P_n(π)).
- An image's cell is the cell of its nearest training image, so that its distance to the nearest training image in
  its own cell is its nearest distance (Meehan assign a query to its nearest k-means centre and search that cell).
- AuthPct: a generation is authentic when its matched training image's nearest other training image is strictly
  closer than the generation is (d_train < d_generated); AuthPct is 100 × the authentic share.

Axes: N held-out real images, M generated images, K neighbours per image. Distances are non-negative (Hamming bits,
LPIPS, squared pixel L2, ...); smaller is closer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "CARLINI_ALPHA",
    "CARLINI_NEIGHBOURS",
    "CTCells",
    "CTFit",
    "PartitionTry",
    "TrainingPartitions",
    "auth_pct",
    "authentic",
    "c_t",
    "c_t_cells",
    "cliques",
    "fit_c_t",
    "kmeans",
    "mann_whitney_u",
    "relative_distance",
    "relative_flagged",
]

CARLINI_NEIGHBOURS = 50  # n of Carlini et al. §5
CARLINI_ALPHA = 0.5  # α of Carlini et al. §5
MEEHAN_MIN_GENERATED = 20  # dgm-eval's tau = 20 / m: a kept cell holds more than 20 generated images
MIN_CELL_HELDOUT = 2  # held-out images a kept cell needs (one gives no spread to rank against)
MIN_KEPT_SHARE = 0.5  # a partition whose kept cells hold fewer of the generated images leaves most of them out
MAX_KMEANS_CELLS = 64
KMEANS_FIT_IMAGES = 4096  # training images k-means is fitted on (a sample of larger training sets)
KMEANS_ITERATIONS = 25
KMEANS_RESTARTS = 4


# ---------------------------------------------------------------------------------------------------- input checks


def _distances(values, name: str, ndim: int = 1, allow_inf: bool = True) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(array).any():
        raise ValueError(f"{name} holds NaN")
    if not allow_inf and np.isinf(array).any():
        raise ValueError(f"{name} holds infinite distances (an index that found fewer neighbours than asked?)")
    if (array < 0).any():  # e.g. inner-product similarities from a FAISS IP index, where larger is closer
        raise ValueError(f"{name} holds negative values: pass distances, not similarities")
    return array


def _integers(values, name: str, length: int, like: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},) like {like}, got {array.shape}")
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array


# ---------------------------------------------------------------------------------------------------- C_T


class CTCells(NamedTuple):
    """Per-cell terms of Meehan's C_T; every array is (C,) over the sorted labels of all cells seen."""

    cells: np.ndarray  # cell labels
    heldout_counts: np.ndarray  # n_cell
    generated_counts: np.ndarray  # m_cell
    u: np.ndarray  # Mann–Whitney U (generated > held-out, ties ½); NaN where a side is empty
    z: np.ndarray  # Z-scored U; NaN where a side is empty
    heldout_share: np.ndarray  # P_n(π) = n_cell / n
    kept: np.ndarray  # bool: m_cell / m > tau
    tau: float

    @property
    def c_t(self) -> float:
        share = self.heldout_share[self.kept]
        return float(share @ self.z[self.kept] / share.sum())


def mann_whitney_u(generated: np.ndarray, heldout: np.ndarray) -> float:
    """U = #{(g, h): g > h} + ½ #{(g, h): g = h} over 1-D arrays, in O((n + m) log n) and exact (integer counts).
    U / (n·m) is also the ROC AUC of "flag the smaller values" with `generated` as the negatives (`plant.roc_auc`)."""
    heldout = np.sort(heldout)
    below = np.searchsorted(heldout, generated, side="left")
    not_above = np.searchsorted(heldout, generated, side="right")
    return float(below.sum() + 0.5 * (not_above - below).sum())


def c_t_cells(
    heldout_distances: np.ndarray,
    heldout_cells: np.ndarray,
    generated_distances: np.ndarray,
    generated_cells: np.ndarray,
    tau: float | None = None,
) -> CTCells:
    """Meehan et al.'s per-cell Z scores and weights. heldout_distances (N,), generated_distances (M,): each image's
    distance to its nearest training image in its own cell (Meehan's L(P_n), L(Q_m)); *_cells: integer cell labels
    (N,), (M,), e.g. k-means labels of a partition fitted on the training set, or class labels. tau in (0, 1):
    a cell is kept when it holds more than this fraction of the generated images (default 20 / M, as dgm-eval).

    Every kept cell needs a held-out image (Meehan's code raises for any cell without one; a cell that is not kept
    does not enter C_T, so here it may lack held-out images)."""
    heldout = _distances(heldout_distances, "heldout_distances")
    generated = _distances(generated_distances, "generated_distances")
    heldout_cells = _integers(heldout_cells, "heldout_cells", len(heldout), "heldout_distances")
    generated_cells = _integers(generated_cells, "generated_cells", len(generated), "generated_distances")
    n, m = len(heldout), len(generated)
    tau = _tau(tau, m)

    cells, inverse = np.unique(np.concatenate([heldout_cells, generated_cells]), return_inverse=True)
    heldout_in, generated_in = inverse[:n], inverse[n:]  # each image's position in `cells`
    heldout_counts = np.bincount(heldout_in, minlength=len(cells))
    generated_counts = np.bincount(generated_in, minlength=len(cells))
    kept = generated_counts / m > tau
    if not kept.any():
        raise ValueError(f"tau={tau}: no cell holds more than this fraction of the {m} generated images")
    lacking = cells[kept & (heldout_counts == 0)]
    if len(lacking):
        raise ValueError(
            f"heldout_cells: kept cells {lacking.tolist()} hold generated images but no held-out image; "
            "use fewer cells or more held-out images"
        )
    u = np.full(len(cells), np.nan)
    z = np.full(len(cells), np.nan)
    for i in np.flatnonzero((heldout_counts > 0) & (generated_counts > 0)):
        n_cell, m_cell = heldout_counts[i], generated_counts[i]
        u[i] = mann_whitney_u(generated[generated_in == i], heldout[heldout_in == i])
        mean = n_cell * m_cell / 2 - 0.5  # Meehan's continuity correction
        std = np.sqrt(n_cell * m_cell * (n_cell + m_cell + 1) / 12)
        z[i] = (u[i] - mean) / std
    return CTCells(cells, heldout_counts, generated_counts, u, z, heldout_counts / n, kept, float(tau))


def c_t(
    heldout_distances: np.ndarray,
    heldout_cells: np.ndarray,
    generated_distances: np.ndarray,
    generated_cells: np.ndarray,
    tau: float | None = None,
) -> float:
    """Meehan et al.'s C_T = Σ_kept P_n(π) Z_U(π) / Σ_kept P_n(π); arguments as `c_t_cells`. Under H0 (the model
    neither copies nor underfits) about N(0, 1); strongly negative: the generations are closer to the training set
    than held-out images are (data-copying); strongly positive: farther (underfitting)."""
    return c_t_cells(heldout_distances, heldout_cells, generated_distances, generated_cells, tau).c_t


def _tau(tau: float | None, m: int) -> float:
    if tau is None:
        if m <= MEEHAN_MIN_GENERATED:
            raise ValueError(
                f"tau: the default 20 / len(generated_distances) needs more than 20 generated images, got {m}; "
                "pass tau explicitly"
            )
        return MEEHAN_MIN_GENERATED / m
    if not 0 < tau < 1:  # also refuses NaN
        raise ValueError(f"tau must lie in (0, 1), got {tau}")
    return float(tau)


# ---------------------------------------------------------------------------------------------------- C_T's partition


def kmeans(
    features: np.ndarray,
    cells: int,
    seed: int = 0,
    restarts: int = KMEANS_RESTARTS,
    iterations: int = KMEANS_ITERATIONS,
) -> np.ndarray:
    """Lloyd's k-means from k-means++ seeds, the best of `restarts` runs (least within-cell sum of squares): (cells, D)
    centres of features (S, D), deterministic for a seed. A centre that loses every point keeps its place."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < cells or cells < 1:
        raise ValueError(f"features: k-means into {cells} cells needs at least {cells} rows, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centres = _lloyd(x, _kmeans_plus_plus(x, cells, rng), iterations)
        inertia = _squared_distances(x, centres).min(1).sum()
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.clip((x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None], 0, None)


def _kmeans_plus_plus(x: np.ndarray, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Each next seed drawn ∝ its squared distance to the nearest seed chosen so far (Arthur & Vassilvitskii 2007)."""
    centres = [x[rng.integers(len(x))]]
    nearest = _squared_distances(x, centres[0][None])[:, 0]
    for _ in range(1, cells):
        total = nearest.sum()
        centres.append(x[rng.choice(len(x), p=nearest / total)] if total > 0 else x[rng.integers(len(x))])
        nearest = np.minimum(nearest, _squared_distances(x, centres[-1][None])[:, 0])
    return np.stack(centres)


def _lloyd(x: np.ndarray, centres: np.ndarray, iterations: int) -> np.ndarray:
    for _ in range(iterations):
        labels = _squared_distances(x, centres).argmin(1)
        moved = centres.copy()
        for cell in np.unique(labels):
            moved[cell] = x[labels == cell].mean(0)
        if np.array_equal(moved, centres):
            break
        centres = moved
    return centres


def nearest_centre(features: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(S,) int64: the index of each row's nearest centre (ties: the lower index)."""
    return _squared_distances(np.asarray(features, dtype=np.float64), centres).argmin(1).astype(np.int64)


class TrainingPartitions:
    """The partitions of a training set of `size` images that C_T may use, finest first: the classes (labels (size,)
    int, when every image has one and there are at least two), k-means cells of `features` (a function of training
    ids (T,) → (T, D) floats, e.g. ±1 bits of their tokens; fitted on at most KMEANS_FIT_IMAGES of them, drawn from
    `seed`), fewer k-means cells, one cell. The k-means fits are cached: every metric of a report shares them."""

    def __init__(
        self,
        size: int,
        classes: np.ndarray | None = None,
        features: Callable[[np.ndarray], np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        if classes is not None:
            classes = _integers(classes, "classes", size, "the training set")
            if len(np.unique(classes)) < 2:
                classes = None
        self.size, self.classes, self.features, self.seed = size, classes, features, seed
        self._centres: dict[int, np.ndarray] = {}

    def candidates(self, ids: np.ndarray, max_cells: int) -> Iterator[tuple[str, int, np.ndarray]]:
        """(partition, cells, the cell of each of the training images `ids`), finest first; k-means with at most
        `max_cells` cells, halving down to 2; always ends with one cell."""
        if self.classes is not None:
            yield "classes", len(np.unique(self.classes)), self.classes[ids]
        if self.features is not None:
            cells = min(max_cells, MAX_KMEANS_CELLS, self.size - 1)
            while cells >= 2:
                yield "k-means", cells, nearest_centre(self.features(ids), self._fitted(cells))
                cells //= 2
        yield "one cell", 1, np.zeros(len(ids), dtype=np.int64)

    def _fitted(self, cells: int) -> np.ndarray:
        if cells not in self._centres:
            rng = np.random.default_rng(self.seed)
            sample = np.sort(rng.choice(self.size, min(self.size, KMEANS_FIT_IMAGES), replace=False))
            self._centres[cells] = kmeans(self.features(sample), cells, self.seed)
        return self._centres[cells]


@dataclass(frozen=True)
class PartitionTry:
    """One partition tried for C_T: its cells, the cells kept (more than τ·M generated images), the generated images
    they hold, and why it does not fit (None: it fits). Problems: "no_kept_cell" (no cell holds more than τ·M),
    "low_coverage" (the kept cells hold fewer than MIN_KEPT_SHARE of the generated images), "thin_heldout" (a kept
    cell holds fewer than MIN_CELL_HELDOUT held-out images)."""

    partition: str
    cells: int
    kept_cells: int
    kept_generated: int
    problem: str | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def check_partition(
    partition: str, cells: int, heldout_cells: np.ndarray, generated_cells: np.ndarray, tau: float
) -> PartitionTry:
    """The rule a partition must meet for C_T (the one place it is written): at least one kept cell, kept cells
    holding at least MIN_KEPT_SHARE of the generated images, each kept cell at least MIN_CELL_HELDOUT held-out."""
    labels, counts = np.unique(generated_cells, return_counts=True)
    kept = labels[counts / len(generated_cells) > tau]
    kept_generated = int(counts[counts / len(generated_cells) > tau].sum())
    held = np.array([(heldout_cells == label).sum() for label in kept], dtype=int)
    if not len(kept):
        problem = "no_kept_cell"
    elif kept_generated < MIN_KEPT_SHARE * len(generated_cells):
        problem = "low_coverage"
    elif (held < MIN_CELL_HELDOUT).any():
        problem = "thin_heldout"
    else:
        problem = None
    return PartitionTry(partition, cells, len(kept), kept_generated, problem)


@dataclass(frozen=True)
class CTFit:
    """C_T over the finest partition that fits the sample (`fit_c_t`). reason: "fitted" (c_t is a number),
    "too_few_generated" (even one cell does not hold more than τ·M generated images: M ≤ 20 at the default τ), or
    "too_few_heldout" (fewer than MIN_CELL_HELDOUT held-out images). tried: every partition tried, finest first; the
    last is the one used when c_t is a number. min_generated: the fewest generated images a kept cell holds."""

    c_t: float | None
    reason: str
    tau: float
    min_generated: int
    min_heldout: int
    tried: tuple[PartitionTry, ...]
    terms: CTCells | None = None

    @property
    def partition(self) -> PartitionTry | None:
        return self.tried[-1] if self.c_t is not None else None

    def to_json(self) -> dict:
        """report.json's `c_t_reason`: everything but the per-cell terms."""
        return {
            "code": self.reason,
            "partition": self.partition.partition if self.partition else None,
            "cells": self.partition.cells if self.partition else None,
            "kept_cells": self.partition.kept_cells if self.partition else None,
            "kept_generated": self.partition.kept_generated if self.partition else None,
            "tau": self.tau,
            "min_generated": self.min_generated,
            "min_heldout": self.min_heldout,
            "min_kept_share": MIN_KEPT_SHARE,
            "tried": [t.to_json() for t in self.tried],
        }


def fit_c_t(
    heldout_distances: np.ndarray,
    heldout_nearest: np.ndarray,
    generated_distances: np.ndarray,
    generated_nearest: np.ndarray,
    partitions: TrainingPartitions,
    tau: float | None = None,
) -> CTFit:
    """C_T at whatever sample size: over the finest of `partitions` in which the kept cells (more than τ·M generated
    images; τ = 20 / M by default) hold at least half of the generated images and each at least 2 held-out images.
    *_distances: each image's nearest-training distance (N,), (M,); *_nearest: that training image's id. Every image
    falls in its nearest training image's cell."""
    heldout = _distances(heldout_distances, "heldout_distances")
    generated = _distances(generated_distances, "generated_distances")
    heldout_nearest = _integers(heldout_nearest, "heldout_nearest", len(heldout), "heldout_distances")
    generated_nearest = _integers(generated_nearest, "generated_nearest", len(generated), "generated_distances")
    n, m = len(heldout), len(generated)
    share = MEEHAN_MIN_GENERATED / m if tau is None else _tau(tau, m)
    min_generated = int(np.floor(share * m)) + 1
    fit = partial(CTFit, tau=float(share), min_generated=min_generated, min_heldout=MIN_CELL_HELDOUT)
    if m < min_generated:  # not even one cell of all M images is kept (M ≤ 20 at the default τ)
        return fit(None, "too_few_generated", tried=())
    if n < MIN_CELL_HELDOUT:
        return fit(None, "too_few_heldout", tried=())
    tried = []
    ids = np.concatenate([heldout_nearest, generated_nearest])
    for partition, cells, labels in partitions.candidates(ids, max(1, m // min_generated)):
        held_cells, gen_cells = labels[:n], labels[n:]
        tried.append(check_partition(partition, cells, held_cells, gen_cells, share))
        if tried[-1].problem is None:
            terms = c_t_cells(heldout, held_cells, generated, gen_cells, share)
            return fit(terms.c_t, "fitted", tried=tuple(tried), terms=terms)
    raise AssertionError("one cell always fits")  # unreachable: n ≥ 2 and m ≥ min_generated


# ---------------------------------------------------------------------------------------------------- Carlini et al.


def relative_distance(distances: np.ndarray, neighbours: int = CARLINI_NEIGHBOURS) -> np.ndarray:
    """Carlini et al.'s relative distance without α: d₁ / mean(d₁..d_n), in [0, 1]. distances (M, K ≥ n): each
    generation's distances to its K nearest training images, nearest first (d₁ is the nearest, and counts in the
    mean). (M,). Carlini et al. use ℓ2, not squared ℓ2: pass the square root of squared distances to follow them.
    A row whose n nearest are all at distance 0 gives 1 (the nearest is no closer than the others)."""
    d = _distances(distances, "distances", ndim=2, allow_inf=False)
    if isinstance(neighbours, bool) or not isinstance(neighbours, int | np.integer) or neighbours < 2:
        raise ValueError(f"neighbours must be an integer ≥ 2, got {neighbours!r}")
    if d.shape[1] < neighbours:
        raise ValueError(f"distances: {neighbours} neighbours per row needed, got shape {d.shape}")
    d = d[:, :neighbours]
    if (np.diff(d, axis=1) < 0).any():
        raise ValueError("distances: each row must be sorted, nearest first")
    mean = d.mean(axis=1)
    return np.divide(d[:, 0], mean, out=np.ones_like(mean), where=mean > 0)


def relative_flagged(
    distances: np.ndarray, neighbours: int = CARLINI_NEIGHBOURS, alpha: float = CARLINI_ALPHA
) -> np.ndarray:
    """Carlini et al.'s extraction criterion d₁ / (α · mean(d₁..d_n)) < 1: (M,) bool, True for a generation much
    closer to one training image than to its other near neighbours. The flagged fraction is `.mean()`."""
    if not 0 < alpha <= 1:  # the relative distance lies in [0, 1]: α > 1 would flag everything
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    return relative_distance(distances, neighbours) < alpha


# ---------------------------------------------------------------------------------------------------- AuthPct


def authentic(generated_distances: np.ndarray, matched_ids: np.ndarray, matched_nn_distances: np.ndarray) -> np.ndarray:
    """AuthPct's per-generation verdict: (M,) bool. generated_distances (M,): each generation's distance d₁ to its
    nearest training image; matched_ids (M,): that training image's id; matched_nn_distances (M,): that training
    image's distance d₂ to its nearest *other* training image (search the index for the matched training images
    only, k=2, and drop the row whose id is the image itself, not the first column: an exact duplicate may come
    first). Authentic when d₂ < d₁ strictly, as dgm-eval. Generations matching the same training image must carry
    the same d₂ (checked: it catches misaligned arrays)."""
    d1 = _distances(generated_distances, "generated_distances")
    ids = _integers(matched_ids, "matched_ids", len(d1), "generated_distances")
    d2 = _distances(matched_nn_distances, "matched_nn_distances")  # inf: a training set of one image
    if d2.shape != d1.shape:
        raise ValueError(f"matched_nn_distances: expected shape {d1.shape} like generated_distances, got {d2.shape}")
    if (ids < 0).any():
        raise ValueError("matched_ids holds negative ids (an index that found no neighbour?)")
    order = np.argsort(ids, kind="stable")
    same = ids[order][1:] == ids[order][:-1]
    if (d2[order][1:][same] != d2[order][:-1][same]).any():
        raise ValueError("matched_nn_distances differs between generations matching the same training image")
    return d2 < d1


def auth_pct(generated_distances: np.ndarray, matched_ids: np.ndarray, matched_nn_distances: np.ndarray) -> float:
    """AuthPct in percent: 100 × the share of generations whose nearest training image has another training image
    strictly closer than the generation is. 100: none looks copied; low: many generations sit closer to a training
    image than its own training neighbours do. Arguments as `authentic`."""
    return float(100 * authentic(generated_distances, matched_ids, matched_nn_distances).mean())


# ---------------------------------------------------------------------------------------------------- cliques


def cliques(distances: np.ndarray, threshold: float, neighbour_ids: np.ndarray | None = None) -> list[list[int]]:
    """Groups of near-identical generations: connected components (size ≥ 2) of the graph with an edge between two
    generations closer than `threshold` (strictly, as the report's flags). Either distances (M, M) among all
    generations, or the k-NN graph: distances (M, K) with neighbour_ids (M, K) from a search of the generations
    among themselves (ids −1, as FAISS pads, and self matches are ignored; edges count in either direction). With
    a k-NN graph a group larger than K + 1 is still found when its members chain together. Each group's ids
    ascending; largest group first, then by smallest id."""
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    d = _distances(distances, "distances", ndim=2)
    m = len(d)
    if neighbour_ids is None:
        if d.shape != (m, m):
            raise ValueError(f"distances: expected a square (M, M) matrix without neighbour_ids, got {d.shape}")
        ids = np.broadcast_to(np.arange(m), (m, m))
    else:
        ids = np.asarray(neighbour_ids)
        if ids.shape != d.shape:
            raise ValueError(f"neighbour_ids: expected shape {d.shape} like distances, got {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"neighbour_ids must hold integers, got dtype {ids.dtype}")
        if ((ids < -1) | (ids >= m)).any():
            raise ValueError(f"neighbour_ids must lie in [-1, {m}) (rows are the {m} generations)")
    rows = np.broadcast_to(np.arange(m)[:, None], d.shape)
    edge = (d < threshold) & (ids >= 0) & (ids != rows)
    graph = coo_matrix((np.ones(edge.sum()), (rows[edge], ids[edge])), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")  # by component, ids ascending within each
    groups = [group.tolist() for group in np.split(order, np.cumsum(np.bincount(labels))[:-1]) if len(group) >= 2]
    return sorted(groups, key=lambda group: (-len(group), group[0]))
