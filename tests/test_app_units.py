"""The app's pieces without a server: models, uploads and every other input check, jobs, settings, files."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.jobs import Jobs
from app.models import generate_steps, load_models
from app.settings import Settings, parse_settings
from app.validation import (
    UserError,
    bounded_text,
    checked_model_source,
    checked_seed,
    load_upload,
    parse_ids,
    public_message,
    real_number,
    whole_number,
)

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def models(app_models):
    return load_models(app_models["tokenizer"], app_models["generator"], device=torch.device("cpu"))


def test_parse_ids():
    assert parse_ids("all", 12, "bits") is None
    assert parse_ids(" 0, 3 ,5-7; 3", 12, "bits") == [0, 3, 5, 6, 7]
    with pytest.raises(UserError, match="bits must be in 0–11"):
        parse_ids("12", 12, "bits")
    with pytest.raises(UserError, match="not a number"):
        parse_ids("a-b", 12, "bits")


def test_classes_by_name_or_id(models):
    assert models.label("goldfish") == 1 and models.label("GOLDFISH") == 1 and models.label("3") == 3
    with pytest.raises(UserError, match="Did you mean"):
        models.label("gold")
    with pytest.raises(UserError, match="out of range"):
        models.label(1000)


def test_a_mismatched_pair_says_why(app_models, tmp_path):
    from maskbit import Generator
    from maskbit.config import GeneratorConfig

    Generator(GeneratorConfig(token_size=10, grid_size=8, hidden_dim=32, depth=1, heads=2, mlp_dim=64)).save_pretrained(
        tmp_path / "g"
    )
    models = load_models(app_models["tokenizer"], str(tmp_path / "g"), device=torch.device("cpu"))
    assert not models.can_generate and "10-bit" in models.problem
    with pytest.raises(UserError, match="load a matching pair"):
        next(generate_steps(models, [0], models.sampling, 0))
    alone = load_models(app_models["tokenizer"], "", device=torch.device("cpu"))
    with pytest.raises(UserError, match="this model pair has no generator; load one"):
        next(generate_steps(alone, [0], models.sampling, 0))
    from maskbit import TOKENIZER_PRESETS, Tokenizer

    Tokenizer(TOKENIZER_PRESETS["tiny_vqgan_plus"]).save_pretrained(tmp_path / "vq")  # 12-bit VQ tokens
    vq = load_models(str(tmp_path / "vq"), app_models["generator"], device=torch.device("cpu"))
    assert not vq.can_generate and "vector-quantised" in vq.problem


# ---------------------------------------------------------------------------------------------------- uploads


def save(tmp_path, image, name="x.png"):
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "CMYK", "1", "F"])
def test_uploads_of_any_mode_become_rgb(tmp_path, mode):
    image = Image.new(mode, (48, 40))
    name = "x.tiff" if mode in ("CMYK", "F") else "x.png"
    out = load_upload(save(tmp_path, image, name), 32, 10_000_000, 25_000_000)
    assert out.shape == (3, 32, 32) and 0 <= out.min() and out.max() <= 1


def test_transparency_is_composited_on_white(tmp_path):
    out = load_upload(save(tmp_path, Image.new("RGBA", (8, 8), (0, 0, 0, 0))), 8, 10**7, 10**7)
    assert torch.equal(out, torch.ones(3, 8, 8))


def test_bad_uploads_are_refused_with_a_reason(tmp_path):
    with pytest.raises(UserError, match="no image given"):
        load_upload(None, 32, 10**7, 10**7)
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="cannot read"):
        load_upload(tmp_path / "a.png", 32, 10**7, 10**7)
    with pytest.raises(UserError, match="megapixels"):
        load_upload(save(tmp_path, Image.new("RGB", (3000, 2000))), 32, 10**8, 5_000_000)
    with pytest.raises(UserError, match="MB"):
        load_upload(save(tmp_path, Image.effect_noise((400, 400), 60).convert("RGB")), 32, 1000, 10**8)


# ---------------------------------------------------------------------------------------------------- jobs


def test_launch_commands_are_argument_lists(tmp_path):
    jobs = Jobs(tmp_path / "runs", data_roots=[tmp_path / "data"])
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    assert jobs.paths.checked_dataset(str(tmp_path / "data" / "imgs")) == str(tmp_path / "data" / "imgs")
    args = jobs.command("tokenizer", jobs.run_dir("a"), "tiny", ["training.max_steps=3"])
    assert all(isinstance(a, str) for a in args)
    assert args[args.index("-m") + 1 : args.index("-m") + 3] == ["train", "tokenizer"]
    assert args[-4:] == ["--preset", "tiny", "--set", "training.max_steps=3"]
    assert args[0].endswith("accelerate") and args[1] == "launch"
    resume = jobs.command("generator", jobs.run_dir("a"), resume=True)
    assert resume[-1] == "--resume" and "--preset" not in resume


REPORT_THREADS = """
import json, os, sys, torch
sys.path.insert(0, os.getcwd())  # the project root, where the app starts its jobs
from maskbit.device import fit_threads
pid = os.getpid()
environ = dict(item.split("=", 1) for item in open(f"/proc/{pid}/environ").read().split("\\0") if "=" in item)
report = {"omp": environ.get("OMP_NUM_THREADS"), "nice": os.getpriority(os.PRIO_PROCESS, 0)}
report["parent_nice"] = os.getpriority(os.PRIO_PROCESS, os.getppid())
report["start"] = torch.get_num_threads()
report["fitted"] = fit_threads("cpu")
open(sys.argv[1], "w").write(json.dumps(report))
"""


def test_a_launched_job_gets_the_apps_cores_a_lower_priority_and_fits_its_threads(tmp_path, monkeypatch):
    """Read back from the launched process itself: its environment (/proc/<pid>/environ), its priority and that of
    `accelerate launch`, and the torch thread counts it starts with and fits to the load."""
    import json
    import os

    from maskbit.device import BACKGROUND_NICE, usable_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    jobs = Jobs(tmp_path / "runs")
    args = jobs.command("tokenizer", jobs.run_dir("a"), "tiny")
    script, report = tmp_path / "report_threads.py", tmp_path / "report.json"
    script.write_text(REPORT_THREADS)
    jobs._start("a", args[: args.index("-m")] + [str(script), str(report)])  # accelerate launch, this script
    assert jobs.processes["a"].wait(120) == 0, (jobs.run_dir("a").path / "console.txt").read_text()[-2000:]
    seen = json.loads(report.read_text())
    nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)
    cores = usable_cores()
    assert seen["omp"] == str(cores) and seen["start"] == cores and seen["nice"] == seen["parent_nice"] == nice
    assert 1 <= seen["fitted"] <= cores  # fitted to the load at each step: test_device.py


def test_the_apps_generation_fits_its_threads_to_the_load(models):
    """Next to one busy process per core, every sampling step and decode of the app's generation runs one thread."""
    import subprocess
    import sys
    import time

    from maskbit.device import usable_cores

    threads = []
    hooks = [
        models.generator.register_forward_hook(lambda *_: threads.append(("step", torch.get_num_threads()))),
        models.tokenizer.decoder.register_forward_hook(lambda *_: threads.append(("decode", torch.get_num_threads()))),
    ]
    spin = "print('spinning', flush=True)\nwhile True: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE) for _ in range(usable_cores())]
    previous = torch.get_num_threads()
    try:
        for process in busy:
            process.stdout.readline()  # its loop has started, whatever the load
        time.sleep(0.1)
        list(generate_steps(models, [0, 1], models.sampling, 0))
    finally:
        for process in busy:
            process.kill()
            process.wait()
        for hook in hooks:
            hook.remove()
        torch.set_num_threads(previous)
    assert {kind for kind, _ in threads} == {"step", "decode"} and {n for _, n in threads} == {1}


def test_jobs_refuse_escapes_and_unknown_keys(tmp_path):
    jobs = Jobs(tmp_path / "runs")
    for name in ("../x", "/abs", "", "a b", ".hidden"):
        with pytest.raises(UserError, match="job name"):
            jobs.run_dir(name)
    with pytest.raises(UserError, match="outside the allowed folders"):
        jobs.launch("tokenizer", "a", "tiny", "/etc", "")
    with pytest.raises(UserError, match="max_steps"):
        jobs.launch("tokenizer", "a", "tiny", "procedural", "training.max_step=3")
    with pytest.raises(UserError, match="no job named"):
        jobs.resume("nothing")


# ---------------------------------------------------------------------------------------------------- settings


def test_exposed_servers_are_locked_down(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert Settings().training_enabled and not Settings().exposed
    exposed = Settings(host="0.0.0.0")
    assert exposed.exposed and not exposed.training_enabled and not exposed.dataset_images_visible
    assert not Settings(host="0.0.0.0", enable_training=True).training_enabled  # no auth
    assert Settings(host="0.0.0.0", enable_training=True, auth=("a", "b")).training_enabled
    monkeypatch.setenv("SPACE_ID", "me/explorer")
    assert Settings().exposed and not Settings().training_enabled
    with pytest.raises(SystemExit):
        parse_settings(["--host", "0.0.0.0", "--enable-training"])
    with pytest.raises(SystemExit):
        parse_settings(["--auth", "nocolon"])


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MASKBIT_TOKENIZER", "markweber/maskbit_tokenizer_12bit")
    monkeypatch.setenv("MASKBIT_AUTH", "u:p")
    settings = parse_settings([])
    assert settings.tokenizer == "markweber/maskbit_tokenizer_12bit" and settings.auth == ("u", "p")


# ---------------------------------------------------------------------------------------------------- hostile input

BOUNDED_IDS = """
import resource, sys, time
from app.validation import UserError, parse_ids
data = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmData:")][0]
limit = data + 512 * 2**20  # what the imports use, plus 512 MiB: building range(0, 10**9) needs 8 GiB
resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
for text, size, what in [("0-1000000000", 64, "tokens"), ("0-100000000", 12, "bits"), ("0-63," * 2000, 64, "x")]:
    started = time.perf_counter()
    try:
        result = parse_ids(text, size, what)
        print("ok", len(result), time.perf_counter() - started)
    except UserError as error:
        print("refused", time.perf_counter() - started, error)
"""


def test_id_ranges_are_bounded_before_anything_is_allocated():
    """Issue 17.1: "0-1000000000" used to build the whole range first (22 GB, the OOM killer took the server). Run
    under RLIMIT_DATA so that a regression fails here (MemoryError) instead of taking the machine down."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", BOUNDED_IDS], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused") and "tokens must be in 0–63; got 1000000000" in lines[0]
    assert lines[1].startswith("refused") and "bits must be in 0–11; got 100000000" in lines[1]
    assert lines[2].startswith("ok 64")  # 2,000 overlapping ranges: one flag per id, not a list per range
    assert all(float(line.split()[1 if line.startswith("refused") else 2]) < 1.0 for line in lines)


def test_id_lists_explain_what_is_wrong():
    with pytest.raises(UserError, match="runs backwards; write 3-7"):
        parse_ids("7-3", 12, "bits")
    with pytest.raises(UserError, match="got a 50-digit number"):
        parse_ids("1" * 50, 12, "bits")
    with pytest.raises(UserError, match="the limit is 10,000"):
        parse_ids("0," * 6000, 12, "bits")
    with pytest.raises(UserError, match="bits must be in 0–11; got -1"):
        parse_ids("-1", 12, "bits")
    assert parse_ids([3, 1, 3], 12, "bits") == [1, 3]


@pytest.mark.parametrize(
    "value, message",
    [
        (float("nan"), "count must be a whole number from 1 to 16; got nan"),
        (float("inf"), "got inf"),
        (2.5, "got 2.5"),
        ("9" * 5000, "(5000 characters)"),
        (None, "count must be a whole number from 1 to 16; the box is empty"),  # issue 35.8
        ("  ", "the box is empty"),
        (True, "got True"),
        (17, "got 17"),
    ],
)
def test_whole_numbers_name_the_parameter_and_the_range(value, message):
    with pytest.raises(UserError) as error:
        whole_number(value, "count", 1, 16)
    assert message in str(error.value)


def test_seeds_state_their_range_and_so_does_the_library():
    assert checked_seed(4.0) == 4 and checked_seed(2**63 - 1) == 2**63 - 1
    for bad in (2**70, -1, float("nan")):
        with pytest.raises(UserError, match=r"seed must be a whole number from 0 to 9223372036854775807"):
            checked_seed(bad)
    from maskbit.sampling import check_seed

    with pytest.raises(ValueError, match=r"from 0 to 9223372036854775807 \(2\*\*63 − 1\), got 1180591620717411303424"):
        check_seed(2**70)


def test_real_numbers_and_text_are_bounded():
    assert real_number("2.5", "guidance", 0, 15) == 2.5
    for bad in (float("nan"), float("inf"), 16, "x", None):
        with pytest.raises(UserError, match="guidance must be a number from 0 to 15"):
            real_number(bad, "guidance", 0, 15)
    with pytest.raises(UserError, match="overrides is 20,000 characters long; the limit is 10,000"):
        bounded_text("x" * 20_000, "overrides", 10_000)


def test_temporary_paths_are_left_out_of_messages():
    import tempfile

    gradio_cache = str(Path(tempfile.gettempdir()) / "gradio" / "3f2a" / "notes.png")
    own = str(Path(tempfile.gettempdir()) / "maskbit-x1y2" / "000001-report.png")
    message = public_message(f"cannot identify image file '{gradio_cache}' or {own}")
    assert message == "cannot identify image file 'notes.png' or 000001-report.png"
    assert public_message("/data/models/tok is outside") == "/data/models/tok is outside"  # not temporary: kept


# ---------------------------------------------------------------------------------------------------- model sources


def test_model_sources_stay_inside_their_roots(tmp_path):
    (tmp_path / "runs" / "job" / "model").mkdir(parents=True)
    (tmp_path / "models" / "tok").mkdir(parents=True)
    (tmp_path / "runs" / "escape").symlink_to("/etc")
    roots = [tmp_path / "runs", tmp_path / "models"]

    def check(source, allow_hub=False, trusted=()):
        return checked_model_source(source, "tokenizer", roots, allow_hub, trusted, base=tmp_path)

    assert check("default") == "default"
    assert check("runs/job/model") == str(tmp_path / "runs" / "job" / "model")  # relative to base, made absolute
    assert check(str(tmp_path / "models" / "tok")) == str(tmp_path / "models" / "tok")
    for outside in ("/etc/passwd", "../../etc", "runs/../../etc", "runs/escape/passwd", "/tmp/gradio/abc/x.bin"):
        with pytest.raises(UserError, match="outside the folders models may be loaded from"):
            check(outside)
    with pytest.raises(UserError, match="hub downloads are off on this exposed server"):
        check("markweber/maskbit_tokenizer_12bit")
    assert check("markweber/maskbit_tokenizer_12bit", allow_hub=True) == "markweber/maskbit_tokenizer_12bit"
    # the deployer's start-up models may always be loaded again (a Space starts with MASKBIT_TOKENIZER=<hub id>)
    assert check("/srv/tok", trusted=["/srv/tok"]) == "/srv/tok"
    with pytest.raises(UserError, match="1,000"):
        check("x" * 2000)


def test_model_roots_and_hub_permission_come_from_the_command_line_or_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("MASKBIT_MODEL_ROOTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setenv("MASKBIT_DATA_ROOTS", str(tmp_path / "d"))
    settings = parse_settings(["--host", "0.0.0.0"])
    assert settings.model_roots == [tmp_path / "a", tmp_path / "b"] and settings.data_roots == [tmp_path / "d"]
    assert not settings.hub_allowed and Settings().hub_allowed  # exposed: off; on localhost: on
    assert parse_settings(["--host", "0.0.0.0", "--allow-hub", "--model-root", "/m"]).model_roots == [Path("/m")]
    monkeypatch.setenv("MASKBIT_ALLOW_HUB", "1")
    assert parse_settings(["--host", "0.0.0.0"]).hub_allowed


# ---------------------------------------------------------------------------------------------------- training jobs


@pytest.fixture
def jobs(tmp_path):
    (tmp_path / "data" / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "data" / "shards").mkdir()
    (tmp_path / "data" / "shards" / "s-0.tar").write_bytes(b"")
    (tmp_path / "data" / "tokens.npz").write_bytes(b"")
    (tmp_path / "data" / "tok.yaml").write_text("model: {}\n")
    (tmp_path / "runs" / "tok" / "model").mkdir(parents=True)
    return Jobs(tmp_path / "runs", data_roots=[tmp_path / "data"])


@pytest.mark.parametrize(
    "stage, dataset, overrides, message",
    [
        ("tokenizer", "procedural", "data.dataset=/etc", "data.dataset '/etc' is outside the allowed folders"),
        ("tokenizer", "/etc", "", "dataset '/etc' is outside the allowed folders"),
        ("tokenizer", "/no/such/x", "", "dataset '/no/such/x' is outside the allowed folders"),
        ("tokenizer", "procedual", "", "dataset 'procedual': no such dataset or folder; did you mean 'procedural'? "),
        ("tokenizer", "DATA/imgz", "", "DATA/imgz': no such dataset or folder; datasets: procedural, or a folder"),
        ("tokenizer", "procedural", "data.dataset=../../../../../../etc", "outside the allowed folders"),
        ("tokenizer", "procedural", "data.pretokenized=/etc/passwd", "data.pretokenized '/etc/passwd' is outside"),
        ("generator", "procedural", "tokenizer=/etc/passwd", "tokenizer '/etc/passwd' is outside"),
        ("generator", "procedural", "tokenizer=default data.pretokenized=/etc/passwd", "data.pretokenized"),
        ("generator", "procedural", "tokenizer=default tokenizer_config=/etc/x.yaml", "tokenizer_config '/etc/x.yaml'"),
        ("generator", "procedural", "tokenizer=markweber/maskbit_tokenizer_12bit", "hub downloads are off"),
        ("generator", "procedural", "", "the generator needs a tokenizer"),
        ("tokenizer", "DATA/{imgs,../../../../etc}/x.tar", "", "'..' is not allowed in a shard pattern"),
        ("tokenizer", "DATA/s-{0..1000000000}.tar", "", "names more than 100,000 files"),
    ],
)
def test_every_path_of_a_launch_is_checked_however_it_is_given(jobs, tmp_path, stage, dataset, overrides, message):
    """Issue 17.2: the checks run on the resolved config, so an override cannot bypass the dataset field's."""
    dataset = dataset.replace("DATA", str(tmp_path / "data"))
    with pytest.raises(UserError) as error:
        jobs.launch(stage, "job", "tiny", dataset, overrides)
    assert message.replace("DATA", str(tmp_path / "data")) in str(error.value)
    assert not (tmp_path / "runs" / "job").exists()  # a refused launch leaves nothing behind


def test_checked_paths_are_absolute_and_cover_every_path_setting(jobs, tmp_path, monkeypatch):
    from train.config import GENERATOR_TRAIN_PRESETS, PATH_FIELDS, TOKENIZER_TRAIN_PRESETS, apply_overrides, flat_keys

    data = tmp_path / "data"
    config = apply_overrides(
        GENERATOR_TRAIN_PRESETS["tiny"],
        [f"data.dataset={data / 'shards' / 's-{0..0}.tar'}", f"data.pretokenized={data / 'tokens.npz'}"]
        + [f"tokenizer={tmp_path / 'runs' / 'tok' / 'model'}", f"tokenizer_config={data / 'tok.yaml'}"],
    )
    checked = jobs.paths.checked_paths("generator", config)
    assert set(checked) == set(PATH_FIELDS["generator"])
    assert checked["data.pretokenized"] == str(data / "tokens.npz")
    assert checked["tokenizer"] == str(tmp_path / "runs" / "tok" / "model")
    assert set(jobs.paths.checked_paths("tokenizer", config)) == set(PATH_FIELDS["tokenizer"])
    # Every other text setting is a choice from a fixed list, not a path: a new path field must join PATH_FIELDS.
    choices = {"stage", "data.split", "data.interpolation", "training.mixed_precision"}
    choices |= {"sampling.guidance_annealing", "sampling.mask_schedule", "loss_on", "mask_schedule"}  # the generator's
    choices |= {
        "loss.perceptual",
        "model.model_class",
        "model.quantizer",
        "model.padding_mode",
        "model.code_assignment",
    }  # the tokenizer's
    for stage, presets in (("generator", GENERATOR_TRAIN_PRESETS), ("tokenizer", TOKENIZER_TRAIN_PRESETS)):
        for preset in presets.values():
            text = {key for key, value in flat_keys(preset).items() if isinstance(value, str)}
            assert text - set(PATH_FIELDS[stage]) <= choices, (stage, text - set(PATH_FIELDS[stage]) - choices)


def test_a_resume_checks_the_paths_of_the_runs_own_config(jobs, tmp_path):
    """A run directory written outside the app (e.g. by `python -m train`) cannot take a resume outside the roots."""
    import dataclasses

    from train.config import TOKENIZER_TRAIN_PRESETS, to_dict

    preset = TOKENIZER_TRAIN_PRESETS["tiny"]
    run = jobs.run_dir("elsewhere")
    run.create()
    run.write_config(to_dict(dataclasses.replace(preset, data=dataclasses.replace(preset.data, dataset="/etc"))))
    run.write_status(state="stopped", stage="tokenizer", pid=None)
    (run.checkpoints_dir / "step-3").mkdir()
    (run.checkpoints_dir / "step-3" / "checkpoint.json").write_text("{}")  # what RunDir.commit_checkpoint marks
    with pytest.raises(UserError, match="data.dataset '/etc' is outside the allowed folders"):
        jobs.resume("elsewhere")
    assert jobs.processes == {}


def test_a_name_is_reserved_by_exactly_one_of_simultaneous_launches(jobs):
    """Issue 17.3: two launches with one name were both accepted and wrote into one run directory."""
    import threading

    barrier, outcomes = threading.Barrier(6), []

    def launch():
        barrier.wait()
        try:
            outcomes.append(jobs.launch("tokenizer", "same", "tiny", "procedural", "training.max_steps=2"))
        except UserError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=launch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert outcomes.count("same") == 1, outcomes
        assert all("already exists" in o for o in outcomes if o != "same")
        assert list(jobs.processes) == ["same"]
    finally:
        for name, process in jobs.processes.items():
            jobs.stop(name)
            process.wait(60)


def test_oversized_overrides_are_refused_quickly_and_leave_nothing(jobs, tmp_path):
    """Issue 17.4: 120,000 override lines made the argument list too long and left a "died" job behind."""
    import time

    started = time.perf_counter()
    with pytest.raises(UserError, match=r"overrides are 2,760,000 bytes in 120,000 lines; the limit is 16,384"):
        jobs.launch("tokenizer", "big", "tiny", "procedural", "training.max_steps=200\n" * 120_000)
    assert time.perf_counter() - started < 1
    with pytest.raises(UserError, match="200 key=value items"):
        jobs.launch("tokenizer", "big", "tiny", "procedural", "training.log_every=5 " * 201)
    assert not (tmp_path / "runs" / "big").exists() and jobs.names() == []


def test_a_launch_that_cannot_start_leaves_no_job_behind(jobs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python" / "python"))  # no launcher to run
    with pytest.raises(UserError, match="could not start the training process"):
        jobs.launch("tokenizer", "doomed", "tiny", "procedural", "")
    assert not (tmp_path / "runs" / "doomed").exists() and jobs.names() == [] and jobs.processes == {}


def _lingering_job(jobs, name: str, state: str):
    """A run directory whose `accelerate launch` parent (a real process) lives until its stdin is closed. Like a
    trainer writing its checkpoint, it outlives a SIGTERM (it ignores it, and says so before it is handed back), so
    that a test sees the job stopping for as long as it likes, whatever the machine's load."""
    import json
    import subprocess
    import sys

    from train.config import TOKENIZER_TRAIN_PRESETS, to_dict

    run = jobs.run_dir(name)
    run.create()
    run.write_config(to_dict(TOKENIZER_TRAIN_PRESETS["tiny"]))
    run.write_status(state=state, stage="tokenizer", pid=None, step=4, total_steps=8)
    script = "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)"
    command = [sys.executable, "-c", script + "; sys.stdin.read()"]
    launcher = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert launcher.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
    (run.path / "launcher.json").write_text(json.dumps({"pid": launcher.pid}))
    jobs.processes[name] = launcher  # reaped by the app, as its own launches are
    return launcher


def test_a_resume_right_after_a_stop_waits_for_the_launcher_to_exit(jobs, monkeypatch):
    """Issue 28.7: the trainer had written "stopped" but `accelerate launch` still lived: "still running"."""
    launcher = _lingering_job(jobs, "just-stopped", "stopped")
    assert jobs.is_running("just-stopped") and jobs.job("just-stopped").state == "stopped"
    wait = jobs.wait_stopped

    def launcher_exits_while_waited_for(name, timeout):
        assert jobs.is_running(name)  # the resume waits for a live process...
        launcher.stdin.close()  # ...which then exits
        return wait(name, timeout)

    monkeypatch.setattr(jobs, "wait_stopped", launcher_exits_while_waited_for)
    # The wait ends when the launcher exits; then the resume goes on to its next check (this run has no checkpoint).
    with pytest.raises(UserError, match="has no complete checkpoint yet"):
        jobs.resume("just-stopped")
    assert launcher.poll() is not None and not jobs.is_running("just-stopped")


def test_a_resume_of_a_running_job_is_refused_without_waiting(jobs, monkeypatch):
    launcher = _lingering_job(jobs, "busy", "running")
    try:
        monkeypatch.setattr(jobs, "wait_stopped", lambda *a: pytest.fail("a running job that was not stopped waited"))
        with pytest.raises(UserError, match=rf"job 'busy' is still running \(pid {launcher.pid}\); stop it first"):
            jobs.resume("busy")
        monkeypatch.undo()
        jobs.stop("busy")
        assert jobs.job("busy").state == "stopping"  # signalled, still alive (writing its checkpoint)
        launcher.stdin.close()  # ...and then it exits
        assert jobs.wait_stopped("busy", 60) and jobs.job("busy").state == "died"  # it wrote no status of its own
    finally:
        launcher.kill()
        launcher.wait()


def test_a_job_that_does_not_stop_in_time_is_said_to_be_stopping(jobs, monkeypatch):
    import app.jobs

    monkeypatch.setattr(app.jobs, "STOP_GRACE_S", 0.3)
    launcher = _lingering_job(jobs, "slow", "running")
    try:
        jobs.run_dir("slow").stop_request_path.write_text("{}")  # stop() without the signal
        with pytest.raises(UserError, match="job 'slow' is still stopping .*; resume it again in a moment"):
            jobs.resume("slow")
    finally:
        launcher.kill()
        launcher.wait()


@pytest.mark.parametrize(
    "state, message",
    [
        ("finished", "job 'done' has already finished: there is nothing to stop"),
        ("stopped", "job 'done' is not running: it has already stopped"),
        ("failed", "it has already failed"),
        ("running", "is not running (died); resume it to continue"),
    ],
)
def test_stopping_a_job_that_is_not_running_says_why(jobs, state, message):
    """Issue 17.9: stopping a finished job answered "asked to stop"."""
    run = jobs.run_dir("done")
    run.create()
    run.write_status(state=state, stage="tokenizer", pid=None, step=6, total_steps=6)
    with pytest.raises(UserError) as error:
        jobs.stop("done")
    assert message in str(error.value)


def test_the_console_tail_reads_only_the_end_of_the_file(jobs):
    run = jobs.run_dir("chatty")
    run.create()
    (run.path / "console.txt").write_text("".join(f"line {i}\n" for i in range(200_000)))
    assert jobs.console_tail("chatty", 3) == "line 199997\nline 199998\nline 199999"


# ---------------------------------------------------------------------------------------------------- temporary files


def test_the_app_keeps_only_its_newest_files():
    from app.files import TempFiles

    files = TempFiles(keep=3)
    paths = []
    for i in range(10):
        paths.append(files.path(f"image-{i}.png"))
        paths[-1].write_bytes(b"x")  # as the UI does: a path, then the file
    assert sorted(p.name for p in files.folder.iterdir()) == [p.name for p in paths[-3:]]
    assert paths[-1].name.endswith("image-9.png")
    folder = files.folder
    files.close()
    assert not folder.exists()


_writes: list[str] | None = None  # while a list: the paths opened for writing, seen by the audit hook below


def _record_writes(event: str, args: tuple) -> None:
    if _writes is not None and event == "open" and not isinstance(args[0], int):
        mode, flags = args[1] or "", args[2] or 0
        if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            _writes.append(os.path.realpath(args[0]))


def test_a_cached_image_is_never_rewritten_while_it_is_downloaded(tmp_path):
    """Issue 32.4: identical results of concurrent requests (the same flips or neighbours of one image) share one
    path in Gradio's cache, the hash of the encoded image. Gradio wrote it in place each time, truncating a file that
    a client was downloading ("Too little data for declared Content-Length"). Now a complete file is never opened
    for writing again: the second save finds it, the download reads the bytes it started on."""
    import sys

    from gradio import processing_utils

    from app.files import write_images_once

    global _writes
    write_images_once()
    sys.addaudithook(_record_writes)  # for the rest of the process; it records only while _writes is a list
    array = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    first = processing_utils.save_img_array_to_cache(array, str(tmp_path))
    complete = Path(first).read_bytes()
    with open(first, "rb") as download:
        head = download.read(100)
        _writes = []
        try:
            second = processing_utils.save_img_array_to_cache(array, str(tmp_path))  # an identical result
        finally:
            written, _writes = _writes, None
        assert second == first
        assert os.path.realpath(first) not in written
        assert os.fstat(download.fileno()).st_ino == os.stat(first).st_ino
        assert head + download.read() == complete
    other = processing_utils.save_img_array_to_cache(255 - array, str(tmp_path))
    assert other != first and Image.open(other).size == (64, 64)  # a new image is written, under its own hash
    assert sorted(p.name for p in Path(first).parent.iterdir()) == ["image.webp"]  # no staging file left behind


def test_the_sampling_widgets_are_named_not_ordered():
    """Issue 28.4: the seven widgets relied on SamplingConfig's field order; now each is a named knob."""
    import dataclasses

    from app.explore import ExploreCallbacks
    from app.validation import SAMPLING_KNOBS, sampling_from
    from maskbit import SamplingConfig
    from maskbit.presets import SAMPLING_PRESETS

    assert sorted(SAMPLING_KNOBS) == sorted(f.name for f in dataclasses.fields(SamplingConfig))
    preset = SAMPLING_PRESETS["maskbit_generator_14bit"]
    values = ExploreCallbacks.apply_preset(None, "maskbit_generator_14bit")[:-1]
    assert sampling_from(dict(zip(SAMPLING_KNOBS, values))) == preset


def test_a_difference_map_is_scaled_to_its_own_range_and_marks_the_chosen_tokens():
    """Issue 25.5: a one-token flip changes pixels by about 0.01; its map shows that change white, says the gain, and
    outlines the chosen tokens."""
    from app.pictures import MARK, with_difference

    reference = torch.full((3, 32, 32), 0.5)
    image = reference.clone()
    image[:, 9, 13] += 0.01  # token (row 2, column 3) of a 8×8 grid of 4-px tokens: id 19
    image[0, 30, 1] -= 0.004
    picture, gain = with_difference(image, reference, (8, 8), [19])
    assert gain == pytest.approx(100, rel=1e-3)
    assert picture.shape == (256, 256 + 16 + 256, 3)  # enlarged 8×, a 2-px gap (16 at that scale)
    left, right = picture[:, :256].astype(int), picture[:, -256:].astype(int)
    assert (left[72:80, 104:112] == round(0.51 * 255)).all() and (left[:8, :8] == round(0.5 * 255)).all()
    assert (right[73:79, 105:111] == 255).all()  # the largest change is white
    assert (right[241:247, 9:15, 0] == round(0.4 * 255)).all() and (right[241:247, 9:15, 1:] == 0).all()
    outline = np.zeros((256, 256), bool)  # token 19's outline, 4 px wide (issue 35.8: 1 px broke into fragments)
    outline[64:68, 96:128] = outline[92:96, 96:128] = outline[64:96, 96:100] = outline[64:96, 124:128] = True
    assert (right[outline] == MARK).all()
    unchanged = ~outline
    unchanged[72:80, 104:112] = unchanged[240:248, 8:16] = False
    assert (right[unchanged] == 0).all()  # black: unchanged
    same, gain = with_difference(reference, reference, (8, 8))
    assert gain == 1 and (same[:, -256:] == 0).all()


@pytest.mark.parametrize("size, grid", [(32, (8, 8)), (64, (16, 16)), (256, (16, 16))])
def test_a_chosen_tokens_outline_stays_closed_at_thumbnail_size(size, grid):
    """Issue 35.8: a gallery shows a difference map at about half its size, nearest neighbour (the pictures are
    pixelated); down to a third, every chosen token keeps a closed outline."""
    from app.pictures import MARK, with_difference

    reference = torch.zeros(3, size, size)
    picture, _ = with_difference(reference, reference, grid, [0, grid[1] + 1, grid[0] * grid[1] - 1])
    right = picture[:, -picture.shape[0] :]
    side = right.shape[0]
    shown = int(side / 3)
    sample = ((np.arange(shown) + 0.5) * side / shown).astype(int)  # nearest neighbour, as the browser scales
    small = (right[sample][:, sample] == MARK).all(axis=-1)
    cell = shown / grid[0]
    for token in (0, grid[1] + 1, grid[0] * grid[1] - 1):
        r, c = divmod(token, grid[1])
        top, bottom = int(np.ceil(r * cell)), int((r + 1) * cell) - 1
        first, last = int(np.ceil(c * cell)), int((c + 1) * cell) - 1
        ring = [small[top, first : last + 1], small[bottom, first : last + 1]]
        ring += [small[top : bottom + 1, first], small[top : bottom + 1, last]]
        assert all(side_.all() for side_ in ring), (token, [side_.astype(int).tolist() for side_ in ring])


def test_the_launchers_note_on_its_defaults_is_no_error_of_the_job(tmp_path):
    """Issue 25.7: accelerate's note on the values it chose stays out of the job table's error column."""
    jobs = Jobs(tmp_path / "runs")
    run = tmp_path / "runs" / "starting-job"
    run.mkdir(parents=True)
    note = (
        "The following values were not passed to `accelerate launch` and had defaults used instead:\n"
        "\t`--num_cpu_threads_per_process` was set to `8` to improve out-of-box performance when training on CPUs\n"
        "To avoid this warning pass in values for each of the problematic parameters or run `accelerate config`.\n"
    )
    (run / "console.txt").write_text(note)
    assert jobs.job("starting-job").error is None
    (run / "console.txt").write_text(
        note + "Traceback (most recent call last):\nModuleNotFoundError: No module named 'x'\n"
    )
    assert (
        jobs.job("starting-job").error == "Traceback (most recent call last):\nModuleNotFoundError: No module named 'x'"
    )


def test_offline_a_hub_id_says_what_to_type_in_the_model_panel(tmp_path):
    """Issue 25.7: the library's advice (a from_pretrained call with config=) is not what the panel takes."""
    import subprocess
    import sys

    code = (
        "import torch\nfrom app.models import load_model\nfrom maskbit import Tokenizer\n"
        "try:\n    load_model(Tokenizer, 'markweber/maskbit_tokenizer_12bit', None, torch.device('cpu'), 'fp32')\n"
        "except ValueError as error:\n    print(error)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == (
        "cannot download the tokenizer 'markweber/maskbit_tokenizer_12bit' (this server may be offline). Download "
        "https://huggingface.co/markweber/maskbit_tokenizer_12bit/resolve/main/maskbit_tokenizer_12bit.bin on a "
        "machine that is online, put maskbit_tokenizer_12bit.bin into the workspace or a model root (--model-root), "
        "and type that file's path in the model panel's tokenizer box: its preset is recognised from its weights"
    ), result.stderr


def test_a_zero_bar_is_drawn_and_the_status_line_never_blank():
    """Issue 25.10: the VQ twin's judge bars are 0: each gets a visible mark in its series' colour, beside its bar."""
    from app import figures
    from app.state import IndexStatus

    figure = figures.compare([0, 1, 2], {"LFQ": {0: 1.0, 1: 1.0, 2: 0.0}, "VQ": {0: 0.0, 1: 0.0}}, "t", "kept", True)
    lfq, vq, lfq_zero, vq_zero = figure.data
    assert list(lfq_zero.x) == ["2"] and list(vq_zero.x) == ["0", "1"]  # VQ has no bit 2: no bar, no mark
    assert lfq_zero.offsetgroup == lfq.offsetgroup and vq_zero.offsetgroup == vq.offsetgroup
    assert vq_zero.marker.color == vq.marker.color != lfq.marker.color
    assert list(vq_zero.base) == [-figures.ZERO_MARK / 2] * 2 and list(vq_zero.y) == [figures.ZERO_MARK] * 2
    assert len(figures.compare([0], {"LFQ": {0: 0.0}}, "t", "PSNR").data) == 1  # marks only where asked for
    assert IndexStatus().text().startswith("⏳ the index is being prepared")


def test_a_tokenizer_override_may_name_a_job_or_a_folder_of_the_workspace(jobs, tmp_path):
    """Issue 35.1: tokenizer=tok-a/model went to the hub and tokenizer=tok-a was refused as outside the folders."""
    import json

    from train.config import GENERATOR_TRAIN_PRESETS, apply_overrides

    runs = tmp_path / "runs"
    for name, config, finished in (("tok-a", {}, True), ("tok-b", {}, False), ("gen-a", {"tokenizer": "x"}, True)):
        (runs / name).mkdir()
        (runs / name / "config.json").write_text(json.dumps(config))
        (runs / name / "status.json").write_text(json.dumps({"state": "finished" if finished else "stopped"}))
        if finished:
            (runs / name / "model").mkdir()
            (runs / name / "model" / "config.json").write_text("{}")

    def tokenizer(value: str) -> str:
        config = apply_overrides(GENERATOR_TRAIN_PRESETS["tiny"], [f"tokenizer={value}"])
        return jobs.paths.checked_paths("generator", config)["tokenizer"]

    assert tokenizer("tok-a") == tokenizer("tok-a/model") == str(runs / "tok-a" / "model")
    assert tokenizer("tok/model") == str(runs / "tok" / "model")  # a folder of the workspace that is no job
    with pytest.raises(UserError, match="job 'tok-b' has not exported its model yet .stopped.*tokenizer=default"):
        tokenizer("tok-b/model")
    with pytest.raises(UserError, match="job 'gen-a' trains a generator, not a tokenizer"):
        tokenizer("gen-a")
    (runs / "tok-b" / "status.json").write_text(json.dumps({"state": "failed", "last_error": "ValueError: no images"}))
    with pytest.raises(
        UserError, match="job .tok-b. failed before it exported a model: ValueError: no images; it has no checkpoint"
    ):
        jobs.model_pair("tok-b")  # "Load into explorer" (issue 35.2)


def test_the_app_starts_clean_as_a_space_starts_it(tmp_path):
    """Issue 35.9: `python app/space.py` with Spaces' variables and the `spaces` package (requirements-dev.txt) serves
    without Gradio's hot-reload complaint or the tracebacks of dropped event loops."""
    import importlib.util
    import subprocess
    import sys
    import time
    import urllib.request

    from gradio_client import Client

    from tests.conftest import free_port

    assert importlib.util.find_spec("spaces") is not None, "requirements-dev.txt installs the spaces package"
    port = free_port()
    env = os.environ | {
        "SYSTEM": "spaces",
        "SPACE_ID": "user/maskbit-explorer",
        "GRADIO_SERVER_NAME": "127.0.0.1",  # a Space binds 0.0.0.0; a test stays on this machine
        "MASKBIT_PORT": str(port),
        "MASKBIT_CACHE": str(tmp_path),
        "MASKBIT_INDEX_LIMIT": "32",
        "PYTHONUNBUFFERED": "1",
    }
    root = Path(__file__).parents[1]
    command = [sys.executable, "app/space.py"]
    space = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300  # the bundled models load in seconds on an idle machine
        while True:
            assert space.poll() is None, space.stdout.read()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the Space did not answer within 300 s"
                time.sleep(0.5)
        info = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/model_info")
        assert info["tokenizer"] == "default" and info["bits_per_token"] == 12
    finally:
        space.terminate()
        output, _ = space.communicate(timeout=120)
    assert "exposed server: training off" in output
    assert "GRADIO_HOT_RELOAD" not in output and "Exception ignored" not in output and "Traceback" not in output
