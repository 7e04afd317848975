import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from maskbit import Generator, Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "official-tiny"
OFFICIAL_VQ_TINY = FIXTURES / "official-vq-tiny"
# The official-vq-tiny models: name → the official weights file (Taming's is a Lightning checkpoint).
OFFICIAL_VQ_FILES = {"vqgan_plus": "tiny_vqgan_plus.bin", "maskgit": "tiny_maskgit.bin", "taming": "tiny_taming.ckpt"}


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


# ---------------------------------------------------------------------------------------------------- the app

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_models(tmp_path_factory, tiny_tokenizer, tiny_generator) -> dict[str, str]:
    """The official-tiny pair in the own format (32×32 images, 8×8 tokens of 12 bits, 1000 classes)."""
    root = tmp_path_factory.mktemp("app-models")
    tiny_tokenizer.save_pretrained(root / "tokenizer")
    tiny_generator.save_pretrained(root / "generator")
    return {"tokenizer": str(root / "tokenizer"), "generator": str(root / "generator")}


@pytest.fixture(scope="session")
def app_server(tmp_path_factory, app_models):
    """The explorer served on localhost, its index of 96 procedural images built and calibrated."""
    from app.main import create_app, launch
    from app.settings import Settings

    root = tmp_path_factory.mktemp("app")
    settings = Settings(
        tokenizer=app_models["tokenizer"],
        generator=app_models["generator"],
        index_root=root / "indexes",
        index_limit=96,
        workspace=root / "runs",
        port=free_port(),
        concurrency=4,
        max_temp_files=16,  # small, so that a test can pass the bound (no test has two requests in flight with files)
    )
    state, demo = create_app(settings)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    state.wait_ready(600)
    yield SimpleNamespace(url=f"http://127.0.0.1:{settings.port}/", state=state, settings=settings, demo=demo)
    demo.close()
    if state.jobs is not None:
        for name in state.jobs.names():
            try:
                state.jobs.stop(name)
            except ValueError:
                pass
