"""The audit statistics against their definitions: C_T by brute force and by scipy, the others by hand."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from indexes.audit import c_t, c_t_cells

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
]


@pytest.mark.parametrize(("call", "match"), BAD_INPUTS, ids=[match for _, match in BAD_INPUTS])
def test_bad_input_raises_naming_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
