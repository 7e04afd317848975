import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def requirement_lines(name: str) -> list[str]:
    return [line for line in (ROOT / name).read_text().splitlines() if line and not line.startswith("#")]


def test_the_gpu_requirements_are_the_cpu_ones_with_a_gpu_faiss():
    cpu, gpu = requirement_lines("requirements.txt"), requirement_lines("requirements-gpu.txt")
    faiss_cpu = [line for line in cpu if line.startswith("faiss")]
    faiss_gpu = [line for line in gpu if line.startswith("faiss")]
    assert faiss_cpu == ["faiss-cpu==1.15.1"] and len(faiss_gpu) == 1 and faiss_gpu[0].startswith("faiss-gpu")
    # apart from FAISS and the pinned CUDA runtime wheels FAISS brings, the same pins in the same order
    assert [line for line in cpu if line not in faiss_cpu] == [
        line for line in gpu if line not in faiss_gpu and not line.startswith("nvidia-")
    ]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+={2,3}[0-9][0-9A-Za-z.+]*", line) for line in gpu), "every line pinned"


def test_run_time_requirements_hold_no_test_tools():
    """A Space installs requirements.txt; the suite's tools come from requirements-dev.txt (issue 35.9)."""
    dev = {line.split("==")[0] for line in requirement_lines("requirements-dev.txt")}
    assert {"pytest", "ruff", "playwright", "spaces"} <= dev
    for name in ("requirements.txt", "requirements-gpu.txt"):
        assert not dev & {line.split("=")[0] for line in requirement_lines(name)}, name
