"""Edited and partial copies: every window test's distance is the minimum that a brute-force numpy comparison of
every token window finds, on both backends, and each test finds the edit it is for."""

import numpy as np
import pytest
import torch

from indexes import edited
from indexes.edited import TESTS, EditedSearch, WindowTest, edited_neighbours, offsets, window_bounds
from indexes.store import ImageIndex, IndexError_, IndexOptions

QUADRANT = WindowTest("quadrant", "Hamming, best quadrant, shifted ±1 (relative, 5)", edited.QUADRANTS, 1, relative=5)
HALF = WindowTest("half", "Hamming, best half", edited.HALVES)
EDITED = WindowTest("edited", "strips, shifted ±1, flipped (relative, 50)", edited.HALVES, 1, (False, True), 2, 0.4, 50)


def shapes(count: int, split: str = "train", start: int = 0) -> torch.Tensor:
    from data import split_images

    return split_images("procedural", split, count, 32, start=start)[0]


@pytest.fixture(scope="module", params=["faiss", "torch"])
def small_index(request, tmp_path_factory, tiny_tokenizer):
    """30 procedural training images (32 px, 8×8 tokens of 12 bits) on one backend."""
    options = IndexOptions(metrics=["hamming"], backend=request.param)
    index = ImageIndex.create(tmp_path_factory.mktemp(request.param), tiny_tokenizer, 32, options)
    index.add(shapes(30), [f"train:{i}" for i in range(30)], [0] * 30)
    return index


def window_distances(indexed, query, test: WindowTest, mirror: bool, window: str, dy: int, dx: int) -> np.ndarray:
    """(Q, N) differing bits between each query's window moved by (dy, dx) and each indexed grid's window: each pair
    of tokens compared as integers (popcount of XOR)."""
    top, bottom, left, right = window_bounds(indexed.shape[1:], window, test.margin, test.part)
    moved = query[mirror][:, top + dy : bottom + dy, left + dx : right + dx]  # (Q, a, b)
    return np.bitwise_count(moved[:, None] ^ indexed[None, :, top:bottom, left:right]).sum((-2, -1))


def score(distances: np.ndarray, relative: int) -> np.ndarray:
    """(Q, N) → (Q,): the nearest distance, or d₁ / mean(d₁..d_n) of the n nearest (1 where they are all 0)."""
    if not relative:
        return distances.min(1).astype(np.float64)
    nearest = np.sort(distances, 1)[:, : min(relative, distances.shape[1])].astype(np.float64)
    mean = nearest.mean(1)
    return np.where(mean > 0, nearest[:, 0] / np.where(mean > 0, mean, 1), 1.0)


def brute_force(indexed: np.ndarray, query: dict[bool, np.ndarray], test: WindowTest) -> np.ndarray:
    """(Q,) the test's distance with every configuration (mirroring, window, move) and indexed image enumerated."""
    s = test.max_shift
    best = np.full(len(query[False]), np.inf)
    for mirror in test.mirrored:
        for window in test.windows:
            for dy in range(-s, s + 1):
                for dx in range(-s, s + 1):
                    d = window_distances(indexed, query, test, mirror, window, dy, dx)
                    best = np.minimum(best, score(d, test.relative))
    return best


def distance_at(indexed, query, found, q: int) -> tuple[float, int, int]:
    """The test's distance at the configuration it reports for query q (its window, move, mirroring), the bits
    between the query's window and the reported image's there, and the fewest bits to any indexed image there."""
    test = ALL[found.test]
    dy, dx = found.offsets[q]
    d = window_distances(indexed, query, test, bool(found.mirrored[q]), found.windows[q], dy, dx)[q : q + 1]
    return float(score(d, test.relative)[0]), int(d[0, found.ids[q]]), int(d[0].min())


ALL = {**TESTS, "quadrant": QUADRANT, "half": HALF, "edited": EDITED}


def test_every_test_finds_the_brute_force_minimum_and_says_where(small_index, tiny_tokenizer):
    from indexes import plant

    train, hosts = shapes(6), shapes(6, split="test")
    queries = torch.cat(
        [shapes(8, split="test", start=10), train, train.flip(-1), plant.shift(train), plant.half_pasted(train, hosts)]
    )
    found = edited_neighbours(small_index, queries, tests=[*TESTS, QUADRANT, HALF, EDITED])
    assert list(found) == [*TESTS, "quadrant", "half", "edited"]
    with torch.no_grad():
        query = {m: tiny_tokenizer.encode(queries.flip(-1) if m else queries).numpy() for m in (False, True)}
    indexed = small_index.tokens.astype(np.int64)
    for name, result in found.items():
        expected = brute_force(indexed, query, ALL[name])
        assert result.distances.dtype == np.float64 and np.array_equal(result.distances, expected), name
        test = ALL[name]
        for q in range(len(queries)):
            at, bits_at_id, nearest_bits = distance_at(indexed, query, result, q)
            assert at == expected[q] and bits_at_id == nearest_bits, (name, q)
            top, bottom, left, right = window_bounds(small_index.grid, result.windows[q], test.margin, test.part)
            assert result.tokens[q] == (bottom - top) * (right - left)
    exact, flipped = slice(8, 14), slice(14, 20)  # copies of training images 0..5
    for name in ALL:
        assert (found[name].distances[exact] == 0).all() and (found[name].ids[exact] == np.arange(6)).all(), name
        assert (found[name].offsets[exact] == 0).all() and not found[name].mirrored[exact].any()
    for name in ("flipped", "edited"):
        assert (found[name].distances[flipped] == 0).all() and found[name].mirrored[flipped].all()
        assert (found[name].ids[flipped] == np.arange(6)).all()


def test_the_bundled_tokenizer_finds_each_edit_by_its_test(tmp_path):
    """At the bundled model (64 px, 16×16 tokens: 4 px per token) a 4-pixel shift is found at offset (1, 1), a
    mirrored copy by its mirror image, and half an image pasted onto a held-out one by its left half, each nearer
    to its training image than any whole-grid comparison puts it."""
    from data import split_images
    from indexes import plant
    from maskbit import Tokenizer

    tokenizer = Tokenizer.from_pretrained("default")
    train = split_images("procedural", "train", 16, 64)[0]
    index = ImageIndex.create(tmp_path, tokenizer, 64, IndexOptions(metrics=["hamming"]))
    index.add(train, [f"train:{i}" for i in range(16)], [0] * 16)
    originals, hosts = train[:4], split_images("procedural", "test", 4, 64)[0]
    queries = torch.cat([plant.shift(originals), originals.flip(-1), plant.half_pasted(originals, hosts)])
    tokens = index.encode(queries)
    found = edited_neighbours(index, queries, tokens, tests=["shifted", "flipped", "part", HALF])
    whole = index.search(tokens=tokens, k=1, metrics=["hamming"])["hamming"]
    moved, flipped, half = slice(0, 4), slice(4, 8), slice(8, 12)
    assert (found["shifted"].ids[moved] == np.arange(4)).all() and (found["shifted"].offsets[moved] == [1, 1]).all()
    assert (found["flipped"].ids[flipped] == np.arange(4)).all() and found["flipped"].mirrored[flipped].all()
    assert (found["flipped"].distances[flipped] == 0).all()
    for name in ("part", "half"):
        assert (found[name].ids[half] == np.arange(4)).all() and found[name].windows[8:] == ["left"] * 4, name
    # fewer differing bits per token than the whole grid of the same copies has from its nearest training image
    for name, part in (("shifted", moved), ("half", half)):
        per_token = found[name].distances[part] / found[name].tokens[part]
        assert (per_token < whole.distances[part, 0] / 256).all(), name


def test_copies_made_in_token_space_are_at_distance_zero(small_index):
    grids = torch.from_numpy(small_index.tokens[:4].astype(np.int64))
    shifted = torch.roll(grids, shifts=(2, -1), dims=(1, 2))  # moved 2 down and 1 left
    halves = torch.randint(0, 2**12, grids.shape, generator=torch.Generator().manual_seed(0))
    halves[:, 4:] = grids[:, 4:]  # the bottom half of images 0..3 on random tokens
    found = EditedSearch(small_index).search(tokens=torch.cat([shifted, halves]), tests=["shifted", HALF])
    assert (found["shifted"].distances[:4] == 0).all() and (found["shifted"].offsets[:4] == [2, -1]).all()
    assert (found["shifted"].ids[:4] == np.arange(4)).all()
    assert (found["half"].distances[4:] == 0).all() and found["half"].windows[4:] == ["bottom"] * 4
    assert (found["half"].ids[4:] == np.arange(4)).all()


def test_a_grown_index_is_searched_whole(tmp_path, tiny_tokenizer):
    index = ImageIndex.create(tmp_path, tiny_tokenizer, 32, IndexOptions(metrics=["hamming"]))
    index.add(shapes(4), [f"a:{i}" for i in range(4)], [0] * 4)
    search = EditedSearch(index)
    new = shapes(2, start=10)
    assert (search.search(new, tests=[HALF])["half"].distances > 0).all()
    index.add(new, ["b:0", "b:1"], [0, 0])
    found = search.search(new, tests=[HALF])["half"]
    assert (found.distances == 0).all() and (found.ids == [4, 5]).all()


def test_offsets_and_windows():
    assert offsets(0) == [(0, 0)]
    moves = offsets(2)
    assert (
        len(moves) == 25 == len(set(moves))
        and moves[0] == (0, 0)
        and set(moves[1:5]) == {(-1, 0), (0, -1), (0, 1), (1, 0)}
    )
    assert window_bounds((16, 16), "whole", 2) == (2, 14, 2, 14)
    assert window_bounds((16, 16), "left", 0) == (0, 16, 0, 8) and window_bounds((16, 16), "right", 2) == (2, 14, 8, 14)
    assert window_bounds((7, 7), "bottom-right", 1) == (4, 6, 4, 6) and window_bounds((7, 7), "top", 1) == (1, 3, 1, 6)


def test_bad_input_says_what_to_do(small_index):
    images = shapes(2)
    tokens = torch.from_numpy(small_index.tokens[:2].astype(np.int64))
    with pytest.raises(IndexError_, match="mirror image.*pass the images"):
        edited_neighbours(small_index, tokens=tokens, tests=["flipped"])
    with pytest.raises(IndexError_, match=r"images must have shape \(Q, 3, 32, 32\)"):
        edited_neighbours(small_index, torch.zeros(2, 3, 16, 16))
    with pytest.raises(IndexError_, match=r"token grids must have shape \(Q, 8, 8\)"):
        edited_neighbours(small_index, tokens=tokens[:, :4])
    with pytest.raises(IndexError_, match="as many"):
        edited_neighbours(small_index, images, tokens[:1])
    with pytest.raises(IndexError_, match="give images or tokens"):
        edited_neighbours(small_index)
    with pytest.raises(IndexError_, match="a margin of 4 tokens .* 8×8 token grid: choose at most 3"):
        edited_neighbours(small_index, images, tests=[WindowTest("far", "far", ("whole",), 4)])
    with pytest.raises(IndexError_, match="each must be one of"):
        edited_neighbours(small_index, images, tests=["rotated"])
    with pytest.raises(ValueError, match="windows must be a non-empty subset"):
        WindowTest("x", "x", ("middle",))
    with pytest.raises(IndexError_, match="different numbers of tokens.*relative=n"):
        edited_neighbours(small_index, images, tests=[WindowTest("x", "x", ("left", "top-left"))])
    with pytest.raises(ValueError, match="relative must be 0"):
        WindowTest("x", "x", relative=1)
    with pytest.raises(ValueError, match=r"part must lie in \(0, 1\]"):
        WindowTest("x", "x", part=float("nan"))
