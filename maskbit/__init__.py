"""MaskBit: embedding-free image generation via bit tokens (Weber et al., TMLR 2024), checkpoint-compatible.

image → Tokenizer.encode → indices (B, h, w) → bits → Generator + sampler → indices → Tokenizer.decode → image
"""

from maskbit import analysis, bits
from maskbit.checkpoint import CheckpointError
from maskbit.config import (
    GENERATOR_PRESETS,
    SAMPLING_PRESETS,
    TOKENIZER_PRESETS,
    GeneratorConfig,
    SamplingConfig,
    TokenizerConfig,
    read_official_yaml,
)
from maskbit.generator import Generator
from maskbit.sampling import SamplingState, generate, iter_generate, prediction_to_indices
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
    "prediction_to_indices",
    "SamplingState",
]
