"""The import directions of docs/ARCHITECTURE.md: maskbit ← data ← {indexes, train} ← app, with no import cycles."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("maskbit", "data", "indexes", "train", "app")
# What each package may import from the project (besides itself); bench/ and tests/ may import anything.
ALLOWED = {
    "maskbit": set(),
    "data": {"maskbit"},
    "indexes": {"maskbit", "data"},
    "train": {"maskbit", "data"},
    "app": {"maskbit", "data", "indexes", "train"},
}


def project_imports() -> dict[str, set[str]]:
    """module → project modules it imports anywhere in its file (function-level imports included)."""
    graph = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found |= {f"{node.module}.{alias.name}" for alias in node.names}
            graph[module] = {m for m in found if m.split(".")[0] in PACKAGES and m != module}
    return {module: {m for m in imports if m in graph} for module, imports in graph.items()}


def test_maskbit_imports_no_app_training_or_index_libraries():
    code = "import sys, maskbit, maskbit.cli; print(sorted({'gradio', 'accelerate', 'faiss'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_indexes_does_not_import_train():
    code = "import sys, indexes.cli, indexes.build, indexes.report; print(sorted({'train'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_packages_import_only_downwards():
    wrong = [
        f"{module} imports {imported}"
        for module, imports in project_imports().items()
        for imported in imports
        if imported.split(".")[0] not in ALLOWED[module.split(".")[0]] | {module.split(".")[0]}
    ]
    assert wrong == []


def test_no_import_cycles():
    graph = project_imports()
    # `from maskbit import bits` inside maskbit names the package only to reach its submodule: not a cycle of code
    cycles, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if imported in PACKAGES and module.startswith(imported + "."):
                continue  # a submodule using its own package's namespace
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


CUDA_TRAP = r"""
import importlib, pkgutil, sys, traceback
from pathlib import Path

import torch

root = Path.cwd().resolve()
packages = [root / p for p in ("maskbit", "train", "indexes", "app", "bench")]
calls = []  # (function, the project's frame that called it)


def trap(owner, name, everyone):
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        frames = traceback.extract_stack()[:-1]
        ours = [f for f in frames if any(Path(f.filename).resolve().is_relative_to(p) for p in packages)]
        if everyone or ours:
            where = f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "a library"
            calls.append(f"{owner.__name__}.{name} from {where}")
        return original(*args, **kwargs)

    setattr(owner, name, counted)


# Asking whether there is a GPU is fine for a library, not for the project's own import-time code; initialising
# CUDA is never fine (a ZeroGPU Space has no GPU outside its decorated functions).
for name in ("is_available", "device_count", "current_device", "get_device_properties", "get_device_name",
             "is_bf16_supported", "mem_get_info", "synchronize", "set_device"):
    trap(torch.cuda, name, everyone=False)
for name in ("_lazy_init", "init"):
    trap(torch.cuda, name, everyone=True)
trap(torch.Tensor, "cuda", everyone=True)
trap(torch.nn.Module, "cuda", everyone=True)
import faiss
trap(faiss, "get_num_gpus", everyone=False)

skipped = {"app.space"}  # a Space's script: it starts the server when imported
modules = ["bench.gpu_check", "bench.sampling_speed"]
for package in ("maskbit", "train", "indexes", "app"):
    modules.append(package)
    path = [str(root / package)]
    modules += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if m.name != "__main__"]
for module in modules:
    if module not in skipped:
        importlib.import_module(module)
print(len(modules), "modules;", "CUDA initialised" if torch.cuda.is_initialized() else "CUDA untouched")
print("\n".join(calls) or "no CUDA calls")
"""


def test_importing_every_module_touches_no_cuda():
    """ZeroGPU: nothing may ask for or initialise CUDA at import; every call below is counted where it is made."""
    result = subprocess.run(
        [sys.executable, "-c", CUDA_TRAP], cwd=Path(__file__).parents[1], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2].endswith("modules; CUDA untouched") and int(lines[-2].split()[0]) > 30, result.stdout
    assert lines[-1] == "no CUDA calls", result.stdout


def test_the_apps_layout_imports_no_torch():
    """app/layout.py only places widgets: the values it starts from come from the callbacks."""
    code = "import sys, app.layout, app.texts; print(sorted({'torch', 'maskbit'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
