"""The explorer served on localhost, driven through gradio_client: one test per api_name, bad inputs, concurrency,
and a training job launched, stopped, resumed and loaded from the app."""

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from maskbit import Tokenizer, bits
from maskbit.images import load_image

KNOBS = [4, 2.0, "cosine", 1.0, 2.0, 1.0, "arccos"]  # steps, guidance, annealing, scale_pow, randomize, temp, schedule
NAN = float("nan")
SEED_RANGE = "seed must be a whole number from 0 to 9223372036854775807 (2**63 − 1)"
UPLOADS = str(Path(tempfile.gettempdir()) / "gradio")  # Gradio's upload cache


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


@pytest.fixture(scope="module")
def generated(client):
    """Two images generated through the API (the tiny model's ImageNet class names)."""
    return client.predict(["tench", "goldfish"], 2, 7, *KNOBS, api_name="/generate")


@pytest.fixture(scope="module")
def image_file(app_server, tmp_path_factory):
    """A procedural test image as a PNG upload, at the tiny tokenizer's 32×32."""
    from data import eval_view

    view = eval_view("procedural", "test", 0, 32)
    path = tmp_path_factory.mktemp("uploads") / "shape.png"
    Image.fromarray((view[0][0] * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
    return str(path)


def test_model_info_and_index_status(client, app_server):
    info = client.predict(api_name="/model_info")
    assert info["bits_per_token"] == 12 and info["token_grid"] == [8, 8] and info["classes"] == 1000
    assert "RANDOM backbone" in info["lpips"]
    assert "96 images of procedural" in client.predict(api_name="/index_status")


def test_generate(generated, app_server):
    gallery, masked, slider, frame = generated
    assert [item["caption"] for item in gallery] == ["tench (#0)", "goldfish (#1)"]
    image = np.asarray(Image.open(gallery[0]["image"]))
    assert image.shape == (32, 32, 3)
    fractions = json.loads(masked["plot"])["data"][0]["y"]
    assert len(fractions) == 4 and fractions[-1] == 0 and all(a >= b for a, b in zip(fractions, fractions[1:]))
    # the same seed through the library gives the same pixels (PNG transport is lossless)
    from maskbit import generate

    state = app_server.state
    expected = generate(state.models.generator, state.models.tokenizer, [0, 1], _sampling(), seed=7)
    got = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    assert (got - expected[0]).abs().max() <= 1 / 255 + 1e-6


def _sampling():
    from maskbit.config import SamplingConfig

    steps, guidance, annealing, pow_, randomize, temp, schedule = KNOBS
    return SamplingConfig(steps, guidance, annealing, pow_, randomize, temp, schedule)


def test_flip_bits_matches_the_library(client, image_file, app_models):
    original, reconstruction, gallery, chart, chart2, summary, grid = client.predict(
        handle_file(image_file), "0, 5, 11", "all", api_name="/flip_bits"
    )
    assert summary["bits"] == [0, 5, 11] and summary["tokens_flipped"] == 64 and len(gallery) == 3
    tokenizer = Tokenizer.from_pretrained(app_models["tokenizer"])
    image = load_image(image_file)[None]
    tokens = tokenizer.encode(image)
    recon = tokenizer.decode(tokens).clamp(0, 1)
    flipped = tokenizer.decode(bits.flip_bits(tokens, 5, 12)).clamp(0, 1)
    psnr = float(10 * torch.log10(1 / (recon - flipped).pow(2).mean()))
    assert summary["psnr_db"][1] == pytest.approx(psnr, abs=1e-2)
    shown = torch.from_numpy(np.asarray(Image.open(gallery[1]["image"]))).permute(2, 0, 1).float() / 255
    assert (shown - flipped[0]).abs().max() <= 1 / 255 + 1e-6
    # LPIPS values are lpips' own distance (random backbone here), computed from the φ embedding
    assert summary["lpips"] is not None and len(summary["lpips"]) == 3


def test_flip_bits_at_chosen_tokens_only(client, image_file):
    summary = client.predict(handle_file(image_file), "3", "0-3, 9", api_name="/flip_bits")[5]
    assert summary["tokens_flipped"] == 5


def test_token_map(client, image_file, app_models):
    planes, heat, tokens = client.predict(handle_file(image_file), api_name="/token_map")
    tokenizer = Tokenizer.from_pretrained(app_models["tokenizer"])
    expected = tokenizer.encode(load_image(image_file)[None])[0]
    assert tokens == expected.tolist() and len(planes) == 12
    plane = np.asarray(Image.open(planes[4]["image"]).convert("L"))[::12, ::12] > 127  # upscaled 12× (96 / 8)
    assert (plane == ((expected >> 4) & 1).bool().numpy()).all()


def test_bit_walk_flips_r_bits_per_step(client, image_file):
    gallery, plot = client.predict(handle_file(image_file), 5, 3, 0, api_name="/bit_walk")
    assert [g["caption"].split(" ")[0] for g in gallery] == ["0", "5", "10", "15"]
    assert gallery[0]["caption"].endswith("PSNR 100.0 dB")  # the walk starts at the reconstruction itself


def test_dataset_image(client):
    path, caption = client.predict(3, api_name="/dataset_image")
    assert np.asarray(Image.open(path)).shape == (32, 32, 3) and caption.startswith("procedural train #3")


def test_neighbours_of_a_training_image_find_it_first(client, app_server):
    path, _ = client.predict(11, api_name="/dataset_image")
    hamming, lpips, pixel, verdict, scatter, heat, data = client.predict(handle_file(path), 5, api_name="/neighbours")
    assert len(hamming) == len(lpips) == len(pixel) == 5
    for metric in ("hamming", "lpips", "pixel"):
        assert data[metric][0]["source"] == "procedural:train:11" and data[metric][0]["distance"] == pytest.approx(
            0, abs=1e-4
        )
        assert data["verdicts"][metric]["memorized"] is True
    distances = [n["distance"] for n in data["hamming"]]
    assert distances == sorted(distances)
    assert "possible memorization" in verdict
    z = np.array(json.loads(heat["plot"])["data"][0]["z"])
    assert z.shape == (8, 8) and z.sum() == 0  # identical tokens


def test_memorization_report(client):
    image, text, summary = client.predict(8, 0, api_name="/memorization_report")
    assert set(summary) == {"hamming", "lpips", "pixel"} and "flagged" in text
    assert Image.open(image).size[0] > 100


def test_token_space_matches_a_direct_count(client, app_server):
    usage, codes, umap, data = client.predict(api_name="/token_space")
    tokens = app_server.state.index.tokens
    assert data["images"] == len(tokens) == 96
    assert data["codes_used"] == len(np.unique(tokens))
    bit3 = ((tokens >> 3) & 1).mean()
    assert data["bit_usage"][3] == pytest.approx(bit3, abs=1e-4)
    traces = json.loads(umap["plot"])["data"]
    assert sum(len(t["x"]) for t in traces) == 96
    image, caption = client.predict(5, api_name="/indexed_image")
    assert "procedural:train:5" in caption


@pytest.mark.parametrize(
    "api, args, message",
    [
        ("/generate", (["no such class"], 1, 0, *KNOBS), "unknown class"),
        ("/generate", (["tench"], 99, 0, *KNOBS), "greater than maximum value 16"),
        ("/generate", (["tench"], 1, 0, 0, *KNOBS[1:]), "less than minimum value 1"),
        ("/generate", ([], 1, 0, *KNOBS), "choose at least one class"),
        ("/flip_bits", ("IMAGE", "12", "all"), "bits must be in 0–11"),
        ("/flip_bits", ("IMAGE", "x", "all"), "not a number"),
        ("/flip_bits", ("IMAGE", "all", "64"), "tokens must be in 0–63"),
        ("/flip_bits", ("TEXT", "all", "all"), "cannot identify image file"),
        ("/flip_bits", ("BIG", "all", "all"), "megapixels"),
        ("/neighbours", ("IMAGE", 0), "k must be a whole number from 1 to 50; got 0"),
        ("/bit_walk", ("IMAGE", 200, 16, 0), "r × steps"),
        ("/dataset_image", (-1,), "dataset image number"),
        ("/train_launch", ("tokenizer", "../escape", "tiny", "procedural", ""), "job name"),
        ("/train_launch", ("tokenizer", "ok", "tiny", "/etc", ""), "outside the allowed folders"),
        ("/train_launch", ("tokenizer", "ok", "tiny", "procedural", "training.max_stpes=3"), "max_steps"),
        ("/train_launch", ("tokenizer", "ok", "nope", "procedural", ""), "nope is not in the list of choices"),
        ("/train_stop", ("never-launched",), "not running"),
        ("/load_models", ("/no/such/tokenizer", ""), "outside the folders models may be loaded from"),
        # issue 17: hostile input
        ("/flip_bits", ("IMAGE", "0-1000000000", "all"), "bits must be in 0–11; got 1000000000"),
        ("/generate", (["tench"], 1, 2**70, *KNOBS), SEED_RANGE),
        ("/bit_walk", ("IMAGE", 5, 3, 2**70), SEED_RANGE),
        ("/memorization_report", (8, 2**70), SEED_RANGE),
        ("/indexed_image", (10**30,), "number (index id) must be a whole number from 0 to 95"),
        ("/load_models", ("/etc/passwd", ""), "outside the folders models may be loaded from"),
        ("/load_models", ("default", "../../../../../etc"), "generator '../../../../../etc' is outside"),
        ("/train_launch", ("tokenizer", "ok", "tiny", "procedural", "data.dataset=/etc"), "outside the allowed"),
        ("/train_launch", ("generator", "ok", "tiny", "procedural", "tokenizer=/etc/passwd"), "outside the folders"),
        ("/train_launch", ("tokenizer", "ok", "tiny", "procedural", "a=1\n" * 5000), "the limit is 16,384 bytes"),
    ],
)
def test_bad_input_gets_a_message_and_the_server_survives(client, image_file, tmp_path, api, args, message):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    Image.new("RGB", (6000, 5000)).save(big)  # 30 megapixels, over the 25-megapixel limit
    files = {"IMAGE": image_file, "TEXT": str(text), "BIG": str(big)}
    args = [handle_file(files[a]) if isinstance(a, str) and a in files else a for a in args]
    with pytest.raises(AppError) as error:
        client.predict(*args, api_name=api)
    assert message in str(error.value)
    assert "Traceback" not in str(error.value)
    assert UPLOADS not in str(error.value) and "maskbit-" not in str(error.value)  # no server temp paths
    assert client.predict(api_name="/model_info")["bits_per_token"] == 12  # still serving


@pytest.mark.parametrize(
    "api, args, message",
    [
        ("generate", (["tench"], NAN, 0, *KNOBS), "count (images) must be a whole number from 1 to 16; got nan"),
        ("generate", (["tench"], 1, NAN, *KNOBS), SEED_RANGE),
        ("generate", (["tench"], 1, 0, NAN, *KNOBS[1:]), "steps must be a whole number from 1 to 256; got nan"),
        ("generate", (["tench"], 1, 0, 4, NAN, *KNOBS[2:]), "guidance (scale) must be a number from 0 to 15"),
        ("dataset_image", (NAN,), "number (dataset image number) must be a whole number from 0"),
        ("memorization_report", (NAN, 0), "count (generated images) must be a whole number from 4 to 256"),
        ("indexed_image", (float("inf"),), "number (index id) must be a whole number from 0 to 95; got inf"),
    ],
)
def test_nan_and_infinity_name_the_parameter(app_server, api, args, message):
    """Issue 17.7: count=NaN gave "cannot convert float NaN to integer". gradio_client refuses to send NaN, so the
    request is written with the json module (NaN, Infinity), as any HTTP client can."""
    import httpx

    url = f"{app_server.url}gradio_api/call/{api}"
    body = json.dumps({"data": list(args)})  # allow_nan: NaN and Infinity literals
    event = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30).json()
    lines = httpx.get(f"{url}/{event['event_id']}", timeout=60).text.splitlines()
    assert "event: error" in lines, lines
    error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))["error"]
    assert message in error and "cannot convert" not in error


def test_uploads_are_read_by_the_apps_own_loader(client, tmp_path):
    """Issue 17.6: Gradio decoded uploads before the app's checks: a huge declared size cost seconds of CPU, a 16-bit
    gradient came back almost white, transparency came out on black."""
    big = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(big)  # 12 kB on disk, 100 megapixels declared
    started = time.perf_counter()
    with pytest.raises(AppError, match="the image is 10000×10000 pixels; the limit is 25 megapixels"):
        client.predict(handle_file(str(big)), "0", "0", api_name="/flip_bits")
    assert time.perf_counter() - started < 2.0  # the header only: Gradio's decode and re-encode took seconds

    def original(image: Image.Image, name: str) -> np.ndarray:
        image.save(tmp_path / name)
        shown = client.predict(handle_file(str(tmp_path / name)), "0", "0", api_name="/flip_bits")[0]
        return np.asarray(Image.open(shown).convert("RGB")).astype(np.float64)

    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    assert abs(original(Image.fromarray(gradient), "gradient16.png").mean() - 127.5) < 4  # Gradio's clip gave 251

    shape = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent black everywhere …
    shape.paste((0, 0, 0, 255), (16, 16, 48, 48))  # … but an opaque black square in the middle
    rgba = original(shape, "shape.png")
    assert rgba[:4, :4].min() == 255 and rgba[12:20, 12:20].max() < 40  # on white, as documented


def test_the_apps_temporary_files_stay_bounded(client, app_server):
    """Issue 17.8: every saved PNG got a temporary folder of its own, never deleted."""
    files = app_server.state.files
    for seed in range(2):  # 32 generated PNGs
        client.predict(["tench"], 16, seed, *KNOBS, api_name="/generate")
    assert len(files) == files.keep == 16
    assert all(p.is_file() for p in files.folder.iterdir())  # files only: no folder per image
    assert app_server.demo.delete_cache == (600, 3600)  # Gradio's own copies: deleted after an hour


def test_eight_concurrent_clients_generate(app_server):
    def one(seed):
        return Client(app_server.url, verbose=False).predict(["tench"], 2, seed, *KNOBS, api_name="/generate")[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(len(r) == 2 for r in results)
    firsts = {np.asarray(Image.open(r[0]["image"])).tobytes() for r in results}
    assert len(firsts) > 1  # different seeds, different images


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_training_job_runs_stops_resumes_and_loads(client, app_server, app_models):
    """Launch a tiny tokenizer job, stop it (checkpoint + exit), resume it to the end, load it into the explorer."""
    jobs = app_server.state.jobs
    overrides = "training.max_steps=120\ntraining.save_every=10 training.log_every=5"
    table, choice, message = client.predict(
        "tokenizer", "tiny-job", "tiny", "procedural", overrides, api_name="/train_launch"
    )
    assert message == "launched tiny-job"

    def job():
        return jobs.job("tiny-job")

    # The bounds only stop a hung test; on a busy 2-core machine each phase can take minutes.
    wait_for(lambda: job().state == "running" and job().step >= 10, 600, "the job to pass step 10")
    table, _ = client.predict(api_name="/train_status")
    row = next(r for r in table["data"] if r[0] == "tiny-job")
    assert row[1:3] == ["tokenizer", "running"] and row[5]  # has a pid
    client.predict("tiny-job", api_name="/train_stop")
    stopped = wait_for(lambda: job().state in ("stopped", "finished", "failed") and job(), 300, "the job to stop")
    assert stopped.state == "stopped", jobs.console_tail("tiny-job")
    assert jobs.run_dir("tiny-job").latest_checkpoint() is not None
    figure, sample, console = client.predict("tiny-job", api_name="/train_curves")
    assert any(trace["name"] == "loss" for trace in json.loads(figure["plot"])["data"])

    client.predict("tiny-job", api_name="/train_resume")
    ended = wait_for(lambda: job().state in ("finished", "failed", "died") and job(), 900, "the resumed job to end")
    assert ended.state == "finished", jobs.console_tail("tiny-job")
    steps = [m["step"] for m in jobs.metrics("tiny-job")]
    assert steps == sorted(set(steps)) and steps[-1] == 120

    try:
        info, _, _ = client.predict("tiny-job", api_name="/train_load")
        assert info["tokenizer"].endswith("tiny-job/model") and info["generator"] is None
        app_server.state.wait_ready(300)
        assert "96 images" in client.predict(api_name="/index_status")  # an index for the new tokenizer
    finally:
        client.predict(app_models["tokenizer"], app_models["generator"], api_name="/load_models")
        app_server.state.wait_ready(300)
