"""The package's import graph: no circle among module-level imports, and nothing in the library imports examples/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Import name -> folder (callbacks/ and recipes/ ship inside the package).
PACKAGES = {"fms_lightning": ROOT / "fms_lightning", "fms_lightning.callbacks": ROOT / "callbacks",
            "fms_lightning.recipes": ROOT / "recipes"}


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports when it is imported (not in functions, nor for type checking)."""
    tree = ast.parse(path.read_text())
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes += list(ast.walk(node)) if isinstance(node, (ast.If, ast.Try)) else [node]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_module_level_imports_have_no_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join([*path[path.index(nxt):], nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_nothing_in_the_library_imports_the_examples() -> None:
    graph = _graph()
    leaves = ("fms_lightning.examples", "fms_lightning.bench")  # bench builds its benchmarks from the examples
    offenders = {name: sorted(t for t in targets if t.startswith(leaves[0]))
                 for name, targets in graph.items() if not name.startswith(leaves)}
    assert not {k: v for k, v in offenders.items() if v}
