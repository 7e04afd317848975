"""Faults injected for real: kill -9 of a running build, a file-size limit (RLIMIT_FSIZE, the kernel's EFBIG, as a
full disk gives ENOSPC) under index saves, checkpoints, reports and dataset exports, and a torn index left by the
format-1 store. Every case must end in the same result as an uninterrupted run. More trials, on a real full tmpfs:
bench/faults.py."""

import copy
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from indexes.store import ImageIndex, IndexOptions
from maskbit.files import DiskFullError
from train.rundir import RunDir

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests" / "fixtures" / "official-tiny"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
BUILD = [
    *("--tokenizer", str(TINY / "tiny_tokenizer.bin"), "--tokenizer-config", str(TINY / "tiny_tokenizer.yaml")),
    *("--resolution", "32", "--metrics", "hamming", "pixel", "--batch-size", "8", "--save-every", "1"),
]
LIMIT = 320


def file_size_limit(size: int):
    """A preexec_fn: files of the child may not grow past `size` bytes (its writes then fail with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


@contextmanager
def limited_file_size(size: int):
    """The same limit in this process, for in-process writers (Python ignores SIGXFSZ, so a write gets EFBIG)."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)


def build(out: Path, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "indexes", "build", *BUILD, "--limit", str(LIMIT), "--index", str(out)]
    return subprocess.Popen(
        command, cwd=ROOT, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
    )


def committed_count(out: Path) -> int:
    try:
        return json.loads((out / "manifest.json").read_text())["count"]
    except (FileNotFoundError, json.JSONDecodeError):  # the manifest is replaced whole: never seen half-written
        return -1


def test_an_index_build_killed_and_out_of_space_resumes_to_the_uninterrupted_index(tmp_path, tiny_tokenizer):
    from indexes.build import build_dataset_index

    reference = build_dataset_index(
        tmp_path / "reference",
        copy.deepcopy(tiny_tokenizer).inference("cpu", "auto"),  # as `indexes build` computes by default
        resolution=32,
        limit=LIMIT,
        options=IndexOptions(metrics=("hamming", "pixel")),
        batch_size=8,
    )
    out = tmp_path / "index"
    # kill -9 at a random point of the build (each batch is saved: a kill lands in a save as often as not)
    process = build(out)
    target, deadline = random.randrange(8, LIMIT // 2), time.time() + 300
    while committed_count(out) < target and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(random.uniform(0, 0.02))
    process.kill()
    process.communicate(timeout=60)
    assert target <= committed_count(out) < LIMIT
    # out of space: thumbnails.npy (12 kB an image) may not outgrow 400 kB
    process = build(out, preexec_fn=file_size_limit(400_000))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2, stderr[-2000:]
    kept = committed_count(out)
    assert f"while writing {out}/generation-" in stderr and "it needed about" in stderr and "are free there" in stderr
    assert f"the index at {out} still holds its {kept} images; free space and run the same command" in stderr
    assert "Traceback" not in stderr and kept < LIMIT
    assert sorted(p.name for p in out.iterdir()) == [
        "generation-" + str(ImageIndex.open(out, tiny_tokenizer).manifest.generation),
        "manifest.json",
    ]
    # the same command, with space
    process = build(out)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]
    resumed = ImageIndex.open(out, tiny_tokenizer)
    assert len(resumed) == LIMIT and resumed.sources == reference.sources
    assert np.array_equal(resumed.tokens, reference.tokens) and np.array_equal(resumed.thumbnails, reference.thumbnails)
    for metric in ("hamming", "pixel"):
        assert np.array_equal(
            resumed.flat[metric].reconstruct_n(0, LIMIT), reference.flat[metric].reconstruct_n(0, LIMIT)
        )


def test_a_format_1_index_torn_by_a_kill_opens_at_its_manifest_and_saves_a_generation(tmp_path, tiny_tokenizer):
    """The store before generations renamed each file in turn, the manifest last: a kill between two renames left
    longer files beside the old manifest ("hamming.faiss holds 912 entries, the manifest says 896")."""
    from data.datasets import ProceduralShapes
    from maskbit.images import to_tensor

    dataset = ProceduralShapes("train", resolution=32)
    images = torch.stack([to_tensor(dataset[i][0]) for i in range(24)])
    index = ImageIndex.create(tmp_path / "new", tiny_tokenizer, 32, IndexOptions(metrics=("hamming", "pixel")))
    index.add(images, [f"train:{i}" for i in range(24)], [0] * 24)
    index.save()
    torn = tmp_path / "torn"
    torn.mkdir()
    for file in index.files_directory.iterdir():  # the files of 24 images, in the format-1 places
        shutil.copy(file, torn / file.name)
    manifest = index.manifest.to_json()
    for key in ("generation", "precision"):
        del manifest[key]
    (torn / "manifest.json").write_text(json.dumps(manifest | {"format_version": 1, "count": 16}))
    opened = ImageIndex.open(torn, tiny_tokenizer)
    assert len(opened) == 16 and opened.manifest.precision == "fp32"
    assert np.array_equal(opened.tokens, index.tokens[:16]) and opened.sources == index.sources[:16]
    assert opened.flat["hamming"].ntotal == opened.flat["pixel"].ntotal == 16
    opened.add(images[16:], [f"train:{i}" for i in range(16, 24)], [0] * 8)
    opened.save()
    assert sorted(p.name for p in torn.iterdir()) == ["generation-1", "manifest.json"]
    again = ImageIndex.open(torn, tiny_tokenizer)
    assert np.array_equal(again.tokens, index.tokens) and again.flat["hamming"].ntotal == 24
    # a file shorter than its manifest cannot come from a kill: it is refused with the way to repair it
    (torn / "generation-1" / "sources.jsonl").write_text("")
    with pytest.raises(ValueError, match=f"delete {torn} and build it again"):
        ImageIndex.open(torn, tiny_tokenizer)


def test_a_save_after_a_kill_between_commit_and_cleanup_leaves_one_generation(tmp_path, tiny_tokenizer):
    """A kill after a save's commit and before it removed the previous generation leaves two; the next save removes
    the stale one first, even when it then fails on a full disk."""
    images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "index"
    index = ImageIndex.create(out, tiny_tokenizer, 32, IndexOptions(metrics=("hamming", "pixel")))
    index.add(images[:4], [f"train:{i}" for i in range(4)], [0] * 4)
    index.save()
    committed = out / f"generation-{index.manifest.generation}"
    shutil.copytree(committed, out / f"generation-{index.manifest.generation - 1}")  # as the kill left it
    index.add(images[4:], [f"train:{i}" for i in range(4, 12)], [0] * 8)
    with limited_file_size(2_000), pytest.raises(DiskFullError, match="still holds its 4 images"):
        index.save()
    assert sorted(p.name for p in out.iterdir()) == [committed.name, "manifest.json"]
    assert len(ImageIndex.open(out, tiny_tokenizer)) == 4


def test_a_checkpoint_out_of_space_says_so_and_the_same_command_resumes(tmp_path):
    """The first checkpoint outgrows the file-size limit: the run stops with the message, leaves no half checkpoint,
    and the same command trains the same steps to the same losses and checkpoint."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "train", "tokenizer", "--preset", "tiny", "--set", "training.max_steps=2"]
    command += ["training.save_every=2", "--run-dir", str(run_dir)]
    failed = subprocess.run(
        command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(1 << 20)
    )
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert f"while writing {run_dir}/checkpoints/.tmp-step-2" in failed.stderr and "it needed" in failed.stderr
    assert "the run has no checkpoint yet" in failed.stderr and "Traceback" not in failed.stderr
    assert list((run_dir / "checkpoints").iterdir()) == []
    status = RunDir(run_dir).read_status()
    assert status["state"] == "failed" and "are free there" in status["last_error"]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert RunDir(run_dir).latest_checkpoint()[0] == 2
    again = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][len(logged) :]
    losses = {r["step"]: r["loss"] for r in logged if "step" in r}
    assert losses and {r["step"]: r["loss"] for r in again if "step" in r} == losses


def test_a_report_and_an_export_out_of_space_keep_what_was_there(tmp_path, tiny_tokenizer):
    from data.datasets import ProceduralShapes, export_dataset
    from indexes.report import memorization_report
    from maskbit.images import to_tensor

    dataset = ProceduralShapes("train", resolution=32)
    images = torch.stack([to_tensor(dataset[i][0]) for i in range(40)])
    index = ImageIndex.create(tmp_path / "index", tiny_tokenizer, 32, IndexOptions(metrics=("hamming", "pixel")))
    index.add(images[:24], [f"train:{i}" for i in range(24)], [0] * 24)
    out = tmp_path / "report"
    first = memorization_report(index, images[24:32], images[32:40], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with limited_file_size(20_000), pytest.raises(DiskFullError, match=f"{out} is as it was"):
        memorization_report(index, images[24:32].flip(-1), images[32:40], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "report"]  # nothing half-written beside it
    assert memorization_report(index, images[24:32], images[32:40], out)["verdict"] == first["verdict"]

    export = tmp_path / "export"
    with limited_file_size(1_400), pytest.raises(DiskFullError, match="the images exported so far are kept"):
        export_dataset(dataset, export, limit=30, progress=False)  # its PNGs take 500 to 1600 bytes
    assert not export.exists() and list((tmp_path / ".export.partial").rglob("*.png"))
    export_dataset(dataset, export, limit=30, progress=False)  # the same call continues
    straight = export_dataset(dataset, tmp_path / "straight", limit=30, progress=False)
    files = sorted(p.relative_to(export) for p in export.rglob("*"))
    assert files == sorted(p.relative_to(straight) for p in straight.rglob("*"))
    assert all((export / f).read_bytes() == (straight / f).read_bytes() for f in files if (export / f).is_file())
