"""The import graph of the packages: no circle (imports inside functions count; imports for type checking
only do not), the cluster executor imported only by the entry point that runs on it, and no module
importing another's private name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("factory", "recipes", "filters", "trainers")
CLUSTER_ENTRY = {"factory.api"}  # `factory run --executor ray` goes through api.run_async


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, path in mods.items():
        package = m if path.name == "__init__.py" else m.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{up}.{base}" if base else up
                targets = [
                    (f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base, a.name) for a in node.names
                ]
            for target, name in targets:
                to = owner(target)
                if to is None or to == m:
                    continue
                edges[m].add(to)
                if name and name.startswith("_") and not name.startswith("__"):
                    private.append(f"{m} imports {name} from {to}")
    return edges, private


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def test_no_import_circle():
    edges, _ = _graph()
    # the top package only names `factory.run` (imported when called) and the version: leave it out
    edges = {m: {t for t in ts if t != "factory"} for m, ts in edges.items() if m != "factory"}
    assert _circles(edges) == []


def test_only_the_entry_point_imports_the_cluster_executor():
    edges, _ = _graph()
    assert {m for m, ts in edges.items() if "factory.cluster" in ts} <= CLUSTER_ENTRY


def test_no_module_imports_a_private_name_of_another():
    _, private = _graph()
    assert private == []


def test_the_analysis_sees_what_it_should():
    """The checks above cannot pass by seeing nothing."""
    edges, _ = _graph()
    assert "factory.store" in edges["factory.runner"] and "factory.cluster" in edges["factory.api"]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


EXECUTORS = ("factory.cluster", "factory.placement")  # they call the filters' hooks, never a filter by name


def test_the_executors_name_no_filter():
    import re

    from factory import plugins

    slugs = plugins.names("filter")
    assert {"minhash_dedup", "embed_dedup", "diversity"} <= set(slugs)  # the check sees the filters
    edges, _ = _graph()
    mods = _modules()
    for m in EXECUTORS:
        source = mods[m].read_text(encoding="utf-8")
        named = [s for s in slugs if re.search(rf"(?<![\w.]){re.escape(s)}(?!\w)", source)]
        assert named == [], f"{m} names the filters {named}"
        imported = {t for t in edges[m] if t.startswith("filters.") and t != "filters.base"}
        assert imported == set(), f"{m} imports {imported}"
