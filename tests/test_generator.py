"""The generator against the official-tiny fixtures (outputs of the official code)."""

import pytest
import torch

from maskbit import Generator
from tests.conftest import OFFICIAL_TINY


def test_network_input_bits_match_official(tiny_generator, generator_io):
    assert torch.equal(tiny_generator.token_bits(generator_io["tokens"]), generator_io["bits_in"])


@pytest.mark.parametrize(
    ("drop", "key"), [([False, False], "logits_cond"), ([True, True], "logits_uncond"), ([False, True], "logits_mixed")]
)
def test_logits_match_official(tiny_generator, generator_io, drop, key):
    logits = tiny_generator(generator_io["tokens"], generator_io["labels"], torch.tensor(drop))
    assert logits.shape == (2, 64, 2, 64)
    assert (logits - generator_io[key]).abs().max() <= 2e-3


def test_published_key_names_load(generator_io):
    model = Generator.from_pretrained(
        OFFICIAL_TINY / "tiny_generator_hubkeys.bin", config=OFFICIAL_TINY / "tiny_generator.yaml"
    )
    logits = model(generator_io["tokens"], generator_io["labels"], torch.tensor([False, False]))
    assert (logits - generator_io["logits_cond"]).abs().max() <= 2e-3


def test_forward_never_modifies_its_arguments(tiny_generator, generator_io):
    tokens, labels = generator_io["tokens"].clone(), generator_io["labels"].clone()
    drop = torch.tensor([True, False])
    tiny_generator(tokens, labels, drop)
    assert torch.equal(tokens, generator_io["tokens"]) and torch.equal(labels, generator_io["labels"])
    assert drop.tolist() == [True, False]


def test_drop_labels_is_required(tiny_generator, generator_io):
    with pytest.raises(TypeError):
        tiny_generator(generator_io["tokens"], generator_io["labels"])


def test_generator_rejects_bad_inputs(tiny_generator, generator_io):
    tokens, labels, keep = generator_io["tokens"], generator_io["labels"], torch.zeros(2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(B, 64, 2\)"):
        tiny_generator(tokens[:, :10], labels, keep)
    with pytest.raises(ValueError, match=r"\[0, 64\]"):
        tiny_generator(torch.full_like(tokens, 65), labels, keep)
    with pytest.raises(ValueError, match="class ids"):
        tiny_generator(tokens, torch.tensor([0, 1001]), keep)
    with pytest.raises(TypeError, match="bool"):
        tiny_generator(tokens, labels, torch.zeros(2))
    with pytest.raises(TypeError, match="int64"):
        tiny_generator(tokens.int(), labels, keep)
