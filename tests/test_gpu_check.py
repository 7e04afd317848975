"""bench/gpu_check.py --smoke: every GPU path's code on the CPU, tiny sizes (the GPU run itself needs a GPU)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]


def test_gpu_check_smoke_passes_every_section_on_the_cpu(tmp_path):
    from bench.gpu_check import ENDPOINTS, SECTIONS
    from maskbit.device import mixed_precision

    CPU_AUTO = mixed_precision("auto", torch.device("cpu"))  # bf16 on a CPU with native bf16, else no

    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {name: s["error"] for name, s in report["sections"].items() if s["status"] != "ok"}
    assert result.returncode == 0 and not failed, failed or result.stderr[-3000:]
    assert list(report["sections"]) == list(SECTIONS) and report["machine"]["device"] == "cpu"
    rows = {name: section["rows"] for name, section in report["sections"].items()}

    timed = [r for r in rows["sampling"] if "precision" in r]
    assert {(r["model"], r["batch"], r["precision"]) for r in timed} == {
        (m, b, p) for m in ("tiny", "default") for b in (1, 2) for p in ("fp32", "bf16")
    }
    errors = [r["bf16_logits_vs_fp32"] for r in rows["sampling"] if "bf16_logits_vs_fp32" in r]
    assert len(errors) == 2 and all(0 < e["max_abs_error"] < e["max_abs_logit"] for e in errors)
    assert [r["distances_equal_faiss_cpu"] for r in rows["search"] if "distances_equal_faiss_cpu" in r] == [True, True]
    assert all(
        r["state"] == "finished" and r["exported_model"] and r["mixed_precision"] == CPU_AUTO for r in rows["training"]
    )
    called = [r for r in rows["app"] if "ok" in r]
    assert [r["endpoint"] for r in called] == [name for name, _ in ENDPOINTS] and all(r["ok"] for r in called)
    assert "## app: ok" in (tmp_path / "gpu_check.md").read_text()
