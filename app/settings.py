"""The app's settings: command-line options, each with an environment variable for Spaces and containers.

Exposure decides the safe defaults: a server bound to a non-loopback address, or running on a Hugging Face Space,
is *exposed*; there training is off unless `--enable-training` comes with `--auth`, training-set images are not
shown unless `--show-dataset-images` is given, and hub downloads are off unless `--allow-hub` is given.

Trust: the settings come from the deployer (command line, environment), so they are trusted: the models, index and
folders named here are used as given. What users send is not: a model a user asks to load must be 'default', lie in
the workspace or a `--model-root`, be one of the start-up models, or be a hub id where hub downloads are allowed;
a training job may read only from the workspace and the `--data-root`s (app/validation.py, app/jobs.py).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from maskbit.cli import whole
from maskbit.device import add_precision_argument

__all__ = ["Settings", "parse_settings", "PROJECT_ROOT"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

EXAMPLES = """examples:
  python -m app                                   # the bundled model on http://127.0.0.1:7860
  python -m app --tokenizer markweber/maskbit_tokenizer_12bit --generator markweber/maskbit_generator_12bit \\
      --index indexes/imagenet12                  # the paper's 12-bit pair (hub download) and an index
  python -m app --host 0.0.0.0 --auth alice:secret --enable-training   # on a shared machine

every option can also come from the environment variable in brackets (Spaces: set them as variables)"""


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _env_flag(name: str) -> bool:
    return _env(name).strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """Where the app keeps what it builds (indexes of the bundled dataset): $MASKBIT_CACHE, else
    $XDG_CACHE_HOME/maskbit-explorer, else ~/.cache/maskbit-explorer; never the source tree."""
    if _env("MASKBIT_CACHE"):
        return Path(_env("MASKBIT_CACHE")).expanduser()
    return Path(_env("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "maskbit-explorer"


def _env_paths(name: str) -> list[Path]:
    """Folders listed in an environment variable, separated by os.pathsep (':' on Linux)."""
    return [Path(p) for p in _env(name).split(os.pathsep) if p.strip()]


@dataclass
class Settings:
    tokenizer: str = "default"
    generator: str = "default"
    tokenizer_config: str | None = None
    generator_config: str | None = None
    index: str = ""  # an index directory; empty: the one built for the loaded tokenizer under index_root
    index_root: Path = field(default_factory=lambda: cache_dir() / "indexes")
    index_dataset: str = "procedural"
    index_limit: int = 4000  # the first N images of index_dataset
    random_lpips_backbone: bool = False
    precision: str = "auto"  # maskbit.device: auto = bf16 autocast where bf16 is native, else fp32
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None
    enable_training: bool = False
    show_dataset_images: bool = False
    workspace: Path = PROJECT_ROOT / "runs"
    data_roots: list[Path] = field(default_factory=list)
    model_roots: list[Path] = field(default_factory=list)  # folders users may load models from (besides runs)
    allow_hub: bool = False  # hub ids on an exposed server
    concurrency: int = 2  # computing requests at once, all actions together (app/layout.py: COMPUTE)
    max_queue: int = 64  # requests waiting beyond that; more are refused ("Queue is full")
    max_images: int = 16
    max_upload_mb: float = 10.0
    max_upload_pixels: int = 25_000_000
    max_temp_files: int = 512  # generated PNGs kept for the UI to hand between tabs (oldest deleted first)

    @property
    def on_space(self) -> bool:
        return bool(_env("SPACE_ID"))

    @property
    def exposed(self) -> bool:
        return self.host not in LOOPBACK or self.on_space

    @property
    def training_enabled(self) -> bool:
        return not self.exposed or (self.enable_training and self.auth is not None)

    @property
    def dataset_images_visible(self) -> bool:
        return not self.exposed or self.show_dataset_images

    @property
    def hub_allowed(self) -> bool:
        return not self.exposed or self.allow_hub

    @property
    def trusted_models(self) -> list[str]:
        """The start-up models: chosen by the deployer, so a user may always load them again."""
        return [s for s in (self.tokenizer, self.generator) if s]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app",
        description="MaskBit Explorer: generate, flip bits, find neighbours, see the token space, train.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--tokenizer", default=_env("MASKBIT_TOKENIZER", "default"), help="from_pretrained source [MASKBIT_TOKENIZER]"
    )
    p.add_argument(
        "--generator",
        default=_env("MASKBIT_GENERATOR", "default"),
        help="from_pretrained source, or '' for none [MASKBIT_GENERATOR]",
    )
    p.add_argument(
        "--tokenizer-config",
        default=_env("MASKBIT_TOKENIZER_CONFIG") or None,
        help="preset or YAML for an official .bin",
    )
    p.add_argument(
        "--generator-config",
        default=_env("MASKBIT_GENERATOR_CONFIG") or None,
        help="preset or YAML for an official .bin",
    )
    p.add_argument(
        "--index", default=_env("MASKBIT_INDEX"), help="index directory (python -m indexes build) [MASKBIT_INDEX]"
    )
    p.add_argument(
        "--index-root",
        type=Path,
        default=Path(_env("MASKBIT_INDEX_ROOT", str(cache_dir() / "indexes"))),
        help="where indexes built on start live, one per tokenizer (default: indexes/ in $MASKBIT_CACHE or "
        "~/.cache/maskbit-explorer) [MASKBIT_INDEX_ROOT]",
    )
    p.add_argument(
        "--index-limit",
        "--index-size",  # its old name
        dest="index_limit",
        type=whole(1, 10_000_000),
        default=_env("MASKBIT_INDEX_LIMIT", _env("MASKBIT_INDEX_SIZE", "4000")),  # a string goes through `type` too
        help="index the first N images of the dataset on first start (as `indexes build --limit`) "
        "[MASKBIT_INDEX_LIMIT]",
    )
    p.add_argument(
        "--random-lpips-backbone",
        action="store_true",
        default=_env_flag("MASKBIT_RANDOM_LPIPS"),
        help="offline demos and tests: LPIPS with a random trunk (not the real metric)",
    )
    add_precision_argument(p, "what the models compute at; an index keeps the precision its tokens were computed at")
    p.add_argument("--host", default=_env("MASKBIT_HOST", "127.0.0.1"), help="bind address [MASKBIT_HOST]")
    p.add_argument("--port", type=whole(0, 65_535), default=_env("MASKBIT_PORT", "7860"), help="[MASKBIT_PORT]")
    p.add_argument("--auth", default=_env("MASKBIT_AUTH"), help="user:password required to use the app [MASKBIT_AUTH]")
    p.add_argument(
        "--enable-training",
        action="store_true",
        default=_env_flag("MASKBIT_ENABLE_TRAINING"),
        help="allow training on an exposed server (needs --auth) [MASKBIT_ENABLE_TRAINING]",
    )
    p.add_argument(
        "--show-dataset-images",
        action="store_true",
        default=_env_flag("MASKBIT_SHOW_DATASET_IMAGES"),
        help="show training-set images on an exposed server [MASKBIT_SHOW_DATASET_IMAGES]",
    )
    p.add_argument(
        "--workspace",
        type=Path,
        default=Path(_env("MASKBIT_WORKSPACE", str(PROJECT_ROOT / "runs"))),
        help="training jobs' run directories [MASKBIT_WORKSPACE]",
    )
    p.add_argument(
        "--data-root",
        action="append",
        type=Path,
        default=None,
        help="a folder training jobs may read datasets from (repeatable) [MASKBIT_DATA_ROOTS, ':'-separated]",
    )
    p.add_argument(
        "--model-root",
        action="append",
        type=Path,
        default=None,
        help="a folder users may load models from, besides the workspace's runs (repeatable) "
        "[MASKBIT_MODEL_ROOTS, ':'-separated]",
    )
    p.add_argument(
        "--allow-hub",
        action="store_true",
        default=_env_flag("MASKBIT_ALLOW_HUB"),
        help="let users load hub ids on an exposed server (always allowed on localhost) [MASKBIT_ALLOW_HUB]",
    )
    p.add_argument(
        "--concurrency",
        type=whole(1, 64),
        default=_env("MASKBIT_CONCURRENCY", "2"),
        help="requests computed at once; the rest wait in the queue [MASKBIT_CONCURRENCY]",
    )
    p.add_argument(
        "--max-queue",
        type=whole(1, 10_000),
        default=_env("MASKBIT_MAX_QUEUE", "64"),
        help="requests that may wait in the queue; more are refused with 'Queue is full' [MASKBIT_MAX_QUEUE]",
    )
    return p


def parse_settings(argv: list[str] | None = None) -> Settings:
    parser = build_parser()
    args = parser.parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            parser.error("--auth must look like user:password")
        auth = (user, password)
    # Every option whose name is a Settings field, plus the two that need converting.
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    roots = {
        "data_roots": args.data_root if args.data_root is not None else _env_paths("MASKBIT_DATA_ROOTS"),
        "model_roots": args.model_root if args.model_root is not None else _env_paths("MASKBIT_MODEL_ROOTS"),
    }
    settings = Settings(**given | roots | {"auth": auth})
    if settings.exposed and settings.enable_training and auth is None:
        parser.error("--enable-training on an exposed server needs --auth user:password")
    return settings
