"""The folder tree is the pipeline: the import graph of the project's own modules has no circle, no stage imports
a later one, and the engines read artifacts and checkpoints, never the exporter."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("avatar", "model", "export", "engines", "stream", "twincast")  # in pipeline order; the CLI last
SHARED = {"twincast.errors", "twincast.files", "twincast"}  # small leaf modules every stage may use


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each project module → the project modules it imports (at any depth of the file, lazy imports too)."""
    modules = {_module_name(path): path for stage in STAGES for path in (ROOT / stage).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def _stage(module: str) -> int:
    return STAGES.index(module.split(".")[0])


def test_no_stage_imports_a_later_one() -> None:
    backwards = [(module, target) for module, targets in _imports().items() for target in targets
                 if target not in SHARED and _stage(target) > _stage(module)]
    assert backwards == []


def test_the_import_graph_has_no_circle() -> None:
    graph = _imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_engines_never_import_the_exporter() -> None:
    graph = _imports()
    assert [(m, t) for m, ts in graph.items() if m.startswith("engines") for t in ts
            if t.startswith("export") and t != "export.spec"] == []
