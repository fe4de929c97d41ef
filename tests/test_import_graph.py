"""The package's modules import each other without a circle: every import of a distillkit module counts, at module
level or inside a function (a function-level import hides a cycle from Python, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = "distillkit"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The distillkit modules `path` imports anywhere in its body (relative or absolute imports)."""
    name = f"{PACKAGE}.{path.stem}" if path.stem != "__init__" else PACKAGE
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package (modules here are one level deep)
                base = PACKAGE if node.level == 1 else None
                assert base, f"{path}: relative import above the package"
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from distillkit import x`: x may be a module
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted((REPO / PACKAGE).glob("*.py"))
    modules = {f"{PACKAGE}.{p.stem}" for p in paths if p.stem != "__init__"} | {PACKAGE}
    return {
        (f"{PACKAGE}.{p.stem}" if p.stem != "__init__" else PACKAGE): imported_modules(p, modules) for p in paths
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import y\n")
    (tmp_path / "c.py").write_text("import distillkit.a\n")
    (tmp_path / "d.py").write_text("from .a import z\n")
    modules = {f"{PACKAGE}.{s}" for s in "abcd"}
    graph = {f"{PACKAGE}.{p.stem}": imported_modules(p, modules) for p in sorted(tmp_path.glob("*.py"))}
    assert graph[f"{PACKAGE}.b"] == {f"{PACKAGE}.c"}
    assert cycles(graph) == [[f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.c"]]


def test_distillkit_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 10 and any(graph.values()), "the walk must see the package's modules and their imports"
    found = cycles(graph)
    details = []
    for component in found:
        inside = set(component)
        details.append("; ".join(f"{m} -> {', '.join(sorted(graph[m] & inside))}" for m in component))
    assert not found, "import cycles in distillkit/:\n" + "\n".join(details)


MAX_MODULE_LINES = 600  # issue 25: a module past this is split by concept, not grown


def test_no_package_module_is_over_the_line_limit():
    long = {
        path.name: n
        for path in sorted((REPO / PACKAGE).glob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"over {MAX_MODULE_LINES} lines: {long}"
