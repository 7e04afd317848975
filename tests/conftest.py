from pathlib import Path

import pytest
import torch

from maskbit import Generator, Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official-tiny"


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained(OFFICIAL_TINY / "tiny_tokenizer.bin", config=OFFICIAL_TINY / "tiny_tokenizer.yaml")


@pytest.fixture(scope="session")
def tiny_generator() -> Generator:
    return Generator.from_pretrained(OFFICIAL_TINY / "tiny_generator.bin", config=OFFICIAL_TINY / "tiny_generator.yaml")


@pytest.fixture(scope="session")
def tokenizer_io() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL_TINY / "tiny_tokenizer_io.pt", weights_only=True)


@pytest.fixture(scope="session")
def generator_io() -> dict[str, torch.Tensor]:
    return torch.load(OFFICIAL_TINY / "tiny_generator_io.pt", weights_only=True)
