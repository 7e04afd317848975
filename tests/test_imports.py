"""The dependency direction of DESIGN.md: maskbit ← data ← {indexes, train} ← app, with no import cycles."""

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
