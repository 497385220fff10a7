"""The package's floor plan, as checks (issue 24): no import cycle, foundations and the data model at the
bottom, test helpers outside the runtime code, and a top level that holds only the entry points.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: an import hidden in a
function still says that one module depends on another.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cos3d"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of cos3d it imports}``; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in mods else base)
            for t in targets:
                if t == "cos3d" or t.startswith("cos3d."):
                    r = resolve(t)
                    if r is not None and r != name:
                        graph[name].add(r)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _imports_of(prefix: str) -> dict[str, set[str]]:
    g = import_graph()
    return {m: deps for m, deps in g.items() if m == prefix or m.startswith(prefix + ".")}


def test_layers_point_down():
    """core imports nothing else of cos3d; data only core; the pipeline never the applications."""
    for m, deps in _imports_of("cos3d.core").items():
        assert all(d.startswith("cos3d.core") for d in deps), (m, deps)
    for m, deps in _imports_of("cos3d.data").items():
        assert all(d.startswith(("cos3d.core", "cos3d.data")) for d in deps), (m, deps)
    apps = ("cos3d.apps", "cos3d.commands", "cos3d.serve", "cos3d.viewer", "cos3d.robot", "cos3d.eval", "cos3d.cli")
    for low in ("cos3d.core", "cos3d.data", "cos3d.render", "cos3d.field", "cos3d.vision", "cos3d.query",
                "cos3d.pipeline"):
        for m, deps in _imports_of(low).items():
            bad = {d for d in deps if d.startswith(apps)}
            assert not bad, f"{m} imports the application layer: {sorted(bad)}"
    for m, deps in _imports_of("cos3d.vision").items():
        bad = {d for d in deps if d.startswith(("cos3d.query", "cos3d.pipeline"))}
        assert not bad, f"{m} (2D models) imports {sorted(bad)}"
    for m, deps in _imports_of("cos3d.query").items():
        bad = {d for d in deps if d.startswith("cos3d.pipeline")}
        assert not bad, f"{m} (queries) imports the training pipeline: {sorted(bad)}"


def test_runtime_code_never_imports_the_test_helpers():
    for m, deps in import_graph().items():
        if not m.startswith("cos3d.testing"):
            bad = {d for d in deps if d.startswith("cos3d.testing")}
            assert not bad, f"{m} imports test helpers {sorted(bad)}"


def test_top_level_holds_only_entry_points():
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py"], loose
