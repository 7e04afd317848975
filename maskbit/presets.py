"""Named presets: every official config (spec §1.9, §2.6), the model zoo's VQ and bit-token family tokenizers, the
bundled default model, and small ones for tests; and the published files of the hub's tokenizers.

DiT's registry style: plain dicts of name → config (`python -m maskbit --sampling` offers SAMPLING_PRESETS).
"""

from __future__ import annotations

from maskbit.config import GeneratorConfig, SamplingConfig, TokenizerConfig

__all__ = [
    "TOKENIZER_PRESETS",
    "GENERATOR_PRESETS",
    "SAMPLING_PRESETS",
    "SAMPLING_PRESET_NOTES",
    "OFFICIAL_BITS",
    "OFFICIAL_VQ_HUB_FILES",
    "FAMILY_HUB_FILES",
    "IBQ_CODEBOOK_SIZES",
]


OFFICIAL_BITS = (10, 12, 14, 16, 18)

TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    f"maskbit_tokenizer_{k}bit": TokenizerConfig(token_size=k) for k in OFFICIAL_BITS
}
# The official-tiny conformance fixture: 32×32 images → 8×8 tokens of 12 bits.
TOKENIZER_PRESETS["tiny"] = TokenizerConfig(
    token_size=12, hidden_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, image_size=32
)
# The vector-quantised tokenizers of the official model zoo (spec §1.10): VQGAN+ (configs/tokenizer/vqgan_plus_*.yaml,
# no entropy term), the MaskGIT tokenizer (configs/external/maskgit_tokenizer.yaml) and the Taming VQGAN, whose
# architecture the official OriginalVQModel hard-codes.
TOKENIZER_PRESETS["vqgan_plus_10bit"] = TokenizerConfig(
    quantizer="vq", codebook_size=1024, token_size=256, entropy_loss_weight=0.0
)
TOKENIZER_PRESETS["vqgan_plus_12bit"] = TokenizerConfig(
    quantizer="vq", codebook_size=4096, token_size=64, entropy_loss_weight=0.0
)
TOKENIZER_PRESETS["maskgit_tokenizer"] = TokenizerConfig(
    model_class="maskgit", quantizer="vq", codebook_size=1024, token_size=256, sample_with_conv=False
)
TOKENIZER_PRESETS["taming_vqgan"] = TokenizerConfig(
    model_class="taming",
    quantizer="vq",
    codebook_size=1024,
    token_size=256,
    entropy_loss_weight=0.0,
    attn_resolutions=(16,),
    z_channels=256,
)
# The official-vq-tiny conformance fixtures: 32×32 images → 8×8 tokens.
_TINY_VQ = dict(quantizer="vq", hidden_channels=32, channel_mult=(1, 1, 2), num_res_blocks=1, image_size=32)
TOKENIZER_PRESETS["tiny_vqgan_plus"] = TokenizerConfig(
    codebook_size=4096, token_size=16, entropy_loss_weight=0.0, **_TINY_VQ
)
TOKENIZER_PRESETS["tiny_maskgit"] = TokenizerConfig(
    model_class="maskgit", codebook_size=1024, token_size=32, sample_with_conv=False, **_TINY_VQ
)
TOKENIZER_PRESETS["tiny_taming"] = TokenizerConfig(
    model_class="taming",
    codebook_size=1024,
    token_size=32,
    entropy_loss_weight=0.0,
    attn_resolutions=(8,),
    z_channels=32,
    **_TINY_VQ,
)
# The published files of the VQ tokenizers: hub repo name → (preset, file name). The file names are those the
# official configs give as `vqgan_checkpoint` (the MaskBit repos hold `<repo name>.bin`, spec §4.1).
OFFICIAL_VQ_HUB_FILES: dict[str, tuple[str, str]] = {
    "vqgan_plus_paper": ("vqgan_plus_10bit", "vqgan_plus_10bit.bin"),
    "vqgan_plus_12bit": ("vqgan_plus_12bit", "vqgan_plus_12bit.bin"),
    "maskgit_tokenizer": ("maskgit_tokenizer", "maskgit_tokenizer.bin"),
    "taming_vqgan": ("taming_vqgan", "taming_vqgan.ckpt"),
}

# The bit-token family: Open-MAGVIT2 (TencentARC/Open-MAGVIT2, configs/Open-MAGVIT2/gpu/imagenet_lfqgan_{256,128}_L
# .yaml), IBQ (configs/IBQ/gpu/imagenet_ibqgan_{N}.yaml, identical but for n_embed) and BitDance's ImageNet autoencoder
# (shallowdream204/BitDance imagenet_gen/src/model.py, which hard-codes it). Their training losses are not
# reproduced here (the entropy terms differ in detail, BitDance's is per 8-bit group): presets are for inference.
_OPEN_MAGVIT2 = dict(model_class="magvit2", token_size=18, hidden_channels=128, num_res_blocks=4)
TOKENIZER_PRESETS["open_magvit2_256_L"] = TokenizerConfig(channel_mult=(1, 1, 2, 2, 4), image_size=256, **_OPEN_MAGVIT2)
TOKENIZER_PRESETS["open_magvit2_128_L"] = TokenizerConfig(channel_mult=(1, 2, 2, 4), image_size=128, **_OPEN_MAGVIT2)
_IBQ = dict(
    model_class="taming",
    quantizer="vq",
    code_assignment="dot_product",
    token_size=256,
    z_channels=256,
    num_res_blocks=4,
    attn_resolutions=(16,),
    entropy_loss_weight=0.05,
)
IBQ_CODEBOOK_SIZES = (1024, 8192, 16384, 262144)
TOKENIZER_PRESETS |= {f"ibq_{n}": TokenizerConfig(codebook_size=n, **_IBQ) for n in IBQ_CODEBOOK_SIZES}
TOKENIZER_PRESETS["bitdance_ae_d16c32"] = TokenizerConfig(
    model_class="magvit2", token_size=32, hidden_channels=256, num_res_blocks=4, entropy_loss_weight=0.0
)
# The open-magvit2-tiny conformance fixtures: 16×16 images → 8×8 tokens.
TOKENIZER_PRESETS["tiny_open_magvit2"] = TokenizerConfig(
    model_class="magvit2", token_size=10, hidden_channels=32, channel_mult=(2, 1), num_res_blocks=1, image_size=16
)
TOKENIZER_PRESETS["tiny_ibq"] = TokenizerConfig(
    **{**_IBQ, "token_size": 8, "z_channels": 16, "num_res_blocks": 1, "attn_resolutions": (8,)},
    codebook_size=1024,
    hidden_channels=32,
    channel_mult=(1, 1),
    image_size=16,
)
TOKENIZER_PRESETS["tiny_bitdance"] = TokenizerConfig(
    model_class="magvit2",
    token_size=32,
    hidden_channels=32,
    channel_mult=(2, 1),
    num_res_blocks=1,
    entropy_loss_weight=0.0,
)
# Their published files, as OFFICIAL_VQ_HUB_FILES: hub repo name → (preset, file name), the repos and names of the
# official READMEs (docs/Open-MAGVIT2.md, docs/IBQ.md, imagenet_gen/README.md). Not downloaded by any test here.
FAMILY_HUB_FILES: dict[str, tuple[str, str]] = {
    "Open-MAGVIT2-Tokenizer-256-resolution": ("open_magvit2_256_L", "imagenet_256_L.ckpt"),
    "Open-MAGVIT2-Tokenizer-128-resolution": ("open_magvit2_128_L", "imagenet_128_L.ckpt"),
    **{f"IBQ-Tokenizer-{n}": (f"ibq_{n}", f"imagenet256_{n}.ckpt") for n in IBQ_CODEBOOK_SIZES},
    "BitDance-ImageNet": ("bitdance_ae_d16c32", "ae_d16c32.pt"),
}

GENERATOR_PRESETS: dict[str, GeneratorConfig] = {
    f"maskbit_generator_{k}bit": GeneratorConfig(token_size=k) for k in OFFICIAL_BITS
}
# The 128- and 256-step 14-bit configs share the 14-bit checkpoint; only their sampling differs.
GENERATOR_PRESETS["maskbit_generator_14bit_128steps"] = GENERATOR_PRESETS["maskbit_generator_14bit"]
GENERATOR_PRESETS["maskbit_generator_14bit_256steps"] = GENERATOR_PRESETS["maskbit_generator_14bit"]
# The bundled default model (trained by `python -m train generator --preset default`), 10 procedural classes.
# No dropout: on a CPU, attention dropout sends scaled_dot_product_attention down its slow path (a Bernoulli draw per
# attention weight): 2.9 s per batch-32 step with 0.1, 1.9 s without (bench/README.md); and a model this small on an
# unlimited dataset underfits rather than overfits. (The bundled generator was trained with 0.1.)
GENERATOR_PRESETS["default"] = GeneratorConfig(
    token_size=12,
    codebook_splits=2,
    grid_size=16,
    hidden_dim=192,
    depth=4,
    heads=6,
    mlp_dim=768,
    num_classes=10,
    dropout=0.0,
)
GENERATOR_PRESETS["tiny"] = GeneratorConfig(
    token_size=12, codebook_splits=2, grid_size=8, hidden_dim=64, depth=2, heads=4, mlp_dim=256
)

SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    "maskbit_generator_10bit": SamplingConfig(64, 6.4, "cosine", 2.5, 10.5),
    "maskbit_generator_12bit": SamplingConfig(64, 7.1, "cosine", 3.0, 8.2),
    "maskbit_generator_14bit": SamplingConfig(64, 7.1, "cosine", 3.0, 7.8),
    "maskbit_generator_14bit_128steps": SamplingConfig(128, 7.1, "cosine", 3.0, 9.0),
    "maskbit_generator_14bit_256steps": SamplingConfig(256, 5.8, "cosine", 3.0, 10.3),
    "maskbit_generator_16bit": SamplingConfig(64, 6.5, "cosine", 2.5, 7.5),
    "maskbit_generator_18bit": SamplingConfig(64, 5.7, "cosine", 2.5, 8.5),
    # demo_utils.sample: constant guidance, scale_pow unused. The notebook's scale and temperature were not
    # published; these are the official sample() defaults for them.
    "demo": SamplingConfig(64, 3.0, "none", 1.0, 4.5),
    "tiny": SamplingConfig(8, 2.0, "cosine", 3.0, 4.5),
    # The bundled default model: 16×16 tokens × 2 groups of 6 bits = 512 entries to unmask. Constant guidance: with
    # cosine annealing the first steps, which lay out the shape, are unguided (class accuracy 14 % against 24 %,
    # earlier judge; model card).
    "default": SamplingConfig(16, 4.0, "none", 1.0, 2.0),
}


# What each sampling preset was tuned for: the paper's presets suit their own ImageNet checkpoints, not other models.
SAMPLING_PRESET_NOTES: dict[str, str] = {
    **{
        name: f"the paper's preset for markweber/{name.removesuffix('_128steps').removesuffix('_256steps')} "
        "(ImageNet 256); on other models it can make images worse"
        for name in SAMPLING_PRESETS
        if name.startswith("maskbit_generator_")
    },
    "demo": "the official demo's constant guidance (ImageNet checkpoints)",
    "tiny": "for the tiny test models (8 steps)",
    "default": "tuned for the bundled default model (16 steps: about 55 % of its images show their class)",
}
