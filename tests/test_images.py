"""maskbit/images.py: the one reader of image files and the one resize, and that every entry point uses them."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskbit.images import ImageTooLarge, fit_square, load_image, read_image

ROOT = Path(__file__).parents[1]
ORIENTATION = 0x0112  # the EXIF tag; 6: the stored pixels are shown turned 90° clockwise


def awkward_png(path: Path, size: int = 32, seed: int = 0) -> np.ndarray:
    """An RGBA PNG with soft transparent edges and an EXIF rotation (issue 28.1's file); returns what it shows:
    (size, size, 3) float in [0, 1], composited on white and turned, computed here without Pillow's help."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    y, x = np.mgrid[:size, :size]
    alpha = np.clip(255 * (1.2 - np.hypot(y - size / 2, x - size / 2) / (size / 2)), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path, exif=exif)
    a = alpha[..., None] / 255
    shown = (rgb * a + 255 * (1 - a)) / 255
    return np.rot90(shown, k=-1)  # orientation 6: turn clockwise


def test_the_reader_applies_exif_and_composites_transparency_on_white(tmp_path):
    expected = awkward_png(tmp_path / "odd.png")
    out = load_image(tmp_path / "odd.png")
    assert out.shape == (3, 32, 32)
    assert np.abs(out.permute(1, 2, 0).numpy() - expected).max() <= 1 / 255


@pytest.mark.parametrize(
    "mode, stored, shown",
    [
        ("I;16", 65_535, 255),  # 16-bit white is white, not stretched
        ("I;16", 32_768, 128),
        ("I", 70_000, 255),  # 32-bit integers read as 16-bit, clipped
        ("L", 77, 77),
        ("1", 1, 255),
        ("F", 0.5, 128),  # floats in [0, 1]
    ],
)
def test_high_bit_depth_and_grey_images_keep_their_levels(tmp_path, mode, stored, shown):
    path = tmp_path / ("x.tiff" if mode in ("F", "I") else "x.png")
    Image.new(mode, (6, 4), stored).save(path)
    out = load_image(path)
    assert out.shape == (3, 4, 6) and torch.all(out == shown / 255)


def test_palette_transparency_and_animations(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=1)
    assert torch.all(load_image(tmp_path / "p.png") == 1)  # the transparent index shows white
    frames = [Image.new("RGB", (4, 4), (200, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 200))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "a.gif")[0].mean() > 0.7  # the first frame


def test_the_reader_refuses_what_it_cannot_read_and_checks_the_size_before_decoding(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="cannot read .*bad.png as an image"):
        read_image(tmp_path / "bad.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    truncated = (tmp_path / "big.png").read_bytes()[:-40]
    with pytest.raises(ValueError, match="cannot read"):
        read_image(truncated)
    with pytest.raises(ImageTooLarge, match="the image is 64×64 pixels; the limit is 0 megapixels") as error:
        read_image(tmp_path / "big.png", max_pixels=4000)
    assert (error.value.width, error.value.height) == (64, 64)


def test_fit_square_is_torchvisions_resize_and_centre_crop():
    from torchvision.transforms import CenterCrop, InterpolationMode, PILToTensor, Resize

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (75, 50, 3), dtype=np.uint8))
    reference = CenterCrop(32)(Resize(32, InterpolationMode.BILINEAR)(image))
    assert torch.equal(fit_square(image, 32), PILToTensor()(reference).float() / 255)


def test_one_file_is_one_tensor_through_every_entry_point(tmp_path):
    """CLI, image folder, tar shard, the evaluation preprocessing and the app's upload reader (issue 28.1)."""
    from app.validation import load_upload
    from data import EvalView
    from data.datasets import ImageFolder, TarShards

    awkward_png(tmp_path / "odd.png", size=48)
    folder = tmp_path / "folder" / "only"
    folder.mkdir(parents=True)
    (folder / "odd.png").write_bytes((tmp_path / "odd.png").read_bytes())
    with tarfile.open(tmp_path / "s-0.tar", "w") as tar:
        data = (tmp_path / "odd.png").read_bytes()
        for name, payload in (("0.png", data), ("0.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    cli = load_image(tmp_path / "odd.png", 32)
    entries = {
        "image folder": EvalView(ImageFolder(tmp_path / "folder"), 32)[0][0],
        "tar shard": EvalView(TarShards(str(tmp_path / "s-0.tar")), 32)[0][0],
        "app upload": load_upload(str(tmp_path / "odd.png"), 32, 10**7, 10**7),
    }
    for name, tensor in entries.items():
        assert torch.equal(tensor, cli), name


def test_an_indexed_file_is_found_at_distance_zero_by_the_cli_and_by_the_app(tmp_path, app_models):
    """Issue 28.1: indexed from an image folder, the same file was 1,285 bits from itself in the app."""
    from app.callbacks import Callbacks
    from app.settings import Settings
    from app.state import AppState

    folder = tmp_path / "folder" / "things"
    folder.mkdir(parents=True)
    for seed in range(6):
        awkward_png(folder / f"{seed}.png", size=40, seed=seed)
    query = folder / "3.png"
    tokenizer = ["--tokenizer", app_models["tokenizer"]]
    index = tmp_path / "index"

    def indexes(*args):
        result = subprocess.run([sys.executable, "-m", "indexes", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]

    indexes(
        "build",
        "--dataset",
        str(tmp_path / "folder"),
        "--resolution",
        "32",
        *tokenizer,
        "--metrics",
        "hamming",
        "pixel",
        "--index",
        str(index),
    )
    indexes("search", str(query), "--index", str(index), *tokenizer, "--k", "1", "--json", str(tmp_path / "r.json"))
    found = json.loads((tmp_path / "r.json").read_text())[0]
    assert found["hamming"][0]["distance"] == 0 and found["pixel"][0]["distance"] == 0

    settings = Settings(tokenizer=app_models["tokenizer"], generator="", index=str(index))
    state = AppState(settings)
    state.start_background()  # opens the index
    state.wait_ready(300)
    *_, result = Callbacks(state).search.neighbours(str(query), 1)
    assert result["hamming"][0]["distance"] == 0 and result["pixel"][0]["distance"] == 0
    assert result["hamming"][0]["source"].endswith("folder:train:3")  # the sorted folder's 4th file
