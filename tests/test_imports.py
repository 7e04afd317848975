import subprocess
import sys
from pathlib import Path


def test_maskbit_imports_no_app_training_or_index_libraries():
    code = "import sys, maskbit, maskbit.cli; print(sorted({'gradio', 'accelerate', 'faiss'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
