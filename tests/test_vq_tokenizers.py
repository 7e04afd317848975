"""The vector-quantised tokenizers (VQGAN+, MaskGIT, Taming: maskbit/quantizers.py VectorQuantizer, maskbit/taming.py
and the VQ paths of maskbit/tokenizer.py) against the official-vq-tiny fixtures, loaded through from_pretrained from
the official files, at the fixture README's tolerances."""

import pytest
import torch

from maskbit import Tokenizer, TokenizerConfig, bits
from maskbit.presets import TOKENIZER_PRESETS
from maskbit.quantizers import VectorQuantizer
from tests.conftest import OFFICIAL_VQ_FILES, OFFICIAL_VQ_TINY

Z_TOLERANCE, IMAGE_TOLERANCE, MARGIN = 1e-4, 2e-3, 1e-4


@pytest.fixture(scope="module", params=sorted(OFFICIAL_VQ_FILES))
def official(request) -> tuple[str, Tokenizer, dict[str, torch.Tensor]]:
    name = request.param
    tokenizer = Tokenizer.from_pretrained(
        OFFICIAL_VQ_TINY / OFFICIAL_VQ_FILES[name], config=OFFICIAL_VQ_TINY / f"tiny_{name}.yaml"
    )
    return name, tokenizer, torch.load(OFFICIAL_VQ_TINY / f"tiny_{name}_io.pt", weights_only=True)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b).abs().max())


def test_latent_and_nearest_codes_match_official(official):
    _, tokenizer, io = official
    z = tokenizer.encode_latent(io["image"])
    assert z.shape == io["z"].shape and max_error(z, io["z"]) <= Z_TOLERANCE
    assert max_error(tokenizer.quantize(io["z"]), io["z_quantized"]) <= Z_TOLERANCE
    assert max_error(tokenizer.quantizer(io["z"]).quantized, io["z_quantized"]) <= Z_TOLERANCE


def test_indices_match_official_wherever_the_nearest_code_is_clear(official):
    _, tokenizer, io = official
    clear = io["argmin_margin"] > MARGIN
    assert clear.float().mean() > 0.9  # the comparison covers nearly every position
    indices = tokenizer.encode(io["image"])
    assert indices.dtype == torch.int64 and torch.equal(indices[clear], io["indices"][clear])
    assert torch.equal(tokenizer.quantizer(io["z"]).indices[clear], io["indices"][clear])


def test_decoder_matches_official(official):
    _, tokenizer, io = official
    with torch.no_grad():
        assert max_error(tokenizer.decode_latent(io["z_quantized"]), io["recon"]) <= IMAGE_TOLERANCE
    assert max_error(tokenizer.decode(io["indices"]), io["recon_from_indices"]) <= IMAGE_TOLERANCE
    assert io["random_indices"].shape == (2, 64)  # (B, N): decoded as a square grid
    assert max_error(tokenizer.decode(io["random_indices"]), io["decoded_random"]) <= IMAGE_TOLERANCE


def test_the_official_file_alone_selects_the_matching_preset(official):
    name, tokenizer, _ = official
    assert Tokenizer.from_pretrained(OFFICIAL_VQ_TINY / OFFICIAL_VQ_FILES[name]).config == tokenizer.config
    assert tokenizer.config == TOKENIZER_PRESETS[f"tiny_{name}"]


def test_vq_tokens_have_index_bits_and_a_visible_kind(official, tmp_path):
    name, tokenizer, io = official
    assert tokenizer.quantizer_kind == "vq"
    assert tokenizer.num_bits == {"vqgan_plus": 12, "maskgit": 10, "taming": 10}[name]  # log2 of the codebook
    assert 2**tokenizer.num_bits == tokenizer.quantizer.embedding.num_embeddings
    flipped = bits.flip_bits(io["indices"], tokenizer.num_bits - 1, tokenizer.num_bits)  # bit i of the index
    assert torch.equal(flipped ^ io["indices"], torch.full_like(flipped, 2 ** (tokenizer.num_bits - 1)))
    assert tokenizer.decode(flipped).shape == io["image"].shape
    with pytest.raises(ValueError, match="decode_bits is for lookup-free"):
        tokenizer.decode_bits(torch.ones(1, tokenizer.num_bits, 8, 8))
    with pytest.raises(ValueError, match=r"indices must be in \[0, "):
        tokenizer.decode(torch.full((1, 8, 8), 2**tokenizer.num_bits))
    tokenizer.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    reloaded = Tokenizer.from_pretrained(tmp_path)
    assert reloaded.config == tokenizer.config
    assert torch.equal(reloaded.decode(io["indices"]), tokenizer.decode(io["indices"]))


# ------------------------------------------------------------------------------------------------- the quantiser


def value(tensor: torch.Tensor) -> float:
    return float(tensor.detach())


def small_quantizer(**changes) -> VectorQuantizer:
    config = TokenizerConfig(
        **{"quantizer": "vq", "codebook_size": 8, "token_size": 4, "entropy_loss_weight": 0.0, **changes}
    )
    torch.manual_seed(0)
    return VectorQuantizer(config).eval()


def test_losses_and_straight_through_gradients():
    quantizer = small_quantizer(commitment_cost=0.25)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = quantizer(z)
    nearest = quantizer.embedding.weight[out.indices].permute(0, 3, 1, 2)
    squared = value(((nearest - z) ** 2).mean())
    assert value(out.commitment_loss) == pytest.approx(0.25 * squared, rel=1e-5)
    assert value(out.codebook_loss) == pytest.approx(squared, rel=1e-5)
    assert value(out.quantizer_loss) == pytest.approx(1.25 * squared, rel=1e-5) and out.entropy_loss == 0
    out.quantized.sum().backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through
    z.grad = None
    out.codebook_loss.backward(retain_graph=True)  # moves the codes only
    assert z.grad is None and quantizer.embedding.weight.grad.abs().sum() > 0
    quantizer.embedding.weight.grad = None
    out.commitment_loss.backward()  # moves the encoder only
    assert quantizer.embedding.weight.grad is None and z.grad.abs().sum() > 0


def test_first_index_wins_an_exact_tie_and_indices_need_no_autocast_precision():
    quantizer = small_quantizer()
    with torch.no_grad():
        quantizer.embedding.weight[5] = quantizer.embedding.weight[2]
    z = quantizer.embedding.weight[2].detach().view(1, 4, 1, 1)
    assert quantizer.indices(z).item() == 2
    z = torch.randn(4, 4, 16, 16) * 0.05
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(quantizer.indices(z.bfloat16().float()), quantizer.indices(z.bfloat16().float()).clone())
        under_autocast = quantizer.indices(z)
    assert torch.equal(under_autocast, quantizer.indices(z))


def test_l2_normalised_codes_are_compared_by_cosine():
    quantizer = small_quantizer(use_l2_normalisation=True)
    z = torch.randn(2, 4, 5, 5)
    out = quantizer(z)
    assert torch.allclose(out.quantized.norm(dim=1), torch.ones(2, 5, 5), atol=1e-5)
    cosine = torch.einsum("bchw,nc->bhwn", torch.nn.functional.normalize(z, dim=1), quantizer.codes())
    assert torch.equal(out.indices, cosine.argmax(-1))


def test_entropy_term_only_in_training_and_when_weighted():
    z = torch.randn(2, 4, 4, 4)
    quantizer = small_quantizer(entropy_loss_weight=0.02)
    assert quantizer(z).entropy_loss == 0
    quantizer.train()
    out = quantizer(z)
    assert value(out.entropy_loss) == pytest.approx(0.02 * value(out.per_sample_entropy - out.avg_entropy), rel=1e-5)
    assert value(out.quantizer_loss) == pytest.approx(
        value(out.commitment_loss + out.codebook_loss + out.entropy_loss), rel=1e-5
    )
    assert small_quantizer(entropy_loss_weight=0.0).train()(z).entropy_loss == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quantizer": "vq"}, "needs codebook_size, a power of two"),
        ({"quantizer": "vq", "codebook_size": 1000}, "needs codebook_size, a power of two"),
        ({"codebook_size": 1024}, "for vector quantisation"),
        ({"model_class": "taming", "codebook_size": 1024}, "set quantizer='vq'"),
        ({"quantizer": "vq", "codebook_size": 1024, "attn_resolutions": (16,)}, "describe the Taming VQGAN"),
        ({"model_class": "maskgit", "num_res_blocks_decoder": 3}, "leave num_res_blocks_decoder unset"),
        ({"model_class": "vqgan", "codebook_size": 1024}, "model_class must be one of"),
    ],
)
def test_inconsistent_configs_are_explained(changes, message):
    with pytest.raises(ValueError, match=message):
        TokenizerConfig(**changes)


@pytest.mark.parametrize(
    ("preset", "num_keys", "num_params"),
    # Key and parameter counts of the official classes (ConvVQModel, legacy for MaskGIT; OriginalVQModel) built from
    # the official configs at markweberdev/maskbit 5ea3d73; every key's name and shape was compared as well.
    [
        ("vqgan_plus_10bit", 176, 55_990_915),
        ("vqgan_plus_12bit", 176, 55_007_683),
        ("maskgit_tokenizer", 168, 54_515_587),
        ("taming_vqgan", 343, 72_141_699),
    ],
)
def test_real_size_vq_presets_have_the_official_size(preset, num_keys, num_params):
    with torch.device("meta"):
        model = Tokenizer(TOKENIZER_PRESETS[preset])
    assert len(model.state_dict()) == num_keys
    assert sum(p.numel() for p in model.parameters()) == num_params
    assert model.num_bits == (12 if preset == "vqgan_plus_12bit" else 10)
