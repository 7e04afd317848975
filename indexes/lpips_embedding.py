"""LPIPS as a Euclidean distance, so that exact LPIPS k-NN is a FAISS L2 search.

LPIPS(x, y) = Σ_l 1/(H_l W_l) Σ_{h,w} Σ_c w_{l,c} (x̂_{l,c,h,w} − ŷ_{l,c,h,w})², with x̂ the channel-normalised
features of layer l and w_l ≥ 0 the learned linear weights (Zhang et al., 2018). Hence LPIPS(x, y) = ‖φ(x) − φ(y)‖²
for φ(x) = concat_l sqrt(w_l / (H_l W_l)) · x̂_l, which this module computes with the `lpips` package's own layers.

φ has D = Σ_l C_l·H_l·W_l dimensions: 31,872 for AlexNet at 64×64, about 640,000 at 256×256, too many to store for
a large dataset. `CountSketch` maps φ to d ≪ D dimensions while keeping squared distances in expectation, so that a
compact index of sketches can shortlist LPIPS neighbours that exact LPIPS then re-ranks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["LPIPSEmbedding", "CountSketch", "MissingBackboneError", "BACKBONE_FILES", "fetch_weights", "is_offline"]

logger = logging.getLogger(__name__)

# torchvision's ImageNet weights that lpips loads for its trunk; the hex part of each name starts their sha256.
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
BACKBONE_MB = {"alex": 233, "vgg": 528, "squeeze": 5}
BACKBONE_URL = "https://download.pytorch.org/models/"
FETCH_COMMAND = "python -m indexes fetch-weights"


class MissingBackboneError(RuntimeError):
    """The LPIPS trunk's ImageNet weights are not on this machine."""


def backbone_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def is_offline() -> bool:
    """The offline switches users already set for model hubs (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE) also stop the
    LPIPS weights download."""
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def missing_message(net: str) -> str:
    return (
        f"LPIPS needs torchvision's {net} ImageNet weights ({BACKBONE_MB[net]} MB, {BACKBONE_FILES[net]}); on a "
        f"machine with internet: `{FETCH_COMMAND}{'' if net == 'alex' else f' --net {net}'}` (or put the file in "
        f"{backbone_path(net).parent}). Hamming and pixel search work without it."
    )


def fetch_weights(net: str = "alex", url: str | None = None, sha256_prefix: str | None = None) -> Path:
    """Download the LPIPS trunk's weights (from `url`, default download.pytorch.org), check that their sha256 starts
    with the hash in the file name (or `sha256_prefix`), and put them where torchvision and lpips look for them."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"LPIPS net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
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
            raise MissingBackboneError(f"could not download {url} ({error}); {missing_message(net)}") from None
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
        import lpips

        if net not in BACKBONE_FILES:
            raise ValueError(f"LPIPS net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
        if not random_backbone and not backbone_path(net).is_file():
            self._download_or_explain(net)
        self.net_name = net
        # lpips still uses torchvision's deprecated `pretrained=` argument; a random trunk (tests, offline) is seeded
        # so that an index built with one can be searched again.
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore", UserWarning)
            torch.manual_seed(0)
            self.lpips = lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False).eval().requires_grad_(False)
        self.random_backbone = random_backbone
        for layer in self.lpips.lins:
            if (layer.model[-1].weight < 0).any():
                raise ValueError("LPIPS linear weights must be non-negative for the Euclidean form")

    @staticmethod
    def _download_or_explain(net: str) -> None:
        """Fetch the trunk's weights once, unless the user has said this machine is offline."""
        if is_offline():
            raise MissingBackboneError(missing_message(net))
        try:
            fetch_weights(net)
        except MissingBackboneError as error:
            logger.warning("%s", error)
            raise MissingBackboneError(missing_message(net)) from None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        import lpips

        x = self.lpips.scaling_layer(images.float() * 2 - 1)
        parts = []
        for features, layer in zip(self.lpips.net.forward(x), self.lpips.lins):
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
