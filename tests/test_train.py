"""Training as users run it: `python -m train` and `accelerate launch -m train` in real subprocesses."""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data.datasets import PROCEDURAL_CLASSES
from maskbit import Generator, Tokenizer
from maskbit.checkpoint import class_names
from maskbit.config import MASK_SCHEDULES
from maskbit.sampling import mask_ratio, training_mask_ratios
from train.config import TOKENIZER_TRAIN_PRESETS, TokenizerTrainConfig, apply_overrides, load_train_config
from train.ema import EMA
from train.engine import lr_factor
from train.losses import Discriminator, LeCAM, masked_modelling_loss
from train.rundir import RunDir

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


def run_train(
    *args: str, check: bool = True, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=ROOT,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in RunDir(run_dir).read_metrics()}


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "tokenizer"
    run_train("tokenizer", "--preset", "tiny", "--run-dir", str(run_dir))
    return run_dir


def test_tokenizer_run_directory(tokenizer_run):
    run = RunDir(tokenizer_run)
    status = run.read_status()
    assert status["state"] == "finished" and status["step"] == status["total_steps"] == 6 and status["pid"] is None
    assert [step for step, _ in run.checkpoints()] == [3, 6]  # keep_last = 2
    metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert "discriminator_loss" not in metrics[0] and "discriminator_loss" in metrics[2]  # the GAN starts at step 2
    assert "eval_psnr" in metrics[2]
    assert (run.samples_dir / "step-6.png").is_file()
    assert json.loads(run.config_path.read_text())["model"]["token_size"] == 12
    model = Tokenizer.from_pretrained(tokenizer_run / "model")
    assert model.encode(torch.rand(1, 3, 32, 32)).shape == (1, 8, 8)
    assert Tokenizer.from_pretrained(run.checkpoints()[-1][1] / "model").config == model.config


def test_generator_from_a_token_file_and_from_images(tokenizer_run, tmp_path):
    model_dir = str(tokenizer_run / "model")
    tokens = tmp_path / "tokens.npz"
    run_train("pretokenize", "--tokenizer", model_dir, "--resolution", "32", "--count", "24", "--out", str(tokens))
    run_train(
        "generator",
        "--preset",
        "tiny",
        "--run-dir",
        str(tmp_path / "gen"),
        "--set",
        f"tokenizer={model_dir}",
        f"data.pretokenized={tokens}",
    )
    generator = Generator.from_pretrained(tmp_path / "gen" / "model")
    assert generator.config.num_classes == 10  # the recipe's: one class per procedural shape (issue 25.1)
    assert class_names(tmp_path / "gen" / "model", 10) == list(PROCEDURAL_CLASSES)
    assert (tmp_path / "gen" / "samples" / "step-6.png").is_file()
    run_train(
        "generator",
        "--preset",
        "tiny",
        "--run-dir",
        str(tmp_path / "gen_images"),
        "--set",
        f"tokenizer={model_dir}",
        "training.max_steps=2",
        "loss_on=masked",  # the two non-official training options, through the training loop
        "mask_schedule=cosine",
    )
    run = RunDir(tmp_path / "gen_images")
    assert run.read_status()["state"] == "finished"
    assert all(math.isfinite(m["loss"]) for m in run.read_metrics() if "loss" in m)
    config = json.loads(run.config_path.read_text())
    assert (config["loss_on"], config["mask_schedule"]) == ("masked", "cosine")


def kill_9_then_resume(tmp_path: Path, preset: str, steps: int = 8) -> tuple[dict[int, float], dict[int, float]]:
    """Train `preset` for `steps` steps straight, and again killed with SIGKILL after its first checkpoint, then
    resumed; return both runs' losses by step."""
    settings = ["--preset", preset, "--set", f"training.max_steps={steps}", "training.save_every=2"]
    run_train("tokenizer", *settings, "--run-dir", str(tmp_path / "straight"))
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "train", "tokenizer", *settings, "--run-dir", str(killed)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while RunDir(killed).latest_checkpoint() is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert RunDir(killed).read_status()["state"] == "running"  # killed mid-run, not finished
    assert RunDir(killed).latest_checkpoint()[0] < steps
    run_train("tokenizer", "--run-dir", str(killed), "--resume")
    assert any('"event": "resumed"' in line for line in (killed / "metrics.jsonl").read_text().splitlines())
    return losses(tmp_path / "straight"), losses(killed)


def assert_same_losses(expected: dict[int, float], resumed: dict[int, float], steps: int) -> None:
    assert sorted(resumed) == sorted(expected) == list(range(1, steps + 1))
    for step in expected:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step


def test_kill_9_then_resume_reproduces_the_uninterrupted_losses(tmp_path):
    assert_same_losses(*kill_9_then_resume(tmp_path, "tiny"), steps=8)


def test_vq_tokenizer_trains_and_resumes_exactly_after_kill_9(tmp_path):
    """The tiny VQ preset: codebook, commitment and entropy terms, the GAN from step 2, exact resume."""
    expected, resumed = kill_9_then_resume(tmp_path, "tiny_vq", steps=6)
    assert_same_losses(expected, resumed, steps=6)
    metrics = RunDir(tmp_path / "straight").read_metrics()
    assert all(m["codebook_loss"] > 0 and m["commitment_loss"] > 0 and m["entropy_loss"] != 0 for m in metrics)
    assert all(1 <= m["codes_in_batch"] <= 4 * 8 * 8 for m in metrics)
    for m in metrics:  # the logged terms add up to the loss (reconstruction weight 4, quantiser weight 1, annealing)
        annealed = 1 + 2.0 * max(0.0, 1 - (m["step"] - 1) / 4)
        quantizer = m["commitment_loss"] + m["codebook_loss"] + annealed * m["entropy_loss"]
        gan = 0.02 * m.get("gan_generator_loss", 0.0)
        assert m["loss"] == pytest.approx(4 * m["reconstruction_loss"] + quantizer + gan, rel=1e-4), m["step"]
    model = Tokenizer.from_pretrained(tmp_path / "straight" / "model")
    assert model.quantizer_kind == "vq" and model.num_bits == 12 and model.config.codebook_size == 4096
    assert model.encode(torch.rand(1, 3, 32, 32)).shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("preset", "model_class", "quantizer"), [("tiny_omv", "magvit2", "lfq"), ("tiny_ibq", "taming", "vq")]
)
def test_bit_token_family_twins_train_through_the_engine(tmp_path, preset, model_class, quantizer):
    """Open-MAGVIT2 (LFQ, adaptive-GroupNorm decoder) and IBQ (dot-product VQ with its index-propagation losses):
    a few real steps, the GAN from step 2, the logged terms adding up to the loss, a model that loads and encodes."""
    run_train("tokenizer", "--preset", preset, "--set", "training.max_steps=4", "--run-dir", str(tmp_path / "run"))
    metrics = RunDir(tmp_path / "run").read_metrics()
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert m["commitment_loss"] > 0 and m["entropy_loss"] != 0 and math.isfinite(m["loss"])
        # A confident code choice per token, so the entropy term has a gradient (IBQ's codes start as N(0, 1):
        # with VQGAN's U(±1/N) every z·e ≈ 0 and the softmax over the codes is uniform, ln 256 = 5.5 nats).
        assert m["per_sample_entropy"] < 0.5 * math.log(2**8)
        codebook = m.get("codebook_loss", 0.0)
        assert (codebook > 0) == (quantizer == "vq")  # IBQ: mse(soft-propagated codes, z) + β·mse(e, sg(z))
        annealed = 1 + 2.0 * max(0.0, 1 - (m["step"] - 1) / 4)
        expected = 4 * m["reconstruction_loss"] + m["commitment_loss"] + codebook + annealed * m["entropy_loss"]
        expected += 0.02 * m.get("gan_generator_loss", 0.0)
        assert m["loss"] == pytest.approx(expected, rel=1e-4), m["step"]
    assert "gan_generator_loss" in metrics[-1] and any(m.get("eval_psnr", 0) > 0 for m in metrics)
    model = Tokenizer.from_pretrained(tmp_path / "run" / "model")
    assert (model.config.model_class, model.quantizer_kind, model.num_bits) == (model_class, quantizer, 8)
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 8, 8)


def test_the_family_twins_share_the_bundled_recipe():
    """default_omv and default_ibq differ from `default` in the autoencoder only: same grid, 12-bit tokens, data,
    optimiser, losses and steps, and a parameter count within 20 %."""
    default = TOKENIZER_TRAIN_PRESETS["default"]
    size = sum(p.numel() for p in Tokenizer(default.model).parameters())
    for name, model_class in (("default_omv", "magvit2"), ("default_ibq", "taming")):
        twin = TOKENIZER_TRAIN_PRESETS[name]
        assert twin.model.model_class == model_class
        assert (twin.model.num_bits, twin.model.grid_size, twin.model.image_size) == (12, 16, 64)
        assert (twin.data, twin.optimizer, twin.loss, twin.training) == (
            default.data,
            default.optimizer,
            default.loss,
            default.training,
        )
        assert abs(sum(p.numel() for p in Tokenizer(twin.model).parameters()) / size - 1) < 0.2, name
    assert TOKENIZER_TRAIN_PRESETS["default_ibq"].model.code_assignment == "dot_product"


def test_sigterm_stops_with_a_checkpoint_and_resume_finishes(tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train",
            "tokenizer",
            "--preset",
            "tiny",
            "--set",
            "training.max_steps=40",
            "training.save_every=100",
            "--run-dir",
            str(run_dir),
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while RunDir(run_dir).read_status().get("step", 0) < 2 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    status = RunDir(run_dir).read_status()
    assert status["state"] == "stopped" and "SIGTERM" in status["stopped_by"] and status["last_error"] is None
    step, _ = RunDir(run_dir).latest_checkpoint()
    assert 2 <= step < 40
    run_train("tokenizer", "--run-dir", str(run_dir), "--resume", "--set", "training.max_steps=" + str(step + 2))
    assert RunDir(run_dir).read_status()["state"] == "finished"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_with_accelerate_launch_on_an_image_folder(tmp_path):
    folder = tmp_path / "images"
    run_train(
        "export-dataset",
        "--dataset",
        "procedural",
        "--split",
        "test",
        "--resolution",
        "32",
        "--limit",
        "40",
        "--out",
        str(folder),
    )
    assert (folder / "labels.csv").is_file()
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "train",
        "tokenizer",
        "--preset",
        "tiny",
        "--set",
        f"data.dataset={folder}",
        "data.split=train",
        "training.max_steps=3",
        "--run-dir",
        str(run_dir),
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    status = RunDir(run_dir).read_status()
    assert status["state"] == "finished" and status["num_processes"] == 2
    assert Tokenizer.from_pretrained(run_dir / "model").num_bits == 12


def test_missing_perceptual_weights_stop_at_start_up(tmp_path):
    result = run_train(
        "tokenizer",
        "--preset",
        "tiny",
        "--set",
        "loss.perceptual=resnet50",
        "--run-dir",
        str(tmp_path / "run"),
        check=False,
        env={"TORCH_HOME": str(tmp_path / "torch")},
    )
    assert result.returncode == 2
    assert "resnet50-0676ba61.pth" in result.stderr and str(tmp_path / "torch" / "hub" / "checkpoints") in result.stderr


def test_resnet_perceptual_loss_loads_weights_from_the_torch_cache(tmp_path):
    """A random ResNet-50 under the expected file name exercises the real loading path offline."""
    from torchvision.models import resnet50

    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(resnet50().state_dict(), checkpoints / "resnet50-0676ba61.pth")
    run_train(
        "tokenizer",
        "--preset",
        "tiny",
        "--set",
        "loss.perceptual=resnet50",
        "training.max_steps=1",
        "--run-dir",
        str(tmp_path / "run"),
        env={"TORCH_HOME": str(tmp_path / "torch")},
    )
    assert "perceptual_loss" in RunDir(tmp_path / "run").read_metrics()[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "training.max_step=3"], "unknown config key 'training.max_step' (did you mean training.max_steps"),
        (["--set", "training.max_steps=abc"], "expected int, got 'abc'"),
        (["--set", "loss.perceptual=vgg"], "loss.perceptual must be resnet50, lpips or none"),
        (["--set", "data.dataset=/no/such/folder"], "/no/such/folder"),
        (
            ["--set", "training.batch_size=4000", "data.dataset=procedural", "data.split=test"],
            "fewer than one global batch",
        ),
    ],
)
def test_bad_training_input_gives_a_clear_message(tmp_path, args, message):
    result = run_train("tokenizer", "--preset", "tiny", *args, "--run-dir", str(tmp_path / "run"), check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_empty_image_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_train(
        "tokenizer",
        "--preset",
        "tiny",
        "--set",
        f"data.dataset={tmp_path / 'empty'}",
        "--run-dir",
        str(tmp_path / "run"),
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_second_start_in_a_used_run_directory_is_refused(tokenizer_run):
    result = run_train("tokenizer", "--preset", "tiny", "--run-dir", str(tokenizer_run), check=False)
    assert result.returncode == 2 and "--resume" in result.stderr


# ------------------------------------------------------------------------------------------------- units


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 10, 100, 0.1) == 0 and lr_factor(5, 10, 100, 0.1) == 0.5
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    values = [lr_factor(s, 10, 100, 0.1) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_ema_follows_the_official_decay_schedule():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: a plain copy
    assert torch.equal(ema.shadow["weight"], model.weight)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)  # j = 2: decay (1 + 1) / (10 + 1)
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(1 + (1 - 2 / 11))
    assert EMA(model).current_decay() == 0 and ema.current_decay() == pytest.approx(2 / 11)


def test_masked_modelling_loss_over_all_entries_or_the_masked_ones():
    torch.manual_seed(0)
    logits, groups = torch.randn(2, 5, 2, 8), torch.randint(0, 8, (2, 5, 2))
    masked = torch.rand(2, 5, 2) < 0.5
    official = torch.nn.functional.cross_entropy(logits.reshape(-1, 8), groups.reshape(-1), label_smoothing=0.1)
    assert torch.allclose(masked_modelling_loss(logits, groups, masked, 0.1, "all"), official)
    only_masked = torch.nn.functional.cross_entropy(logits[masked], groups[masked], label_smoothing=0.1)
    assert torch.allclose(masked_modelling_loss(logits, groups, masked, 0.1, "masked"), only_masked)
    changed = torch.where(masked[..., None], logits, torch.randn_like(logits))  # other logits where unmasked
    assert torch.allclose(masked_modelling_loss(changed, groups, masked, 0.1, "masked"), only_masked)
    nothing_masked = masked_modelling_loss(logits, groups, torch.zeros_like(masked), 0.1, "masked")
    assert nothing_masked.item() == 0
    with pytest.raises(ValueError, match='loss_on must be one of all, masked'):
        masked_modelling_loss(logits, groups, masked, 0.1, "unmasked")
    with pytest.raises(ValueError, match='loss_on must be one of all, masked'):
        apply_overrides(load_train_config("generator", "default"), ["loss_on=unmasked"])


def test_training_mask_schedules_draw_the_sampler_s_ratios():
    draws = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])
    for schedule in MASK_SCHEDULES:  # the sampler's formulas (its ratios are clamped to [1e-6, 1])
        expected = torch.tensor([mask_ratio(float(p), schedule) for p in draws[1:]])
        assert torch.allclose(training_mask_ratios(draws[1:], schedule), expected, atol=2e-6)
    assert training_mask_ratios(torch.zeros(1), "arccos").item() == 1.0  # a draw of 0 masks every entry
    # the official schedule, as the training loop computed it before the option existed (spec §2.4)
    torch.manual_seed(0)
    u = torch.rand(64)
    assert torch.equal(training_mask_ratios(u, "arccos"), torch.acos(u) / (math.pi / 2))
    # MaskGIT's cosine gives more grids masked almost entirely: P(ratio > 0.9) = 0.287 against arccos's 0.156
    u = torch.rand(200_000)
    high = {s: (training_mask_ratios(u, s) > 0.9).float().mean().item() for s in ("arccos", "cosine")}
    assert high["arccos"] == pytest.approx(math.cos(0.45 * math.pi), abs=0.005)
    assert high["cosine"] == pytest.approx(math.acos(0.9) / (math.pi / 2), abs=0.005)
    with pytest.raises(ValueError, match="mask_schedule must be one of"):
        apply_overrides(load_train_config("generator", "default"), ["mask_schedule=sine"])
    for ratios in (lambda: mask_ratio(0.5, "sine"), lambda: training_mask_ratios(u, "sine")):
        with pytest.raises(ValueError, match="unknown mask schedule 'sine'; choose one of arccos, cosine, linear"):
            ratios()


def test_discriminator_and_lecam_shapes():
    config = TOKENIZER_TRAIN_PRESETS["default"].discriminator
    logits = Discriminator(config)(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 16, 16)  # max-pooled to the 16×16 token grid
    lecam = LeCAM(0.999)
    assert lecam(torch.ones(4), -torch.ones(4)).item() == pytest.approx(1.0 + 1.0)
    lecam.update(torch.ones(4), -torch.ones(4))
    assert lecam.ema_real_logits_mean.item() == pytest.approx(0.001)


def test_overrides_and_official_yaml(tmp_path):
    config = apply_overrides(TOKENIZER_TRAIN_PRESETS["tiny"], ["model.channel_mult=[1,2]", "training.seed=5"])
    assert config.model.channel_mult == (1, 2) and config.training.seed == 5
    text = apply_overrides(TOKENIZER_TRAIN_PRESETS["tiny"], ["training.mixed_precision=no", "data.dataset=1"])
    assert text.training.mixed_precision == "no" and text.data.dataset == "1"  # text stays text, not YAML's False
    import yaml

    from tests.test_config import official_generator_yaml

    raw = official_generator_yaml(14, 4096)
    raw["training"] = {"max_train_steps": 1350000, "per_gpu_batch_size": 32, "seed": 42}
    raw["losses"] = {"discriminator_start": 20000, "perceptual_loss": "resnet50"}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(raw))
    generator = load_train_config("generator", config_file=str(tmp_path / "gen.yaml"))
    assert generator.model.token_size == 14 and generator.training.batch_size == 32
    assert generator.optimizer.learning_rate == 1e-4 and generator.optimizer.beta2 == 0.96
    tokenizer = load_train_config("tokenizer", config_file=str(tmp_path / "gen.yaml"))
    assert isinstance(tokenizer, TokenizerTrainConfig) and tokenizer.loss.discriminator_start == 20000


def test_bf16_gradient_accumulation_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    run_train(
        "tokenizer",
        "--preset",
        "tiny",
        "--run-dir",
        str(run_dir),
        "--set",
        "training.max_steps=2",
        "training.mixed_precision=bf16",
        "training.gradient_accumulation_steps=2",
        "training.tensorboard=true",
    )
    metrics = RunDir(run_dir).read_metrics()
    assert [m["step"] for m in metrics] == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics)
    assert list(run_dir.rglob("events.out.tfevents.*")), "no TensorBoard event file"


def test_an_unknown_override_names_the_closest_keys_not_all_of_them():
    config = load_train_config("tokenizer", "tiny")
    cases = {
        "training.max_step": r"\(did you mean training.max_steps\?\)$",
        "training.nope": r"the keys of training: max_steps, batch_size, .*tensorboard$",
        "zzz": r"sections data, discriminator, loss, model, optimizer, training$",
    }
    for key, message in cases.items():
        with pytest.raises(ValueError, match=message) as raised:
            apply_overrides(config, [f"{key}=1"])
        assert "model.hidden_channels" not in str(raised.value)  # not the ~80 keys of every section


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.resolution=100000", "data.resolution must be a whole number from 8 to 4096, got 100000"),
        ("training.batch_size=1000000", "training.batch_size must be a whole number from 1 to 4096"),
        ("training.num_samples=100000", "training.num_samples must be a whole number from 1 to 256"),
        ("training.seed=99999999999", "training.seed must be a whole number from 0 to 2147483647"),
        ("data.seed=-1", "data.seed must be a whole number from 0 to 9223372036854775807"),
        ("data.num_workers=1000", "data.num_workers must be a whole number from 0 to 64"),
    ],
)
def test_sizes_and_seeds_in_a_config_are_bounded(override, message):
    """Issue 17: a size or seed from an override is refused when the config is built, before anything is allocated."""
    with pytest.raises(ValueError, match=re.escape(message)):
        apply_overrides(load_train_config("tokenizer", "tiny"), [override])
