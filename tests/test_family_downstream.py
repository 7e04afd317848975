"""Issue 26.3: everything downstream of a tokenizer at the bit-token family's sizes, with the tiny Open-MAGVIT2 (10-bit
LFQ), IBQ (10-bit VQ, 1024 codes) and BitDance (32-bit LFQ, 4 groups of 8) fixtures of tests/fixtures/open-magvit2-tiny:
bit flips and the side-by-side comparison, the random walk, bit planes, token statistics, the code atlas, Hamming
indexes, the memorization report, the CLIs and the app. The fixtures take 16×16 images to 8×8 tokens; at 32×32 they
give 16×16 tokens, the published models' grid, so a BitDance index holds 16·16·32 = 8,192 bits per image. BitDance's
indices reach past 2^31 (a sixth of its tokens here): anything held in int32 wraps to negative numbers."""

import copy
import dataclasses
import importlib.util
import json

import numpy as np
import pytest
import torch

from indexes.cli import main as indexes_main
from indexes.report import memorization_report
from indexes.store import ImageIndex, IndexOptions
from maskbit import Tokenizer, analysis, bits
from maskbit.cli import main as maskbit_main
from maskbit.images import load_image, save_image
from maskbit.presets import FAMILY_HUB_FILES, TOKENIZER_PRESETS
from tests.conftest import FIXTURES

FAMILY = FIXTURES / "open-magvit2-tiny"
NAMES = ("open_magvit2", "ibq", "bitdance")
SIZE = 32  # pixels: 16×16 tokens, as the published 256-px models give


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[str, str | None]]:
    """name → (weights file, config) as `from_pretrained` and the CLIs take them; BitDance's weights are rebuilt from
    their manifest (tests/fixtures/open-magvit2-tiny/README.md) and its file alone selects its preset."""
    spec = importlib.util.spec_from_file_location("fixture_weights", FAMILY / "fixture_weights.py")
    fixture_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture_weights)
    bitdance = tmp_path_factory.mktemp("bitdance") / "bitdance_tiny.pt"
    fixture_weights.rebuild(str(FAMILY / "bitdance_tiny_weights.json"), str(bitdance))
    return {
        "open_magvit2": (str(FAMILY / "tiny_lfq.ckpt"), str(FAMILY / "tiny_lfq.yaml")),
        "ibq": (str(FAMILY / "tiny_ibq.ckpt"), str(FAMILY / "tiny_ibq.yaml")),
        "bitdance": (str(bitdance), None),
    }


@pytest.fixture(scope="module")
def tokenizers(sources) -> dict[str, Tokenizer]:
    return {name: Tokenizer.from_pretrained(*sources[name]).inference("cpu") for name in NAMES}


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """(6, 3, 32, 32) in [0, 1], smooth enough that neighbouring tokens often agree; exact in 8 bits (PNG files)."""
    noise = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(noise, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (smooth * 255).round() / 255


def test_the_fixtures_kinds_and_bits(tokenizers):
    kinds = {name: (t.quantizer_kind, t.num_bits) for name, t in tokenizers.items()}
    assert kinds == {"open_magvit2": ("lfq", 10), "ibq": ("vq", 10), "bitdance": ("lfq", 32)}


# ---------------------------------------------------------------------------------------------------- analysis


@pytest.mark.parametrize("name", NAMES)
def test_bit_flips_and_bit_planes(tokenizers, images, name):
    tokenizer = tokenizers[name]
    k = tokenizer.num_bits
    indices, _ = analysis.reconstruct(tokenizer, images[0])
    assert indices.shape == (16, 16) and indices.dtype == torch.int64 and int(indices.max()) < 2**k
    chosen = [0, k // 2, k - 1]  # BitDance: bit 31, the int32 sign bit
    flips = analysis.flip_each_bit(tokenizer, indices, chosen, positions=[0, 17, 255])
    assert flips.bit_ids == chosen and flips.num_positions == 3 and flips.flipped.shape == (3, 3, SIZE, SIZE)
    flipped = bits.flip_bits(indices[None], k - 1, k, [0, 17, 255])
    assert int(bits.hamming(flipped, indices[None], dim=(1, 2))) == 3 and int(flipped.max()) < 2**k
    expected = tokenizer.decode(flipped).clamp(0, 1)[0]
    assert torch.allclose(flips.flipped[2], expected, atol=1e-5)
    assert np.isfinite(flips.distances.psnr).all() and (flips.distances.l2 > 0).all()
    planes = analysis.bit_planes(indices, k)
    assert planes.shape == (k, 16, 16)
    assert torch.equal((planes.long() << torch.arange(k)[:, None, None]).sum(0), indices)


@pytest.mark.parametrize("k", [18, 32])
def test_bit_planes_of_the_published_sizes(k):
    """18 planes (Open-MAGVIT2, IBQ 262,144) and 32 (BitDance) of a 16×16 grid, with the top bit set somewhere."""
    indices = torch.randint(0, 2**k, (16, 16), generator=torch.Generator().manual_seed(k))
    indices[0, 0] = 2**k - 1
    planes = analysis.bit_planes(indices, k)
    assert planes.shape == (k, 16, 16) and planes[:, 0, 0].all() and planes[k - 1].any()
    assert torch.equal((planes.long() << torch.arange(k)[:, None, None]).sum(0), indices)


@pytest.mark.parametrize("name", NAMES)
def test_the_random_walk(tokenizers, images, name):
    tokenizer = tokenizers[name]
    k = tokenizer.num_bits
    indices, _ = analysis.reconstruct(tokenizer, images[1])
    walk = analysis.hamming_walk(tokenizer, indices, bits_per_step=40, num_steps=3, seed=5)
    assert walk.hamming == [0, 40, 80, 120] and walk.images.shape == (4, 3, SIZE, SIZE)
    for step, grid in enumerate(walk.indices):
        assert int(bits.hamming(grid, indices, dim=(0, 1))) == 40 * step and 0 <= int(grid.min())
        assert int(grid.max()) < 2**k
    assert walk.distances.psnr[0] == np.inf and np.isfinite(walk.distances.psnr[1:]).all()
    with pytest.raises(ValueError, match=f"between 1 and the image's {256 * k} bits"):
        analysis.hamming_walk(tokenizer, indices, bits_per_step=256 * k, num_steps=2, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_token_statistics_count_used_codes_only(tokenizers, images, name):
    tokenizer = tokenizers[name]
    k = tokenizer.num_bits
    tokens = tokenizer.encode(images).numpy()
    stats = analysis.token_statistics(tokens, k)
    flat = tokens.reshape(-1)
    values, counts = np.unique(flat, return_counts=True)
    assert stats.images == 6 and stats.codes_used == len(values) and list(stats.code_counts) == sorted(counts)[::-1]
    assert stats.code_usage == len(values) / 2**k and stats.bit_usage.shape == (k,)
    for bit in (0, k - 1):
        assert stats.bit_usage[bit] == pytest.approx(((flat >> bit) & 1).mean())
    q = counts / counts.sum()
    assert stats.code_entropy == pytest.approx(-(q * np.log2(q)).sum())


def test_token_statistics_of_32_bit_codes_past_the_int32_range():
    """Codes ≥ 2^31 count as themselves; a 2^32-entry table (16 GiB of int32 counts) is never built."""
    codes = np.array([0, 2**31, 2**32 - 1, 2**31 + 5], dtype=np.int64)
    tokens = codes[np.random.default_rng(0).integers(0, 4, size=(50, 16, 16))]
    stats = analysis.token_statistics(tokens, 32)
    assert stats.codes_used == 4 and stats.code_counts.sum() == 50 * 256 and stats.code_usage == 4 / 2**32
    assert stats.bit_usage[31] == pytest.approx((tokens >= 2**31).mean())
    with pytest.raises(ValueError, match=r"indices must be in \[0, 2\^32\)"):
        analysis.token_statistics(tokens + 2**32, 32)


@pytest.mark.parametrize("name", NAMES)
def test_the_code_atlas_samples_used_codes_and_their_hamming_1_neighbours(tokenizers, images, name):
    tokenizer = tokenizers[name]
    k = tokenizer.num_bits
    used = tokenizer.encode(images)
    if k > analysis.MAX_DRAWN_BITS:  # by default (every code of 10 bits is drawn: tests/test_analysis.py)
        assert analysis.code_atlas(tokenizer, used=used, samples=1, grid=2, crop=2).layout == "neighbours"
    atlas = analysis.code_atlas(tokenizer, layout="neighbours", used=used, samples=3, grid=4, crop=2, seed=1)
    codes = atlas.codes
    assert atlas.layout == "neighbours" and codes.shape == (3, k + 1) and len(codes[:, 0].unique()) == 3
    assert np.isin(codes[:, 0].numpy(), used.numpy()).all()  # used codes
    assert torch.equal(codes[:, 1:], codes[:, :1] ^ (1 << torch.arange(k)))  # column b + 1: bit b flipped
    assert (bits.hamming(codes[:, 1:], codes[:, :1]) == 1).all() and int(codes.max()) < 2**k
    f = tokenizer.downsample_factor
    assert atlas.cell == 2 * f and atlas.image.shape == (3, 3 * 2 * f, (k + 1) * 2 * f)
    r, c = 2, k  # the last neighbour: bit k − 1 flipped
    expected = tokenizer.decode(torch.full((1, 4, 4), int(codes[r, c]))).clamp(0, 1)[0, :, f : 3 * f, f : 3 * f]
    cell = atlas.image[:, r * 2 * f : (r + 1) * 2 * f, c * 2 * f : (c + 1) * 2 * f]
    # A uniform grid is numerically touchy for Open-MAGVIT2's decoder (AdaptiveGroupNorm of a latent with zero variance:
    # float32 and float64 differ by 2e-4, one image and a batch by 6e-4), so the fixtures' image tolerance applies.
    assert torch.allclose(cell, expected, atol=2e-3)
    assert f"3 sampled codes of 2^{k}" in atlas.describe(k)
    again = analysis.code_atlas(tokenizer, layout="neighbours", used=used, samples=3, grid=4, crop=2, seed=1)
    assert torch.equal(again.codes, codes)
    if k <= analysis.MAX_DRAWN_BITS:  # the sheet of every code still works, here a 4×4 corner of it
        sheet = analysis.code_atlas(tokenizer, half_bits=2, grid=2, crop=2)
        assert sheet.layout == "gray" and sorted(sheet.codes.flatten().tolist()) == list(range(16))


def test_sampled_codes_without_used_ones_are_any_32_bit_codes():
    codes = analysis.sample_codes(32, 64, seed=0)
    assert len(codes) == 64 and codes.dtype == torch.int64 and int(codes.max()) < 2**32
    assert (codes >= 2**31).any() and torch.equal(codes, analysis.sample_codes(32, 64, seed=0))
    popular = analysis.sample_codes(32, 5, seed=0, used=np.array([[7, 7, 7, 2**32 - 1]]))
    assert sorted(popular.tolist()) == [7, 2**32 - 1]  # fewer distinct used codes than asked: all of them


# ---------------------------------------------------------------------------------------------------- indexes


@pytest.mark.parametrize(("name", "backend"), [(name, "faiss") for name in NAMES] + [("bitdance", "torch")])
def test_hamming_index_of_16x16_token_grids_and_its_report(tokenizers, images, tmp_path, name, backend):
    tokenizer = tokenizers[name]
    k = tokenizer.num_bits
    options = IndexOptions(metrics=("hamming", "pixel"), backend=backend)
    index = ImageIndex.create(tmp_path / "index", tokenizer, SIZE, options)
    index.add(images[:4], [f"image:{i}" for i in range(4)], [0, 1, 0, 1])
    index.save()
    assert index.grid == (16, 16) and len(index.flat["hamming"].reconstruct(0)) * 8 == 16 * 16 * k  # BitDance: 8,192
    index = ImageIndex.open(tmp_path / "index", tokenizer)
    stored = torch.from_numpy(index.tokens).long()
    assert torch.equal(stored, tokenizer.encode(images[:4]))  # BitDance: codes ≥ 2^31 kept (int64 on disk)
    if k == 32:
        assert index.tokens.dtype == np.int64 and (stored >= 2**31).any()
    queries = tokenizer.encode(images[3:])
    found = index.search(tokens=queries, k=4, metrics=["hamming"])["hamming"]
    exact = bits.hamming(queries[:, None], stored[None], dim=(-2, -1))  # (3 queries, 4 indexed)
    assert np.array_equal(found.distances, np.sort(exact.numpy(), 1)) and found.ids[0, 0] == 3
    assert np.array_equal(index.exact_distances("hamming", images[4:5], queries[1:2], found.ids[1]), found.distances[1])
    assert np.array_equal(index.token_distance_map(queries[2], 0), bits.hamming(queries[2], stored[0]).numpy())
    if backend == "torch":
        return  # the report reads the index the same way with either backend
    report = memorization_report(index, images[4:], images[:2], tmp_path / "report", gallery_size=2)
    hamming = report["metrics"]["hamming"]
    generated = tokenizer.encode(images[4:])
    nearest = bits.hamming(generated[:, None], stored[None], dim=(-2, -1)).min(1).values
    assert hamming["generated_distances"] == nearest.tolist()
    assert hamming["heldout_distances"] == [0, 0]  # held-out images that are indexed: distance 0
    assert (tmp_path / "report" / "report.png").is_file() and (tmp_path / "report" / "closest_hamming.png").is_file()


# ---------------------------------------------------------------------------------------------------- the CLIs


@pytest.mark.parametrize("name", NAMES)
def test_the_command_lines(sources, tokenizers, images, tmp_path, name):
    tokenizer = tokenizers[name]
    k = tokenizer.num_bits
    weights, config = sources[name]
    model = ["--tokenizer", weights, *(["--tokenizer-config", config] if config else []), "--device", "cpu", "-q"]
    for i in range(2):
        save_image(images[i], tmp_path / "images" / f"{i}.png")
    tokens = tmp_path / "tokens.npy"
    assert maskbit_main(["encode", str(tmp_path / "images"), *model, "--size", str(SIZE), "--out", str(tokens)]) == 0
    indices = np.load(tokens)
    read = torch.stack([load_image(tmp_path / "images" / f"{i}.png", SIZE) for i in range(2)])
    # the command line computes at "auto" (bf16 where it is native), the library at what it is asked
    assert indices.dtype == np.int64 and np.array_equal(indices, tokenizer.encode(read, precision="auto").numpy())
    assert maskbit_main(["decode", str(tokens), *model, "--out", str(tmp_path / "decoded")]) == 0
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == ["0000.png", "0001.png"]
    flip = ["flip", str(tokens), *model, "--bit-ids", "0", str(k - 1), "--positions", "3", "--out", str(tmp_path / "f")]
    assert maskbit_main(flip) == 0
    rows = (tmp_path / "f" / "distances.csv").read_text().splitlines()
    assert rows[0] == "bit,psnr_db,l2" and [r.split(",")[0] for r in rows[1:]] == ["0", str(k - 1)]
    assert maskbit_main(["flip", str(tokens), *model, "--bit-ids", str(k), "--out", str(tmp_path / "g")]) == 2
    index, on = tmp_path / "index", model[:-1]  # the same options, but for -q
    # empty, filled by `indexes add`; at the command lines' precision ("auto"), as `indexes build` would make it, so
    # that the tokens `maskbit encode` wrote are computed as the index's are
    ImageIndex.create(
        index, copy.deepcopy(tokenizer).inference("cpu", "auto"), SIZE, IndexOptions(metrics=("hamming",))
    )
    assert indexes_main(["add", str(tmp_path / "images"), "--index", str(index), *on]) == 0
    out = tmp_path / "found.json"
    assert indexes_main(["search", "--tokens", str(tokens), "--index", str(index), *on, "--json", str(out)]) == 0
    found = json.loads(out.read_text())
    assert [query["hamming"][0]["distance"] for query in found] == [0, 0]  # each finds itself


# ---------------------------------------------------------------------------------------------------- the app


def test_the_family_are_tokenizer_only_model_choices():
    from app.models import BUNDLED_PAIRS, OFFICIAL_PAIRS

    family = {label: pair for label, pair in OFFICIAL_PAIRS.items() if pair[0].split("/")[1] in FAMILY_HUB_FILES}
    assert {pair[0].split("/")[1] for pair in family.values()} == set(FAMILY_HUB_FILES)  # every published one
    for label, (tokenizer, generator) in family.items():
        preset = TOKENIZER_PRESETS[FAMILY_HUB_FILES[tokenizer.split("/")[1]][0]]
        assert generator == "" and label.endswith("; tokenizer only)") and f"{preset.num_bits} bits" in label
        assert preset.quantizer.upper() in label
    assert list(BUNDLED_PAIRS.values())[0] == ("default", "default")  # the offline default is unchanged


def test_the_app_with_a_family_tokenizer_and_no_generator(sources, tokenizers, images, tmp_path):
    """BitDance loaded in the app (32 bits) with no generator: it says so; bit flips compared side by side with the
    Open-MAGVIT2 (LFQ) and IBQ (VQ) fixtures, bit planes, the walk, token statistics and the sampled code atlas."""
    from app.callbacks import Callbacks
    from app.settings import Settings
    from app.state import AppState
    from app.validation import UserError

    weights = {name: sources[name][0] for name in NAMES}
    # The BitDance file alone says nothing of an image size (the official code has no config): the tiny preset keeps
    # the published model's 256 px. At the fixtures' 16 px, as a converted model folder:
    bitdance = Tokenizer(dataclasses.replace(tokenizers["bitdance"].config, image_size=16))
    bitdance.load_state_dict(tokenizers["bitdance"].state_dict())
    bitdance.save_pretrained(tmp_path / "models" / "bitdance")
    settings = Settings(tokenizer=str(tmp_path / "models" / "bitdance"), generator="", workspace=tmp_path / "runs")
    settings.model_roots = [FAMILY]
    callbacks = Callbacks(AppState(settings))
    info = callbacks.explore.model_info()
    assert info["quantizer"] == "lfq" and info["bits_per_token"] == 32 and info["token_grid"] == [8, 8]
    assert "no generator" in info["generation"] and "no generator" in callbacks.explore.generation_note()
    image = str(save_image(images[0, :, :16, :16], tmp_path / "image.png"))
    for other, kind in (("open_magvit2", "LFQ"), ("ibq", "VQ")):
        *_, summary = callbacks.explore.compare_flips(image, weights[other], "0, 9, 31", "0, 5")
        assert summary["tokenizers"] == ["loaded (LFQ)", f"compared ({kind})"]
        assert summary["loaded (LFQ)"]["bit_ids"] == [0, 9, 31]
        assert summary[f"compared ({kind})"]["bit_ids"] == [0, 9]  # bit 31 is past its 10 bits
    gallery, _, indices = callbacks.explore.token_map(image)
    assert len(gallery) == 32 and max(max(row) for row in indices) < 2**32
    walk, _ = callbacks.explore.bit_walk(image, 64, 2, 0)
    assert len(walk) == 3
    state = callbacks.state
    index = ImageIndex.create(tmp_path / "index", state.models.tokenizer, 16, IndexOptions(("hamming", "pixel")))
    index.add(images[:, :, :16, :16], [f"image:{i}" for i in range(6)], [0] * 6)
    state.index = index
    *_, data = callbacks.search.token_space()
    assert data["codes_used"] == len(np.unique(index.tokens)) and len(data["bit_usage"]) == 32
    picture, _ = callbacks.explore.code_atlas()
    atlas = state.atlas(state.models.tokenizer)  # the codes its index's images use, and their 32 neighbours
    assert atlas.layout == "neighbours" and np.isin(atlas.codes[:, 0].numpy(), index.tokens).all()
    assert picture.shape[:2] == (8 * atlas.cell, 33 * atlas.cell)
    with pytest.raises(UserError, match="no generator"):
        state.models.label(0)
