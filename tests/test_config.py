import dataclasses

import pytest
import yaml

from maskbit import GeneratorConfig, SamplingConfig, TokenizerConfig, read_official_yaml
from maskbit.config import config_from_dict
from maskbit.presets import SAMPLING_PRESETS, TOKENIZER_PRESETS
from tests.conftest import OFFICIAL_TINY


def official_generator_yaml(token_size: int, codebook_size: int) -> dict:
    """The shape of configs/generator/maskbit_generator_*.yaml, with YAML-1.1 number quirks."""
    return {
        "experiment": {"project": "maskbit_generator"},
        "model": {
            "vq_model": {
                "model_class": "vqgan+",
                "quantizer_type": "lookup-free",
                "codebook_size": codebook_size,
                "token_size": token_size,
                "commitment_cost": 0.25,
                "entropy_loss_weight": 0.02,
                "entropy_loss_temperature": 0.01,
                "entropy_gamma": 1.0,
                "num_channels": 3,
                "hidden_channels": 128,
                "channel_mult": [1, 1, 2, 2, 4],
                "num_resolutions": 5,
                "num_res_blocks": 2,
                "sample_with_conv": True,
            },
            "mlm_model": {
                "model_cls": "lfq_bert",
                "hidden_dim": 1024,
                "depth": 24,
                "heads": 16,
                "mlp_dim": 4096,
                "dropout": 0.1,
                "use_prenorm": False,
                "codebook_splits": 2,
                "class_label_dropout": 0.1,
                "train_mask_schedule_strategy": "arccos",
                "gen_mask_schedule_strategy": "arccos",
                "guidance_scale": 7.1,
                "guidance_annealing": "cosine",
                "num_steps": 64,
                "randomize_temperature": 7.8,
                "softmax_temperature": 1.0,
                "scale_pow": 3.0,
                "use_sampling_annealing": False,
            },
        },
        "optimizer": {"name": "adamw", "params": {"learning_rate": "1e-4", "beta1": 0.9, "beta2": 0.96}},
        "dataset": {"preprocessing": {"resolution": 256}},
    }


def test_stale_codebook_size_cannot_make_a_wrong_generator(tmp_path):
    path = tmp_path / "maskbit_generator_14bit.yaml"
    path.write_text(yaml.safe_dump(official_generator_yaml(token_size=14, codebook_size=4096)))
    official = read_official_yaml(path)
    assert official.tokenizer.num_bits == 14
    assert official.generator.token_size == 14 and official.generator.group_vocab_size == 128
    assert official.generator.mask_token == 128
    assert official.sampling == SAMPLING_PRESETS["maskbit_generator_14bit"]
    assert official.sections["optimizer"]["params"]["learning_rate"] == "1e-4"


def test_official_tiny_yamls_read_as_the_tiny_presets():
    tiny = read_official_yaml(OFFICIAL_TINY / "tiny_generator.yaml")
    assert tiny.tokenizer == TokenizerConfig(
        token_size=12, hidden_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, image_size=32
    )
    assert tiny.generator == GeneratorConfig(token_size=12, grid_size=8, hidden_dim=64, depth=2, heads=4, mlp_dim=256)
    assert tiny.sampling == SamplingConfig(8, 2.0, "cosine", 3.0, 4.5, 1.0, "arccos")
    assert read_official_yaml(OFFICIAL_TINY / "tiny_tokenizer.yaml").generator is None


def test_yaml_numbers_written_as_strings_are_converted():
    config = config_from_dict(TokenizerConfig, {"entropy_loss_temperature": "1e-2", "token_size": "10"})
    assert config.entropy_loss_temperature == 0.01 and config.token_size == 10


def test_bad_config_values_are_explained(tmp_path):
    with pytest.raises(ValueError, match=r"unknown TokenizerConfig keys \['tokens_size'\]; valid keys: \['token_size'"):
        config_from_dict(TokenizerConfig, {"tokens_size": 12})
    with pytest.raises(ValueError, match="TokenizerConfig.token_size: expected int, got 'twelve'"):
        config_from_dict(TokenizerConfig, {"token_size": "twelve"})
    with pytest.raises(ValueError, match="not divisible by codebook_splits"):
        GeneratorConfig(token_size=13)
    with pytest.raises(ValueError, match="mask_schedule must be one of"):
        SamplingConfig(mask_schedule="cubic")
    raw = official_generator_yaml(12, 4096)
    raw["model"]["vq_model"]["num_resolutions"] = 4
    with pytest.raises(ValueError, match="num_resolutions 4 does not match"):
        read_official_yaml(raw)
    raw = official_generator_yaml(12, 4096)
    raw["model"]["vq_model"]["quantizer_type"] = "lookup"
    with pytest.raises(ValueError, match="its tokenizer must be lookup-free"):
        read_official_yaml(raw)
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_official_yaml(tmp_path / "broken.yaml")
    with pytest.raises(ValueError, match="model.vq_model"):
        read_official_yaml({"model": {}})


def test_derived_values_are_read_only_properties():
    config = GeneratorConfig()
    assert (config.bits_per_group, config.mask_token, config.num_positions, config.null_class) == (6, 64, 256, 1000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.token_size = 14


def test_official_vq_yamls_read_as_the_vq_presets():
    """configs/tokenizer/vqgan_plus_12bit.yaml, configs/external/{maskgit_tokenizer,taming_vqgan_tokenizer}.yaml."""
    common = {"commitment_cost": 0.25, "entropy_loss_temperature": 0.01, "entropy_gamma": 1.0, "num_channels": 3}
    conv = {"hidden_channels": 128, "channel_mult": [1, 1, 2, 2, 4], "num_resolutions": 5, "num_res_blocks": 2}
    vqgan_plus = {"model_class": "vqgan+", "quantizer_type": "lookup", "codebook_size": 4096, "token_size": 64}
    vqgan_plus |= {"entropy_loss_weight": 0.0, "sample_with_conv": True, **common, **conv}
    maskgit = {"model_class": "maskgit", "quantizer_type": "lookup", "codebook_size": 1024, "token_size": 256}
    maskgit |= {"entropy_loss_weight": 0.02, "sample_with_conv": False, **common, **conv}
    taming = {"model_class": "taming", "quantizer_type": "lookup", "codebook_size": 1024, "token_size": 256}
    dataset = {"preprocessing": {"resolution": 256}}
    for name, vq in (("vqgan_plus_12bit", vqgan_plus), ("maskgit_tokenizer", maskgit), ("taming_vqgan", taming)):
        config = read_official_yaml({"model": {"vq_model": vq}, "dataset": dataset}).tokenizer
        assert config == TOKENIZER_PRESETS[name], name
    assert TOKENIZER_PRESETS["vqgan_plus_12bit"].num_bits == 12 and TOKENIZER_PRESETS["taming_vqgan"].num_bits == 10
    with pytest.raises(ValueError, match="needs codebook_size"):
        read_official_yaml({"model": {"vq_model": {"quantizer_type": "lookup", "token_size": 64}}})
