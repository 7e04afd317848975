"""Planted copies: each edit does what its name says, the scores are their definitions, and on an index of procedural
training images the report catches exported training images and exact planted copies at the held-out rate of false
alarms."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from indexes import plant
from indexes import report as report_module
from indexes.store import ImageIndex, IndexOptions
from tests.conftest import OFFICIAL_TINY

ROOT = Path(__file__).parents[1]
TOKENIZER = [
    "--tokenizer",
    str(OFFICIAL_TINY / "tiny_tokenizer.bin"),
    "--tokenizer-config",
    str(OFFICIAL_TINY / "tiny_tokenizer.yaml"),
]


def shapes(count: int, split: str = "train", start: int = 0) -> torch.Tensor:
    from data import split_images

    return split_images("procedural", split, count, 32, start=start)[0]


# ---------------------------------------------------------------------------------------------------- edits


def test_each_edit_does_what_its_name_says(tiny_tokenizer):
    images, hosts = shapes(4), shapes(4, split="test")
    copies = plant.plant_copies(images, tiny_tokenizer, hosts, seed=3)
    assert tuple(copies) == plant.EDIT_NAMES and len(plant.EDITS) == 10
    for name, copy in copies.items():
        assert copy.shape == images.shape and copy.min() >= 0 and copy.max() <= 1, name
    assert torch.equal(copies["exact"], images) and torch.equal(copies["horizontal_flip"][..., 0], images[..., -1])
    shifted = copies["shift"]  # content 4 px right and down, the first rows and columns repeat the border
    assert torch.equal(shifted[..., 4:, 4:], images[..., :-4, :-4])
    assert torch.equal(shifted[..., :4, 4:], images[..., :1, :-4].expand(-1, -1, 4, -1))
    assert torch.equal(copies["brighter"], (images * 1.1).clamp(0, 1))
    assert torch.equal(copies["darker"], images * 0.9)
    noise = copies["noise"] - images
    inside = (images > 0.1) & (images < 0.9)  # where clipping cannot bite
    assert noise[inside].std().item() == pytest.approx(0.02, rel=0.1) and abs(noise[inside].mean().item()) < 2e-3
    assert torch.equal(plant.plant_copies(images, tiny_tokenizer, hosts, seed=3)["noise"], copies["noise"])
    assert not torch.equal(plant.plant_copies(images, tiny_tokenizer, hosts, seed=4)["noise"], copies["noise"])
    assert torch.equal(copies["half_pasted"][..., :16], images[..., :16])
    assert torch.equal(copies["half_pasted"][..., 16:], hosts[..., 16:])
    with torch.no_grad():
        assert torch.equal(copies["reconstruction"], tiny_tokenizer.decode(tiny_tokenizer.encode(images)).clamp(0, 1))
    jpeg = copies["jpeg"]  # 8-bit, close to the original, not equal to it
    assert torch.equal((jpeg * 255).round() / 255, jpeg)
    assert 0 < (jpeg - images).abs().mean() < 0.05


def test_crop_removes_the_outer_tenth_and_resizes_back():
    framed = torch.zeros(1, 3, 32, 32)
    framed[..., 0, :] = framed[..., -1, :] = framed[..., :, 0] = framed[..., :, -1] = 1  # a one-pixel white frame
    assert torch.equal(plant.crop_resize(framed), torch.zeros(1, 3, 32, 32))  # the central 29 px hold no frame
    square = torch.zeros(1, 3, 40, 40)
    square[..., 10:30, 10:30] = 1
    grown = plant.crop_resize(square)
    assert grown[0, 0].gt(0.5).sum().item() == pytest.approx(400 / 0.81, rel=0.05)  # a 20 px square, now ≈ 22 px


def test_planted_ids_are_distinct_seeded_and_refuse_too_many():
    ids = plant.planted_ids(50, 20, seed=1)
    assert len(set(ids.tolist())) == 20 and ids.min() >= 0 and ids.max() < 50 and (np.diff(ids) > 0).all()
    assert np.array_equal(ids, plant.planted_ids(50, 20, seed=1))
    assert np.array_equal(plant.planted_ids(50, 50), np.arange(50))
    with pytest.raises(ValueError, match="plant=51 is larger than the index"):
        plant.planted_ids(50, 51)
    with pytest.raises(ValueError, match="plant"):
        plant.planted_ids(50, 0)


# ---------------------------------------------------------------------------------------------------- scores


def test_roc_auc_recall_and_false_positive_rate_by_hand_and_against_sklearn():
    copies, real = np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0])
    # pairs (copy, real) with the copy closer: (0,1), (0,3), (1,3), (2,3); the tie (1,1) counts ½ → 4.5 / 6
    assert plant.roc_auc(copies, real) == 0.75
    scores = plant.planted_scores({"a": copies, "b": np.array([5.0])}, real, threshold=1.5)
    assert scores.recall == {"a": 2 / 3, "b": 0.0} and scores.false_positive_rate == 0.5
    assert scores.auc == {"a": 0.75, "b": 0.0}
    fpr, tpr = plant.roc_curve(copies, real)
    assert (
        (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    )
    rng = np.random.default_rng(0)
    for _ in range(5):
        copies, real = rng.integers(0, 6, 40).astype(float), rng.integers(2, 9, 60).astype(float)  # many ties
        labels = np.r_[np.ones(40), np.zeros(60)]
        assert plant.roc_auc(copies, real) == pytest.approx(roc_auc_score(labels, -np.r_[copies, real]), abs=1e-12)
        fpr, tpr = plant.roc_curve(copies, real)
        assert np.trapezoid(tpr, fpr) == pytest.approx(plant.roc_auc(copies, real), abs=1e-12)
    with pytest.raises(ValueError, match="real_distances holds NaN"):
        plant.roc_auc(np.zeros(3), np.array([1.0, np.nan]))


# ---------------------------------------------------------------------------------------------------- the report
# 300 training images in 10 label cells; 300 exported training images as "generations" (about 30 per cell, more than
# dgm-eval's 20, so C_T uses its default tau); with --plant the CLI loads 600 held-out images and keeps 300 (about 30
# per cell) for the threshold, so perfect copies reach C_T ≈ −√(3·30·30/61) ≈ −6.6 < −5.


@pytest.fixture(scope="module")
def procedural_index(tmp_path_factory, tiny_tokenizer) -> ImageIndex:
    from indexes.build import build_dataset_index

    directory = tmp_path_factory.mktemp("plant-index")
    options = IndexOptions()
    return build_dataset_index(directory, tiny_tokenizer, resolution=32, limit=300, options=options, batch_size=100)


@pytest.fixture(scope="module")
def exported_report(tmp_path_factory, procedural_index) -> dict:
    from data.datasets import build_dataset, export_dataset

    root = tmp_path_factory.mktemp("exported")
    export_dataset(build_dataset("procedural", "train", 0, 32), root / "train", limit=300, progress=False)
    out = root / "report"
    command = ["report", "--index", str(procedural_index.directory), *TOKENIZER, "--generated", str(root / "train")]
    options = ["--count", "300", "--percentile", "5", "--plant", "40", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "indexes", *command, *options], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"json": json.loads((out / "report.json").read_text()), "stdout": result.stdout, "out": out}


def test_exported_training_images_are_all_flagged_with_strongly_negative_c_t(exported_report):
    report = exported_report["json"]
    assert report["generated_images"] == 300 and report["heldout_images"] == 300  # half of the 600 held-out images
    assert report["verdict"].startswith("Possible copying by hamming")
    for metric in ("hamming", "pixel"):
        data = report["metrics"][metric]
        assert data["flagged_fraction"] == 1.0 and data["c_t"] < -5, metric
        assert data["c_t_reason"]["code"] == "fitted" and data["c_t_reason"]["partition"] == "classes", metric


def test_planted_exact_copies_are_all_found_at_the_held_out_rate_of_false_alarms(exported_report):
    planted = exported_report["json"]["planted"]
    assert planted["count"] == 40 and planted["controls"] == 300
    assert [edit["name"] for edit in planted["edits"]] == list(plant.EDIT_NAMES)
    assert planted["edits"][2] == {"name": "crop", "constant": 0.9, "label": "crop (central 90% kept, resized back)"}
    assert list(planted["metrics"]) == list(report_module.REPORT_METRICS)  # the index's three, then the window tests
    for metric, data in planted["metrics"].items():
        assert data["recall"]["exact"] == 1.0 and data["auc"]["exact"] == 1.0, metric
        assert set(data["recall"]) == set(data["auc"]) == set(plant.EDIT_NAMES)
        # the threshold is the 5th percentile of 300 other held-out images: 300 fresh ones are flagged near 5 %
        assert 0.01 <= data["false_positive_rate"] <= 0.10, (metric, data["false_positive_rate"])
        assert all(0 <= v <= 1 for v in [*data["recall"].values(), *data["auc"].values()])
    out = exported_report["out"]
    page = (out / "report.html").read_text()
    assert "Planted copies" in page and "half_pasted" in page and "ROC" in page
    for name in ("report.png", "planted.png", "closest_hamming.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "planted copies of 40 training images" in exported_report["stdout"]


def test_a_new_report_metric_is_one_row_and_reaches_every_statistic(procedural_index, monkeypatch):
    """Issue 34.0: a metric registered in REPORT_METRICS (here Hamming distance by numpy brute force over the stored
    tokens) gets the threshold, C_T, AuthPct, Carlini's flags, cliques and the planted table, equal to the index's own
    Hamming metric (FAISS)."""
    from indexes.rendering import html_page, planted_markdown
    from maskbit import bits as bit_ops

    def brute_force(index, images, tokens, k):
        codes = bit_ops.pack_bits(torch.as_tensor(index.tokens).long(), index.tokenizer.num_bits).numpy()
        query = bit_ops.pack_bits(tokens.cpu().long(), index.tokenizer.num_bits).numpy()
        distances = np.bitwise_count(query[:, None] ^ codes[None]).sum(-1).astype(np.float64)  # (B, N)
        ids = np.argsort(distances, axis=1, kind="stable")[:, :k]
        return ids, np.take_along_axis(distances, ids, axis=1)

    def pairwise(index, images, tokens):
        return report_module._pairwise_distances(index, "hamming", images, tokens)

    row = report_module.ReportMetric("Hamming distance (bits), numpy", brute_force, pairwise)
    monkeypatch.setitem(report_module.REPORT_METRICS, "hamming, numpy", row)
    copies, heldout = shapes(30, start=20), shapes(40, split="test")
    data = report_module.compute_report(procedural_index, copies, heldout, plant=2, plant_seed=1).to_json()
    ours, faiss = data["metrics"]["hamming, numpy"], data["metrics"]["hamming"]
    assert ours["label"] == "Hamming distance (bits), numpy" and faiss["label"] == "Hamming distance (bits)"
    for key in ("threshold", "generated", "heldout", "flagged_fraction", "c_t", "c_t_reason", "auth_pct", "cliques"):
        assert ours[key] == faiss[key], key
    assert ours["relative_flagged_fraction"] == faiss["relative_flagged_fraction"]
    planted = data["planted"]["metrics"]
    assert planted["hamming, numpy"]["recall"] == planted["hamming"]["recall"]
    assert "hamming, numpy" in html_page(data, "")
    assert planted_markdown(data["planted"]).startswith(f"| edit | {' | '.join(report_module.REPORT_METRICS)} |")


def test_report_figures_compare_shares_and_keep_the_roc_curves_clear(exported_report):
    """Issue 35.8: the app's report had 32 generated images beside 500 held-out ones; each histogram shows the share of
    its own images per bin (counts left the generated bars flat), the generated drawn last, on top; the ROC legends
    sit under their plots, not over the curves, and inside the picture."""
    from indexes.rendering import figures

    report = exported_report["json"]
    _, figure = figures(report)
    figure.canvas.draw()
    count = len(report["metrics"])
    histograms, rocs = figure.axes[:count], figure.axes[count:]
    assert len(rocs) == count
    for axis, metric in zip(histograms, report["metrics"]):
        data = report["metrics"][metric]
        heldout_bars, generated_bars = axis.containers  # in drawing order
        assert axis.get_legend_handles_labels()[1][:2] == ["held-out real (300)", "generated (300)"]
        edges = np.histogram_bin_edges(data["generated_distances"] + data["heldout_distances"], 30)  # shared bins
        for bars, values in ((generated_bars, data["generated_distances"]), (heldout_bars, data["heldout_distances"])):
            counts, _ = np.histogram(values, bins=edges)
            assert np.allclose([bar.get_height() for bar in bars], counts / len(values)), metric
    for axis in rocs:
        legend, plot = axis.get_legend().get_window_extent(), axis.get_window_extent()
        assert not legend.overlaps(plot), (legend, plot)
        assert figure.bbox.contains(legend.x0, legend.y0) and figure.bbox.contains(legend.x1, legend.y1)


def test_bad_input_names_the_parameter_and_writes_nothing(tmp_path, procedural_index):
    from indexes.report import memorization_report

    generated, heldout = shapes(25, start=500), shapes(40, split="test")
    out = tmp_path / "report"
    bad = [
        ({"plant": 301}, "plant=301 is larger than the index"),
        ({"tau": 1.0}, r"tau must lie in \(0, 1\)"),
        ({"tau": 0.0}, r"tau must lie in \(0, 1\)"),
        ({"generated": torch.full((2, 3, 32, 32), float("nan"))}, "generated holds NaN"),
        ({"generated": torch.zeros(0, 3, 32, 32)}, "generated is empty"),
        ({"heldout": heldout[:3], "plant": 2}, "heldout: plant splits the held-out images"),
    ]
    for change, message in bad:
        arguments = {"generated": generated, "heldout": heldout, **change}
        with pytest.raises(ValueError, match=message):
            memorization_report(
                procedural_index, arguments.pop("generated"), arguments.pop("heldout"), out, **arguments
            )
        assert not out.exists(), change
    # Too few held-out images for the classes' cells of C_T: which cells enter C_T is known only after the search,
    # so C_T takes a coarser partition and says why.
    thin = memorization_report(procedural_index, generated, heldout[:6], out, tau=0.05)
    for data in thin["metrics"].values():
        reason = data["c_t_reason"]
        assert np.isfinite(data["c_t"]) and reason["tried"][0]["partition"] == "classes"
        assert reason["tried"][0]["problem"] == "thin_heldout" and reason["partition"] in ("k-means", "one cell")
    assert (out / "report.json").is_file()
    out = tmp_path / "cli"
    index = ["--index", str(procedural_index.directory), *TOKENIZER, "--generated", str(tmp_path)]
    rejected = subprocess.run(
        [sys.executable, "-m", "indexes", "report", *index, "--plant", "301", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rejected.returncode != 0 and "plant=301 is larger than the index (300 images)" in rejected.stderr
    assert not out.exists()
