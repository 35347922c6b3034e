"""The package's modules import one another one way only: no import cycle, counting the
imports made inside functions too.

The graph is read from the source with ``ast``, not from ``sys.modules``: an import inside a
function counts although it runs late, because a cycle hidden that way still ties the two
modules together (and breaks as soon as someone moves the import to the top). Imports under
``if TYPE_CHECKING:`` are left out: they never run. ``docs/architecture.md`` (Module
dependencies) draws the layers this test keeps.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_telemetry_inject

PACKAGE = "pytest_telemetry_inject"
ROOT = Path(pytest_telemetry_inject.__file__).resolve().parent

# An edge: (importer, imported) -> where the first such import is ("path:line").
Edges = dict[tuple[str, str], str]


def module_files(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Every module of the package under ``root``: dotted name -> (file, is a package)."""
    modules: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join((package, *parts))] = (path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every ``import``/``from ... import`` in the tree, in functions and classes too, but not
    in the body of an ``if TYPE_CHECKING:`` (its ``else`` runs, so it counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known_prefix(name: str, modules: dict) -> str | None:
    """The longest leading part of a dotted name that is a module of the package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Edges:
    """The package's import edges. ``import a.b`` is an edge to ``a.b``; ``from .pkg import
    name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Imports of
    anything outside the package, and of a module by itself, are no edges."""
    modules = module_files(root, package)
    edges: Edges = {}
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        here = module if is_package else module.rpartition(".")[0]
        for node in _import_nodes(tree):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_known_prefix(alias.name, modules) for alias in node.names]
            else:
                if node.level:
                    base = here
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    targets.append(target if target in modules else _known_prefix(base, modules))
            where = f"{path.relative_to(root.parent).as_posix()}:{node.lineno}"
            for target in targets:
                if target is not None and target != module:
                    edges.setdefault((module, target), where)
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _cycle_through(first: str, members: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from ``first`` back to itself inside one component."""
    previous: dict[str, str] = {}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph.get(node, ())):
                if succ not in members:
                    continue
                if succ == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(previous[path[-1]])
                    return [*reversed(path), first]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"{first} is in no cycle")


def find_cycles(edges: Edges) -> list[list[str]]:
    """One cycle (a, b, ..., a) for every strongly connected component of more than one
    module, starting from its first module by name."""
    graph: dict[str, set[str]] = {}
    for importer, imported in edges:
        graph.setdefault(importer, set()).add(imported)
        graph.setdefault(imported, set())
    cycles = []
    for component in strongly_connected(graph):
        if len(component) > 1:
            cycles.append(_cycle_through(component[0], set(component), graph))
    return sorted(cycles)


def describe(cycles: list[list[str]], edges: Edges, package: str = PACKAGE) -> str:
    def short(name: str) -> str:
        return name[len(package) + 1:] if name.startswith(package + ".") else name

    lines = []
    for cycle in cycles:
        lines.append(" -> ".join(short(name) for name in cycle))
        for importer, imported in zip(cycle, cycle[1:]):
            lines.append(f"    {short(importer)} -> {short(imported)}  ({edges[importer, imported]})")
    return "\n".join(lines)


def test_the_package_has_no_import_cycle():
    edges = import_graph()
    assert len({importer for importer, _ in edges}) > 20  # the graph was read at all
    cycles = find_cycles(edges)
    assert not cycles, "import cycles among the package's modules:\n" + describe(cycles, edges)


def test_a_cycle_is_found_and_spelled_out(tmp_path):
    package = tmp_path / "cyclic"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    # a -> sub.b (in a function), sub.b -> c (relative, two levels up), c -> a.
    (package / "a.py").write_text("def f():\n    from .sub import b\n")
    (package / "sub" / "b.py").write_text("from ..c import VALUE\n")
    (package / "c.py").write_text("import os\nimport cyclic.a\n")
    # Under TYPE_CHECKING: never runs, no edge; d -> e stays one way.
    (package / "d.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import e\nif TYPE_CHECKING:\n    from . import f\n")
    (package / "e.py").write_text("")
    (package / "f.py").write_text("from . import d\n")

    edges = import_graph(package, "cyclic")
    assert set(edges) == {("cyclic.a", "cyclic.sub.b"), ("cyclic.sub.b", "cyclic.c"),
                          ("cyclic.c", "cyclic.a"), ("cyclic.d", "cyclic.e"), ("cyclic.f", "cyclic.d")}
    cycles = find_cycles(edges)
    assert cycles == [["cyclic.a", "cyclic.sub.b", "cyclic.c", "cyclic.a"]]
    text = describe(cycles, edges, "cyclic")
    assert text.splitlines()[0] == "a -> sub.b -> c -> a"
    assert "a -> sub.b  (cyclic/a.py:2)" in text


def test_two_modules_importing_each_other_are_a_cycle():
    edges = {("p.x", "p.y"): "p/x.py:1", ("p.y", "p.x"): "p/y.py:3", ("p.y", "p.z"): "p/y.py:4"}
    assert find_cycles(edges) == [["p.x", "p.y", "p.x"]]
