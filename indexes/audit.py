"""Memorization audit: statistics over nearest-training-image distances that are known to catch copies.

The report (`indexes.report`) flags a generated image closer to a training image than the p-th percentile of
held-out real images' nearest distances, the calibration of Somepalli et al., "Diffusion Art or Digital Forgery?"
(CVPR 2023, https://arxiv.org/abs/2212.03860). This module adds statistics, per metric, over distance arrays
that the caller computed with whatever index (nothing here searches a training set; numpy and scipy only):

- `c_t`: Meehan, Chaudhuri, Dasgupta, "A Non-Parametric Test to Detect Data-Copying in Generative Models"
  (AISTATS 2020, https://arxiv.org/abs/2004.05675), as in their code (github.com/casey-meehan/data-copying,
  `data_copying_tests.py`) and its copy in layer6ai-labs/dgm-eval (`dgm_eval/metrics/ct.py`). Per cell π of a
  partition, the Mann–Whitney U of the generated images' nearest-training distances against the held-out ones,
  Z-scored under H0; C_T averages the Z of the cells holding more than a fraction τ of the generated images,
  weighted by their share of held-out images. C_T ≪ 0: the model copies; C_T ≫ 0: it underfits.

Conventions, each as in the reference code:
- U counts the (generated, held-out) pairs with generated > held-out, ties ½ (scipy's U1 of the generated sample,
  which Meehan's `mannwhitneyu(LQm, LPn, alternative="less")` returns); Z = (U − (n·m/2 − 0.5)) / √(n·m·(n+m+1)/12)
  with n, m the cell's held-out and generated counts (Meehan's "continuity correction"; no tie correction).
- A cell is kept when m_cell / m > τ (strictly); dgm-eval's default τ = 20 / m keeps cells with more than 20
  generated images. Weights are P_n(π) = n_cell / n, renormalised over the kept cells (Σ P_n(π)·Z / Σ P_n(π)).

Axes: N held-out real images, M generated images, K neighbours per image. Distances are non-negative (Hamming bits,
LPIPS, squared pixel L2, ...); smaller is closer.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "CTCells",
    "c_t",
    "c_t_cells",
]

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
