"""The project's modules import one another without a cycle, counting imports made inside functions.

An import deferred into a function hides a cycle from Python at import time but not from the design: the
two modules still need each other, and the next top-level import between them breaks. So the graph here
is every import statement at any depth of compress/, targets/ and cli.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "cli.py", *sorted((ROOT / "compress").rglob("*.py")), *sorted((ROOT / "targets").rglob("*.py"))]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SOURCES}


def project_module(name: str) -> str | None:
    """The innermost project module that `import name` runs: itself, or the package holding a name in it."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported(module: str, tree: ast.AST) -> set[str]:
    """The project modules one module imports anywhere (top level, functions, conditionals)."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` the module itself
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {target for name in names if (target := project_module(name)) and target != module}
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imported(name, ast.parse(path.read_text(encoding="utf-8"))) for name, path in MODULES.items()}


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module: each is one or more import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = {stack.pop()}
            while node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str]:
    """The shortest path start -> ... -> start (breadth first), to show one cycle of a tangle."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    return []


def test_the_graph_sees_function_level_and_submodule_imports() -> None:
    tree = ast.parse("def f():\n    from compress.data import photos\n    import targets.base\n")
    assert imported("compress.models", tree) == {"compress.data.photos", "targets.base"}
    relative = ast.parse("from .photos import NORMALIZE\nfrom .. import registry\nfrom . import digits\n")
    expected = {"compress.data.photos", "compress.registry", "compress.data.digits"}
    assert imported("compress.data._base", relative) == expected
    assert imported("compress.data", ast.parse("from ._base import DATASETS\n")) == {"compress.data._base"}
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}
    assert tangles(graph) == [{"a", "b", "c"}]
    assert shortest_cycle(graph, "a") == ["a", "b", "a"]
    assert tangles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    graph = import_graph()
    found = [
        f"{len(tangle)} modules ({', '.join(sorted(tangle))}), e.g. {' -> '.join(shortest_cycle(graph, min(tangle)))}"
        for tangle in tangles(graph)
    ]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_targets_never_import_compress() -> None:
    graph = import_graph()
    wrong = {
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name.split(".")[0] == "targets"
        for dep in deps
        if dep.split(".")[0] in ("compress", "cli")
    }
    assert not wrong, "targets must not import compress: " + ", ".join(sorted(wrong))


def test_the_recipe_schema_is_a_leaf() -> None:
    """Every layer imports its spec from compress.schema, so the schema's modules may import no layer."""
    graph = import_graph()
    schema = {name for name in graph if name == "compress.schema" or name.startswith("compress.schema.")}
    assert len(schema) > 1  # the package and its parts: a test of them all
    deps = {dep for name in schema for dep in graph[name]} - schema
    assert {dep.split(".")[0] for dep in deps} <= {"targets"}
