import csv
import io
import logging
import tarfile

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from data.datasets import (
    PROCEDURAL_CLASSES,
    SHAPE_OFFSET,
    SHAPE_RADIUS,
    ImageFolder,
    Preprocessing,
    ProceduralShapes,
    TarShards,
    build_dataset,
    export_dataset,
    random_resized_crop_params,
    write_tar_shards,
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255


@pytest.fixture(scope="module")
def shapes() -> ProceduralShapes:
    return ProceduralShapes("train", seed=0)


@pytest.fixture(scope="module")
def samples(shapes):
    return [shapes.render(i) for i in range(60)]  # 6 per class


def save_png(path, seed: int, size=(12, 10)) -> Image.Image:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


# ---------------------------------------------------------------------------------------------------------------------
# Procedural shapes
# ---------------------------------------------------------------------------------------------------------------------


def test_procedural_is_a_pure_function_of_seed_split_index(shapes):
    again = ProceduralShapes("train", seed=0)
    for index in (0, 7, 123_456):
        assert np.array_equal(pixels(shapes[index][0]), pixels(again[index][0]))
    assert np.array_equal(pixels(shapes[-1][0]), pixels(shapes[len(shapes) - 1][0]))
    first = pixels(shapes[3][0])
    assert not np.array_equal(first, pixels(ProceduralShapes("train", seed=1)[3][0]))
    assert not np.array_equal(first, pixels(shapes[13][0]))  # same class, another sample
    assert not np.array_equal(first, pixels(ProceduralShapes("test", seed=0)[3][0]))


def test_procedural_splits_sizes_and_balanced_labels():
    train, test = ProceduralShapes("train"), ProceduralShapes("test")
    assert len(train) == 1_000_000 and len(test) == 2_000 and len(ProceduralShapes("test", size=30)) == 30
    assert train.classes == test.classes == list(PROCEDURAL_CLASSES) and len(set(PROCEDURAL_CLASSES)) == 10
    labels = [test[i][1] for i in range(100)]
    assert labels == [i % 10 for i in range(100)]
    assert np.bincount([i % 10 for i in range(len(test))]).tolist() == [200] * 10
    with pytest.raises(ValueError, match="train.*test"):
        ProceduralShapes("val")
    with pytest.raises(IndexError):
        test[2_000]


@pytest.mark.parametrize("resolution", [64, 32])
def test_procedural_images_are_rgb_at_the_resolution(resolution):
    image, label = ProceduralShapes("test", resolution=resolution)[5]
    assert image.mode == "RGB" and image.size == (resolution, resolution) and label == 5


def test_every_class_has_a_nontrivial_antialiased_shape_inside_the_image(samples):
    for sample in samples:
        alpha = sample.alpha
        name = PROCEDURAL_CLASSES[sample.label]
        assert 0.03 < alpha.mean() < 0.6, name
        assert alpha.min() == 0 and alpha.max() == 1, name
        assert ((alpha > 0) & (alpha < 1)).any(), name  # soft edges
        border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
        assert border.max() < 0.5, name
        composite = sample.background * (1 - alpha[..., None]) + sample.foreground * alpha[..., None]
        np.testing.assert_allclose(sample.image, composite, atol=1e-6)
        assert sample.image.min() >= 0 and sample.image.max() <= 1


def test_shapes_are_large_and_near_the_middle_yet_vary():
    # Circles show both exactly: their area gives the radius, their centroid the centre.
    shapes = ProceduralShapes("test")
    assert PROCEDURAL_CLASSES[0] == "circle"
    radii, offsets = [], []
    for index in range(0, 400, 10):  # 40 circles
        alpha = shapes.render(index).alpha
        ys, xs = np.indices(alpha.shape) + 0.5
        radii.append(np.sqrt(alpha.sum() / np.pi) / shapes.resolution)
        offsets.append([(alpha * xs).sum(), (alpha * ys).sum()] / alpha.sum() / shapes.resolution - 0.5)
    radii, offsets = np.array(radii), np.array(offsets)
    assert SHAPE_RADIUS[0] - 0.01 < radii.min() and radii.max() < SHAPE_RADIUS[1] + 0.01
    assert np.abs(offsets).max() < SHAPE_OFFSET + 0.01
    assert radii.std() > 0.02 and offsets.std(0).min() > 0.02  # sizes and positions still vary


def test_shape_and_background_colours_contrast(samples, shapes):
    for sample in samples:
        weights = sample.alpha[..., None] / sample.alpha.sum()
        global_distance = np.linalg.norm(sample.foreground.mean((0, 1)) - sample.background.mean((0, 1)))
        local_distance = np.linalg.norm(((sample.foreground - sample.background) * weights).sum((0, 1)))
        assert min(global_distance, local_distance) >= 0.35
    # The PIL image is the rendered float image, rounded.
    assert np.abs(pixels(shapes[0][0]) - samples[0].image).max() <= 0.5 / 255 + 1e-6


def test_images_are_smooth(samples):
    # No textures: neighbouring pixels differ little except along the shape's outline.
    for sample in samples:
        step = np.abs(np.diff(sample.image, axis=0)).mean() + np.abs(np.diff(sample.image, axis=1)).mean()
        assert step < 0.06


def _shape_features(alpha: np.ndarray) -> np.ndarray:
    """Translation-, scale- and rotation-invariant: radial mass histogram and angular harmonic magnitudes."""
    h, w = alpha.shape
    y, x = np.mgrid[:h, :w] + 0.5
    mass = alpha.sum()
    cx, cy = (alpha * x).sum() / mass, (alpha * y).sum() / mass
    dx, dy = (x - cx) / np.sqrt(mass), (y - cy) / np.sqrt(mass)
    r, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    radial = np.histogram(r, bins=12, range=(0, 1.2), weights=alpha)[0] / mass
    outer = alpha * (r > 0.35)
    harmonics = [abs((outer * np.exp(1j * k * theta)).sum()) / outer.sum() for k in range(1, 7)]
    return np.concatenate([radial, harmonics])


def test_classes_are_distinguishable_by_a_nearest_centroid_classifier(samples):
    test = ProceduralShapes("test", seed=0)
    x_train = np.stack([_shape_features(s.alpha) for s in samples])
    y_train = np.array([s.label for s in samples])
    x_test = np.stack([_shape_features(test.render(i).alpha) for i in range(100)])
    y_test = np.arange(100) % 10
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    centroids = np.stack([((x_train - mean) / std)[y_train == c].mean(0) for c in range(10)])
    predictions = (((x_test - mean) / std)[:, None] - centroids).__pow__(2).sum(-1).argmin(1)
    accuracy = (predictions == y_test).mean()
    assert accuracy >= 0.9, accuracy  # chance is 0.1
    assert all((predictions[y_test == c] == c).mean() >= 0.6 for c in range(10))


# ---------------------------------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------------------------------


def test_image_folder_skips_non_images_and_survives_corrupt_files(tmp_path, caplog):
    cat = [save_png(tmp_path / "cat" / f"{i}.png", seed=i) for i in range(2)]
    dog = save_png(tmp_path / "dog" / "nested" / "a.png", seed=5)
    (tmp_path / "dog" / "b.png").write_bytes(b"not a png at all")
    (tmp_path / "cat" / "notes.txt").write_text("hello")
    (tmp_path / "labels.csv").write_text("files at the root are not classes")
    with caplog.at_level(logging.WARNING, logger="data.datasets"):
        folder = ImageFolder(tmp_path)
    assert folder.classes == ["cat", "dog"] and len(folder) == 4 and folder.skipped == 1
    assert "skipped 1" in caplog.text
    assert [label for _, label in folder.samples] == [0, 0, 1, 1]
    assert np.array_equal(pixels(folder[0][0]), pixels(cat[0]))
    # samples: cat/0, cat/1, dog/b.png (corrupt), dog/nested/a.png → index 2 falls through to index 3.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data.datasets"):
        for _ in range(2):
            image, label = folder[2]
            assert label == 1 and np.array_equal(pixels(image), pixels(dog))
    assert folder.corrupt == {tmp_path / "dog" / "b.png"}
    assert sum("b.png" in record.getMessage() for record in caplog.records) == 1  # warned once per file


def test_image_folder_wraps_around_and_fails_clearly_when_nothing_is_readable(tmp_path):
    first = save_png(tmp_path / "a" / "0.png", seed=0)
    (tmp_path / "b" / "bad.png").parent.mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    folder = ImageFolder(tmp_path)
    image, label = folder[1]  # the last sample is corrupt → wraps to index 0
    assert label == 0 and np.array_equal(pixels(image), pixels(first))
    (tmp_path / "a" / "0.png").write_bytes(b"broken too")
    with pytest.raises(RuntimeError, match="none of the 2 image files"):
        ImageFolder(tmp_path)[0]


def test_image_folder_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="<class_name>"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "readme.md").write_text("no images")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Tar shards
# ---------------------------------------------------------------------------------------------------------------------


def test_tar_shards_round_trip(tmp_path):
    source = ProceduralShapes("test", size=25)
    originals = [source[i] for i in range(len(source))]
    shards = write_tar_shards(originals, tmp_path / "shards", prefix="demo", max_per_shard=10)
    assert [p.name for p in shards] == ["demo-0000.tar", "demo-0001.tar", "demo-0002.tar"]
    assert not list((tmp_path / "shards").glob("*.tmp"))
    with tarfile.open(shards[1]) as tar:
        assert tar.getnames()[:2] == ["0000010.jpg", "0000010.cls"]
        assert tar.extractfile("0000010.cls").read() == b"0"
    for spec in (tmp_path / "shards", str(tmp_path / "shards" / "demo-*.tar"), shards):
        dataset = TarShards(spec)
        assert len(dataset) == 25 and dataset.classes == [str(i) for i in range(10)]
    dataset = TarShards(str(tmp_path / "shards" / "demo-{0000..0001}.tar"))
    assert len(dataset) == 20
    for i in (0, 9, 10, 19):
        image, label = dataset[i]
        assert label == originals[i][1] and image.mode == "RGB" and image.size == (64, 64)
        assert np.abs(pixels(image) - pixels(originals[i][0])).mean() < 0.02  # JPEG quality 95


def test_tar_shards_accept_png_members_and_skip_incomplete_samples(tmp_path):
    image = Image.new("RGB", (8, 6), (10, 200, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        for name, data in [("n01/a.png", buffer.getvalue()), ("n01/a.cls", b"3\n"), ("n01/b.png", buffer.getvalue())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dataset = TarShards(tmp_path / "x.tar")
    assert len(dataset) == 1 and dataset.classes == ["0", "1", "2", "3"]
    decoded, label = dataset[0]
    assert label == 3 and np.array_equal(pixels(decoded), pixels(image))
    with pytest.raises(FileNotFoundError):
        TarShards(tmp_path / "nothing-*.tar")


# ---------------------------------------------------------------------------------------------------------------------
# build_dataset
# ---------------------------------------------------------------------------------------------------------------------


def test_build_dataset_dispatch(tmp_path):
    procedural = build_dataset("procedural", split="test", seed=3, resolution=32)
    assert isinstance(procedural, ProceduralShapes) and len(procedural) == 2_000
    assert procedural.seed == 3 and procedural[0][0].size == (32, 32)

    pairs = [ProceduralShapes("test", size=4)[i] for i in range(4)]
    shards = write_tar_shards(pairs, tmp_path / "tars")
    assert isinstance(build_dataset(str(tmp_path / "tars")), TarShards)
    assert isinstance(build_dataset(str(shards[0])), TarShards)
    assert isinstance(build_dataset(str(tmp_path / "tars" / "*.tar")), TarShards)

    save_png(tmp_path / "folder" / "cat" / "0.png", seed=0)
    assert isinstance(build_dataset(str(tmp_path / "folder")), ImageFolder)

    # <spec>/<split> wins when it exists.
    save_png(tmp_path / "splits" / "train" / "cat" / "0.png", seed=0)
    save_png(tmp_path / "splits" / "test" / "dog" / "0.png", seed=1)
    save_png(tmp_path / "splits" / "test" / "emu" / "0.png", seed=2)
    assert build_dataset(str(tmp_path / "splits"), split="train").classes == ["cat"]
    assert build_dataset(str(tmp_path / "splits"), split="test").classes == ["dog", "emu"]
    write_tar_shards(pairs[:2], tmp_path / "tar_splits" / "test")
    tar_test = build_dataset(str(tmp_path / "tar_splits"), split="test")
    assert isinstance(tar_test, TarShards) and len(tar_test) == 2

    with pytest.raises(FileNotFoundError, match="procedural"):
        build_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        build_dataset(str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    # Smooth but asymmetric (so flips and crops show), not square (so aspect handling shows).
    y, x = np.mgrid[:48, :80]
    array = np.stack([x / 79, y / 47, (x * y) / (79 * 47)], axis=-1)
    return Image.fromarray((array * 255).round().astype(np.uint8))


def test_preprocessing_output_shape_range_and_determinism(photo):
    pre = Preprocessing(resolution=32)
    out = pre.train(photo, np.random.default_rng(0))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, pre.train(photo, np.random.default_rng(0)))
    assert not torch.equal(out, pre.train(photo, np.random.default_rng(1)))
    assert pre.eval(photo).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(interpolation="nearest")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_preprocessing_train_equals_torchvision_with_the_same_parameters(photo, interpolation):
    pre = Preprocessing(resolution=24, interpolation=interpolation)
    mode = InterpolationMode(interpolation)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        top, left, h, w = random_resized_crop_params(48, 80, (0.8, 1.0), (3 / 4, 4 / 3), rng)
        expected = TF.resized_crop(photo, top, left, h, w, [24, 24], interpolation=mode)
        if rng.random() < 0.5:
            expected = TF.hflip(expected)
        assert torch.equal(pre.train(photo, np.random.default_rng(seed)), TF.to_tensor(expected))


def test_crop_parameters_follow_torchvision():
    square = Image.new("RGB", (64, 64))
    for ratio in ((1.0, 1.0), (3 / 4, 4 / 3)):
        rng = np.random.default_rng(0)
        areas = []
        for _ in range(300):
            top, left, h, w = random_resized_crop_params(64, 64, (0.8, 1.0), ratio, rng)
            assert 0 <= top <= 64 - h and 0 <= left <= 64 - w
            assert ratio[0] - 0.05 <= w / h <= ratio[1] + 0.05
            if ratio == (1.0, 1.0):  # without aspect jitter a crop always fits: area ≥ min_scale (± rounding)
                assert h == w and h * w >= 0.8 * 64 * 64 - 64
            areas.append(h * w / 64**2)
        # Same distribution as torchvision's sampler (which draws from torch's global generator).
        torch.manual_seed(0)
        reference = [
            h * w / 64**2 for _, _, h, w in (RandomResizedCrop.get_params(square, [0.8, 1], ratio) for _ in range(300))
        ]
        assert abs(np.mean(areas) - np.mean(reference)) < 0.02
    # Nothing fits a 10×200 strip at ≥ 80 % area: the fallback is a center crop at the widest allowed ratio.
    assert random_resized_crop_params(10, 200, (0.8, 1.0), (3 / 4, 4 / 3), np.random.default_rng(0)) == (0, 93, 10, 13)


def test_flip_happens_for_about_half_of_the_seeds(photo):
    pre = Preprocessing(resolution=32, random_crop=False)
    plain = pre.eval(photo)
    flipped = [not torch.equal(pre.train(photo, np.random.default_rng(seed)), plain) for seed in range(200)]
    assert 70 <= sum(flipped) <= 130
    for seed in range(10):
        out = pre.train(photo, np.random.default_rng(seed))
        assert torch.equal(out, plain) or torch.equal(out, plain.flip(-1))
    assert torch.equal(Preprocessing(resolution=32, random_crop=False, random_flip=False).train(photo, None), plain)


def test_eval_is_resize_shorter_side_then_center_crop(photo):
    for interpolation in ("bilinear", "bicubic"):
        pre = Preprocessing(resolution=24, interpolation=interpolation)
        mode = InterpolationMode(interpolation)
        expected = TF.to_tensor(TF.center_crop(TF.resize(photo, 24, interpolation=mode), 24))
        assert torch.equal(pre.eval(photo), expected)
    tall = photo.transpose(Image.Transpose.ROTATE_90)
    expected = TF.to_tensor(TF.center_crop(TF.resize(tall, 30, interpolation=InterpolationMode.BILINEAR), 30))
    assert torch.equal(Preprocessing(resolution=30).eval(tall), expected)


# ---------------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------------


def test_export_then_image_folder_round_trip(tmp_path):
    source = ProceduralShapes("test", size=40)
    out = export_dataset(source, tmp_path / "export", limit=12, start=3, progress=False)
    assert out == tmp_path / "export" and not list(out.rglob("*.tmp"))
    with open(out / "labels.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["path"] for row in rows] == [f"{PROCEDURAL_CLASSES[i % 10]}/{i:07d}.png" for i in range(3, 15)]
    assert [int(row["label"]) for row in rows] == [i % 10 for i in range(3, 15)]
    assert all(row["class_name"] == PROCEDURAL_CLASSES[int(row["label"])] for row in rows)

    folder = ImageFolder(out)
    assert folder.classes == list(PROCEDURAL_CLASSES) and len(folder) == 12  # the procedural order, not sorted
    for index in range(len(folder)):
        path, label = folder.samples[index]
        original, original_label = source[int(path.stem)]
        image, folder_label = folder[index]
        assert folder_label == label == original_label
        assert np.array_equal(pixels(image), pixels(original))  # PNG is lossless


def test_shard_patterns_are_counted_before_they_are_expanded():
    """Issue 17: "{0..1000000000}" would build a billion names before looking for one file."""
    from data.datasets import expand_braces

    assert expand_braces("a-{0..1}-{x,y}.tar") == ["a-0-x.tar", "a-0-y.tar", "a-1-x.tar", "a-1-y.tar"]
    with pytest.raises(ValueError, match="names more than 100,000 files"):
        expand_braces("a-{0..999}-{0..999}.tar")
