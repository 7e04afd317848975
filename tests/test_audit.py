"""The audit statistics against their definitions: C_T by brute force and by scipy, the others by hand."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from indexes.audit import auth_pct, authentic, c_t, c_t_cells, cliques, relative_distance, relative_flagged

ROOT = Path(__file__).parents[1]


def test_audit_is_pure_numpy_and_scipy():
    code = "import sys, indexes.audit; print(sorted({'faiss', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def meehan_c_t(heldout, heldout_cells, generated, generated_cells, tau):
    """Meehan et al.'s C_T written out: U by an explicit double loop over pairs, weights renormalised over kept
    cells (data_copying_tests.py)."""
    n, m = len(heldout), len(generated)
    numerator = denominator = 0.0
    for cell in set(heldout_cells.tolist()) | set(generated_cells.tolist()):
        h = heldout[heldout_cells == cell]
        g = generated[generated_cells == cell]
        if not len(g) / m > tau:
            continue
        u = 0.0
        for gi in g:
            for hj in h:
                u += 1.0 if gi > hj else 0.5 if gi == hj else 0.0
        z = (u - (len(h) * len(g) / 2 - 0.5)) / math.sqrt(len(h) * len(g) * (len(h) + len(g) + 1) / 12)
        numerator += len(h) / n * z
        denominator += len(h) / n
    return numerator / denominator


def random_cells(rng, n, m, cells=4):
    """Integer distances (many ties) in uneven cells; every cell holds held-out images."""
    p = rng.dirichlet(np.ones(cells) * 0.7)
    heldout_cells = np.concatenate([np.arange(cells), rng.choice(cells, n - cells, p=p)])
    generated_cells = rng.choice(cells, m, p=p)
    heldout = rng.integers(0, 12, n).astype(float)
    generated = rng.integers(0, 12, m) + rng.choice([0.0, 0.5], m)  # shifted ties between and within samples
    return heldout, heldout_cells, generated, generated_cells


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tau", [None, 0.05, 0.3])
def test_c_t_equals_meehans_definition(seed, tau):
    rng = np.random.default_rng(seed)
    heldout, heldout_cells, generated, generated_cells = random_cells(rng, 70, 90)
    # these draws keep 1 to 4 cells, and seed 5 has a cell of exactly 20 / 90 of the generated images (left out)
    expected = meehan_c_t(heldout, heldout_cells, generated, generated_cells, 20 / 90 if tau is None else tau)
    assert c_t(heldout, heldout_cells, generated, generated_cells, tau) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_c_t_cells_u_is_scipys_u1_of_the_generated_sample(seed):
    rng = np.random.default_rng(seed)
    heldout, heldout_cells, generated, generated_cells = random_cells(rng, 60, 80)
    terms = c_t_cells(heldout, heldout_cells, generated, generated_cells, tau=0.01)
    for cell, u in zip(terms.cells, terms.u):
        g, h = generated[generated_cells == cell], heldout[heldout_cells == cell]
        if len(g) == 0:
            assert math.isnan(u)
            continue
        assert u == pytest.approx(mannwhitneyu(g, h).statistic, abs=1e-9)
        # Meehan's call: (m, 1) columns, alternative="less"; scipy returns U1 whatever the alternative
        assert u == pytest.approx(mannwhitneyu(g[:, None], h[:, None], alternative="less").statistic[0], abs=1e-9)


def test_c_t_tau_is_strict_and_weights_renormalise_over_kept_cells():
    rng = np.random.default_rng(0)
    heldout = rng.random(300)
    heldout_cells = np.repeat([0, 1, 2], 100)
    generated = rng.random(100)
    generated_cells = np.repeat([0, 1, 2], [20, 21, 59])  # 20 / 100 == tau: left out
    terms = c_t_cells(heldout, heldout_cells, generated, generated_cells, tau=0.2)
    assert terms.kept.tolist() == [False, True, True]
    assert terms.c_t == pytest.approx((terms.z[1] + terms.z[2]) / 2)  # equal held-out shares
    assert c_t_cells(heldout, heldout_cells, generated, generated_cells).kept.tolist() == terms.kept.tolist()
    generated_cells = np.repeat([0, 1, 2], [10, 10, 80])
    assert c_t(heldout, heldout_cells, generated, generated_cells, tau=0.2) == pytest.approx(
        c_t_cells(heldout, heldout_cells, generated, generated_cells, tau=0.2).z[2]
    )


def test_c_t_detects_copies_and_underfitting():
    rng = np.random.default_rng(1)
    n = m = 300
    heldout, heldout_cells = rng.gamma(4.0, 1.0, n), rng.integers(0, 3, n)
    generated_cells = rng.integers(0, 3, m)
    copies = rng.uniform(0, 1e-3, m)
    same = rng.gamma(4.0, 1.0, m)
    far = rng.gamma(4.0, 1.0, m) + 10
    assert c_t(heldout, heldout_cells, copies, generated_cells) < -5
    assert abs(c_t(heldout, heldout_cells, same, generated_cells)) < 2.5
    assert c_t(heldout, heldout_cells, far, generated_cells) > 5


def test_relative_distance_by_hand():
    distances = np.array([[1.0, 2.0, 3.0, 9.0], [0.0, 0.0, 0.0, 4.0], [0.0, 1.0, 2.0, 3.0]])
    assert relative_distance(distances, neighbours=3) == pytest.approx([0.5, 1.0, 0.0])
    assert relative_flagged(distances, neighbours=3).tolist() == [False, False, True]  # 0.5 < 0.5 is False
    assert relative_flagged(distances, neighbours=3, alpha=0.6).tolist() == [True, False, True]
    carlini = np.concatenate([[[1.0]], np.full((1, 49), 10.0), [[11.0]]], axis=1)  # n = 50: the last is unused
    assert relative_distance(carlini) == pytest.approx([50 / 491])
    assert relative_flagged(carlini).tolist() == [True]


def test_auth_pct_by_hand():
    generated = np.array([1.0, 2.0, 3.0, 0.5])
    ids = np.array([0, 1, 0, 2])
    train_nn = np.array([2.0, 1.0, 2.0, 0.5])
    assert authentic(generated, ids, train_nn).tolist() == [False, True, True, False]  # 0.5 < 0.5 is False
    assert auth_pct(generated, ids, train_nn) == 50.0
    assert auth_pct([1.0], [7], [np.inf]) == 0.0  # a training image without another: never authentic


def test_cliques_dense_and_knn_agree_by_hand():
    d = np.full((7, 7), 9.0)
    np.fill_diagonal(d, 0.0)
    for i, j, distance in [(0, 3, 0.1), (3, 5, 0.2), (1, 2, 0.1), (2, 4, 0.5), (6, 6, 0.0)]:
        d[i, j] = d[j, i] = distance
    expected = [[0, 3, 5], [1, 2]]  # 2–4 at the threshold is no edge, 6 alone is no clique
    assert cliques(d, threshold=0.5) == expected
    ids = np.argsort(d, axis=1, kind="stable")[:, :2]  # k = 2 including self, as a FAISS self-search returns
    knn = np.take_along_axis(d, ids, axis=1)
    assert cliques(knn, 0.5, neighbour_ids=ids) == expected
    ids[6, 1], knn[6, 1] = -1, np.inf  # FAISS padding
    assert cliques(knn, 0.5, neighbour_ids=ids) == expected
    one_way = np.array([[0.0, 0.1], [0.0, 9.0], [0.0, 9.0]])  # 0 → 2 only: edges count in either direction
    assert cliques(one_way, 0.5, neighbour_ids=np.array([[0, 2], [1, 0], [2, 0]])) == [[0, 2]]
    assert cliques(np.zeros((3, 3)), 0.0) == []


GOOD = {"h": np.arange(30.0), "hc": np.zeros(30, int), "g": np.arange(30.0), "gc": np.zeros(30, int)}


BAD_INPUTS = [
    (lambda: c_t(GOOD["h"], GOOD["hc"], [], [], 0.5), "generated_distances is empty"),
    (lambda: c_t([], [], GOOD["g"], GOOD["gc"]), "heldout_distances is empty"),
    (lambda: c_t(GOOD["h"], GOOD["hc"], GOOD["g"][:-1], GOOD["gc"]), "generated_cells"),
    (lambda: c_t(GOOD["h"], GOOD["hc"][:-1], GOOD["g"], GOOD["gc"]), "heldout_cells"),
    (lambda: c_t(GOOD["h"], GOOD["hc"] + 0.0, GOOD["g"], GOOD["gc"]), "heldout_cells must hold integers"),
    (lambda: c_t(np.r_[GOOD["h"][:-1], np.nan], GOOD["hc"], GOOD["g"], GOOD["gc"]), "heldout_distances"),
    (lambda: c_t(GOOD["h"], GOOD["hc"], np.r_[GOOD["g"][:-1], np.nan], GOOD["gc"]), "generated_distances"),
    (lambda: c_t(GOOD["h"], GOOD["hc"], -GOOD["g"], GOOD["gc"]), "generated_distances holds negative"),
    (lambda: c_t(GOOD["h"], GOOD["hc"], GOOD["g"], GOOD["gc"], tau=0.0), "tau"),
    (lambda: c_t(GOOD["h"], GOOD["hc"], GOOD["g"], GOOD["gc"], tau=1.0), "tau"),
    (lambda: c_t(GOOD["h"], GOOD["hc"], GOOD["g"], GOOD["gc"], tau=float("nan")), "tau"),
    (lambda: c_t(GOOD["h"][:5], GOOD["hc"][:5], GOOD["g"][:20], GOOD["gc"][:20]), "tau: the default"),
    (lambda: c_t(GOOD["h"], GOOD["hc"], GOOD["g"], np.arange(30) % 2, tau=0.2), r"heldout_cells: kept cells \[1\]"),
    (lambda: c_t(GOOD["h"], GOOD["hc"], GOOD["g"], np.arange(30) % 10, tau=0.2), "no cell holds"),
    (lambda: relative_distance(np.ones((2, 49))), "50 neighbours"),
    (lambda: relative_distance(np.ones(50)), "distances: expected a 2-D"),
    (lambda: relative_distance(np.ones((2, 5)), neighbours=1), "neighbours"),
    (lambda: relative_distance(np.ones((2, 5)), neighbours=2.0), "neighbours"),
    (lambda: relative_distance(np.array([[2.0, 1.0, 3.0]]), neighbours=3), "sorted"),
    (lambda: relative_distance(np.array([[1.0, np.inf]]), neighbours=2), "infinite"),
    (lambda: relative_distance(np.array([[np.nan, 1.0]]), neighbours=2), "NaN"),
    (lambda: relative_distance(np.empty((0, 50))), "distances is empty"),
    (lambda: relative_flagged(np.ones((2, 50)), alpha=0.0), "alpha"),
    (lambda: relative_flagged(np.ones((2, 50)), alpha=1.5), "alpha"),
    (lambda: auth_pct([], [], []), "generated_distances is empty"),
    (lambda: auth_pct([1.0, 2.0], [0], [1.0, 1.0]), "matched_ids"),
    (lambda: auth_pct([1.0, 2.0], [0, 1], [1.0]), "matched_nn_distances"),
    (lambda: auth_pct([1.0, np.nan], [0, 1], [1.0, 1.0]), "generated_distances holds NaN"),
    (lambda: auth_pct([1.0, 2.0], [0, 1], [1.0, np.nan]), "matched_nn_distances holds NaN"),
    (lambda: auth_pct([1.0, 2.0], [0, -1], [1.0, 1.0]), "matched_ids holds negative"),
    (lambda: auth_pct([1.0, 2.0], [0.0, 1.0], [1.0, 1.0]), "matched_ids must hold integers"),
    (lambda: auth_pct([1.0, 2.0], [3, 3], [1.0, 1.5]), "differs between generations"),
    (lambda: cliques(np.zeros((0, 0)), 0.5), "distances is empty"),
    (lambda: cliques(np.zeros((3, 2)), 0.5), "square"),
    (lambda: cliques(np.zeros((3, 3)), float("nan")), "threshold"),
    (lambda: cliques(np.array([[0.0, np.nan], [0.0, 0.0]]), 0.5), "NaN"),
    (lambda: cliques(np.zeros((3, 2)), 0.5, neighbour_ids=np.zeros((3, 3), int)), "neighbour_ids: expected"),
    (lambda: cliques(np.zeros((3, 2)), 0.5, neighbour_ids=np.full((3, 2), 3)), "neighbour_ids must lie"),
    (lambda: cliques(np.zeros((3, 2)), 0.5, neighbour_ids=np.zeros((3, 2))), "neighbour_ids must hold integers"),
]


@pytest.mark.parametrize(("call", "match"), BAD_INPUTS, ids=[match for _, match in BAD_INPUTS])
def test_bad_input_raises_naming_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
