import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import maskbit
from maskbit import CheckpointError, Generator, Tokenizer, TokenizerConfig
from maskbit.presets import GENERATOR_PRESETS, TOKENIZER_PRESETS
from tests.conftest import FIXTURES, OFFICIAL_TINY, OFFICIAL_VQ_TINY

ROOT = Path(__file__).parents[1]


def test_save_load_round_trip_gives_identical_outputs(
    tmp_path, tiny_tokenizer, tiny_generator, tokenizer_io, generator_io
):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    tiny_generator.save_pretrained(tmp_path / "gen")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    tokenizer = Tokenizer.from_pretrained(tmp_path / "tok")
    generator = Generator.from_pretrained(tmp_path / "gen")
    assert tokenizer.config == tiny_tokenizer.config and generator.config == tiny_generator.config
    assert torch.equal(tokenizer.decode(tokenizer_io["indices"]), tiny_tokenizer.decode(tokenizer_io["indices"]))
    args = generator_io["tokens"], generator_io["labels"], torch.tensor([False, True])
    assert torch.equal(generator(*args), tiny_generator(*args))
    assert not tokenizer.training and not generator.training


def test_official_file_without_config_matches_its_preset():
    model = Tokenizer.from_pretrained(OFFICIAL_TINY / "tiny_tokenizer.bin")
    assert model.config == TOKENIZER_PRESETS["tiny"]


def test_official_directory_with_pytorch_model_bin(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes((OFFICIAL_TINY / "tiny_generator.bin").read_bytes())
    assert Generator.from_pretrained(tmp_path, config="tiny").config == GENERATOR_PRESETS["tiny"]


def test_checkpoint_of_another_bit_count_is_explained():
    config = dataclasses.replace(TOKENIZER_PRESETS["tiny"], token_size=14)
    with pytest.raises(CheckpointError, match="checkpoint has 12-bit tokens, config says 14") as error:
        Tokenizer.from_pretrained(OFFICIAL_TINY / "tiny_tokenizer.bin", config=config)
    assert "encoder.conv_out.weight" in str(error.value)
    with pytest.raises(CheckpointError, match="checkpoint has 12-bit tokens, config says 14"):
        Generator.from_pretrained(
            OFFICIAL_TINY / "tiny_generator.bin",
            config={**dataclasses.asdict(GENERATOR_PRESETS["tiny"]), "token_size": 14},
        )


def test_checkpoint_of_the_other_model_kind_is_explained():
    with pytest.raises(CheckpointError, match="looks like a generator checkpoint"):
        Tokenizer.from_pretrained(OFFICIAL_TINY / "tiny_generator.bin", config="tiny")


def test_truncated_files_give_clear_errors(tmp_path, tiny_tokenizer):
    data = (OFFICIAL_TINY / "tiny_tokenizer.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Tokenizer.from_pretrained(tmp_path / "cut.bin", config="tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "own")
    weights = tmp_path / "own" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="could not read"):
        Tokenizer.from_pretrained(tmp_path / "own")


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"encoder.conv_in.weight": _Payload(str(marker))}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match="refused"):
        Tokenizer.from_pretrained(tmp_path / "evil.bin", config="tiny")
    assert not marker.exists()


def test_corrupt_buffer_is_refused(tmp_path):
    state = torch.load(OFFICIAL_TINY / "tiny_tokenizer.bin", weights_only=True)
    state["quantize.codebook"] = -state["quantize.codebook"]
    torch.save(state, tmp_path / "bad.bin")
    with pytest.raises(CheckpointError, match="quantize.codebook"):
        Tokenizer.from_pretrained(tmp_path / "bad.bin", config="tiny")


def test_unknown_sources_and_configs_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        Tokenizer.from_pretrained(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="neither a preset"):
        Tokenizer.from_pretrained(OFFICIAL_TINY / "tiny_tokenizer.bin", config="no_such_preset")
    with pytest.raises(ValueError, match="no model.mlm_model section"):
        Generator.from_pretrained(OFFICIAL_TINY / "tiny_generator.bin", config=OFFICIAL_TINY / "tiny_tokenizer.yaml")


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_hub_offline_gives_clear_error(tmp_path):
    result = _run_python(
        "import maskbit\nmaskbit.Tokenizer.from_pretrained('markweber/maskbit_tokenizer_12bit')",
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)},
    )
    assert result.returncode != 0
    assert "maskbit_tokenizer_12bit.bin" in result.stderr
    assert (
        "https://huggingface.co/markweber/maskbit_tokenizer_12bit/resolve/main/maskbit_tokenizer_12bit.bin"
        in result.stderr
    )


def hub_cache_repo(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in a Hugging Face cache laid out as huggingface_hub writes it."""
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    return snapshot


def test_hub_ids_go_through_huggingface_hub_with_the_official_file_names(tmp_path):
    """The real download code, offline, on a local cache: an official name → `<name>.bin` plus its preset config."""
    snapshot = hub_cache_repo(tmp_path, "markweber/tiny")
    (snapshot / "tiny.bin").write_bytes((OFFICIAL_TINY / "tiny_tokenizer.bin").read_bytes())
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    result = _run_python("import maskbit\nprint(maskbit.Tokenizer.from_pretrained('markweber/tiny').config)", env)
    assert result.returncode == 0, result.stderr
    assert "hidden_channels=32" in result.stdout
    # Any other repo name is read in our own format, so an official file there is not found.
    hub_cache_repo(tmp_path, "someone/tiny_tokenizer")
    result = _run_python("import maskbit\nmaskbit.Tokenizer.from_pretrained('someone/tiny_tokenizer')", env)
    assert result.returncode != 0 and "config.json" in result.stderr


def test_hub_repo_in_own_format(tmp_path, tiny_generator):
    tiny_generator.save_pretrained(hub_cache_repo(tmp_path, "someone/my_generator"))
    result = _run_python(
        "import maskbit\nprint(maskbit.Generator.from_pretrained('someone/my_generator').config.hidden_dim)",
        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "64"


@pytest.mark.parametrize("name", ["maskbit_tokenizer_12bit", "maskbit_generator_12bit"])
def test_real_size_presets_have_the_official_keys_and_shapes(name):
    official = json.loads((FIXTURES / "official_keys_12bit.json").read_text())[name]
    cls = Tokenizer if "tokenizer" in name else Generator
    with torch.device("meta"):
        model = cls(cls.presets[name])
    state = model.state_dict()
    keys = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]
    assert keys == official["keys"]
    assert sum(p.numel() for p in model.parameters()) == official["num_params"]


def test_every_official_bit_count_builds_matching_pairs():
    for k in (10, 12, 14, 16, 18):
        tokenizer, generator = (
            TOKENIZER_PRESETS[f"maskbit_tokenizer_{k}bit"],
            GENERATOR_PRESETS[f"maskbit_generator_{k}bit"],
        )
        assert tokenizer.num_bits == generator.token_size == k
        assert generator.mask_token == 2 ** (k // 2) and generator.num_positions == 256
        assert tokenizer.grid_size == generator.grid_size == 16
    with torch.device("meta"):
        assert Tokenizer(TOKENIZER_PRESETS["maskbit_tokenizer_14bit"]).state_dict()["quantize.codebook"].shape == (
            16384,
            14,
        )
        assert Generator(GENERATOR_PRESETS["maskbit_generator_14bit"]).prediction_layer.weight.shape == (256, 1024)


def test_tokenizer_preset_identity():
    assert maskbit.TOKENIZER_PRESETS["maskbit_tokenizer_12bit"] == TokenizerConfig()


def test_class_names_come_from_beside_the_model(tmp_path, tiny_generator):
    from maskbit.checkpoint import class_names

    assert class_names("default", 10)[:3] == ["circle", "square", "triangle"]
    assert class_names(tmp_path / "none.bin", 1000)[1] == "goldfish"  # ImageNet's, from torchvision
    assert class_names(tmp_path / "none.bin", 3) == ["class 0", "class 1", "class 2"]
    tiny_generator.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "classes.json").write_text('["cat", "dog", "owl"]')
    assert class_names(tmp_path / "model", 2) == ["cat", "dog"]
    assert class_names(tmp_path / "model", 4) == ["cat", "dog", "owl"]  # the model's own list wins (issue 25.1)


# ------------------------------------------------------------------------------------------- Lightning .ckpt files


def lightning_checkpoint(path: Path, monkeypatch, **extra) -> None:
    """The fixture's Taming state dict in a checkpoint laid out as Lightning writes one, with its training metadata:
    a callback state keyed by the callback class (Lightning < 1.5), hyper-parameters as an argparse.Namespace, a
    numpy scalar, optimizer states. The callback class is pickled by name, as Lightning's would be."""
    import argparse
    import types

    import numpy as np

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    callback = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = callback
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.setitem(sys.modules, name, module if name == module.__name__ else types.ModuleType(name))
    ckpt = torch.load(OFFICIAL_VQ_TINY / "tiny_taming.ckpt", weights_only=True)
    ckpt |= {
        "callbacks": {callback: {"best_model_score": np.float64(0.25), "best_model_path": "last.ckpt"}},
        "hparams": argparse.Namespace(base_learning_rate=4.5e-6, batch_size=12),
        "optimizer_states": [{"state": {0: {"step": 3, "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4}]}],
        "lr_schedulers": [],
        **extra,
    }
    torch.save(ckpt, path)


def test_lightning_checkpoint_with_training_metadata_loads_its_weights(tmp_path, monkeypatch):
    lightning_checkpoint(tmp_path / "last.ckpt", monkeypatch)
    monkeypatch.undo()  # the loader must not need the classes it reads as placeholders
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "last.ckpt", weights_only=True)  # plain weights-only loading refuses this file
    model = Tokenizer.from_pretrained(tmp_path / "last.ckpt", config="tiny_taming")
    io = torch.load(OFFICIAL_VQ_TINY / "tiny_taming_io.pt", weights_only=True)
    assert (model.decode(io["indices"]) - io["recon_from_indices"]).abs().max() <= 2e-3
    assert not any(k.startswith("loss.") for k in model.state_dict())


def test_lightning_checkpoint_whose_pickle_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    lightning_checkpoint(tmp_path / "evil.ckpt", monkeypatch, hyper_parameters=_Payload(str(marker)))
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"refused to load .*evil.ckpt: it calls posix.system") as error:
        Tokenizer.from_pretrained(tmp_path / "evil.ckpt", config="tiny_taming")
    assert "weights_only=False)['state_dict']" in str(error.value)  # what to do, if the file is trusted
    assert not marker.exists()


def test_vq_hub_ids_use_the_official_file_names(tmp_path):
    """vqgan_plus_paper holds vqgan_plus_10bit.bin, taming_vqgan a .ckpt: offline, the error names the file to fetch;
    with the file in the cache, it loads (here the tiny fixture's weights under that name, with the tiny preset)."""
    snapshot = hub_cache_repo(tmp_path, "markweber/vqgan_plus_paper")
    (snapshot / "vqgan_plus_10bit.bin").write_bytes((OFFICIAL_VQ_TINY / "tiny_vqgan_plus.bin").read_bytes())
    code = (
        "import maskbit\n"
        "print(maskbit.Tokenizer.from_pretrained('markweber/vqgan_plus_paper', config='tiny_vqgan_plus').num_bits)\n"
        "maskbit.Tokenizer.from_pretrained('markweber/taming_vqgan')"
    )
    result = _run_python(code, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert result.stdout.strip() == "12", result.stderr
    assert result.returncode != 0
    assert "https://huggingface.co/markweber/taming_vqgan/resolve/main/taming_vqgan.ckpt" in result.stderr
    assert "from_pretrained('path/to/taming_vqgan.ckpt', config='taming_vqgan')" in result.stderr


def test_identity_is_stable_and_ignores_config_fields_at_their_defaults(tiny_tokenizer):
    """Indexes and token files record identities: a change orphans what users have built with the same model."""
    assert tiny_tokenizer.identity() == "82c7f084445ff4e73d880790027075f840e635596b12031e7d4b810c048d1d74"
    replicate = Tokenizer(dataclasses.replace(tiny_tokenizer.config, padding_mode="replicate"))
    replicate.load_state_dict(tiny_tokenizer.state_dict())  # same weights, another computation
    assert replicate.identity() != tiny_tokenizer.identity()


def test_the_bundled_tokenizers_load_by_name_and_differ_only_in_the_quantiser():
    lfq, vq = Tokenizer.from_pretrained("default"), Tokenizer.from_pretrained("default-vq")
    assert (lfq.quantizer_kind, vq.quantizer_kind) == ("lfq", "vq")
    assert lfq.num_bits == vq.num_bits == 12 and vq.config.codebook_size == 4096
    as_lfq = dataclasses.replace(vq.config, quantizer="lfq", codebook_size=None, use_l2_normalisation=False)
    assert as_lfq == lfq.config
    images = torch.rand(1, 3, 64, 64)
    assert vq.encode(images).shape == lfq.encode(images).shape == (1, 16, 16)
    with pytest.raises(FileNotFoundError, match="neither a file"):
        Generator.from_pretrained("default-vq")  # generation needs bit tokens: there is no VQ generator


def test_the_bundled_open_magvit2_twin_loads_by_name():
    """default-omv: the Open-MAGVIT2 architecture on the bundled tokenizer's grid of 12-bit tokens, no generator."""
    omv, lfq = Tokenizer.from_pretrained("default-omv"), Tokenizer.from_pretrained("default")
    assert (omv.config.model_class, omv.quantizer_kind, omv.num_bits) == ("magvit2", "lfq", 12)
    images = torch.rand(1, 3, 64, 64)
    assert omv.encode(images).shape == lfq.encode(images).shape == (1, 16, 16)
    assert omv.decode(omv.encode(images)).shape == (1, 3, 64, 64)
    with pytest.raises(FileNotFoundError, match="neither a file"):
        Generator.from_pretrained("default-omv")


def test_the_bundled_ibq_twin_loads_by_name():
    """default-ibq: IBQ's Taming autoencoder with dot-product VQ over 4,096 codes on the 16×16 grid, no generator."""
    ibq, lfq = Tokenizer.from_pretrained("default-ibq"), Tokenizer.from_pretrained("default")
    config = ibq.config
    assert (config.model_class, config.quantizer, config.code_assignment, config.codebook_size) == (
        "taming",
        "vq",
        "dot_product",
        4096,
    )
    images = torch.rand(1, 3, 64, 64)
    assert ibq.encode(images).shape == lfq.encode(images).shape == (1, 16, 16)
    assert ibq.decode(ibq.encode(images)).shape == (1, 3, 64, 64)
    with pytest.raises(FileNotFoundError, match="neither a file"):
        Generator.from_pretrained("default-ibq")


def test_inference_freezes_places_and_sets_the_precision(tiny_tokenizer):
    """The one way every CLI, the indexes and the app prepare a loaded model (issue 28.2)."""
    import copy

    model = copy.deepcopy(tiny_tokenizer).train()
    assert model.inference("cpu", "bf16") is model
    assert model.precision == "bf16" and not model.training and not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).device == torch.device("cpu")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        model.inference("cpu", "fp16")
