"""`python -m maskbit ...` run as users run it: real subprocesses, real files."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskbit import SamplingConfig, Tokenizer
from maskbit.checkpoint import default_sampling
from maskbit.images import load_image, save_image
from tests.conftest import OFFICIAL_TINY, OFFICIAL_VQ_TINY

ROOT = Path(__file__).parents[1]
TINY_TOKENIZER = ["--tokenizer", str(OFFICIAL_TINY / "tiny_tokenizer.bin"), "--tokenizer-config", "tiny"]


def maskbit_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "maskbit", args[0], "-q", *args[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, tokenizer_io) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for n, image in enumerate(tokenizer_io["image"]):
        save_image(image, folder / f"img{n}.png")
    return folder


@pytest.mark.parametrize("command", ["generate", "encode", "decode", "flip", "convert"])
def test_every_command_has_help_with_examples(command):
    result = maskbit_cli(command, "--help")
    assert "examples:" in result.stdout and f"python -m maskbit {command}" in result.stdout


def test_generate_with_tiny_random_presets(tmp_path):
    maskbit_cli(
        "generate",
        "--tokenizer",
        "tiny",
        "--generator",
        "tiny",
        "--random-init",
        "--labels",
        "3",
        "5",
        "--per-class",
        "2",
        "--seed",
        "1",
        "--out",
        str(tmp_path),
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "0000_class3.png",
        "0001_class3.png",
        "0002_class5.png",
        "0003_class5.png",
        "grid.png",
        "indices.npy",
    ]
    assert np.load(tmp_path / "indices.npy").shape == (4, 8, 8)
    assert Image.open(tmp_path / "0000_class3.png").size == (32, 32)


def test_generate_with_the_real_size_12bit_architecture_on_cpu(tmp_path):
    result = maskbit_cli(
        "generate",
        "--tokenizer",
        "maskbit_tokenizer_12bit",
        "--generator",
        "maskbit_generator_12bit",
        "--random-init",
        "--labels",
        "1",
        "--num-steps",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    )
    assert "guidance_scale=7.1" in result.stdout  # the official 12-bit sampling preset, with 2 steps
    assert Image.open(tmp_path / "0000_class1.png").size == (256, 256)
    indices = np.load(tmp_path / "indices.npy")
    assert indices.shape == (1, 16, 16) and indices.max() < 4096


def test_generate_with_the_official_tiny_checkpoints(tmp_path):
    maskbit_cli(
        "generate",
        *TINY_TOKENIZER,
        "--generator",
        str(OFFICIAL_TINY / "tiny_generator_hubkeys.bin"),
        "--generator-config",
        str(OFFICIAL_TINY / "tiny_generator.yaml"),
        "--labels",
        "7",
        "--out",
        str(tmp_path),
    )
    assert (tmp_path / "0000_class7.png").is_file()


def test_encode_decode_round_trip(tmp_path, image_files, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("MASKBIT_THREADS", "1")  # the command and the library at one thread count: bf16 depends on it
    maskbit_cli("encode", str(image_files), *TINY_TOKENIZER, "--out", str(tmp_path / "tokens.npy"))
    indices = np.load(tmp_path / "tokens.npy")
    images = torch.stack([load_image(image_files / f"img{n}.png") for n in range(2)])
    # the command line computes at "auto" (bf16 where it is native), the library at what it is asked
    assert np.array_equal(indices, tiny_tokenizer.encode(images, precision="auto").numpy())
    assert (tmp_path / "tokens.txt").read_text().count("img") == 2
    maskbit_cli("decode", str(tmp_path / "tokens.npy"), *TINY_TOKENIZER, "--out", str(tmp_path / "decoded"))
    decoded = load_image(tmp_path / "decoded" / "0001.png")
    expected = tiny_tokenizer.decode(torch.from_numpy(indices[1:2]), precision="auto").clamp(0, 1)[0]
    assert (decoded - expected).abs().max() <= 1 / 255 + 1e-6


def test_flip_writes_every_bit_and_distances(tmp_path, image_files):
    maskbit_cli("flip", str(image_files / "img0.png"), *TINY_TOKENIZER, "--out", str(tmp_path))
    rows = (tmp_path / "distances.csv").read_text().splitlines()
    assert rows[0] == "bit,psnr_db,l2" and len(rows) == 13
    assert all(float(row.split(",")[2]) > 0 for row in rows[1:])
    assert len(list(tmp_path.glob("flip_bit*.png"))) == 12
    maskbit_cli(
        "flip",
        str(image_files / "img0.png"),
        *TINY_TOKENIZER,
        "--bit-ids",
        "0",
        "11",
        "--positions",
        "0",
        "1",
        "--out",
        str(tmp_path / "some"),
    )
    assert sorted(p.name for p in (tmp_path / "some").glob("flip_bit*.png")) == ["flip_bit00.png", "flip_bit11.png"]


def test_convert_official_bin_to_own_format(tmp_path, tiny_tokenizer, tokenizer_io):
    maskbit_cli(
        "convert",
        str(OFFICIAL_TINY / "tiny_tokenizer.bin"),
        "--config",
        str(OFFICIAL_TINY / "tiny_tokenizer.yaml"),
        "--out",
        str(tmp_path / "tok"),
    )
    converted = Tokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(converted.decode(tokenizer_io["indices"]), tiny_tokenizer.decode(tokenizer_io["indices"]))
    maskbit_cli("convert", str(OFFICIAL_TINY / "tiny_generator_hubkeys.bin"), "--out", str(tmp_path / "gen"))
    assert (tmp_path / "gen" / "model.safetensors").is_file()
    assert default_sampling(tmp_path / "gen") == SamplingConfig()  # no YAML: the official 12-bit defaults
    # with its YAML, the converted generator keeps the YAML's sampling (the official code samples with it)
    generator_yaml = OFFICIAL_TINY / "tiny_generator.yaml"
    maskbit_cli(
        "convert",
        str(OFFICIAL_TINY / "tiny_generator.bin"),
        "--config",
        str(generator_yaml),
        "--out",
        str(tmp_path / "own"),
    )
    assert default_sampling(tmp_path / "own") == default_sampling(OFFICIAL_TINY / "tiny_generator.bin", generator_yaml)
    assert default_sampling(tmp_path / "own").num_steps == 8


def test_convert_a_lightning_checkpoint_and_flip_the_vq_index_bits(tmp_path):
    """Taming's .ckpt (its preset found from the shapes) → own format → flip bits of its codebook indices."""
    maskbit_cli("convert", str(OFFICIAL_VQ_TINY / "tiny_taming.ckpt"), "--out", str(tmp_path / "taming"))
    converted = Tokenizer.from_pretrained(tmp_path / "taming")
    assert converted.config.model_class == "taming" and converted.quantizer_kind == "vq"
    io = torch.load(OFFICIAL_VQ_TINY / "tiny_taming_io.pt", weights_only=True)
    assert (converted.decode(io["indices"]) - io["recon_from_indices"]).abs().max() <= 2e-3
    np.save(tmp_path / "tokens.npy", io["indices"].numpy())
    tokenizer = ["--tokenizer", str(tmp_path / "taming")]
    out = ["--out", str(tmp_path / "flip")]
    maskbit_cli("flip", str(tmp_path / "tokens.npy"), *tokenizer, "--bit-ids", "0", "9", *out)
    assert (tmp_path / "flip" / "flip_bit09.png").is_file()
    rows = (tmp_path / "flip" / "distances.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["bit", "0", "9"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["generate", "--tokenizer", "maskbit_tokenizer_10bit", "--generator", "tiny", "--random-init"],
            "10-bit tokens but the generator expects 12-bit",
        ),
        (
            ["generate", "--tokenizer", "tiny_vqgan_plus", "--generator", "tiny", "--random-init"],
            "this tokenizer is vector-quantised (VQ)",
        ),
        (["generate", "--tokenizer", "nope", "--generator", "tiny", "--random-init"], "needs a tokenizer preset name"),
        (["generate", "--tokenizer", "tiny", "--generator", "tiny", "--random-init", "--labels", "1000"], "class ids"),
        (
            ["generate", "--tokenizer", "tiny", "--generator", "tiny", "--random-init", "--num-steps", "0"],
            "--num-steps",
        ),
        (["decode", "missing.npy", *TINY_TOKENIZER], "cannot read missing.npy"),
        (["encode", "no_such_dir", *TINY_TOKENIZER], "no such file or directory"),
        (["convert", str(OFFICIAL_TINY / "tiny_tokenizer.yaml"), "--out", "x"], "is not a PyTorch checkpoint"),
    ],
)
def test_bad_input_gives_a_message_not_a_traceback(args, message):
    result = maskbit_cli(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unreadable_image_is_reported(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    result = maskbit_cli(
        "encode", str(tmp_path / "fake.png"), *TINY_TOKENIZER, "--out", str(tmp_path / "t.npy"), check=False
    )
    assert result.returncode == 2 and "cannot read" in result.stderr and "fake.png" in result.stderr


# ------------------------------------------------------------------------------------------------- bounds (issue 17)


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("maskbit.cli", ["generate", "--seed", str(2**70)], "--seed: must be from 0 to 9223372036854775807, got 1180"),
        ("maskbit.cli", ["generate", "--batch-size", "1000000"], "--batch-size: must be from 1 to 4096, got 1000000"),
        ("maskbit.cli", ["generate", "--num-steps", "0"], "--num-steps: must be from 1 to 1024, got 0"),
        ("maskbit.cli", ["generate", "--guidance-scale", "nan"], "--guidance-scale: must be a number from 0 to 100"),
        ("maskbit.cli", ["generate", "--labels", "-1"], "--labels: must be at least 0, got -1"),
        ("maskbit.cli", ["encode", "x.png", "--size", "100000"], "--size: must be from 0 to 4096, got 100000"),
        ("maskbit.cli", ["flip", "x.png", "--positions", "x"], "--positions: must be a whole number, got 'x'"),
        ("train.cli", ["pretokenize", "--tokenizer", "t", "--out", "o", "--resolution", "99999"], "--resolution"),
        ("train.cli", ["pretokenize", "--tokenizer", "t", "--out", "o", "--count", "0"], "--count: must be from 1"),
        ("train.cli", ["export-dataset", "--out", "o", "--limit", "0"], "--limit: must be at least 1, got 0"),
        ("indexes.cli", ["search", "x.png", "--index", "i", "--k", "1000000000"], "--k: must be from 1 to 10000"),
        ("indexes.cli", ["build", "--index", "i", "--lpips-sketch", "0"], "--lpips-sketch: must be from 1 to 65536"),
        ("indexes.cli", ["report", "--index", "i", "--out", "o", "--percentile", "nan"], "--percentile: must be"),
        ("app.settings", ["--port", "99999"], "--port: must be from 0 to 65535, got 99999"),
        ("app.settings", ["--concurrency", "100000"], "--concurrency: must be from 1 to 64"),
        ("app.settings", ["--max-queue", "0"], "--max-queue: must be from 1 to 10000, got 0"),
    ],
)
def test_sizes_and_seeds_are_bounded_before_anything_runs(capsys, module, argv, message):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(module).build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_generate_and_decode_refuse_what_would_not_fit(tmp_path, capsys):
    from maskbit.cli import main

    assert main(["generate", "-q", "--labels", "0", "1", "--per-class", "6000", "--out", str(tmp_path)]) == 2
    assert "asks for 12,000 images; one run makes at most 10,000" in capsys.readouterr().err
    np.save(tmp_path / "huge.npy", np.zeros((1, 300, 300), dtype=np.int64))
    assert main(["decode", "-q", str(tmp_path / "huge.npy"), *TINY_TOKENIZER, "--out", str(tmp_path)]) == 2
    assert "holds 300×300 token grids; grids of at most 256×256" in capsys.readouterr().err


def test_a_command_says_what_precision_it_computes_at(tmp_path, caplog):
    from maskbit.cli import main
    from maskbit.device import cpu_has_native_bf16

    np.save(tmp_path / "tokens.npy", np.zeros((1, 8, 8), dtype=np.int64))
    with caplog.at_level("INFO", logger="maskbit"):
        assert main(["decode", str(tmp_path / "tokens.npy"), *TINY_TOKENIZER, "--out", str(tmp_path / "out")]) == 0
    picked = "bf16 (auto: native on this CPU)" if cpu_has_native_bf16() else "fp32 (auto: no native bf16 on this CPU)"
    assert f"computing in {picked}" in caplog.messages
    caplog.clear()
    with caplog.at_level("INFO", logger="maskbit"):
        main(["decode", str(tmp_path / "tokens.npy"), *TINY_TOKENIZER, "--precision", "fp32", "--out", str(tmp_path)])
    assert "computing in fp32" in caplog.messages
