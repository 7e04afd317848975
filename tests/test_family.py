"""The bit-token family: Open-MAGVIT2, IBQ and BitDance tokenizers (maskbit/magvit2.py, the dot-product assignment of
maskbit/quantizers.py, EMA selection in maskbit/checkpoint.py, the family's configs in maskbit/official.py) against the
open-magvit2-tiny fixtures of the official code, loaded unchanged through Tokenizer.from_pretrained, at the fixture
README's tolerances: latents 1e-4 relative, indices exact, images 2e-3 (in the official [−1, 1] scale)."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from maskbit import Tokenizer, bits
from maskbit.checkpoint import CheckpointError
from maskbit.cli import main as maskbit_main
from maskbit.magvit2 import AdaptiveGroupNorm, depth_to_space
from maskbit.official import read_official_yaml
from maskbit.presets import FAMILY_HUB_FILES, TOKENIZER_PRESETS
from tests.conftest import FIXTURES

FAMILY = FIXTURES / "open-magvit2-tiny"
LATENT_TOLERANCE, IMAGE_TOLERANCE = 1e-4, 2e-3
# name → (weights file, config file, io file, preset, bits per token)
MODELS = {
    "open_magvit2": ("tiny_lfq.ckpt", "tiny_lfq.yaml", "tiny_lfq_io.pt", "tiny_open_magvit2", 10),
    "ibq": ("tiny_ibq.ckpt", "tiny_ibq.yaml", "tiny_ibq_io.pt", "tiny_ibq", 10),
    "bitdance": ("bitdance_tiny.pt", "bitdance_tiny.yaml", "bitdance_tiny_io.pt", "tiny_bitdance", 32),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Weights file of each model; BitDance's is rebuilt from its manifest (content hash checked), per the README."""
    spec = importlib.util.spec_from_file_location("fixture_weights", FAMILY / "fixture_weights.py")
    fixture_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture_weights)
    bitdance = tmp_path_factory.mktemp("bitdance") / "bitdance_tiny.pt"
    fixture_weights.rebuild(str(FAMILY / "bitdance_tiny_weights.json"), str(bitdance))
    return {name: bitdance if name == "bitdance" else FAMILY / MODELS[name][0] for name in MODELS}


@pytest.fixture(scope="module", params=sorted(MODELS))
def official(request, files) -> tuple[str, Tokenizer, dict[str, torch.Tensor]]:
    name = request.param
    tokenizer = Tokenizer.from_pretrained(files[name], config=FAMILY / MODELS[name][1])
    return name, tokenizer, torch.load(FAMILY / MODELS[name][2], weights_only=True)


def image_error(images01: torch.Tensor, official_images: torch.Tensor) -> float:
    """Max abs error in the official [−1, 1] scale; the API's images are in [0, 1]."""
    return float((images01 * 2 - 1 - official_images).abs().max())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b).abs().max() / b.abs().max())


def test_latents_match_official(official):
    _, tokenizer, io = official
    assert torch.equal(io["image01"], (io["image"] + 1) / 2)
    z = tokenizer.encode_latent(io["image01"])
    assert z.shape == io["pre_quant"].shape and relative_error(z, io["pre_quant"]) <= LATENT_TOLERANCE
    assert relative_error(tokenizer.quantize(io["pre_quant"]), io["quant"]) <= LATENT_TOLERANCE


def test_indices_match_official_exactly(official):
    name, tokenizer, io = official
    assert not io["fragile"].any()  # no position within 1e-4 of a tie: every index is compared
    indices = tokenizer.encode(io["image01"])
    assert indices.dtype == torch.int64 and torch.equal(indices, io["indices"])
    if name == "ibq":  # the argmax of the dot product, which is not the nearest code for most tokens here
        codes = tokenizer.quantizer.embedding.weight
        z = io["pre_quant"].permute(0, 2, 3, 1)
        nearest = torch.cdist(z.reshape(-1, z.shape[-1]), codes).argmin(1).view(indices.shape)
        assert (nearest != indices).sum() > 64


def test_decoder_matches_official_from_latents_and_indices(official):
    _, tokenizer, io = official
    with torch.no_grad():
        assert image_error(tokenizer.decode_latent(io["quant"]), io["decoded"]) <= IMAGE_TOLERANCE
    assert image_error(tokenizer.decode(io["indices"]), io["decoded_from_indices"]) <= IMAGE_TOLERANCE
    assert image_error(tokenizer.decode(io["indices_flip0"]), io["decoded_flip0"]) <= IMAGE_TOLERANCE
    assert image_error(tokenizer.decode(io["random_indices"]), io["decoded_random"]) <= IMAGE_TOLERANCE
    assert torch.equal(tokenizer.quantizer.lookup(io["indices_flip0"]), io["quant_flip0"])
    assert torch.equal(tokenizer.quantizer.lookup(io["indices"]), io["quant_from_indices"])


def test_bit_k_of_an_index_is_channel_k(official):
    name, tokenizer, io = official
    assert torch.equal(io["indices_flip0"], bits.flip_bits(io["indices"], 0, tokenizer.num_bits))
    if name == "ibq":  # a VQ token's bits are those of its codebook row
        assert tokenizer.quantizer_kind == "vq" and 2**tokenizer.num_bits == tokenizer.config.codebook_size
        return
    assert tokenizer.quantizer_kind == "lfq"
    assert torch.equal(bits.indices_to_bits(io["indices"], tokenizer.num_bits).permute(0, 3, 1, 2), io["quant"])
    assert image_error(tokenizer.decode_bits(io["quant_flip0"]), io["decoded_flip0"]) <= IMAGE_TOLERANCE
    if name == "bitdance":  # the official indices are 4 groups of 8 bits, group 0 the low bits
        assert torch.equal(bits.split_groups(io["indices"], 32, 4), io["indices_groups"])
    else:  # the AR stage's sub-tokens with factorized_bits [4, 6]: channels 0–3 and 4–9
        assert torch.equal(torch.stack([io["indices"] & 15, io["indices"] >> 4], -1), io["indices_factorized"])


def test_configs_presets_and_bits(official, files):
    name, tokenizer, _ = official
    preset = TOKENIZER_PRESETS[MODELS[name][3]]
    assert tokenizer.config == preset and tokenizer.num_bits == MODELS[name][4]
    assert Tokenizer.from_pretrained(files[name]).config == preset  # the file alone selects the preset
    assert Tokenizer.from_pretrained(files[name], config=MODELS[name][3]).identity() == tokenizer.identity()


def test_raw_weights_are_the_ar_stage_path(files):
    io = torch.load(FAMILY / "tiny_lfq_io.pt", weights_only=True)
    raw = Tokenizer.from_pretrained(files["open_magvit2"], config="tiny_open_magvit2", weights="raw")
    assert torch.equal(raw.encode(io["image01"]), io["indices_raw"])
    assert image_error(raw.decode(io["indices"]), io["decoded_from_indices_raw"]) <= IMAGE_TOLERANCE
    ema = Tokenizer.from_pretrained(files["open_magvit2"], config="tiny_open_magvit2", weights="ema")
    assert torch.equal(ema.encode(io["image01"]), io["indices"])


def test_ibq_quantiser_loss_is_the_official_one():
    io = torch.load(FAMILY / "tiny_ibq_io.pt", weights_only=True)
    tokenizer = Tokenizer.from_pretrained(FAMILY / "tiny_ibq.ckpt", config="tiny_ibq")
    out = tokenizer.quantizer(io["pre_quant"])
    assert torch.equal(out.indices, io["indices"])
    loss = float((out.commitment_loss + out.codebook_loss).detach())
    assert loss == pytest.approx(float(io["eval_quant_loss"]), rel=1e-4)
    z = io["pre_quant"].clone().requires_grad_()
    tokenizer.quantizer(z).quantized.sum().backward()  # index propagation: gradients reach z through the softmax
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_convert_to_own_format_with_ema_or_raw_weights(tmp_path, files):
    io = torch.load(FAMILY / "tiny_lfq_io.pt", weights_only=True)
    for weights, indices in (("ema", io["indices"]), ("raw", io["indices_raw"])):
        out = tmp_path / weights
        args = ["convert", "-q", str(files["open_magvit2"]), "--config", str(FAMILY / "tiny_lfq.yaml")]
        assert maskbit_main([*args, "--weights", weights, "--out", str(out)]) == 0
        converted = Tokenizer.from_pretrained(out)
        assert converted.config == TOKENIZER_PRESETS["tiny_open_magvit2"]
        assert torch.equal(converted.encode(io["image01"]), indices)
    assert maskbit_main(["convert", "-q", str(files["bitdance"]), "--out", str(tmp_path / "bitdance")]) == 0
    assert Tokenizer.from_pretrained(tmp_path / "bitdance").num_bits == 32


def test_hub_ids_ask_for_the_published_files(monkeypatch, files):
    """The real download code with huggingface_hub's download replaced: the file names and presets it asks for."""
    served = {"imagenet_256_L.ckpt": files["open_magvit2"]}
    asked = []

    def download(repo_id: str, filename: str) -> str:
        asked.append((repo_id, filename))
        if filename not in served:
            raise OSError("offline")
        return str(served[filename])

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    tokenizer = Tokenizer.from_pretrained("TencentARC/Open-MAGVIT2-Tokenizer-256-resolution", "tiny_open_magvit2")
    assert tokenizer.num_bits == 10
    assert asked == [("TencentARC/Open-MAGVIT2-Tokenizer-256-resolution", "imagenet_256_L.ckpt")]
    served.clear()  # offline: the error names the file to fetch and the preset to load it with
    for repo, (preset, file_name) in FAMILY_HUB_FILES.items():
        owner = "shallowdream204" if repo.startswith("BitDance") else "TencentARC"
        with pytest.raises(CheckpointError) as error:
            Tokenizer.from_pretrained(f"{owner}/{repo}")
        assert f"https://huggingface.co/{owner}/{repo}/resolve/main/{file_name}" in str(error.value)
        assert f"from_pretrained('path/to/{file_name}', config='{preset}')" in str(error.value)


@pytest.mark.parametrize(
    ("preset", "num_params", "num_bits"),
    # Parameter counts of the published models: 115.1 M (imagenet_256_L.ckpt holds two float32 copies, 921 MB) and
    # 460 M (ae_d16c32); IBQ's grow with the codebook (N × 256).
    [
        ("open_magvit2_256_L", 115_127_829, 18),
        ("open_magvit2_128_L", 112_021_653, 18),
        ("ibq_1024", 107_049_859, 10),
        ("ibq_262144", 173_896_579, 18),
        ("bitdance_ae_d16c32", 460_294_179, 32),
    ],
)
def test_real_size_presets(preset, num_params, num_bits):
    with torch.device("meta"):
        model = Tokenizer(TOKENIZER_PRESETS[preset])
    assert sum(p.numel() for p in model.parameters()) == num_params and model.num_bits == num_bits
    assert len(model.state_dict()) == len(list(model.parameters()))  # no buffers: the EMA copies cover everything


# ----------------------------------------------------------------------------------------- the official quirks


def test_depth_to_space_is_dcr_not_pixel_shuffle():
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).view(2, 8, 3, 3)
    out = depth_to_space(x)
    for c, i, j in ((0, 0, 0), (1, 0, 1), (0, 1, 0), (1, 1, 1)):
        assert torch.equal(out[:, c, i::2, j::2], x[:, (2 * i + j) * 2 + c])
    assert not torch.equal(out, torch.pixel_shuffle(x, 2))


def test_adaptive_group_norm_uses_the_unbiased_variance_of_the_whole_latent():
    torch.manual_seed(0)
    norm = AdaptiveGroupNorm(latent_channels=4, channels=32, norm_groups=32)
    x, z = torch.randn(2, 32, 4, 4), torch.randn(2, 4, 3, 3)
    scale = norm.gamma((z.flatten(2).var(-1, unbiased=True) + 1e-6).sqrt())
    expected = torch.nn.functional.group_norm(x, 32, eps=1e-6) * scale[..., None, None]
    assert torch.allclose(norm(x, z), expected + norm.beta(z.flatten(2).mean(-1))[..., None, None], atol=1e-6)


# ------------------------------------------------------------------------------------------------ bad input


def checkpoint_with(path: Path, keep) -> dict:
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if keep(k)}
    return checkpoint


def test_a_checkpoint_of_another_family_is_named():
    with pytest.raises(CheckpointError) as error:
        Tokenizer.from_pretrained(FAMILY / "tiny_ibq.ckpt", config=FAMILY / "tiny_lfq.yaml")
    assert "checkpoint has model_class='taming', config says model_class='magvit2'" in str(error.value)
    with pytest.raises(CheckpointError, match="model_class='magvit2', config says model_class='taming'"):
        Tokenizer.from_pretrained(FAMILY / "tiny_lfq.ckpt", config="tiny_ibq")


def test_a_checkpoint_with_only_raw_or_only_ema_weights_is_explained(tmp_path):
    only_raw = tmp_path / "only_raw.ckpt"
    torch.save(checkpoint_with(FAMILY / "tiny_lfq.ckpt", lambda k: not k.startswith("model_ema.")), only_raw)
    with pytest.raises(CheckpointError, match=r"holds no EMA weights: expected model_ema\.<parameter name"):
        Tokenizer.from_pretrained(only_raw, config="tiny_open_magvit2", weights="ema")
    assert Tokenizer.from_pretrained(only_raw, config="tiny_open_magvit2").config.model_class == "magvit2"  # as stored
    lit_ema_state_only = tmp_path / "lit_ema_state_only.ckpt"
    keep = ("model_ema.decay", "model_ema.num_updates")
    only_state = checkpoint_with(FAMILY / "tiny_lfq.ckpt", lambda k: "model_ema" not in k or k in keep)
    torch.save(only_state, lit_ema_state_only)
    with pytest.raises(CheckpointError, match="holds only LitEma's decay and update count and no EMA weights.*'raw'"):
        Tokenizer.from_pretrained(lit_ema_state_only, config="tiny_open_magvit2")
    partial = tmp_path / "partial.ckpt"
    torch.save(checkpoint_with(FAMILY / "tiny_lfq.ckpt", lambda k: not k.startswith("model_ema.decoder")), partial)
    with pytest.raises(CheckpointError, match=r"holds EMA weights, but none for these raw weights: decoder\.conv_in"):
        Tokenizer.from_pretrained(partial, config="tiny_open_magvit2")
    only_ema = tmp_path / "only_ema.ckpt"
    torch.save(checkpoint_with(FAMILY / "tiny_ibq.ckpt", lambda k: k.startswith("model_ema.")), only_ema)
    with pytest.raises(CheckpointError, match="holds only EMA weights.*no raw training weights"):
        Tokenizer.from_pretrained(only_ema, config="tiny_ibq", weights="raw")
    io = torch.load(FAMILY / "tiny_ibq_io.pt", weights_only=True)
    assert torch.equal(Tokenizer.from_pretrained(only_ema, config="tiny_ibq").encode(io["image01"]), io["indices"])
    with pytest.raises(ValueError, match="weights must be 'ema', 'raw' or None"):
        Tokenizer.from_pretrained(FAMILY / "tiny_ibq.ckpt", weights="EMA")


def family_yaml(tmp_path: Path, name: str, change) -> Path:
    raw = yaml.safe_load((FAMILY / name).read_text())
    change(raw["model"]["init_args"])
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("tiny_lfq.yaml", lambda a: a.update(n_embeds=1024), r"Open-MAGVIT2 config's model\.init_args: \['n_embeds'\]"),
        ("tiny_ibq.yaml", lambda a: a["ddconfig"].update(attn_resolution=[8]), r"ddconfig: \['attn_resolution'\]"),
        ("tiny_ibq.yaml", lambda a: a.update(n_embed=1000), "needs codebook_size, a power of two.*got 1000"),
        ("tiny_lfq.yaml", lambda a: a.update(n_embed=1000), r"n_embed 2\^z_channels = 1024, got .* n_embed 1000"),
        ("bitdance_tiny.yaml", lambda a: a.update(num_codebooks=3), "num_codebooks must divide z_channels = 32"),
    ],
)
def test_bad_family_configs_are_explained(tmp_path, name, change, message):
    path = family_yaml(tmp_path, name, change)
    with pytest.raises(ValueError, match=message):
        read_official_yaml(path)
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_pretrained(FAMILY / "tiny_ibq.ckpt", config=path)


def test_unknown_class_paths_and_inconsistent_family_configs_are_refused():
    raw = yaml.safe_load((FAMILY / "tiny_lfq.yaml").read_text())
    raw["model"]["class_path"] = "src.Open_MAGVIT2.models.lfqgan.VQModelX"
    with pytest.raises(ValueError, match="is none of the known tokenizers"):
        read_official_yaml(raw)
    preset = TOKENIZER_PRESETS["tiny_open_magvit2"]
    with pytest.raises(ValueError, match="Open-MAGVIT2 / BitDance autoencoder is lookup-free"):
        dataclasses.replace(preset, quantizer="vq", codebook_size=1024)
    with pytest.raises(ValueError, match="set entropy_loss_weight=0"):
        dataclasses.replace(TOKENIZER_PRESETS["tiny_bitdance"], entropy_loss_weight=0.02)
    with pytest.raises(ValueError, match="code_assignment must be one of"):
        dataclasses.replace(TOKENIZER_PRESETS["tiny_ibq"], code_assignment="cosine")
