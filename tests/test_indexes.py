"""Indexes against brute force and against the lpips package itself."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.datasets import ProceduralShapes
from indexes.lpips_embedding import LPIPSEmbedding
from indexes.store import ImageIndex, IndexedDataset, IndexError_, IndexOptions, pixel_features
from maskbit import Tokenizer, TokenizerConfig, bits
from maskbit.images import to_tensor
from tests.conftest import OFFICIAL_TINY

ROOT = Path(__file__).parents[1]


def procedural(count: int, start: int = 0, split: str = "train") -> tuple[torch.Tensor, list[int]]:
    dataset = ProceduralShapes(split, resolution=32)
    items = [dataset[i] for i in range(start, start + count)]
    images = torch.stack([to_tensor(image) for image, _ in items])
    return images, [label for _, label in items]


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_tokenizer) -> ImageIndex:
    directory = tmp_path_factory.mktemp("index")
    built = ImageIndex.create(directory, tiny_tokenizer, 32, IndexOptions())
    images, labels = procedural(120)
    built.add(images, [f"train:{i}" for i in range(120)], labels)
    built.save()
    return ImageIndex.open(directory, tiny_tokenizer)


def test_neighbour_rows_verdicts_and_overlap(tmp_path, tiny_tokenizer):
    from indexes.build import calibrate
    from indexes.neighbours import find_neighbours, union_distances

    index = ImageIndex.create(tmp_path, tiny_tokenizer, 32, IndexOptions(metrics=["hamming", "pixel"]))
    images, labels = procedural(40)
    index.add(images, [f"train:{i}" for i in range(40)], labels)
    index.manifest.dataset = IndexedDataset("procedural", "train", 0, tuple(f"shape {c}" for c in range(10)))
    heldout, _ = procedural(20, split="test")
    calibration = calibrate(index, heldout, percentile=5.0)
    queries = torch.cat([images[7:8], heldout[:1]])
    first, second = find_neighbours(index, queries, names=["train 7", "test 0"], k=4)
    assert first.query == "train 7" and first.rows["hamming"][0].id == 7 and first.rows["hamming"][0].distance == 0
    assert first.rows["pixel"][0].class_name == f"shape {labels[7]}" and first.verdicts["hamming"].memorized
    big = torch.nn.functional.interpolate(queries[:1], size=(64, 64), mode="nearest")  # resized to the index's 32 px
    assert find_neighbours(index, big, k=1)[0].rows["pixel"][0].id == 7
    for result in (first, second):
        shared = set(result.ids("hamming")) & set(result.ids("pixel"))
        assert result.overlap == {"hamming∩pixel": len(shared) / 4}
        for metric, verdict in result.verdicts.items():
            threshold = calibration[metric]["threshold"]
            assert verdict.memorized == (result.rows[metric][0].distance < threshold) and verdict.percentile == 5.0
        for row in result.rows["hamming"]:
            assert row.token_distance_map.sum() == row.distance  # per-token maps add up to the image's distance
        exact = union_distances(index, queries[0 if result is first else 1], result)
        assert set(exact["ids"]) == set(result.ids("hamming")) | set(result.ids("pixel"))
        for metric in ("hamming", "pixel"):
            for row in result.rows[metric]:
                position = list(exact["ids"]).index(row.id)
                assert exact[metric][position] == pytest.approx(row.distance, rel=1e-5, abs=1e-5)
    assert (
        json.loads(json.dumps(second.to_json()))["verdicts"]["pixel"]["threshold"] == calibration["pixel"]["threshold"]
    )


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_lpips_embedding_distance_equals_the_lpips_package(net):
    torch.manual_seed(0)
    embedding = LPIPSEmbedding(net, random_backbone=True)
    x, y = torch.rand(6, 3, 64, 64), torch.rand(6, 3, 64, 64)
    reference = embedding.lpips(x, y, normalize=True).flatten()
    ours = (embedding(x) - embedding(y)).pow(2).sum(1)
    assert ((ours - reference).abs() / reference).max() <= 1e-4


def test_hamming_search_equals_brute_force(index):
    queries, _ = procedural(8, split="test")
    found = index.search(queries, k=10)["hamming"]
    packed = np.stack([bits.pack_bits(torch.from_numpy(t[None]).long(), 12)[0].numpy() for t in index.tokens])
    query_codes = bits.pack_bits(index.tokenizer.encode(queries), 12).numpy()
    brute = np.unpackbits(query_codes[:, None] ^ packed[None], axis=-1).sum(-1)  # (Q, N)
    expected = np.sort(brute, axis=1)[:, :10]
    assert np.array_equal(found.distances, expected)
    assert np.array_equal(np.take_along_axis(brute, found.ids, 1), found.distances)  # ids carry those distances


def test_lpips_search_equals_lpips_over_every_training_image(index):
    queries, _ = procedural(3, split="test")
    found = index.search(queries, k=5, metrics=["lpips"])["lpips"]
    training, _ = procedural(120)
    for q in range(len(queries)):
        reference = index.lpips.lpips(queries[q : q + 1].expand(120, -1, -1, -1), training, normalize=True).flatten()
        best = torch.sort(reference).values[:5].numpy()
        assert np.allclose(found.distances[q], best, rtol=1e-4, atol=1e-6)
        assert np.allclose(reference[found.ids[q]].numpy(), found.distances[q], rtol=1e-4, atol=1e-6)


def test_pixel_search_equals_brute_force(index):
    queries, _ = procedural(4, split="test")
    found = index.search(queries, k=5, metrics=["pixel"])["pixel"]
    training, _ = procedural(120)
    brute = ((pixel_features(queries)[:, None] - pixel_features(training)[None]) ** 2).sum(-1)
    assert np.allclose(found.distances, np.sort(brute, 1)[:, :5], rtol=1e-5, atol=1e-5)


def test_an_indexed_image_finds_itself_and_sources_and_labels_come_back(index):
    images, labels = procedural(2, start=7)
    results = index.search(images, k=1)
    for metric in ("hamming", "lpips", "pixel"):
        assert results[metric].ids[:, 0].tolist() == [7, 8]
        assert np.allclose(results[metric].distances[:, 0], 0, atol=1e-5)
        assert results[metric].sources[0][0] == "train:7" and results[metric].labels[1][0] == labels[1]
    tokens = index.tokenizer.encode(images[:1])
    assert index.token_distance_map(tokens[0], 7).sum() == 0
    assert index.search(tokens=tokens, k=1, metrics=["hamming"])["hamming"].ids[0, 0] == 7


def test_adding_images_needs_no_rebuild(tmp_path, tiny_tokenizer):
    built = ImageIndex.create(tmp_path, tiny_tokenizer, 32, IndexOptions(metrics=["hamming", "pixel"]))
    first, labels = procedural(30)
    built.add(first, [str(i) for i in range(30)], labels)
    built.save()
    reopened = ImageIndex.open(tmp_path, tiny_tokenizer)
    extra, extra_labels = procedural(5, start=500)
    reopened.add(extra, [f"extra{i}" for i in range(5)], extra_labels)
    reopened.save()
    final = ImageIndex.open(tmp_path, tiny_tokenizer)
    assert len(final) == 35
    assert final.search(extra[2:3], k=1)["hamming"].sources[0][0] == "extra2"


def test_a_different_tokenizer_is_refused(index):
    torch.manual_seed(1)
    other = Tokenizer(TokenizerConfig(12, 32, (1, 1, 2), 1, image_size=32))
    with pytest.raises(IndexError_, match="built with another tokenizer"):
        ImageIndex.open(index.directory, other)


def test_corrupt_and_truncated_files_are_reported(tmp_path, index, tiny_tokenizer):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(index.directory, copy)
    files = ImageIndex.open(copy, tiny_tokenizer).files_directory
    data = (files / "hamming.faiss").read_bytes()
    (files / "hamming.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexError_, match="corrupt or truncated"):
        ImageIndex.open(copy, tiny_tokenizer)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(IndexError_, match="manifest.json is corrupt"):
        ImageIndex.open(copy, tiny_tokenizer)
    with pytest.raises(IndexError_, match="manifest.json is missing"):
        ImageIndex.open(tmp_path / "nothing", tiny_tokenizer)


def test_bad_queries_are_explained(index):
    with pytest.raises(IndexError_, match=r"shape \(B, 3, 32, 32\)"):
        index.add(torch.rand(1, 3, 64, 64), ["x"], [0])
    with pytest.raises(IndexError_, match="only be searched by Hamming"):
        index.search(tokens=torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(IndexError_, match="give images or tokens"):
        index.search()


def test_fetched_lpips_weights_are_verified_then_loaded(tmp_path, monkeypatch, capsys):
    """`indexes fetch-weights` from a local copy (a random AlexNet): a wrong hash is refused, a right one installed,
    and LPIPS then runs with that trunk (the pretrained loading path, offline). In this process: torch reads
    $TORCH_HOME on every call."""
    import hashlib

    from torchvision.models import alexnet

    from indexes.cli import main

    copy = tmp_path / "copy.pth"
    torch.save(alexnet().state_dict(), copy)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    installed = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"

    assert main(["fetch-weights", "--url", copy.as_uri()]) == 2  # the real file's hash (7be5be79…) is not this copy's
    assert "expected 7be5be79" in capsys.readouterr().err and not installed.exists()
    assert not list(installed.parent.glob("*.part"))
    assert main(["fetch-weights", "--url", copy.as_uri(), "--sha256", digest[:16]]) == 0
    assert installed.read_bytes() == copy.read_bytes()
    embedding = LPIPSEmbedding("alex")
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    ratio = (embedding(x) - embedding(y)).pow(2).sum(1) / embedding.lpips(x, y, normalize=True).flatten()
    assert (ratio - 1).abs().max() <= 1e-4


def test_build_resume_add_and_search_from_the_command_line(tmp_path):
    tokenizer = ["--tokenizer", str(OFFICIAL_TINY / "tiny_tokenizer.bin"), "--tokenizer-config", "tiny"]

    def indexes(*args, check=True):
        result = subprocess.run([sys.executable, "-m", "indexes", *args], cwd=ROOT, capture_output=True, text=True)
        assert not check or result.returncode == 0, result.stderr[-2000:]
        return result

    out = str(tmp_path / "index")
    indexes("build", *tokenizer, "--limit", "40", "--random-lpips-backbone", "--batch-size", "16", "--index", out)
    indexes("build", *tokenizer, "--limit", "64", "--batch-size", "16", "--index", out)  # continues at 40, random trunk
    assert json.loads((tmp_path / "index" / "manifest.json").read_text())["count"] == 64
    images, _ = procedural(1, start=3)
    from maskbit.images import save_image

    save_image(images[0], tmp_path / "query.png")
    indexes("add", str(tmp_path / "query.png"), "--index", out, *tokenizer)
    indexes(
        "search",
        str(tmp_path / "query.png"),
        "--index",
        out,
        *tokenizer,
        "--k",
        "2",
        "--json",
        str(tmp_path / "r.json"),
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert report[0]["hamming"][0]["distance"] == 0
    assert {report[0]["hamming"][0]["source"], report[0]["hamming"][1]["source"]} >= {"procedural:train:3"}
    # Token-grid queries; each Hamming neighbour's per-token map sums to its distance and is XOR + popcount.
    codes = np.random.default_rng(0).integers(0, 4096, size=(2, 8, 8))
    np.save(tmp_path / "tokens.npy", codes)
    indexes(
        "search",
        "--tokens",
        str(tmp_path / "tokens.npy"),
        "--index",
        out,
        *tokenizer,
        "--json",
        str(tmp_path / "t.json"),
    )
    report = json.loads((tmp_path / "t.json").read_text())
    assert [entry["query"] for entry in report] == [f"{tmp_path / 'tokens.npy'}[{i}]" for i in range(2)]
    generation = json.loads((tmp_path / "index" / "manifest.json").read_text())["generation"]
    stored = np.load(tmp_path / "index" / f"generation-{generation}" / "tokens.npy")
    for q, entry in enumerate(report):
        assert set(entry) == {"query", "hamming", "verdicts", "overlap"} and entry["overlap"] == {}
        nearest = entry["hamming"][0]["distance"]  # an index built by the CLI has no calibrated threshold
        assert entry["verdicts"]["hamming"] == {
            "nearest_distance": nearest,
            "threshold": None,
            "percentile": None,
            "memorized": None,
        }
        for neighbour in entry["hamming"]:
            token_map = np.array(neighbour["token_distance_map"])
            expected = np.vectorize(lambda v: bin(v).count("1"))(codes[q] ^ stored[neighbour["id"]])
            assert token_map.shape == (8, 8) and np.array_equal(token_map, expected)
            assert token_map.sum() == neighbour["distance"]
    missing = indexes("search", "--index", out, *tokenizer, check=False)
    assert missing.returncode == 2 and "--tokens" in missing.stderr
    bad = indexes("search", str(tmp_path / "query.png"), "--index", str(tmp_path / "none"), *tokenizer, check=False)
    assert bad.returncode == 2 and "manifest.json is missing" in bad.stderr


def test_memorization_report_flags_copies_of_training_images(tmp_path, index):
    from indexes.report import memorization_report

    copies, _ = procedural(4, start=10)  # "generations" that are training images
    novel, _ = procedural(12, start=900)  # unseen images of the same distribution
    heldout, _ = procedural(40, split="test")
    report = memorization_report(index, torch.cat([copies, novel]), heldout, tmp_path, percentile=1.0)
    for metric in ("hamming", "lpips", "pixel"):
        flagged = {f["generated"] for f in report["metrics"][metric]["flagged"]}
        assert {f"generated:{i}" for i in range(4)} <= flagged, metric
        assert len(flagged) <= 4 + 2, metric  # unseen images are seldom closer than the held-out 1st percentile
        assert report["metrics"][metric]["flagged"][0]["nearest"] in {f"train:{i}" for i in range(10, 14)}
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["metrics"]["hamming"]["threshold"] == report["metrics"]["hamming"]["threshold"]
    for name in ("report.html", "report.png", "closest_hamming.png", "closest_lpips.png", "closest_pixel.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


# ---------------------------------------------------------------------------------------------------- backends


def test_torch_flat_equals_numpy_brute_force_with_ties_by_lower_id():
    from indexes.backends import TorchFlat

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(300, 6), dtype=np.uint8)
    codes[200:] = codes[:100]  # exact duplicates: ties that must come out in ascending-id order
    flat = TorchFlat(48, binary=True)
    flat.add(codes[:150])
    flat.add(codes[150:])
    queries = codes[[3, 7, 250]]
    distances, ids = flat.search(queries, 5)
    brute = np.unpackbits(queries[:, None] ^ codes[None], axis=-1).sum(-1)
    order = np.argsort(brute, axis=1, kind="stable")[:, :5]
    assert np.array_equal(ids, order) and np.array_equal(distances, np.take_along_axis(brute, order, 1))
    assert ids[0, :2].tolist() == [3, 203] and distances[0, :2].tolist() == [0, 0]

    vectors = rng.standard_normal((500, 40)).astype(np.float32)
    l2 = TorchFlat(40, binary=False)
    l2.add(vectors)
    distances, ids = l2.search(vectors[:4], 3)
    brute = ((vectors[:4, None].astype(np.float64) - vectors[None]) ** 2).sum(-1)
    assert np.array_equal(ids, np.argsort(brute, axis=1, kind="stable")[:, :3])
    assert np.allclose(distances, np.sort(brute, axis=1)[:, :3], rtol=1e-6, atol=1e-9)
    assert np.array_equal(l2.reconstruct(7), vectors[7])


def test_a_faiss_index_searched_by_torch_finds_what_faiss_finds_and_is_written_back_as_faiss(tmp_path):
    """The path a `.faiss` index takes on a GPU without GPU FAISS (`place`): TorchFlat.from_faiss, then written back
    in FAISS's format; here on the CPU, with real-size 3072-bit codes."""
    import faiss

    from indexes.backends import TorchFlat, place, read_flat, write_flat

    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(2000, 384), dtype=np.uint8)
    codes[1500:1510] = codes[:10]  # ties
    exact = faiss.IndexBinaryFlat(3072)
    exact.add(codes)
    moved = TorchFlat.from_faiss(exact, "cpu")
    assert place(exact, "cpu") is exact and place(moved, "cpu") is moved
    queries = np.concatenate([codes[:5], rng.integers(0, 256, size=(5, 384), dtype=np.uint8)])
    (d_faiss, i_faiss), (d_torch, i_torch) = exact.search(queries, 20), moved.search(queries, 20)
    assert np.array_equal(d_faiss, d_torch) and np.array_equal(i_torch[:5, :2], [[i, 1500 + i] for i in range(5)])
    write_flat(moved, str(tmp_path / "hamming.faiss"), True, "faiss")
    again = read_flat("faiss", tmp_path / "hamming.faiss", True)
    assert isinstance(again, faiss.IndexBinaryFlat) and np.array_equal(again.reconstruct_n(0, 2000), codes)

    vectors = rng.standard_normal((300, 24)).astype(np.float32)
    l2 = faiss.IndexFlatL2(24)
    l2.add(vectors)
    d_faiss, i_faiss = l2.search(vectors[:3], 4)
    d_torch, i_torch = TorchFlat.from_faiss(l2, "cpu").search(vectors[:3], 4)
    assert np.array_equal(i_faiss, i_torch) and np.allclose(d_faiss, d_torch, rtol=1e-5, atol=1e-5)


def test_torch_backend_index_equals_the_faiss_index(tmp_path, index, tiny_tokenizer):
    built = ImageIndex.create(tmp_path, tiny_tokenizer, 32, IndexOptions(backend="torch"))
    images, labels = procedural(120)
    built.add(images[:70], [f"train:{i}" for i in range(70)], labels[:70])
    built.save()
    reopened = ImageIndex.open(tmp_path, tiny_tokenizer)  # add after a reopen, as `indexes add` does
    reopened.add(images[70:], [f"train:{i}" for i in range(70, 120)], labels[70:])
    reopened.save()
    torch_index = ImageIndex.open(tmp_path, tiny_tokenizer)
    files = torch_index.files_directory
    assert torch_index.manifest.backend == "torch" and sorted(p.name for p in files.glob("*.npy")) == [
        "hamming.npy", "lpips.npy", "pixel.npy", "thumbnails.npy", "tokens.npy"
    ]  # fmt: skip
    queries, _ = procedural(6, split="test")
    ours, reference = torch_index.search(queries, k=8), index.search(queries, k=8)
    assert np.array_equal(ours["hamming"].distances, reference["hamming"].distances)
    for metric in ("lpips", "pixel"):
        assert np.allclose(ours[metric].distances, reference[metric].distances, rtol=1e-4, atol=1e-6)
        assert np.array_equal(ours[metric].ids[:, 0], reference[metric].ids[:, 0])


def test_without_faiss_the_torch_backend_is_chosen_and_faiss_indexes_are_explained(tmp_path, index):
    code = f"""
import sys
sys.modules["faiss"] = None  # as if faiss-cpu were not installed
import torch
from indexes.store import ImageIndex, IndexError_, IndexOptions
from maskbit import Tokenizer
tiny = {str(OFFICIAL_TINY)!r}
tokenizer = Tokenizer.from_pretrained(tiny + "/tiny_tokenizer.bin", tiny + "/tiny_tokenizer.yaml")
built = ImageIndex.create({str(tmp_path / "new")!r}, tokenizer, 32, IndexOptions(metrics=["hamming", "pixel"]))
built.add(torch.rand(5, 3, 32, 32), list("abcde"), [0] * 5)
built.save()
assert ImageIndex.open({str(tmp_path / "new")!r}, tokenizer).manifest.backend == "torch"
try:
    ImageIndex.open({str(index.directory)!r}, tokenizer)
except IndexError_ as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "faiss is not installed (pip install faiss-cpu)" in result.stdout and "--backend torch" in result.stdout


def test_approximate_hamming_finds_true_distances_with_high_recall(tmp_path, index, tiny_tokenizer):
    built = ImageIndex.create(tmp_path, tiny_tokenizer, 32, IndexOptions(metrics=["hamming"], approximate_hamming=True))
    images, labels = procedural(120)
    built.add(images[:60], [f"train:{i}" for i in range(60)], labels[:60])
    built.save()
    reopened = ImageIndex.open(tmp_path, tiny_tokenizer)
    reopened.add(images[60:], [f"train:{i}" for i in range(60, 120)], labels[60:])
    reopened.save()
    approximate_index = ImageIndex.open(tmp_path, tiny_tokenizer)
    assert (approximate_index.files_directory / "hamming-hnsw.faiss").is_file() and approximate_index.hnsw.ntotal == 120

    queries, _ = procedural(20, split="test")
    tokens = tiny_tokenizer.encode(queries)
    exact = approximate_index.search(tokens=tokens, k=10, metrics=["hamming"])["hamming"]
    found = approximate_index.search(tokens=tokens, k=10, metrics=["hamming"], approximate=True)["hamming"]
    packed = np.stack([bits.pack_bits(torch.from_numpy(t[None]).long(), 12)[0].numpy() for t in index.tokens])
    brute = np.unpackbits(bits.pack_bits(tokens, 12).numpy()[:, None] ^ packed[None], axis=-1).sum(-1)
    assert np.array_equal(np.take_along_axis(brute, found.ids, 1), found.distances)  # distances are exact
    recall = (found.distances <= exact.distances[:, -1:]).sum(1).clip(max=10).mean() / 10
    assert recall >= 0.9

    with pytest.raises(IndexError_, match="no approximate Hamming index"):
        index.search(tokens=tokens, metrics=["hamming"], approximate=True)
    with pytest.raises(IndexError_, match="needs the faiss backend"):
        ImageIndex.create(tmp_path / "t", tiny_tokenizer, 32, IndexOptions(backend="torch", approximate_hamming=True))


# ---------------------------------------------------------------------------------------------------- LPIPS sketches


def test_count_sketch_is_linear_and_keeps_squared_distances_in_expectation():
    from indexes.lpips_embedding import CountSketch

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3000, generator=generator), torch.randn(2, 3000, generator=generator)
    sketch = CountSketch(3000, 256, seed=1)
    assert torch.allclose(sketch(x) - sketch(y), sketch(x - y), atol=1e-5)
    assert torch.equal(sketch(x), CountSketch(3000, 256, seed=1)(x))  # a function of (D, d, seed)
    one_hot = torch.zeros(1, 3000)
    one_hot[0, 17] = 3.0
    assert sketch(one_hot).pow(2).sum() == 9.0  # a single coordinate keeps its norm exactly
    true = (x - y).pow(2).sum(1)
    estimates = torch.stack([CountSketch(3000, 256, seed=s)(x - y).pow(2).sum(1) for s in range(200)])
    assert torch.allclose(estimates.mean(0), true, rtol=0.02)  # unbiased
    # Var = (2/d)(‖x‖⁴ − Σ x_i⁴): a relative standard deviation of √(2/d) here; 200 draws estimate it to ±10 %
    relative_std = estimates.std(0) / true
    assert ((relative_std / (2 / 256) ** 0.5 - 1).abs() < 0.2).all()
    with pytest.raises(ValueError, match="sketch dimension"):
        CountSketch(100, 200)


@pytest.fixture(scope="module")
def sketched(tmp_path_factory, tiny_tokenizer):
    """The procedural dataset's first 150 images, LPIPS stored as 64-dimensional sketches in a PQ index."""
    from indexes.build import build_dataset_index

    out = tmp_path_factory.mktemp("sketched")
    build_dataset_index(
        out,
        tiny_tokenizer,
        limit=150,
        resolution=32,
        options=IndexOptions(metrics=["hamming", "lpips"], lpips_sketch=64, lpips_factory="PQ8x4"),
        batch_size=50,
    )
    return ImageIndex.open(out, tiny_tokenizer)


def test_sketched_lpips_returns_exact_lpips_and_with_a_full_shortlist_the_exact_top_k(sketched):
    queries, _ = procedural(4, split="test")
    training, _ = procedural(150)
    assert sketched.manifest.lpips_sketch.factory == "PQ8x4" and sketched.flat["lpips"].is_trained
    full = sketched.search(queries, k=6, metrics=["lpips"], lpips_shortlist=150)["lpips"]
    short = sketched.search(queries, k=6, metrics=["lpips"], lpips_shortlist=30)["lpips"]
    hits = 0
    for q in range(len(queries)):
        reference = sketched.lpips.lpips(queries[q : q + 1].expand(150, -1, -1, -1), training, normalize=True)
        reference = reference.flatten().numpy()
        assert np.allclose(np.sort(reference)[:6], full.distances[q], rtol=1e-4, atol=1e-6)
        assert np.allclose(reference[short.ids[q]], short.distances[q], rtol=1e-4, atol=1e-6)  # exact, re-ranked
        hits += len(set(short.ids[q]) & set(np.argsort(reference)[:6]))
    assert hits / (6 * len(queries)) >= 0.8  # a 30-image shortlist of 150 by 64-d PQ sketches keeps most of the top 6
    images, _ = procedural(1, start=42)
    assert sketched.search(images, k=1, metrics=["lpips"])["lpips"].ids[0, 0] == 42


def test_sketched_lpips_rereads_files_and_explains_what_it_cannot_read(tmp_path, sketched, tiny_tokenizer):
    import shutil

    from indexes.sources import load_indexed_images
    from maskbit.images import save_image

    copy = tmp_path / "index"
    shutil.copytree(sketched.directory, copy)
    added = ImageIndex.open(copy, tiny_tokenizer)
    images, _ = procedural(2, start=900)
    save_image(images[0], tmp_path / "a.png")
    added.add(images, [str(tmp_path / "a.png"), "nowhere:9"], [0, 0])
    assert torch.allclose(load_indexed_images(added, [150]), images[:1], atol=1 / 255)
    assert torch.allclose(load_indexed_images(added, [3]), procedural(1, start=3)[0])
    with pytest.raises(IndexError_, match="'nowhere:9', which is neither an item of the indexed dataset"):
        load_indexed_images(added, [151])
    with pytest.raises(IndexError_, match="needs --lpips-sketch and the faiss backend"):
        ImageIndex.create(tmp_path / "x", tiny_tokenizer, 32, IndexOptions(lpips_factory="PQ8"))
    untrained = ImageIndex.create(
        tmp_path / "y",
        tiny_tokenizer,
        32,
        IndexOptions(lpips_sketch=64, lpips_factory="PQ8"),
    )
    with pytest.raises(IndexError_, match="must be trained"):
        untrained.add(images, ["a", "b"], [0, 0])
    with pytest.raises(IndexError_, match="train on more images"):
        untrained.train_lpips(images)


def test_a_two_process_accelerate_build_equals_a_one_process_build(tmp_path):
    """`accelerate launch -m indexes build` on 2 CPU processes (gloo): each indexes a share into its own part, the
    main process merges them in order (and trains the PQ-compressed LPIPS sketches on the merged vectors)."""
    from tests.conftest import free_port

    tokenizer = ["--tokenizer", str(OFFICIAL_TINY / "tiny_tokenizer.bin"), "--tokenizer-config", "tiny"]
    common = [*tokenizer, "--limit", "70", "--batch-size", "16"]
    common += ["--lpips-sketch", "64", "--lpips-index", "PQ8x4"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "indexes", "build", *common, "--index", str(tmp_path / "one")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    result = subprocess.run(
        [*launch, "-m", "indexes", "build", *common, "--index", str(tmp_path / "two")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("indexed 70 images") == 1  # the main process reports
    assert not (tmp_path / "two.parts").exists()  # merged, then removed
    tiny = Tokenizer.from_pretrained(OFFICIAL_TINY / "tiny_tokenizer.bin", config="tiny")
    one, two = ImageIndex.open(tmp_path / "one", tiny), ImageIndex.open(tmp_path / "two", tiny)
    assert len(two) == 70 and two.sources == one.sources
    assert np.array_equal(two.tokens, one.tokens) and np.array_equal(two.thumbnails, one.thumbnails)
    assert np.array_equal(two.flat["hamming"].reconstruct_n(0, 70), one.flat["hamming"].reconstruct_n(0, 70))
    assert np.allclose(two.flat["pixel"].reconstruct_n(0, 70), one.flat["pixel"].reconstruct_n(0, 70))
    queries, _ = procedural(3, split="test")
    a, b = one.search(queries, k=5), two.search(queries, k=5)
    for metric in ("hamming", "lpips", "pixel"):
        assert np.allclose(a[metric].distances, b[metric].distances, rtol=1e-4, atol=1e-6), metric


def test_ready_index_builds_extends_calibrates_and_refuses(tmp_path, tiny_tokenizer):
    """The index policy the app asks for (indexes.build.ready_index), with typed answers."""
    from indexes.build import ready_index

    steps = []
    options = IndexOptions(metrics=["hamming", "pixel"])
    index = ready_index(
        tmp_path / "i",
        tiny_tokenizer,
        limit=12,
        resolution=32,
        options=options,
        heldout=10,
        progress=lambda *a: steps.append(a[2]),
    )
    assert len(index) == 12 and index.image_size == 32 and index.grid == (8, 8) and index.num_bits == 12
    assert index.tokenizer_kind == "lfq" and index.metrics == ("hamming", "pixel")
    assert index.dataset.spec == "procedural" and len(index.classes) == 10
    assert set(index.calibration) == {"hamming", "pixel"} and index.calibration["pixel"].heldout_images == 10
    assert steps[0] == "indexing procedural" and "calibrating on held-out images" in steps
    grown = ready_index(tmp_path / "i", tiny_tokenizer, limit=16, resolution=32, options=options)
    assert len(grown) == 16 and torch.equal(torch.from_numpy(grown.tokens[:12]), torch.from_numpy(index.tokens))
    with pytest.raises(IndexError_, match="is not an index"):
        ready_index(tmp_path / "nothing", tiny_tokenizer, limit=4, must_exist=True)
    with pytest.raises(IndexError_, match="no index for this 256px tokenizer: build one"):
        ready_index(tmp_path / "big", tiny_tokenizer, limit=4)  # the tiny tokenizer's own size is 256
    other = Tokenizer.from_pretrained(
        OFFICIAL_TINY / "tiny_tokenizer.bin", config=OFFICIAL_TINY / "tiny_tokenizer.yaml"
    )
    with torch.no_grad():
        next(other.parameters()).add_(1)
    with pytest.raises(IndexError_, match="was built with another tokenizer"):
        ready_index(tmp_path / "i", other, limit=16, resolution=32)


def test_the_app_reads_no_raw_index_manifest():
    """Issue 28.3: the app asks the index's typed attributes; what a manifest holds is indexes/' business."""
    for path in (ROOT / "app").glob("*.py"):
        assert "manifest" not in path.read_text(), path.name


# ---------------------------------------------------------------------------------------------------- report audit
# 120 training images in 10 label cells give about 12 generations per cell: dgm-eval's default tau (a cell needs more
# than 20 generated images) would keep none, so these tests pass tau = 0.05 (cells with more than 6). With m ≈ 12 per
# cell, perfect copies reach at most C_T ≈ −√(3m) ≈ −6; 600 held-out images (about 60 per cell) bring them past −5.


@pytest.fixture(scope="module")
def audit_heldout() -> torch.Tensor:
    return procedural(600, split="test")[0]


def test_report_audit_catches_exported_training_images(tmp_path, index, audit_heldout):
    from indexes.report import memorization_report

    copies, _ = procedural(120)  # every training image, exported as a "generation"
    report = memorization_report(index, copies, audit_heldout, tmp_path, tau=0.05)
    assert report["verdict"].startswith("Possible copying")
    for metric in ("hamming", "pixel"):
        audit = report["metrics"][metric]
        assert audit["c_t"] < -5 and audit["c_t_reason"]["code"] == "fitted", metric
        assert audit["c_t_reason"]["partition"] == "classes" and audit["c_t_reason"]["tau"] == 0.05
        assert audit["flagged_fraction"] == 1.0 and audit["relative_flagged_fraction"] == 1.0, metric
        assert audit["auth_pct"] == 0.0 and audit["relative_neighbours"] == 50, metric
    saved = json.loads((tmp_path / "report.json").read_text())
    assert (
        saved["verdict"] == report["verdict"] and saved["metrics"]["pixel"]["c_t"] == report["metrics"]["pixel"]["c_t"]
    )
    page = (tmp_path / "report.html").read_text()
    assert "Possible copying" in page and "C_T (Meehan)" in page and "AuthPct" in page
    assert "over the classes of the nearest training images (10 cells)" in page


@pytest.mark.parametrize("count", [40, 120])
def test_report_computes_c_t_at_the_default_tau_from_40_images(index, audit_heldout, count):
    """Issue 34.1: 120 or 40 images spread over 10 classes leave no class with more than 20 of them (dgm-eval's τ =
    20 / M): C_T takes k-means cells of the training tokens or one cell, strongly negative for exported training
    images and near 0 for fresh images of the held-out distribution."""
    from indexes.report import compute_report

    copies, _ = procedural(count)
    fresh, _ = procedural(count, start=600, split="test")  # not among the 600 held-out images
    heldout = audit_heldout[:count]
    for generated, low, high in ((copies, -np.inf, -5), (fresh, -3.5, 3.5)):
        report = compute_report(index, generated, heldout).to_json()
        for metric, data in report["metrics"].items():
            reason = data["c_t_reason"]
            assert reason["code"] == "fitted" and low < data["c_t"] < high, (metric, data["c_t"])
            classes = reason["tried"][0]
            assert classes["partition"] == "classes" and classes["cells"] == 10, metric
            assert classes["problem"] in ("no_kept_cell", "low_coverage"), metric
            assert reason["partition"] in ("k-means", "one cell") and reason["min_generated"] == 21, metric


def test_report_audit_passes_fresh_images_and_finds_duplicated_generations(tmp_path, index, audit_heldout):
    from indexes.report import memorization_report

    fresh, _ = procedural(120, start=600, split="test")  # unseen, from the held-out images' distribution
    generated = torch.cat([fresh, fresh[:1]])  # one generation twice: a clique of two
    report = memorization_report(index, generated, audit_heldout, tmp_path, tau=0.05)
    assert report["verdict"].startswith("No sign of copying"), report["verdict"]
    for metric in ("hamming", "lpips", "pixel"):
        audit = report["metrics"][metric]
        assert abs(audit["c_t"]) < 3.5, metric
        assert audit["flagged_fraction"] <= 0.04, metric  # near the 1st percentile: 121 images, about 1 flagged
        assert audit["auth_pct"] > 40 and audit["relative_flagged_fraction"] < 0.5, metric
        assert any({"generated:0", "generated:120"} <= set(group) for group in audit["cliques"]), metric


def test_report_audit_without_enough_generations_records_why_and_refuses_an_empty_set(tmp_path, index):
    from indexes.report import memorization_report

    heldout, _ = procedural(40, split="test")
    report = memorization_report(index, procedural(6, start=900)[0], heldout, tmp_path)  # default tau needs > 20
    for metric, audit in report["metrics"].items():
        assert audit["c_t"] is None and audit["c_t_reason"]["code"] == "too_few_generated"
        assert audit["c_t_reason"]["tried"] == []
        if metric.startswith("hamming_"):  # a window test finds the nearest training image only
            assert audit["auth_pct"] is None and "nearest training image only" in audit["auth_pct_note"]
        else:
            assert audit["auth_pct"] is not None
    assert "C_T is not computed" in report["verdict"]
    with pytest.raises(ValueError, match="generated"):
        memorization_report(index, torch.zeros(0, 3, 32, 32), heldout, tmp_path)


def audit_metric(c_t, flagged, p_value, relative=0.0, heldout_relative=0.0, relative_p=1.0) -> dict:
    """What `verdict` reads of one metric's entry in report.json."""
    return {
        "c_t": c_t,
        "flagged_fraction": flagged,
        "flagged_p_value": p_value,
        "relative_flagged_fraction": relative,
        "heldout_relative_flagged_fraction": heldout_relative,
        "relative_p_value": relative_p,
    }


def test_verdict_calls_copying_only_when_hamming_or_carlinis_criterion_agrees():
    from indexes.report import verdict

    def sentence(**metrics) -> str:
        return verdict({"percentile": 1.0, "metrics": metrics})

    # A generator of smooth samples: close in pixel distance to smooth training images, not by bit tokens, and no
    # generation much closer to one training image than to its other neighbours (the bundled generator's figures).
    smooth = sentence(hamming=audit_metric(2.5, 0.004, 0.6), pixel=audit_metric(-4.3, 0.138, 1e-40))
    assert smooth.startswith("No copy confirmed: pixel alone places the generations closer"), smooth
    assert "no test on bit tokens does" in smooth and "-4.3 (pixel)" in smooth
    both = sentence(hamming=audit_metric(0.1, 0.01, 0.5), lpips=audit_metric(-3.5, 0.02, 0.05), pixel=smooth_pixel())
    assert both.startswith("No copy confirmed: lpips and pixel alone place the generations"), both
    # Carlini's criterion in excess over held-out images confirms what pixel distance finds.
    carlini = sentence(hamming=audit_metric(0.4, 0.01, 0.5), pixel=audit_metric(-4.3, 0.138, 1e-40, 0.12, 0.01, 1e-20))
    assert carlini.startswith("Possible copying by pixel:") and "Carlini's relative criterion agrees" in carlini
    assert "12.0 % of generations against 1.0 % of held-out images by pixel" in carlini
    # Hamming distance finding the generations closer is copying by itself, and names the other metrics that agree.
    hamming = sentence(hamming=audit_metric(-6.0, 0.5, 1e-30), pixel=audit_metric(-5.0, 0.4, 1e-25))
    assert hamming.startswith("Possible copying by hamming, pixel:") and "bit tokens agrees (hamming)" in hamming
    # So does a window test on the tokens (shifted, mirrored or partial copies), where whole grids differ.
    shifted = sentence(hamming=audit_metric(0.3, 0.01, 0.5), hamming_shifted=audit_metric(-5.5, 0.4, 1e-20))
    assert shifted.startswith("Possible copying by hamming_shifted:") and "agrees (hamming_shifted)" in shifted
    excess = sentence(hamming=audit_metric(None, 0.2, 1e-9), pixel=audit_metric(None, 0.0, 1.0))
    assert excess.startswith("Possible copying by hamming:") and "C_T is not computed" in excess
    assert sentence(hamming=audit_metric(-1.0, 0.01, 0.5), pixel=audit_metric(1.2, 0.0, 1.0)).startswith(
        "No sign of copying: C_T is -1.0 (hamming), 1.2 (pixel)"
    )
    without = sentence(pixel=audit_metric(-4.3, 0.138, 1e-40, None, None, None))
    assert without.startswith("No copy confirmed: pixel alone") and "no Hamming metric" in without


def smooth_pixel() -> dict:
    return audit_metric(-4.3, 0.138, 1e-40, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("native", [True, False], ids=["native bf16", "no native bf16"])
def test_an_index_encodes_its_queries_as_its_tokens_were_computed(tmp_path, monkeypatch, native):
    """ "auto" indexes in bf16 where it is native; a query finds its own entry at distance 0 whatever the tokenizer's
    precision is by then (the app's setting changed, or the index came from another machine)."""
    from maskbit import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    tokenizer = Tokenizer.from_pretrained(OFFICIAL_TINY / "tiny_tokenizer.bin", OFFICIAL_TINY / "tiny_tokenizer.yaml")
    built = ImageIndex.create(tmp_path, tokenizer.inference("cpu", "auto"), 32, IndexOptions(metrics=["hamming"]))
    images, labels = procedural(24)
    built.add(images, [f"train:{i}" for i in range(24)], labels)
    built.save()
    assert built.precision == ("bf16" if native else "fp32")
    tokenizer.precision = "fp32" if native else "bf16"
    assert not np.array_equal(tokenizer.encode(images).numpy(), built.tokens)  # the tokenizer's own would differ
    index = ImageIndex.open(tmp_path, tokenizer)
    assert index.precision == built.precision and index.describe().count(f"tokens in {built.precision}") == 1
    for i in range(24):  # one at a time, as uploads come
        found = index.search(images[i : i + 1], metrics=["hamming"], k=1)["hamming"]
        assert found.distances[0, 0] == 0 and found.ids[0, 0] == i
