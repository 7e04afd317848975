"""The audit statistics against their definitions: C_T by brute force and by scipy, the others by hand."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from indexes.audit import (
    TrainingPartitions,
    auth_pct,
    authentic,
    c_t,
    c_t_cells,
    cliques,
    fit_c_t,
    kmeans,
    nearest_centre,
    relative_distance,
    relative_flagged,
)

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


# ---------------------------------------------------------------------------------------------------- C_T's partition


def clustered_training_set(rng, size=1500, clusters=6, dims=48):
    """±1 features in well separated clusters (each a random sign pattern, 5 % of its bits flipped), and 10 classes
    that cut across the clusters."""
    centres = rng.choice([-1.0, 1.0], (clusters, dims))
    truth = rng.integers(0, clusters, size)
    flips = np.where(rng.random((size, dims)) < 0.05, -1.0, 1.0)
    return centres[truth] * flips, truth, np.arange(size) % 10


def test_kmeans_finds_separated_clusters_and_is_seeded():
    features, truth, _ = clustered_training_set(np.random.default_rng(0))
    centres = kmeans(features, 6, seed=3)
    cells = nearest_centre(features, centres)
    assert len(set(zip(truth.tolist(), cells.tolist()))) == 6 and len(np.unique(cells)) == 6  # one cell per cluster
    assert np.array_equal(centres, kmeans(features, 6, seed=3))


def ladder_case(m, n=None, seed=0, copies=False, classes=True):
    """M generated and N held-out images against a training set of 1,500 in 6 clusters and 10 classes: each image is
    matched to a random training image; held-out distances uniform, generated ones the same law or 0 (copies)."""
    rng = np.random.default_rng(seed)
    n = m if n is None else n
    features, _, labels = clustered_training_set(rng)
    partitions = TrainingPartitions(1500, labels if classes else None, lambda ids: features[ids])
    generated = np.zeros(m) if copies else rng.random(m)
    return fit_c_t(rng.random(n), rng.integers(0, 1500, n), generated, rng.integers(0, 1500, m), partitions)


@pytest.mark.parametrize(("m", "partition"), [(300, "classes"), (120, "k-means"), (40, "one cell"), (32, "one cell")])
def test_c_t_uses_the_finest_partition_that_fits_the_sample(m, partition):
    fit = ladder_case(m)
    assert fit.reason == "fitted" and fit.partition.partition == partition and np.isfinite(fit.c_t)
    assert fit.tau == 20 / m and fit.min_generated == 21
    terms = fit.terms  # every kept cell: more than 20 generated and at least 2 held-out images
    assert (terms.generated_counts[terms.kept] > 20).all() and (terms.heldout_counts[terms.kept] >= 2).all()
    assert terms.generated_counts[terms.kept].sum() >= m / 2
    assert all(t.problem is not None for t in fit.tried[:-1]) and fit.tried[-1].problem is None
    if partition != "classes":
        assert fit.tried[0].partition == "classes" and fit.tried[0].problem in ("no_kept_cell", "low_coverage")
    assert abs(fit.c_t) < 3.5  # generated and held-out distances of one law
    assert ladder_case(m, copies=True).c_t < -5  # exact copies: every generated distance 0


def test_one_cell_c_t_is_the_mann_whitney_z_of_all_images():
    rng = np.random.default_rng(2)
    heldout, generated = rng.integers(0, 9, 55).astype(float), rng.integers(0, 9, 40).astype(float)  # many ties
    fit = fit_c_t(heldout, rng.integers(0, 1500, 55), generated, rng.integers(0, 1500, 40), TrainingPartitions(1500))
    assert [t.partition for t in fit.tried] == ["one cell"]
    assert fit.c_t == pytest.approx(meehan_c_t(heldout, np.zeros(55, int), generated, np.zeros(40, int), 0.5), abs=1e-9)


def test_c_t_falls_back_past_thin_held_out_cells_and_low_coverage():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 100)  # classes of a training set of 300
    partitions = TrainingPartitions(300, labels)
    heldout_nearest = np.r_[np.zeros(29, int), [150]]  # class 1 holds one held-out image, class 2 none
    generated_nearest = np.repeat([0, 150, 250], [30, 30, 30])
    fit = fit_c_t(rng.random(30), heldout_nearest, rng.random(90), generated_nearest, partitions)
    assert [(t.partition, t.problem) for t in fit.tried] == [("classes", "thin_heldout"), ("one cell", None)]
    # 25 of 65 generated images in the only kept class (20 in each other): fewer than half, so one cell
    generated_nearest = np.repeat([0, 100, 200], [25, 20, 20])
    heldout_nearest = np.arange(30) * 10
    fit = fit_c_t(rng.random(30), heldout_nearest, rng.random(65), generated_nearest, partitions)
    assert fit.tried[0].problem == "low_coverage" and fit.tried[0].kept_generated == 25
    assert fit.partition.partition == "one cell"


def test_c_t_says_why_it_is_not_computed():
    few = ladder_case(20)
    assert few.c_t is None and few.reason == "too_few_generated" and few.to_json()["partition"] is None
    assert ladder_case(20, n=20, classes=False).reason == "too_few_generated"
    alone = ladder_case(40, n=1)
    assert alone.c_t is None and alone.reason == "too_few_heldout"
    rng = np.random.default_rng(0)
    partitions = TrainingPartitions(50)
    fit = fit_c_t(rng.random(10), np.arange(10), rng.random(8), np.arange(8), partitions, tau=0.2)
    assert fit.reason == "fitted" and fit.min_generated == 2 and fit.partition.partition == "one cell"


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
