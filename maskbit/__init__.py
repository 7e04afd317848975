"""MaskBit: embedding-free image generation via bit tokens (Weber et al., TMLR 2024), checkpoint-compatible.

image → Tokenizer.encode → indices (B, h, w) → bits → Generator + sampler → indices → Tokenizer.decode → image

`Tokenizer` also loads the vector-quantised tokenizers of the official model zoo (VQGAN+, MaskGIT, Taming); they
encode and decode, but only lookup-free (bit) tokenizers pair with a generator (`check_pair`).
"""

from maskbit import analysis, bits
from maskbit.checkpoint import CheckpointError
from maskbit.config import GeneratorConfig, SamplingConfig, TokenizerConfig
from maskbit.generator import Generator
from maskbit.official import read_official_yaml
from maskbit.presets import GENERATOR_PRESETS, SAMPLING_PRESETS, TOKENIZER_PRESETS
from maskbit.sampling import SamplingState, check_pair, generate, iter_generate, prediction_to_indices
from maskbit.tokenizer import Tokenizer

__all__ = [
    "analysis",
    "bits",
    "CheckpointError",
    "Tokenizer",
    "Generator",
    "TokenizerConfig",
    "GeneratorConfig",
    "SamplingConfig",
    "TOKENIZER_PRESETS",
    "GENERATOR_PRESETS",
    "SAMPLING_PRESETS",
    "read_official_yaml",
    "generate",
    "iter_generate",
    "check_pair",
    "prediction_to_indices",
    "SamplingState",
]
