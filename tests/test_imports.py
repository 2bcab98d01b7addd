"""The package's import graph: no cycle, and no private name imported from another module.

The graph is built from the source with :mod:`ast`, not by importing: every ``import`` and
``from ... import`` statement counts, at the top of a module and inside functions alike (an import
inside a function hides a cycle, it does not remove it); imports under ``if TYPE_CHECKING:`` do
not run and are left out. Nodes are the modules of ``an8flower``, ``an8flower.eval`` and
``an8flower.baselines`` (and their subpackages); ``from pkg import name`` is an edge to the module
``pkg.name`` when there is one, else to ``pkg``.
"""

from __future__ import annotations

import ast
import functools
import os
from collections.abc import Iterator

import an8flower
import an8flower.baselines
import an8flower.eval

PACKAGES = (an8flower, an8flower.eval, an8flower.baselines)


def _modules() -> dict[str, str]:
    """Module name -> source file, for every module of :data:`PACKAGES` (subpackages included)."""
    out: dict[str, str] = {}
    for package in PACKAGES:
        root = os.path.dirname(package.__file__)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if os.path.isfile(os.path.join(dirpath, d, "__init__.py")))
            rel = os.path.relpath(dirpath, root)
            prefix = package.__name__ + ("" if rel == "." else "." + rel.replace(os.sep, "."))
            for name in sorted(filenames):
                if name.endswith(".py"):
                    module = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
                    out.setdefault(module, os.path.join(dirpath, name))
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` at any depth, except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


@functools.lru_cache(maxsize=1)
def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """(edges module -> imported modules of the package, private imports as ``"a -> b._name"``)."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[str] = []
    for module, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                edges[module].update(a.name for a in node.names if a.name in modules)
                continue
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base not in modules:
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    edges[module].add(target)
                    continue
                edges[module].add(base)
                if alias.name.startswith("_") and not alias.name.startswith("__") and base != module:
                    private.append(f"{module} -> {base}.{alias.name}")
        edges[module].discard(module)
    return edges, sorted(set(private))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_builder_finds_cycles_and_private_imports() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    import x\ndef f():\n    from y import _z\n")
    assert [type(n).__name__ for n in _imports(tree)] == ["Import", "ImportFrom"]
    edges, _ = _graph()
    assert "an8flower.atomic" in edges["an8flower.eval.cache"]  # a top-level import
    assert "an8flower.eval.scoring" in edges["an8flower.eval.shards"]  # one inside a function


#: Cycles still allowed: none (issue 19 broke the last ones, the explainer registry and the metric specs).
KNOWN_CYCLES: list[list[str]] = []
#: Private names still imported across modules: none.
KNOWN_PRIVATE: list[str] = []


def test_no_new_cycle_and_none_among_the_shared_helpers() -> None:
    """Strict now: every cycle is one of :data:`KNOWN_CYCLES` (none through eval's helpers)."""
    edges, _ = _graph()
    cycles = _cycles(edges)
    assert [c for c in cycles if c not in KNOWN_CYCLES] == []
    helpers = {"an8flower.eval.stats", "an8flower.eval.markdown", "an8flower.eval.report", "an8flower.eval.cache",
               "an8flower.eval.shards", "an8flower.eval.merge", "an8flower.eval.runner", "an8flower.eval.config",
               "an8flower.eval.train", "an8flower.eval.metaeval", "an8flower.eval.reliance", "an8flower.atomic"}
    assert not [c for c in cycles if helpers & set(c)]
    assert not {"an8flower.eval.report", "an8flower.eval.runner"} & edges["an8flower.eval.stats"]
    assert not edges["an8flower.eval.markdown"]


def test_no_new_private_import() -> None:
    """Strict now: every private import across modules is one of :data:`KNOWN_PRIVATE`."""
    _, private = _graph()
    assert [p for p in private if p not in KNOWN_PRIVATE] == []


def test_the_import_graph_has_no_cycle() -> None:
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_private_name_is_imported_across_modules() -> None:
    _, private = _graph()
    assert private == []
