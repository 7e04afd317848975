"""The benchmark scripts run end to end at a tiny size, so that they do not rot between their real runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests" / "fixtures" / "official-tiny" / "tiny_tokenizer.bin"


def _leaves(tree, path=""):
    """A nested dict/list as {path: leaf}, for pytest.approx (which compares flat mappings only)."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _leaves(value, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in _leaves(value, f"{path}/{i}").items()}
    return {path: tree}


def test_bit_flips_writes_its_tables_and_plots(tmp_path):
    command = [sys.executable, "-m", "bench.bit_flips", "--tokenizers", str(TINY), str(TINY), "--images", "3"]
    command += ["--lpips", "off", "--no-atlas", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bit_flips.json").read_text())
    assert report["images"] == 3 and report["judge"] is None  # 32 px images: the judge knows 64 px shapes only
    tokenizer = report["tokenizers"][0]
    assert set(tokenizer["flips"]) == {"all", "1", "4", "16"} and len(tokenizer["flips"]["all"]["per_bit"]) == 12
    # The same tokenizer twice gives the same figures, up to float32 rounding: each decode runs with the threads that
    # fit the machine's load at that moment (maskbit.device), and the thread count changes the order of some sums.
    first, second = _leaves(report["tokenizers"][0]["flips"]), _leaves(report["tokenizers"][1]["flips"])
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert value == (second[key] if value is None else pytest.approx(second[key], rel=1e-5)), key
    one_token, every_token = tokenizer["flips"]["1"]["overall"], tokenizer["flips"]["all"]["overall"]
    assert one_token["l2"] < every_token["l2"]  # flipping one token moves an image less than flipping all 64
    for name in ("bit_flips.md", "bit_flips.png", "bit_flips_examples.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_neighbours_measures_what_a_brute_force_search_finds(tmp_path, tiny_tokenizer):
    import numpy as np
    import torch

    from bench import neighbours
    from data import eval_view, split_images
    from indexes.store import pixel_features
    from maskbit import bits

    size, ks = 48, (1, 3, 5)
    index, built = neighbours.open_index(
        tmp_path, tiny_tokenizer, "tiny", "procedural", size, 32, ["hamming", "pixel"], "off"
    )
    assert built["indexed_now"] == size and len(index) == size
    images, labels = split_images("procedural", "test", 6, 32)
    random = neighbours.random_ids(size, len(images), max(ks), seed=0)
    found = neighbours.neighbour_sets(index, images, ks, random)
    by_k = neighbours.summarise(found, labels.numpy(), ks)

    train = torch.stack([eval_view("procedural", "train", 0, 32)[i][0] for i in range(size)])
    pixel = ((pixel_features(images)[:, None].astype(np.float64) - pixel_features(train)[None]) ** 2).sum(-1)
    with torch.no_grad():
        query_tokens, train_tokens = tiny_tokenizer.encode(images), tiny_tokenizer.encode(train)
    hamming = bits.hamming(query_tokens[:, None], train_tokens[None], dim=(-2, -1)).numpy()  # (Q, N)
    mse = ((images[:, None] - train[None]) ** 2).mean((2, 3, 4)).numpy()
    rows = np.arange(len(images))[:, None]
    for k in ks:
        row = by_k[str(k)]
        pixel_top = np.argsort(pixel, axis=1, kind="stable")[:, :k]
        assert np.isclose(row["pixel"]["pixel"], np.sort(pixel, axis=1)[:, :k].mean(), rtol=1e-5)
        assert np.isclose(row["pixel"]["random"], pixel[rows, random[:, :k]].mean(), rtol=1e-5)
        assert np.isclose(row["pixel"]["hamming"], pixel[rows, found["ids"]["hamming"][:, :k]].mean(), rtol=1e-5)
        assert np.isclose(row["mse"]["random"], mse[rows, random[:, :k]].mean(), rtol=1e-5)
        assert row["hamming_bits"] == np.sort(hamming, axis=1)[:, :k].mean()  # the index's top-k is the true top-k
        p = row["pixel"]
        assert p["score"] == (p["random"] - p["hamming"]) / (p["random"] - p["pixel"])
        # Where no tie crosses the k-th place the Hamming top-k set is unique: recount the overlap from scratch.
        ordered = np.sort(hamming, axis=1)
        unique = ordered[:, k - 1] != ordered[:, k]
        hamming_top = np.argsort(hamming, axis=1, kind="stable")[:, :k]
        overlap = [len(np.intersect1d(hamming_top[q], pixel_top[q])) / k for q in range(len(images))]
        per_query = neighbours.overlap_at_k(found["ids"]["hamming"], found["ids"]["pixel"], k)
        assert np.allclose(per_query[unique], np.array(overlap)[unique]) and unique.any()
        assert 0 <= row["overlap"]["pixel"] <= 1 and np.isclose(row["overlap"]["pixel"], per_query.mean())
        assert row["hamming_tie_at_k"] == np.mean(~unique)
        assert row["class_agreement"]["random"] == np.mean(
            index_labels(index)[random[:, :k]] == labels[:, None].numpy()
        )


def index_labels(index):
    import numpy as np

    return np.array([s["label"] for s in index.sources])


def test_neighbours_writes_its_table_and_plots(tmp_path):
    from bench import neighbours

    command = [
        "--tokenizers",
        str(TINY),
        str(TINY),
        "--train-size",
        "30",
        "--queries",
        "4",
        "--k",
        "1",
        "3",
        "--examples",
        "2",
    ]
    neighbours.main([*command, "--lpips", "random", "--index-root", str(tmp_path / "indexes"), "--out", str(tmp_path)])
    report = json.loads((tmp_path / "neighbours.json").read_text())
    assert report["queries"] == 4 and report["ks"] == [1, 3] and report["lpips"].startswith("random")
    first, second = report["tokenizers"]
    assert first["by_k"] == second["by_k"] and second["index"]["indexed_now"] == 0  # the same index, opened again
    assert set(first["by_k"]["3"]) >= {"pixel", "lpips", "mse", "overlap", "class_agreement"}
    for name in ("neighbours.md", "neighbours.png", "neighbours_examples.png"):
        assert (tmp_path / name).stat().st_size > 0
