"""Memorization audit: statistics over nearest-training-image distances that are known to catch copies.

The report (`indexes.report`) flags a generated image closer to a training image than the p-th percentile of
held-out real images' nearest distances, the calibration of Somepalli et al., "Diffusion Art or Digital Forgery?"
(CVPR 2023, https://arxiv.org/abs/2212.03860). This module adds four statistics, per metric, over distance arrays
that the caller computed with whatever index (nothing here searches a training set; numpy and scipy only):

- `c_t`: Meehan, Chaudhuri, Dasgupta, "A Non-Parametric Test to Detect Data-Copying in Generative Models"
  (AISTATS 2020, https://arxiv.org/abs/2004.05675), as in their code (github.com/casey-meehan/data-copying,
  `data_copying_tests.py`) and its copy in layer6ai-labs/dgm-eval (`dgm_eval/metrics/ct.py`). Per cell π of a
  partition, the Mann–Whitney U of the generated images' nearest-training distances against the held-out ones,
  Z-scored under H0; C_T averages the Z of the cells holding more than a fraction τ of the generated images,
  weighted by their share of held-out images. C_T ≪ 0: the model copies; C_T ≫ 0: it underfits.
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
- AuthPct: a generation is authentic when its matched training image's nearest other training image is strictly
  closer than the generation is (d_train < d_generated); AuthPct is 100 × the authentic share.

Axes: N held-out real images, M generated images, K neighbours per image. Distances are non-negative (Hamming bits,
LPIPS, squared pixel L2, ...); smaller is closer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "CARLINI_ALPHA",
    "CARLINI_NEIGHBOURS",
    "CTCells",
    "auth_pct",
    "authentic",
    "c_t",
    "c_t_cells",
    "cliques",
    "relative_distance",
    "relative_flagged",
]

CARLINI_NEIGHBOURS = 50  # n of Carlini et al. §5
CARLINI_ALPHA = 0.5  # α of Carlini et al. §5
MEEHAN_MIN_GENERATED = 20  # dgm-eval's tau = 20 / m: a kept cell holds more than 20 generated images


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


def _mann_whitney_u(generated: np.ndarray, heldout: np.ndarray) -> float:
    """U = #{(g, h): g > h} + ½ #{(g, h): g = h}, in O((n + m) log n) and exact (integer counts)."""
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
    if tau is None:
        if m <= MEEHAN_MIN_GENERATED:
            raise ValueError(
                f"tau: the default 20 / len(generated_distances) needs more than 20 generated images, got {m}; "
                "pass tau explicitly"
            )
        tau = MEEHAN_MIN_GENERATED / m
    if not 0 < tau < 1:  # also refuses NaN
        raise ValueError(f"tau must lie in (0, 1), got {tau}")

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
        u[i] = _mann_whitney_u(generated[generated_in == i], heldout[heldout_in == i])
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
