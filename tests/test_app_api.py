"""The explorer served on localhost, driven through gradio_client and raw HTTP: what only the Gradio layer can show.

The endpoints themselves are tested directly in tests/test_app_callbacks.py; here: the API's names and parameters,
lossless PNG transport, streamed generation, uploads that reach the app's own loader unread, bad input that Gradio
checks first, NaN over HTTP, bounded temporary files, concurrent clients, a real training job, the README example.
"""

import json
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError, Status
from PIL import Image

from maskbit import SamplingConfig, generate
from tests.conftest import free_port

KNOBS = [4, 2.0, "cosine", 1.0, 2.0, 1.0, "arccos"]  # num_steps … mask_schedule, the library's names and order
NAN = float("nan")
SEED_RANGE = "seed must be a whole number from 0 to 9223372036854775807 (2**63 − 1)"
UPLOADS = str(Path(tempfile.gettempdir()) / "gradio")  # Gradio's upload cache
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


@pytest.fixture(scope="module")
def image_file(app_server, tmp_path_factory):
    """A procedural test image as a PNG upload, at the tiny tokenizer's 32×32."""
    from data import eval_view

    view = eval_view("procedural", "test", 0, 32)
    path = tmp_path_factory.mktemp("uploads") / "shape.png"
    Image.fromarray((view[0][0] * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
    return str(path)


def test_the_api_speaks_the_librarys_vocabulary(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    parameters = {name: [p["parameter_name"] for p in endpoint["parameters"]] for name, endpoint in api.items()}
    assert parameters["/generate"] == [
        "labels", "count", "seed", "num_steps", "guidance_scale", "guidance_annealing", "scale_pow",
        "randomize_temperature", "softmax_temperature", "mask_schedule",
    ]  # fmt: skip
    assert parameters["/flip_bits"] == ["image", "bit_ids", "positions"]
    assert parameters["/bit_walk"] == ["image", "bits_per_step", "num_steps", "seed"]
    assert parameters["/neighbours"] == ["image", "k"]
    expected = {
        "generate", "flip_bits", "token_map", "bit_walk", "neighbours", "memorization_report", "token_space",
        "indexed_image", "training_image", "dataset_image", "load_models", "model_info", "index_status", "train_launch",
        "train_status", "train_stop", "train_resume", "train_curves", "train_load",
    }  # fmt: skip
    assert expected <= {name.removeprefix("/") for name in api}


def test_generate_over_the_api_gives_the_librarys_pixels(client, app_server, monkeypatch):
    monkeypatch.setenv("MASKBIT_THREADS", "1")  # the server and the library at one thread count: bf16 depends on it
    gallery, masked, slider, frame, progress = client.predict(["tench", "goldfish"], 2, 7, *KNOBS, api_name="/generate")
    assert [item["caption"] for item in gallery] == ["tench (#0)", "goldfish (#1)"] and progress == "2 images, 4 steps"
    fractions = json.loads(masked["plot"])["data"][0]["y"]
    assert len(fractions) == 4 and fractions[-1] == 0
    state = app_server.state
    expected = generate(state.models.generator, state.models.tokenizer, [0, 1], SamplingConfig(*KNOBS), seed=7)
    image = np.asarray(Image.open(gallery[0]["image"]))  # PNG: lossless
    assert image.shape == (32, 32, 3)
    got = torch.from_numpy(image.copy()).permute(2, 0, 1) / 255
    assert (got - expected[0]).abs().max() <= 1 / 255 + 1e-6


def test_the_readme_example_runs_as_written(app_server, monkeypatch):
    """The README's gradio_client block, against this server (its URL put in place of the README's)."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```py\n(from gradio_client import Client.*?)```", readme, re.S).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in code
    names = app_server.state.models.class_names
    code = code.replace("http://127.0.0.1:7860/", app_server.url).replace('"circle"', repr(names[0]))
    namespace = {}
    exec(code, namespace)  # noqa: S102  (the README's own example)
    assert len(namespace["gallery"]) == 4


@pytest.mark.parametrize(
    "api, args, message",
    [
        ("/generate", (["tench"], 99, 0, *KNOBS), "greater than maximum value 16"),  # Gradio's own slider check
        ("/generate", (["tench"], 1, 0, 0, *KNOBS[1:]), "less than minimum value 1"),
        ("/flip_bits", ("TEXT", "all", "all"), "cannot identify image file"),
        ("/flip_bits", ("BIG", "all", "all"), "megapixels"),
        ("/flip_bits", ("IMAGE", "0-1000000000", "all"), "bit_ids must be in 0–11; got 1000000000"),
        ("/load_models", ("/etc/passwd", ""), "outside the folders models may be loaded from"),
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
        ("generate", (["tench"], 1, 0, NAN, *KNOBS[1:]), "num_steps must be a whole number from 1 to 256; got nan"),
        ("generate", (["tench"], 1, 0, 4, NAN, *KNOBS[2:]), "guidance_scale must be a number from 0 to 15"),
        ("dataset_image", (NAN,), "item (dataset image number) must be a whole number from 0"),
        ("memorization_report", (NAN, 0, 0), "count (generated images) must be a whole number from 4 to 256"),
        ("indexed_image", (float("inf"),), "index_id must be a whole number from 0 to 95; got inf"),
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


def _images(value) -> list[str]:
    """Every image file in a gradio_client result (galleries, images), in order."""
    if isinstance(value, dict):
        return (
            [value["image"]] if isinstance(value.get("image"), str) else [p for v in value.values() for p in _images(v)]
        )
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _images(v)]
    return [value] if isinstance(value, str) and value.endswith((".png", ".webp")) and Path(value).is_file() else []


def test_identical_requests_of_many_clients_all_download_whole_files(app_server, image_file, tmp_path):
    """Issue 32.4: 32 clients asking for the flips and neighbours of one image got identical results, which Gradio
    rewrote in place under one cache path while other clients downloaded it: 4 % of the requests failed with
    "peer closed connection without sending complete message body". Here 8 clients, each with its own session, ask
    for the same flips and neighbours at once: every request completes, every file is a whole image, and every client
    gets the same pictures (the race itself: tests/test_app_units.py::test_a_cached_image_is_never_rewritten_while_it_
    is_downloaded). The same, not the same bytes: decoding in bf16 (the app's "auto" where it is native) rounds by the
    thread count each request gets under load, which moves a pixel by up to 2/255 (more in a scaled difference map)."""
    from gradio import processing_utils

    assert processing_utils.save_pil_to_cache.writes_once  # installed by create_app

    def one(number: int) -> list[np.ndarray]:
        client = Client(app_server.url, verbose=False, download_files=str(tmp_path / f"client-{number}"))
        image = handle_file(image_file)
        files = _images(client.predict(image, "0-3", "all", api_name="/flip_bits")[:3])  # original … flipped
        files += _images(client.predict(image, 4, api_name="/neighbours")[:3])  # the galleries
        return [np.asarray(Image.open(f).convert("RGB"), dtype=np.int16) for f in files]  # a cut file fails here

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert len(results[0]) >= 2 + 4 + 2 * 4 and all(len(r) == len(results[0]) for r in results)
    for pictures in results[1:]:
        for picture, first in zip(pictures, results[0]):
            difference = np.abs(picture - first)  # difference maps are scaled to their largest change: up to ×8
            assert picture.shape == first.shape and difference.max() <= 16 and difference.mean() <= 1


@pytest.fixture
def full_queue_server(tmp_path, app_models, app_server):
    """A second explorer with room for one computing request and one waiting: `hold` (the code atlas's lock, taken by
    the test) keeps two code_atlas requests there, so the queue stays full for as long as the test wants. It starts
    with the first server's atlas of the same tokenizer (seconds of decoding), so they are answered at once after."""
    from app.main import create_app, launch
    from app.settings import Settings

    settings = Settings(
        tokenizer=app_models["tokenizer"],
        generator=app_models["generator"],
        index=tmp_path / "no-index",  # no index to build: nothing computes in the background
        workspace=tmp_path / "runs",
        port=free_port(),
        concurrency=1,
        max_queue=1,
    )
    state, demo = create_app(settings)
    state._atlases.update(app_server.state._atlases)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{settings.port}/", state=state, demo=demo, hold=state._atlas_lock)
    demo.close()


def test_a_page_opened_while_the_queue_is_full_gets_its_own_events_answered(full_queue_server):
    """Issue 32.4: the queue's bound counts every waiting event, and the page's own load events and 2-s timer waited
    in it with the computing requests: a page opened while the queue was full had them all refused (an "Error" badge
    on every sampling knob, a toast each). The page's client (@gradio/client `submit`) sends an event that the config
    marks `queue: false` straight to /run and any other to /queue/join; here both, as it does, with the queue full."""
    import httpx

    server = full_queue_server
    api = f"{server.url}gradio_api"
    client = Client(server.url, verbose=False)
    assert server.hold.acquire(timeout=600)
    try:
        # One running (waiting for the lock), then one waiting: the queue is full. Each joins before anything else is
        # sent: a probe already waiting in the queue when the second joined would have the second refused instead.
        jobs = []
        for joined in (Status.PROCESSING, Status.IN_QUEUE):
            jobs.append(Client(server.url, verbose=False).submit(api_name="/code_atlas"))
            wait_for(lambda job=jobs[-1], joined=joined: job.status().code == joined, 120, f"code_atlas {joined}")

        def refused() -> bool:
            try:
                client.predict(api_name="/index_status")
            except QueueError:
                return True
            return False

        wait_for(refused, 120, "a full queue")
        config = httpx.get(f"{server.url}config", timeout=60).json()
        own = [d for d in config["dependencies"] if any(t[1] in ("load", "tick") for t in d["targets"])]
        assert len(own) >= 5  # model_info, served, jobs_view on load; index status and jobs on the timer
        for dependency in own:
            body = {"data": [None] * len(dependency["inputs"]), "fn_index": dependency["id"], "session_hash": "page"}
            route = "run/predict" if dependency["queue"] is False else "queue/join"
            answer = httpx.post(f"{api}/{route}", json=body, timeout=120)
            assert answer.status_code == 200 and "data" in answer.json(), (dependency["api_name"], answer.text)
        assert refused()  # still full: nothing left the queue while the page's events were answered
        # an API client joins the queue for every endpoint, and a full queue refuses it at once ...
        with pytest.raises(QueueError, match="Queue is full"):
            client.predict(api_name="/model_info")
        # ... and a computing action cannot skip the queue by a direct POST (Gradio answers those by default)
        direct = httpx.post(f"{api}/run/code_atlas", json={"data": [], "session_hash": "page"}, timeout=120)
        assert direct.status_code == 404, direct.text
    finally:
        server.hold.release()
    for job in jobs:
        assert job.result(timeout=600)[1].startswith("LFQ tokenizer")


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
    figure, sample, console = client.predict("tiny-job", api_name="/train_curves")
    assert any(trace["name"] == "loss" for trace in json.loads(figure["plot"])["data"])
    # Stop, then Resume at once, as a user may: the resume waits for the trainer's SIGTERM checkpoint and for
    # `accelerate launch`, which outlives the trainer by a moment (issue 28.7: "still running").
    client.predict("tiny-job", api_name="/train_stop")
    assert client.predict("tiny-job", api_name="/train_resume")[-1] == "resuming tiny-job"
    ended = wait_for(lambda: job().state in ("finished", "failed", "died") and job(), 900, "the resumed job to end")
    assert ended.state == "finished", jobs.console_tail("tiny-job")
    steps = [m["step"] for m in jobs.metrics("tiny-job")]
    assert steps == sorted(set(steps)) and steps[-1] == 120

    try:
        info, _, message, _, _ = client.predict("tiny-job", api_name="/train_load")
        assert "loaded" in message
        assert info["tokenizer"].endswith("tiny-job/model") and info["generator"] is None
        app_server.state.wait_ready(300)
        assert "96 images" in client.predict(api_name="/index_status")  # an index for the new tokenizer
    finally:
        client.predict(app_models["tokenizer"], app_models["generator"], api_name="/load_models")
        app_server.state.wait_ready(300)
