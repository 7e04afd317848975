"""The tokenizer against the official-tiny fixtures (outputs of the official code), within their tolerances."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from maskbit import Tokenizer, TokenizerConfig, bits
from maskbit.tokenizer import same_padding


def test_encoder_latent_matches_official(tiny_tokenizer, tokenizer_io):
    z = tiny_tokenizer.encode_latent(tokenizer_io["image"])
    assert z.shape == (2, 12, 8, 8)
    assert (z - tokenizer_io["z"]).abs().max() <= 1e-4


def test_quantisation_of_stored_latent_is_exact(tiny_tokenizer, tokenizer_io):
    assert torch.equal(tiny_tokenizer.quantize(tokenizer_io["z"]), tokenizer_io["bits"])
    indices = bits.bits_to_indices(tiny_tokenizer.quantize(tokenizer_io["z"]).permute(0, 2, 3, 1))
    assert torch.equal(indices, tokenizer_io["indices"])
    assert torch.equal(tiny_tokenizer.quantizer(tokenizer_io["z"]).indices, tokenizer_io["indices"])
    groups = bits.split_groups(tokenizer_io["indices"].flatten(1), 12, 2)
    assert torch.equal(groups, tokenizer_io["index_groups"])


def test_encode_gives_official_indices(tiny_tokenizer, tokenizer_io):
    assert torch.equal(tiny_tokenizer.encode(tokenizer_io["image"]), tokenizer_io["indices"])


def test_zero_latent_quantises_to_minus_one(tiny_tokenizer):
    assert tiny_tokenizer.quantize(torch.zeros(1, 12, 1, 1)).eq(-1).all()


def test_decoder_matches_official(tiny_tokenizer, tokenizer_io):
    recon = tokenizer_io["recon"]
    assert (tiny_tokenizer.decode_bits(tokenizer_io["bits"]) - recon).abs().max() <= 2e-3
    assert (tiny_tokenizer.decode(tokenizer_io["indices"]) - recon).abs().max() <= 2e-3
    assert (tiny_tokenizer.decode(tokenizer_io["random_indices"]) - tokenizer_io["decoded_random"]).abs().max() <= 2e-3


def test_quantizer_losses_match_official(tiny_tokenizer, tokenizer_io):
    quantizer = tiny_tokenizer.quantizer
    eval_out = quantizer(tokenizer_io["z"])
    assert abs(eval_out.commitment_loss - tokenizer_io["commitment_loss_eval"]) <= 1e-4
    assert eval_out.entropy_loss == 0  # the entropy term is a training-only loss
    quantizer.train()
    try:
        out = quantizer(tokenizer_io["z"])
    finally:
        quantizer.eval()
    for name in ("commitment_loss", "entropy_loss", "per_sample_entropy", "avg_entropy", "quantizer_loss"):
        assert abs(getattr(out, name) - tokenizer_io[f"train_{name}"]) <= 1e-4, name


def test_straight_through_bits_pass_gradients(tiny_tokenizer):
    z = torch.randn(1, 12, 2, 2, requires_grad=True)
    out = tiny_tokenizer.quantizer(z)
    assert torch.equal(out.quantized.detach(), torch.where(z > 0, 1.0, -1.0))
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [(32, 3, 1, (1, 1)), (32, 3, 2, (0, 1)), (31, 3, 2, (1, 1)), (8, 1, 1, (0, 0)), (8, 5, 1, (2, 2))],
)
def test_tensorflow_same_padding(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_residual_shortcut_quirk_is_kept():
    model = Tokenizer(
        TokenizerConfig(token_size=12, hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, image_size=16)
    )
    block = model.encoder.down[1].res_blocks[0]  # 32 → 64 channels
    assert block.nin_shortcut.weight.shape == (64, 64, 1, 1)  # projects the branch output, as trained
    x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = block.conv2(F.silu(block.norm2(block.conv1(F.silu(block.norm1(x))))))  # the branch, (2, 64, 8, 8)
        projected = torch.einsum("oc,bchw->bohw", block.nin_shortcut.weight[:, :, 0, 0], h)  # the 1×1 conv, written out
        torch.testing.assert_close(block(x), h + projected)  # h + W·h: the input x is not added at all
        same = model.encoder.down[0].res_blocks[0]  # 32 → 32 channels: the plain residual h + x
        torch.testing.assert_close(same(x), same.conv2(F.silu(same.norm2(same.conv1(F.silu(same.norm1(x)))))) + x)


def test_norm_groups_default_to_the_official_32_and_configs_without_them_still_load(tmp_path, tiny_tokenizer):
    norms = [m for m in tiny_tokenizer.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 and m.eps == 1e-6 for m in norms)
    own = Tokenizer(TokenizerConfig(12, 64, (1, 1, 2), 1, norm_groups=8, image_size=16))
    assert {m.num_groups for m in own.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}
    with pytest.raises(ValueError, match="divisible by norm_groups = 24"):
        TokenizerConfig(12, 64, (1, 1, 2), 1, norm_groups=24)
    tiny_tokenizer.save_pretrained(tmp_path)  # a config.json written before norm_groups existed loads as 32 groups
    config = json.loads((tmp_path / "config.json").read_text())
    del config["config"]["norm_groups"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained(tmp_path).config.norm_groups == 32


def test_tokenizer_rejects_bad_images(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        tiny_tokenizer.encode(torch.full((1, 3, 32, 32), 255.0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_tokenizer.encode(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny_tokenizer.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(TypeError, match="float tensor"):
        tiny_tokenizer.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not a square grid"):
        tiny_tokenizer.decode(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="indices must be in"):
        tiny_tokenizer.decode(torch.full((1, 8, 8), 4096))


def test_tokenizer_is_fully_convolutional(tiny_tokenizer):
    images = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    indices = tiny_tokenizer.encode(images)
    assert indices.shape == (1, 12, 16)
    z = tiny_tokenizer.encode_latent(images)  # (1, 12, 12, 16)
    assert torch.equal(indices, sum((z[:, k] > 0).long() << k for k in range(12)))  # channel k is bit k, LSB first
    decoded = tiny_tokenizer.decode(indices)
    assert decoded.shape == (1, 3, 48, 64)
    torch.testing.assert_close(decoded, tiny_tokenizer.decode_bits(torch.where(z > 0, 1.0, -1.0)))
    # The same weights compute the same function at any size: without a border (replicate padding) a uniform image
    # is one code at 32×32 and at 48×64, and that code decodes to the same uniform colour at both sizes.
    replicate = Tokenizer(dataclasses.replace(tiny_tokenizer.config, padding_mode="replicate"))
    replicate.load_state_dict(tiny_tokenizer.state_dict())
    square, wide = (replicate.encode(torch.full((1, 3, *size), 0.4)) for size in ((32, 32), (48, 64)))
    assert square.unique().numel() == 1 and torch.equal(wide, torch.full_like(wide, square[0, 0, 0].item()))
    colour = replicate.decode(square)[0, :, :1, :1]  # (3, 1, 1)
    torch.testing.assert_close(replicate.decode(wide)[0], colour.expand(3, 48, 64), rtol=0, atol=1e-3)


def test_replicate_padding_makes_codes_of_a_uniform_image_independent_of_the_border(tmp_path, tiny_tokenizer):
    grey = torch.full((1, 3, 32, 32), 0.4)
    assert tiny_tokenizer.config.padding_mode == "zeros"  # the official default
    assert tiny_tokenizer.encode(grey).unique().numel() > 1  # zero padding: the border shows in the codes
    replicate = Tokenizer(dataclasses.replace(tiny_tokenizer.config, padding_mode="replicate"))
    replicate.load_state_dict(tiny_tokenizer.state_dict())  # no new weights: the same checkpoint loads
    assert replicate.encode(grey).unique().numel() == 1
    images = torch.rand(2, 3, 32, 32)
    assert replicate.decode(replicate.encode(images)).shape == images.shape
    replicate.save_pretrained(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).config.padding_mode == "replicate"
    with pytest.raises(ValueError, match="padding_mode must be zeros, replicate or reflect"):
        dataclasses.replace(tiny_tokenizer.config, padding_mode="circular")
