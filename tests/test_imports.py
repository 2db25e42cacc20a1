"""The package's import graph has no cycles, lazy (function-level) imports included.

A cycle between modules is a tangle even when a lazy import keeps Python from failing on it: it means
two modules each need the other. This walks every ``import`` statement in the package's source and
checks the module graph is acyclic, so the layering (spec <- results <- runner <- experiments <- cli)
cannot quietly grow a loop back.
"""
from __future__ import annotations

import ast
from pathlib import Path

import diffprobe

PACKAGE = Path(diffprobe.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package importing its own parent is fine
                out.add(t)
    return out


def test_no_import_cycles():
    files = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(f) for f in files}
    graph = {_module_name(f): _imports(f, known) for f in files}
    # a package __init__ that re-exports its submodules is not a dependency of those submodules
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not (d == "diffprobe" or (d in graph and mod.startswith(d + ".")))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_import_diffprobe_registers_the_accessor():
    import subprocess
    import sys

    code = "import xarray as xr, diffprobe; print(hasattr(xr.Dataset(), 'dp'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
