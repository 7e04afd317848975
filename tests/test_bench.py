"""The benchmark scripts run end to end at a tiny size, so that they do not rot between their real runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    assert report["precision"] == "fp32"  # bf16 rounding would move every pixel and blur where a flip lands
    tokenizer = report["tokenizers"][0]
    assert set(tokenizer["flips"]) == {"all", "1", "4", "16"} and len(tokenizer["flips"]["all"]["per_bit"]) == 12
    # The same tokenizer twice gives the same figures, up to float32 rounding: each decode runs with the threads that
    # fit the machine's load at that moment (maskbit.device), and the thread count changes the order of some sums.
    first, second = _leaves(report["tokenizers"][0]["flips"]), _leaves(report["tokenizers"][1]["flips"])
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert value == (second[key] if value is None else pytest.approx(second[key], rel=1e-5)), key
    assert report["tokenizers"][1]["label"] == "tiny_tokenizer.bin-2"  # the same source twice: numbered
    one_token, every_token = tokenizer["flips"]["1"]["overall"], tokenizer["flips"]["all"]["overall"]
    assert one_token["l2"] < every_token["l2"]  # flipping one token moves an image less than flipping all 64
    for name in ("bit_flips.md", "bit_flips.png", "bit_flips_examples.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_flip_locality_of_decoders_whose_receptive_field_is_known():
    """A 4×4 token grid on 16×16 pixels: a decoder that paints each token's own block keeps all of a token's change
    there; one that blurs over 3×3 tokens keeps it in the 3×3 neighbourhood; a change spread evenly over the image
    gives each region its share of the area."""
    import torch

    from bench.bit_flips import flip_locality

    def paint(tokens):  # receptive field: the token itself
        return tokens.repeat_interleave(4, -2).repeat_interleave(4, -1)

    def blur(tokens):  # receptive field: the 3×3 tokens around
        return paint(torch.nn.functional.avg_pool2d(tokens, 3, stride=1, padding=1, count_include_pad=False))

    tokens = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = mask[1, 0, 0] = True  # an inner token and a corner token
    flipped = torch.where(mask[:, None], 1 - tokens, tokens)
    assert flip_locality(paint(flipped), paint(tokens), mask) == pytest.approx([1.0, 1.0])
    assert flip_locality(paint(flipped), paint(tokens), mask, spread=1) == pytest.approx([1.0, 1.0])
    assert (flip_locality(blur(flipped), blur(tokens), mask) < 0.5).all()
    assert flip_locality(blur(flipped), blur(tokens), mask, spread=1) == pytest.approx([1.0, 1.0])
    uniform = paint(tokens) + 0.1  # the whole image moves alike
    assert flip_locality(uniform, paint(tokens), mask) == pytest.approx([1 / 16, 1 / 16])
    assert flip_locality(uniform, paint(tokens), mask, spread=1) == pytest.approx([9 / 16, 4 / 16])  # corner: 2×2
    assert np.isnan(flip_locality(paint(tokens), paint(tokens), mask)).all()  # nothing changed: no share to take


def test_bit_flips_on_published_family_checkpoints(tmp_path):
    """The Open-MAGVIT2 and IBQ tiny fixtures in their published format (.ckpt + official YAML), at 1 token only."""
    fixtures = ROOT / "tests" / "fixtures" / "open-magvit2-tiny"
    command = [sys.executable, "-m", "bench.bit_flips", "--tokenizers"]
    command += [str(fixtures / "tiny_lfq.ckpt"), str(fixtures / "tiny_ibq.ckpt"), "--configs"]
    command += [str(fixtures / "tiny_lfq.yaml"), str(fixtures / "tiny_ibq.yaml"), "--labels", "omv", "ibq"]
    command += ["--token-counts", "1", "--images", "3", "--lpips", "off", "--no-atlas", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bit_flips.json").read_text())
    assert [(t["label"], t["family"], t["num_bits"]) for t in report["tokenizers"]] == [
        ("omv", "Open-MAGVIT2 LFQ", 10),
        ("ibq", "IBQ VQ", 10),
    ]
    for tokenizer in report["tokenizers"]:
        assert set(tokenizer["flips"]) == {"all", "1"}
        for row in tokenizer["flips"]["1"]["per_bit"]:
            assert 0 <= row["locality"] <= row["locality_3x3"] <= row["locality_5x5"] <= 1
            assert row["area_share"] == 1 / 64
        # Both decoders see the whole grid (adaptive GroupNorm, attention): some of the change leaves the block.
        assert tokenizer["flips"]["1"]["overall"]["locality"] < 1
    table = (tmp_path / "bit_flips.md").read_text()
    assert "| omv | Open-MAGVIT2 LFQ |" in table and "1 token: locality (own block)" in table
    for name in ("bit_flips.png", "bit_flips_examples.png", "bit_flips_locality.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokenizers", "a", "b", "--configs", "x", "y", "z"], "--configs takes one value for all tokenizers"),
        (["--tokenizers", "a", "b", "--labels", "same", "same"], "--labels must be distinct"),
        (["--tokenizers", "a", "--labels", "a/b"], "letters, digits"),
        (["--tokenizers", "a", "--token-counts", "0"], "--token-counts must be distinct whole numbers"),
    ],
)
def test_bit_flips_bad_arguments_are_named(args, message, capsys):
    from bench import bit_flips

    with pytest.raises(SystemExit):
        bit_flips.main([*args, "--out", "/nonexistent/never-written"])
    assert message in capsys.readouterr().err


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


def test_the_judge_names_real_shapes_and_says_none_of_these_for_noise(tmp_path):
    """Issue 35.7: the judge took a VQ flip's colour patchwork for a star. Its bundled rule keeps real shapes it never
    saw (another seed than its training and its rule's fit) and rejects noise this test makes."""
    import shutil

    import torch

    from data import judge, split_images

    classifier = judge.load()
    assert classifier.none_rule is not None
    images, labels = split_images("procedural", "test", 100, 64, seed=7)
    found = judge.verdict(classifier, images)
    assert (found == labels).double().mean() >= 0.99
    named = found != judge.NONE
    assert torch.equal(found[named], judge.predict(classifier, images)[named])  # a class: the judge's own
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(30, 3, 64, 64, generator=generator)
    patchwork = torch.rand(30, 3, 16, 16, generator=generator).repeat_interleave(4, -1).repeat_interleave(4, -2)
    blends = 0.5 * images[:30] + 0.5 * patchwork
    assert (judge.verdict(classifier, torch.cat([pixels, patchwork, blends])) == judge.NONE).all()
    # a rule is used only with the weights it was fitted for
    other = judge.Classifier(len(judge.PROCEDURAL_CLASSES))
    other.load_state_dict(classifier.state_dict())
    with torch.no_grad():
        other.head.bias[0] += 0.01
    judge.save(other, tmp_path / "judge.safetensors", judge.STEPS)
    shutil.copy(judge.rule_path(judge.BUNDLED), judge.rule_path(tmp_path / "judge.safetensors"))
    assert judge.load(tmp_path / "judge.safetensors").none_rule is None
    with pytest.raises(ValueError, match="python -m data.judge --fit-none"):
        judge.verdict(judge.load(tmp_path / "judge.safetensors"), images[:1])
