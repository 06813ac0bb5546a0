"""The architecture, enforced: imports only go downward through the layers of
docs/architecture.md, no library module imports the command line, no import cycles.

Every import counts, the lazy ones inside functions included: a lazy import hides a
dependency from start-up time, not from the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet"

# Module (or package) prefix -> layer; a module may import its own layer and those below.
LAYERS: dict[str, int] = {
    "alexnet.errors": 0,
    "alexnet.files": 0,
    "alexnet.devices": 0,
    "alexnet.lru": 0,
    "alexnet.layers": 1,
    "alexnet.models": 2,
    "alexnet.anatomy": 2,
    "alexnet.data": 3,
    "alexnet.checkpoint": 4,
    "alexnet.runs": 4,
    "alexnet.pretrained": 4,
    "alexnet.evaluation": 5,
    "alexnet.metrics": 5,
    "alexnet.training": 6,
    "alexnet.analysis": 7,
    "alexnet.explorer": 7,
    "alexnet.export": 7,
    "alexnet.demo": 7,
    "alexnet.cli": 8,
    "alexnet.__main__": 8,
}
NAMES = {0: "base", 1: "layers", 2: "models", 3: "data", 4: "checkpoint", 5: "evaluation", 6: "training",
         7: "analysis/explorer", 8: "cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    if module == "alexnet":  # the package root re-exports the zoo
        return LAYERS["alexnet.models"]
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS[best]


def imports_of(path: Path) -> set[str]:
    """Every ``alexnet`` module that ``path`` imports, at any depth of its code."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "alexnet")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "alexnet":
                continue
            for alias in node.names:  # `from alexnet.data import splits` names a module
                sub = f"{base}.{alias.name}"
                found.add(sub if _is_module(sub) else base)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC.parent / rel).with_suffix(".py").is_file() or (SRC.parent / rel / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
GRAPH = {m: {i for i in imports_of(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if layer_of(m) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module: str) -> None:
    here = layer_of(module)
    upward = [f"{i} ({NAMES[layer_of(i)]})" for i in sorted(GRAPH[module]) if layer_of(i) > here]
    assert not upward, f"{module} ({NAMES[here]}) imports from a higher layer: {upward}"


def test_no_library_module_imports_the_cli() -> None:
    offenders = [m for m, deps in GRAPH.items() if layer_of(m) < LAYERS["alexnet.cli"] and any(
        d == "alexnet.cli" or d.startswith("alexnet.cli.") for d in deps)]
    assert offenders == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            # a package's __init__ importing its own modules is how packages export; not a cycle
            if d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                return [*path[path.index(d) :], d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_checks_catch_what_they_claim() -> None:
    """The checker itself: an upward import and a cycle are seen."""
    assert layer_of("alexnet.data.folder") > layer_of("alexnet.models")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("alexnet.cli.train") == LAYERS["alexnet.cli"]
