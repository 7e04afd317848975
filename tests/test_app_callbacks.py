"""Every endpoint of the app called directly, without a server, against the library and independent counts.

The state is the served app's (tests/conftest.py `app_server`: the official-tiny pair, 32×32 images, 8×8 tokens of
12 bits, 1000 ImageNet classes, and an index of 96 procedural images), so nothing is built twice; the tests that
switch models switch back.
"""

import json
import operator
import threading

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from app import pictures
from app.callbacks import Callbacks
from data import eval_view
from indexes.report import REPORT_METRICS
from indexes.store import thumbnails
from maskbit import SamplingConfig, Tokenizer, analysis, bits, generate
from maskbit.device import cpu_has_native_bf16
from maskbit.images import load_image
from train.config import GENERATOR_TRAIN_PRESETS

KNOBS = [4, 2.0, "cosine", 1.0, 2.0, 1.0, "arccos"]  # num_steps … mask_schedule, the library's names and order
APP_PRECISION = "auto"  # what the app computes at (Settings.precision's default): the library at it gives the same
SEED_RANGE = "seed must be a whole number from 0 to 9223372036854775807 (2**63 − 1)"


@pytest.fixture(autouse=True)
def same_threads(monkeypatch):
    """These tests compare what the app computed with what the library computes a moment later. In bf16 (the app's
    "auto" where bf16 is native) a result depends on the thread count (up to 2/255 per pixel), which each call fits
    to the machine's load at that moment (maskbit.device.cpu_threads); one fixed count makes the two comparable."""
    monkeypatch.setenv("MASKBIT_THREADS", "1")


@pytest.fixture(scope="module")
def callbacks(app_server) -> Callbacks:
    return Callbacks(app_server.state)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A procedural test image as a PNG file, at the tiny tokenizer's 32×32."""
    path = tmp_path_factory.mktemp("callbacks") / "shape.png"
    Image.fromarray((eval_view("procedural", "test", 0, 32)[0][0] * 255).round().byte().permute(1, 2, 0).numpy()).save(
        path
    )
    return str(path)


def last(stream):
    *_, final = stream
    return final


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A uint8 picture (H, W, 3) back to (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 255


def test_the_endpoints_are_three_objects_over_one_state(callbacks, app_server):
    """Issue 28.4: composed, not inherited: each tab's object owns its endpoints, none calls another's."""
    from app.explore import ExploreCallbacks
    from app.search import SearchCallbacks
    from app.training import TrainingCallbacks

    parts = (ExploreCallbacks, SearchCallbacks, TrainingCallbacks)
    assert not any(issubclass(a, b) for a in parts for b in parts if a is not b)
    assert callbacks.explore.state is callbacks.search.state is callbacks.training.state is app_server.state
    assert not hasattr(callbacks, "generate")  # an endpoint is reached through its tab's object, as the page wires it


def test_page_values_and_model_info(callbacks):
    values = callbacks.page_values()
    assert values["class_names"][:2] == ["tench", "goldfish"] and values["can_generate"]
    assert values["mask_schedules"] == ["arccos", "cosine", "linear", "square", "root"]  # the library's list
    assert values["walk_bits"] == 8 * 8 * 12 // 24 and values["limits"]["k"] == 50
    info = callbacks.explore.model_info()
    assert info["bits_per_token"] == 12 and info["token_grid"] == [8, 8] and info["quantizer"] == "lfq"
    # the app computes at "auto" and says what that picked here
    picked = "bf16 (auto: native on this CPU)" if cpu_has_native_bf16() else "fp32 (auto: no native bf16 on this CPU)"
    assert info["precision"] == picked
    assert "96 images of procedural" in callbacks.explore.index_status()


def test_generate_streams_each_step_then_gives_the_librarys_images(callbacks, app_server):
    steps = list(callbacks.explore.generate(["tench", "goldfish"], 2, 7, *KNOBS))
    assert len(steps) == 4  # three steps streamed, then the result
    gallery, plot, unmasking, slider, frame, files, progress = steps[-1]
    assert [caption for _, caption in gallery] == ["tench (#0)", "goldfish (#1)"]
    assert len(unmasking["frames"]) == 4 and progress == "2 images, 4 steps"
    fractions = unmasking["fractions"]
    assert fractions[-1] == 0 and all(a >= b for a, b in zip(fractions, fractions[1:]))
    assert steps[0][0] is not None and isinstance(steps[0][0], type(gr.skip()))  # the gallery waits for the end
    state = app_server.state
    expected = generate(state.models.generator, state.models.tokenizer, [0, 1], SamplingConfig(*KNOBS), seed=7)
    assert (as_tensor(gallery[1][0]) - expected[1]).abs().max() <= 1 / 255 + 1e-6
    assert (as_tensor(np.asarray(Image.open(files[1]))) - expected[1]).abs().max() <= 1 / 255 + 1e-6
    frame_two, marked = callbacks.explore.show_step(unmasking, 2)
    assert frame_two is unmasking["frames"][1] and marked.data[-1].x == (2,)  # the step shown is marked


def test_presets_fill_the_knobs_and_say_what_they_were_tuned_for(callbacks):
    *knobs, note = callbacks.explore.apply_preset("maskbit_generator_12bit")
    assert knobs == [64, 7.1, "cosine", 3.0, 8.2, 1.0, "arccos"] and "ImageNet" in note
    assert "bundled default model" in callbacks.explore.apply_preset("default")[-1]


def test_flip_bits_matches_the_library(callbacks, image_file, app_models):
    original, reconstruction, gallery, psnr_chart, distance_chart, summary, grid, note = callbacks.explore.flip_bits(
        image_file, "0, 5, 11", "all"
    )
    assert summary["bit_ids"] == [0, 5, 11] and summary["positions_flipped"] == 64 and len(gallery) == 3
    # The library's call, batch for batch as the app makes it: in bf16 (the app's "auto" where it is native) a batch
    # of another size rounds differently (AMX moved pixels by 1.5/255); test_analysis checks it against lone decodes.
    tokenizer = Tokenizer.from_pretrained(app_models["tokenizer"], precision=APP_PRECISION)
    indices, _ = analysis.reconstruct(tokenizer, load_image(image_file))
    flips = analysis.flip_each_bit(tokenizer, indices, [0, 5, 11])
    recon, flipped = flips.reconstruction, flips.flipped[1]
    assert summary["psnr_db"][1] == pytest.approx(flips.distances.psnr[1], abs=1e-3)
    # the flipped image, a gap, and |flipped − reconstruction| scaled to its largest change, both enlarged 8×
    picture = gallery[1][0][::8, ::8]
    assert picture.shape == (32, 66, 3) and (as_tensor(picture[:, :32]) - flipped).abs().max() <= 1 / 255 + 1e-6
    change = (flipped - recon).abs()
    assert (as_tensor(picture[:, -32:]) - change / change.max()).abs().max() <= 1 / 255 + 1e-6
    assert gallery[1][1].startswith("bit 5: ") and summary["lpips"] is not None  # random-backbone LPIPS
    assert gallery[1][1].endswith(f" · map ×{1 / float(change.max()):.0f}")
    assert note == "" and grid.shape == (256, 256, 3)


def test_flips_at_chosen_tokens_and_a_click_on_the_grid(callbacks, image_file):
    _, _, gallery, _, _, summary, _, _ = callbacks.explore.flip_bits(image_file, "3", "0-3, 9")
    assert summary["positions_flipped"] == 5
    what_changed = gallery[0][0][:, -256:]  # 32 px per token: token 9 is row 1, column 1, outlined in yellow
    assert (what_changed[32, 32:64] == pictures.MARK).all() and (what_changed[32:64, 63] == pictures.MARK).all()
    assert not (what_changed[128:160, 128:160] == pictures.MARK).all(-1).any()  # token 36 was not chosen
    click = gr.SelectData(None, {"index": [40, 70], "value": None})  # the grid is 256 px: 32 px per token
    text, grid = callbacks.explore.toggle_token(image_file, "0-3", click)  # column 1, row 2: token 17
    assert text == "0, 1, 2, 3, 17" and grid.shape == (256, 256, 3)
    text, without = callbacks.explore.toggle_token(image_file, text, click)
    assert text == "0, 1, 2, 3"  # a second click removes it
    changed = (grid != without).any(-1)  # the two grids differ in token 17's 32×32 cell only, tinted red there
    cell = np.zeros_like(changed)
    cell[64:96, 32:64] = True
    assert changed[cell].mean() > 0.5 and not changed[~cell].any()
    red = grid[64:96, 32:64].astype(int) - without[64:96, 32:64].astype(int)
    assert red[..., 0].mean() > 0 and red[..., 0].mean() > red[..., 1].mean()


def test_an_uploaded_photo_is_fitted_and_the_user_told(callbacks, tmp_path):
    Image.new("RGB", (96, 64), (200, 30, 30)).save(tmp_path / "wide.png")
    note = callbacks.explore.flip_bits(str(tmp_path / "wide.png"), "0", "0")[-1]
    assert note == (
        "The 96×64 image was resized to 32 px on its shorter side and centre-cropped to 32×32: the size this model "
        "works at."
    )


def test_token_map(callbacks, image_file, app_models):
    planes, heat, tokens = callbacks.explore.token_map(image_file)
    expected = Tokenizer.from_pretrained(app_models["tokenizer"], precision=APP_PRECISION).encode(
        load_image(image_file)[None]
    )[0]
    assert tokens == expected.tolist() and len(planes) == 12 and planes[4][1] == "bit 4"
    plane = planes[4][0][..., 0] > 127
    assert (plane == ((expected >> 4) & 1).bool().numpy()).all()
    assert heat.layout.yaxis.scaleanchor == "x" and heat.layout.xaxis.title.text == "token column"


def test_bit_walk_flips_bits_per_step(callbacks, image_file, app_models):
    gallery, plot = callbacks.explore.bit_walk(image_file, 5, 3, 0)
    assert gallery[0][1] == "reconstruction" and gallery[1][1].startswith("5 bits (1%): ")
    assert [caption.split(" ")[0] for _, caption in gallery[1:]] == ["5", "10", "15"]
    assert plot.data[0].y[0] is None  # the reconstruction against itself: no finite PSNR, no point
    tokenizer = Tokenizer.from_pretrained(app_models["tokenizer"], precision=APP_PRECISION)
    tokens = tokenizer.encode(load_image(image_file)[None])[0]
    walk = analysis.hamming_walk(tokenizer, tokens, 5, 3, seed=0)
    assert bits.hamming(walk.indices, tokens.expand_as(walk.indices), dim=(1, 2)).tolist() == [0, 5, 10, 15]
    assert (as_tensor(gallery[0][0]) - walk.images[0]).abs().max() <= 1 / 255 + 1e-6  # decoded in the walk's batch
    for (picture, caption), image in zip(gallery[1:], walk.images[1:]):
        assert (as_tensor(picture) - image).abs().max() <= 1 / 255 + 1e-6
        psnr = float(10 * torch.log10(1 / (image - walk.images[0]).pow(2).mean()))  # against the reconstruction
        assert float(caption.split(": ")[1].removesuffix(" dB")) == pytest.approx(psnr, abs=0.051)
    assert list(plot.data[0].x) == [0, 5, 10, 15] and list(plot.data[0].y[1:]) == pytest.approx(
        walk.distances.psnr[1:].tolist()
    )


def test_dataset_image(callbacks):
    path, caption = callbacks.explore.dataset_image(3)
    assert np.asarray(Image.open(path)).shape == (32, 32, 3) and caption.startswith("procedural train #3")
    view = eval_view("procedural", "train", 0, 32)
    image, label = view[3]
    assert (as_tensor(np.asarray(Image.open(path))) - image).abs().max() <= 1 / 255 + 1e-6
    assert caption == f"procedural train #3: {view.classes[label]}"


def test_neighbours_of_a_training_image_find_it_first(callbacks, app_server):
    # the app's LPIPS is the real metric with no download: the shipped ImageNet trunk (or torchvision's own file)
    state = app_server.state
    assert not state.lpips.random_backbone and "random" not in state.lpips_note
    assert not state.index.lpips.random_backbone  # the index built on start with it
    path, _ = callbacks.explore.dataset_image(11)
    hamming, lpips, pixel, verdict, scatter, heat, data = callbacks.search.neighbours(path, 5)
    assert len(hamming) == len(lpips["value"]) == len(pixel) == 5 and lpips["visible"]
    for metric in ("hamming", "lpips", "pixel"):
        assert data[metric][0]["source"] == "procedural:train:11"
        assert data[metric][0]["distance"] == pytest.approx(0, abs=1e-4)
        assert data["verdicts"][metric]["memorized"] is True
    assert [n["distance"] for n in data["hamming"]] == sorted(n["distance"] for n in data["hamming"])
    assert "possible memorization" in verdict and "p1 of held-out real images" in verdict
    z = np.array(heat.data[0].z)
    assert z.shape == (8, 8) and z.sum() == 0  # identical tokens
    assert scatter.layout.xaxis.title.text == "Hamming distance (bits)" and scatter.layout.yaxis.title.text == "LPIPS"
    found = {n["id"] for metric in ("hamming", "lpips", "pixel") for n in data[metric]}
    assert scatter.layout.title.text == f"the {len(found)} neighbours found by any metric"
    # the second claim for this query: how many of the 5 Hamming neighbours are among the pixel (LPIPS) 5
    claim = callbacks.search.second_claim(data)
    for other in ("pixel", "lpips"):
        shared = {n["id"] for n in data["hamming"]} & {n["id"] for n in data[other]}
        assert f"Hamming ∩ {other}: **{len(shared)} of 5** (overlap@5 = {len(shared) / 5:.2f})" in claim
    assert (
        "k random images of the 96 indexed would share 0.052 (k / N) on average" in claim
        and "bench/neighbours.py" in claim
    )


def test_an_indexed_image_is_at_distance_0_whatever_precision_the_app_now_computes_at(callbacks, app_server):
    """The index built on start recorded its precision ("auto": bf16 where native); a query is encoded at it."""
    tokenizer, index = app_server.state.models.tokenizer, app_server.state.index
    assert index.precision == ("bf16" if tokenizer.precision == "auto" and cpu_has_native_bf16() else "fp32")
    path, _ = callbacks.explore.dataset_image(11)
    served = tokenizer.precision
    try:
        for precision in ("fp32", "bf16"):
            tokenizer.precision = precision  # as a restart with --precision would
            *_, data = callbacks.search.neighbours(path, 1)
            assert data["hamming"][0]["source"] == "procedural:train:11" and data["hamming"][0]["distance"] == 0
    finally:
        tokenizer.precision = served


def test_a_training_image_picked_or_sent_is_a_query_that_finds_itself(callbacks, image_file):
    """Issue 35.6: a training image is queried without a download and an upload: picked by its index id in the
    Neighbours tab (or sent from Token space), it is its own nearest neighbour; Bit flips' image is sent as it is."""
    path, caption = callbacks.search.training_image(7)
    view = eval_view("procedural", "train", 0, 32)
    assert caption == f"id 7: procedural:train:7 ({view.classes[view[7][1]]})"
    assert torch.equal(load_image(path, 32), view[7][0])
    *_, data = callbacks.search.neighbours(path, 1)
    assert all(data[metric][0]["id"] == 7 and data[metric][0]["distance"] == 0 for metric in ("hamming", "pixel"))
    query, query_caption, viewed, viewed_caption, opened = callbacks.search.training_image_to_neighbours(7)
    assert query == viewed and query_caption == viewed_caption == caption and opened["selected"] == "neighbours"
    sent, sent_caption, opened = callbacks.search.image_to_neighbours({"path": str(image_file), "orig_name": "x.png"})
    assert sent == str(image_file) and sent_caption == "" and opened["selected"] == "neighbours"


def test_the_report_uses_the_neighbours_threshold(callbacks, app_server):
    image, text, flagged, summary = callbacks.search.memorization_report(8, 0)
    assert list(summary["metrics"]) == list(REPORT_METRICS) and "what chance gives" in text  # and the window tests
    assert text.startswith(f"**{summary['verdict']}**") and summary["verdict"].startswith(
        ("No sign", "No copy confirmed", "Possible")
    )
    calibration = app_server.state.index.calibration
    for metric, figures in summary["metrics"].items():  # the same held-out images and percentile: the same thresholds
        if metric in calibration:  # the index's own metrics (the window tests are the report's)
            assert figures["threshold"] == pytest.approx(calibration[metric].threshold)
        c_t = "C_T not computed" if figures["c_t"] is None else f"C_T = {figures['c_t']:.2f}"
        assert f"**{metric}**: {c_t}" in text or "C_T not computed" in text
    shown = sum(min(8, round(d["flagged_fraction"] * 8)) for d in summary["metrics"].values())
    assert len(flagged["value"]) == shown and flagged["visible"] == (shown > 0)
    assert "C_T not computed: every cell of Meehan et al.'s test must hold more than 20 generated images" in text
    assert all(d["c_t_reason"]["code"] == "too_few_generated" for d in summary["metrics"].values())
    assert Image.open(image).size[0] > 100
    # issue 35.4: why pixel or LPIPS alone is no copy, and whether each flagged share is more than chance
    assert "Why pixel distance or LPIPS alone never makes a copy" in text and "held-out images are split" not in text
    assert text.count("binomial p = ") == len(summary["metrics"]) and "the verdict asks for p < 0.001" in text


def test_the_report_plants_copies_when_asked_and_finds_the_exact_ones(callbacks, app_server, app_models, tmp_path):
    """Issue 24.6: the planted-copy recall table, with the library's figures; exact copies are found by every metric.
    Issue 34.0: the user's seed (not the dataset's, 0) draws the planted images, and `python -m indexes report` with
    the same seed writes the same report."""
    from indexes.cli import main
    from indexes.plant import planted_ids
    from indexes.report import summary as report_summary

    seed = 5
    image, text, flagged, summary = callbacks.search.memorization_report(8, seed, 3)
    planted = summary["planted"]
    assert planted["count"] == 3 and set(planted["metrics"]) == set(summary["metrics"])
    index = app_server.state.index
    assert index.dataset.seed == 0 and planted["ids"] == planted_ids(len(index), 3, seed).tolist()
    assert planted["ids"] != planted_ids(len(index), 3, 0).tolist()
    models = ["--tokenizer", app_models["tokenizer"], "--generator", app_models["generator"]]
    options = ["--count", "8", "--seed", str(seed), "--plant", "3", "--out", str(tmp_path / "cli")]
    assert main(["report", "--index", str(index.directory), *models, *options]) == 0
    assert report_summary(json.loads((tmp_path / "cli" / "report.json").read_text())) == summary
    assert "the held-out images are split: half set the thresholds" in text  # why the thresholds moved (issue 35.4)
    for metric, figures in planted["metrics"].items():
        assert figures["recall"]["exact"] == 1.0 and figures["auc"]["exact"] == 1.0, metric
        names = {edit["name"] for edit in planted["edits"]}
        assert set(figures["recall"]) == names and 0 <= figures["false_positive_rate"] <= 1
    assert "**Planted copies**: 3 training images" in text and "| exact | " + " | ".join(["100% (1.00)"] * 3) in text
    with pytest.raises(gr.Error, match=r"plant \(planted copies\) must be a whole number from 0 to 64"):
        callbacks.search.memorization_report(8, 0, 65)


def test_the_reports_flagged_images_stand_beside_their_training_neighbours(callbacks, app_server, tmp_path):
    """Issue 24.6: training images offered as generated ones are all flagged, each beside itself in the index."""
    from indexes.report import memorization_report

    index = app_server.state.index
    train, test = eval_view("procedural", "train", 0, 32), eval_view("procedural", "test", 0, 32)
    images = torch.stack([train[i][0] for i in (3, 7, 11)])
    data = memorization_report(index, images, torch.stack([test[i][0] for i in range(8)]), tmp_path)
    pairs = callbacks.search._flagged_pairs(index, images, data)
    assert len(pairs) == 3 * len(data["metrics"])  # every image, by every metric
    picture, caption = pairs[1]  # hamming, second closest
    flag = data["metrics"]["hamming"]["flagged"][1]
    i = int(flag["generated"].split(":")[1])
    assert caption == f"hamming {flag['distance']:.4g}: generated #{i} | procedural:train:{(3, 7, 11)[i]}"
    side = index.thumbnails.shape[1]
    assert picture.shape == (side, 2 * side + 1, 3)
    assert (picture[:, side + 1 :] == index.thumbnails[(3, 7, 11)[i]]).all()  # the training image itself
    shrunk = torch.nn.functional.interpolate(images[i : i + 1], size=(side, side), mode="area")[0]
    assert (as_tensor(picture[:, :side]) - shrunk).abs().max() <= 1 / 255 + 1e-6


def test_token_space_matches_a_direct_count(callbacks, app_server):
    usage, codes, umap, data = callbacks.search.token_space()
    tokens = app_server.state.index.tokens
    assert data["images"] == len(tokens) == 96 and data["codes_used"] == len(np.unique(tokens))
    assert data["bit_usage"][3] == pytest.approx(((tokens >> 3) & 1).mean(), abs=1e-4)
    assert sum(len(trace.x) for trace in umap.data) == 96
    assert codes.layout.yaxis.type == "log" and codes.layout.yaxis.dtick == 1  # ticks at powers of ten only
    image, caption = callbacks.search.indexed_image(5)
    assert "procedural:train:5" in caption and image.shape == (64, 64, 3)
    view = eval_view("procedural", "train", 0, 32)
    picture, label = view[5]  # the same item, read from the dataset and thumbnailed here
    assert np.abs(image.astype(int) - thumbnails(picture[None])[0].astype(int)).max() <= 1
    assert caption == f"id 5: procedural:train:5 ({view.classes[label]})"


@pytest.mark.parametrize(
    "endpoint, args, message",
    [
        ("explore.generate", (["no such class"], 1, 0, *KNOBS), "unknown class"),
        ("explore.generate", ([], 1, 0, *KNOBS), "choose at least one class"),
        ("explore.generate", (["tench"], 1, 2**70, *KNOBS), SEED_RANGE),
        ("explore.generate", (["tench"], 1, 0, 4, 2.0, "sideways", *KNOBS[3:]), "guidance_annealing must be one of"),
        ("explore.flip_bits", ("IMAGE", "12", "all"), "bit_ids must be in 0–11"),
        ("explore.flip_bits", ("IMAGE", "x", "all"), "not a number"),
        ("explore.flip_bits", ("IMAGE", "all", "64"), "positions must be in 0–63"),
        ("explore.flip_bits", ("IMAGE", "0-1000000000", "all"), "bit_ids must be in 0–11; got 1000000000"),
        ("explore.flip_bits", (None, "all", "all"), "no image given"),
        ("search.neighbours", ("IMAGE", 0), "k must be a whole number from 1 to 50; got 0"),
        ("explore.bit_walk", ("IMAGE", 300, 2, 0), "bits_per_step must be a whole number from 1 to 256; got 300"),
        ("explore.bit_walk", ("IMAGE", 100, 16, 0), "bits_per_step × num_steps must be at most the image's 768 bits"),
        ("explore.bit_walk", ("IMAGE", 5, 3, 2**70), SEED_RANGE),
        ("explore.dataset_image", (-1,), "item (dataset image number) must be a whole number from 0"),
        ("search.memorization_report", (8, 2**70), SEED_RANGE),
        ("search.indexed_image", (10**30,), "index_id must be a whole number from 0 to 95"),
        ("search.training_image", (96,), "index_id must be a whole number from 0 to 95; got 96"),
        ("search.image_to_neighbours", (None,), "no image given"),
        ("search.image_to_neighbours", ({"path": __file__},), "cannot read the file as an image"),
        ("explore.load_models", ("/etc/passwd", ""), "outside the folders models may be loaded from"),
        ("explore.load_models", ("default", "../../../../../etc"), "generator '../../../../../etc' is outside"),
        ("training.train_launch", ("tokenizer", "../escape", "tiny", "procedural", ""), "job name"),
        ("training.train_launch", ("tokenizer", "ok", "tiny", "/etc", ""), "outside the allowed folders"),
        ("training.train_launch", ("tokenizer", "ok", "tiny", "procedural", "training.max_stpes=3"), "did you mean"),
        ("training.train_stop", ("never-launched",), "not running"),
        ("training.train_resume", ("never-launched",), "no job named 'never-launched'"),
        ("train_load", ("never-launched",), "no job named 'never-launched'"),
    ],
)
def test_bad_input_gets_a_message(callbacks, image_file, endpoint, args, message):
    args = [image_file if a == "IMAGE" else a for a in args]
    with pytest.raises(gr.Error) as error:
        result = operator.attrgetter(endpoint)(callbacks)(*args)
        if endpoint == "explore.generate":
            last(result)
    assert message in str(error.value) and "Traceback" not in str(error.value)


def test_a_pair_without_a_generator_says_so_and_the_controls_follow(callbacks, app_models, app_server):
    try:
        info, classes, message = callbacks.explore.load_models(app_models["tokenizer"], "")
        assert info["generator"] is None and classes["choices"] == []
        assert "this model pair has no generator; load one" in message
        button, note = callbacks.explore.generation_controls()
        assert button["interactive"] is False and "has no generator" in note
        with pytest.raises(gr.Error, match="this model pair has no generator"):
            last(callbacks.explore.generate(["tench"], 1, 0, *KNOBS))
        assert callbacks.explore.cleared() == ([], None, None, "")
    finally:
        callbacks.explore.load_models(app_models["tokenizer"], app_models["generator"])
        app_server.state.wait_ready(300)
    assert callbacks.explore.generation_controls()[0]["interactive"] is True


def test_a_quick_switch_back_stops_the_replaced_models_index_build(callbacks, app_models, app_server):
    """The VQ tokenizer has no index yet; switching away at once stops its build, so no stale thread stays behind
    (one writing an index, or one still in torch when the process exits)."""
    from maskbit import TOKENIZER_PRESETS

    source = app_server.settings.workspace / "switch-vq" / "model"
    Tokenizer(TOKENIZER_PRESETS["tiny_vqgan_plus"]).save_pretrained(source)
    try:
        callbacks.explore.load_models(str(source), "")
    finally:
        callbacks.explore.load_models(app_models["tokenizer"], app_models["generator"])
        app_server.state.wait_ready(300)
    assert [t for t in threading.enumerate() if t.name == "index" and t.is_alive()] == []
    assert "96 images of procedural" in callbacks.explore.index_status()


def test_model_choices_and_generated_images_between_tabs(callbacks):
    choices = callbacks.explore.model_choices()
    assert choices[:2] == ["bundled default (LFQ, 12 bits)", "bundled VQ twin (VQGAN+, 12 bits; tokenizer only)"]
    assert callbacks.explore.pair_sources(choices[1]) == ("default-vq", "")
    assert callbacks.explore.pair_sources(choices[2]) == ("default-omv", "")  # the Open-MAGVIT2 twin: a tokenizer only
    assert callbacks.explore.pair_sources(choices[3]) == ("default-ibq", "")  # the IBQ twin: a tokenizer only
    assert (
        callbacks.explore.pair_sources("official 12-bit (LFQ, ImageNet 256)")[1] == "markweber/maskbit_generator_12bit"
    )
    files = ["a.png", "b.png"]
    assert callbacks.explore.pick_generated(files, gr.SelectData(None, {"index": 1, "value": None})) == "b.png"
    assert (
        callbacks.explore.send_generated(files, None) == "a.png"
        and callbacks.explore.send_generated(files, "b.png") == "b.png"
    )
    with pytest.raises(gr.Error, match="generate an image first"):
        callbacks.explore.send_generated([], None)


def test_training_endpoints_without_a_job(callbacks, app_server):
    table, choices = callbacks.training.train_status()
    assert isinstance(table, list) and "choices" in choices
    workspace = app_server.settings.workspace  # other tests' jobs may be there: the table lists exactly those
    on_disk = {p.name for p in workspace.glob("*") if (p / "status.json").is_file() or (p / "console.txt").is_file()}
    assert {row[0] for row in table} == on_disk and choices["choices"] == [row[0] for row in table]
    figure, sample, console = callbacks.training.train_curves("")
    assert sample is None and console == "" and figure.layout.annotations[0].text == "choose a job"
    assert callbacks.training.train_presets_update("generator")["choices"] == sorted(GENERATOR_TRAIN_PRESETS)
    _, figure, sample, console, _ = callbacks.training.refresh("never-launched")  # the timer never shows an error badge
    assert len(figure.data) == 0 and sample["value"] is None and console == ""
    _, figure, _, _, _ = callbacks.training.refresh("../not a job name")
    assert figure.layout.annotations[0].text == "job '../not a job name' cannot be read"


def test_a_jobs_pending_message_gives_way_to_its_end_and_samples_say_what_they_show(callbacks, app_server):
    """Issue 35.8: "resuming tok-a" stayed on the page after the job had finished; the sample grid had no words."""
    import json
    import os
    import shutil

    jobs = app_server.state.jobs
    run = jobs.run_dir("ended-job")
    run.create()
    try:
        run.write_status(state="running", stage="tokenizer", pid=None, step=3, total_steps=6)
        (run.path / "launcher.json").write_text(json.dumps({"pid": os.getpid()}))  # a live process: still running
        assert callbacks.training.refresh("", "resuming ended-job")[-1] == gr.skip()
        (run.path / "launcher.json").unlink()  # its processes gone without a last status: it died
        assert callbacks.training.refresh("", "resuming ended-job")[-1] == "ended-job died at step 3/6"
        run.write_status(state="finished", stage="tokenizer", pid=None, step=6, total_steps=6)
        for message in ("launched ended-job", "asked ended-job to stop (it writes a checkpoint first)"):
            assert callbacks.training.refresh("", message)[-1] == "ended-job finished at step 6/6"
        for message in ("", "⚠️ job 'x' is not running", "launched no-such-job", None):  # left as they are
            assert callbacks.training.refresh("", message)[-1] == gr.skip()
        Image.new("RGB", (4 * 32, 2 * 32)).save(run.samples_dir / "step-6.png")
        _, sample, _ = callbacks.training.train_curves("ended-job")
        assert sample["value"].endswith("step-6.png") and sample["label"] == (
            "samples at step 6: held-out images (top row) and the tokenizer's reconstructions (bottom row)"
        )
    finally:
        shutil.rmtree(run.path)


def test_bit_flips_side_by_side_with_a_vq_tokenizer(callbacks, image_file, app_server):
    from maskbit import TOKENIZER_PRESETS

    vq = Tokenizer(TOKENIZER_PRESETS["tiny_vqgan_plus"]).requires_grad_(False)  # 32 px, 8×8 tokens, 4096 codes
    source = app_server.settings.workspace / "tiny-vq" / "model"  # the workspace: an allowed model folder
    vq.save_pretrained(source)
    vq.precision = APP_PRECISION
    loaded, other, psnr, distance, verdict, summary = callbacks.explore.compare_flips(
        image_file, str(source), "0, 7", "all"
    )
    assert summary["tokenizers"] == ["loaded (LFQ)", "compared (VQ)"] and len(loaded) == len(other) == 2
    assert summary["compared (VQ)"]["quantizer"] == "vq" and summary["compared (VQ)"]["bit_ids"] == [0, 7]
    indices, _ = analysis.reconstruct(vq, load_image(image_file))
    flips = analysis.flip_each_bit(vq, indices, [0, 7])  # bit 7 of each codebook index, in the app's batch
    assert (as_tensor(other[1][0][::8, ::8][:, :32]) - flips.flipped[1]).abs().max() <= 1 / 255 + 1e-6
    assert summary["compared (VQ)"]["psnr_db"][1] == pytest.approx(flips.distances.psnr[1], abs=1e-3)
    assert [trace.name for trace in psnr.data] == ["loaded (LFQ)", "compared (VQ)"] and list(psnr.data[0].x) == [
        "0",
        "7",
    ]
    assert verdict.layout.annotations[0].text.startswith("the judge knows")  # 32-px images: no judge
    with pytest.raises(gr.Error, match="outside the folders models may be loaded from"):
        callbacks.explore.compare_flips(image_file, "/etc/passwd", "0", "all")


def test_without_lpips_weights_the_page_says_so_and_names_the_l2_plot(callbacks, image_file, app_server):
    """Issue 25.8: a server without LPIPS weights shows the reason in the LPIPS gallery's place at once, and the
    comparison's distance plot is named by what it shows."""
    state = app_server.state
    lpips, note = state.lpips, state.lpips_note
    try:
        state.lpips, state.lpips_note = None, "LPIPS unavailable: no AlexNet weights in the torch cache"
        line, gallery, shown = callbacks.status()
        assert line == callbacks.explore.index_status() and gallery["visible"] is False
        assert shown == {"__type__": "update", "value": f"**by LPIPS**: {state.lpips_note}", "visible": True}
        from maskbit import TOKENIZER_PRESETS

        source = app_server.settings.workspace / "l2-vq" / "model"  # 32 px, as the loaded pair
        Tokenizer(TOKENIZER_PRESETS["tiny_vqgan_plus"]).save_pretrained(source)
        distance = callbacks.explore.compare_flips(image_file, str(source), "0", "all")[3]
        assert distance.layout.title.text == "L2 per bit (no LPIPS weights on this server)"
        assert distance.layout.yaxis.title.text == "L2"
    finally:
        state.lpips, state.lpips_note = lpips, note
    _, gallery, shown = callbacks.status()
    assert gallery["visible"] is True and shown["visible"] is False


def test_the_code_atlas_of_the_loaded_tokenizer(callbacks, app_server):
    from maskbit.analysis import code_atlas

    image, caption = callbacks.explore.code_atlas()
    expected = code_atlas(app_server.state.models.tokenizer)
    assert image.shape == (expected.image.shape[1], expected.image.shape[2], 3) and image.shape[0] == 64 * expected.cell
    assert (as_tensor(image) - expected.image).abs().max() <= 1 / 255 + 1e-6
    assert caption.endswith(": 64×64 codes: row r = high half gray(r), column c = low half gray(c)")
    assert caption.startswith("LFQ tokenizer ")


def test_a_compared_tokenizer_runs_at_the_apps_precision(app_server, monkeypatch):
    """Issue 28.2: the comparison tokenizer was loaded by a copy of the loader that left the precision out."""
    state = app_server.state
    monkeypatch.setattr(state.settings, "precision", "fp32")
    monkeypatch.setattr(state, "_comparisons", {})
    compared = state.comparison_tokenizer("default")
    assert compared.precision == "fp32" and not compared.training
    assert not any(p.requires_grad for p in compared.parameters())


def test_the_judge_says_kept_another_class_or_none_of_these(tmp_path):
    """Issue 35.7: a VQ flip's colour patchwork was judged a star and drawn as "kept". With the bundled 64-px pair the
    judge's verdict per bit is one of three, each the library's verdict on the library's flips of the same tokens."""
    from app.settings import Settings
    from app.state import AppState
    from data import judge, split_images

    state = AppState(Settings(tokenizer="default", generator="", workspace=tmp_path / "runs"))
    images, labels = split_images("procedural", "test", 1, 64, start=3)  # a star
    path = tmp_path / "shape.png"
    Image.fromarray((images[0] * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
    *_, verdict, summary = Callbacks(state).explore.compare_flips(str(path), "default-vq", "all", "all")
    classifier = judge.load()
    words = {1.0: "kept", 0.0: "another class", -1.0: "none of these"}
    for name, tokenizer in (
        ("loaded (LFQ)", state.models.tokenizer),
        ("compared (VQ)", state.comparison_tokenizer("default-vq")),
    ):
        indices, _ = analysis.reconstruct(tokenizer, load_image(path))
        flips = analysis.flip_each_bit(tokenizer, indices, None, None)
        reference = judge.verdict(classifier, flips.reconstruction[None])[0]
        assert reference == labels[0]  # the judge knows the reconstruction's shape
        found = judge.verdict(classifier, flips.flipped)
        expected = [
            "none of these" if f == judge.NONE else "kept" if f == reference else "another class" for f in found
        ]
        assert summary[name]["judge"] == expected, name
        bars = next(trace for trace in verdict.data if trace.name == name)
        assert [words[y] for y in bars.y] == expected
    assert summary["loaded (LFQ)"]["judge"].count("kept") >= 10  # an LFQ flip keeps the shape
    assert summary["compared (VQ)"]["judge"].count("none of these") >= 6  # a VQ flip at every token is noise
    assert list(verdict.layout.yaxis.ticktext) == ["kept", "another class", "none of these"]
