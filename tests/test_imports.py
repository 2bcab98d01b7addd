"""The package's import graph: no cycle, and no private name imported from another module.

The graph is the one ``benchmarks/house.py`` measures (one builder for the report and the test),
built from the source with :mod:`ast`, not by importing: every ``import`` and ``from ... import``
statement counts, at the top of a module and inside functions alike (an import inside a function
hides a cycle, it does not remove it); imports under ``if TYPE_CHECKING:`` do not run and are left
out. Nodes are the modules of ``an8flower``, ``an8flower.eval`` and ``an8flower.baselines`` (the
folders of ``pyproject.toml``'s ``package-dir``); ``from pkg import name`` is an edge to the module
``pkg.name`` when there is one, else to ``pkg``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def _house():
    spec = importlib.util.spec_from_file_location("house", ROOT / "benchmarks" / "house.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["house"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def _modules():
    house = _house()
    modules = house.discover(ROOT)
    house.analyse(modules)
    return modules


def test_the_graph_builder_finds_cycles_and_skips_type_checking_imports() -> None:
    house = _house()

    def graph(edges: dict[str, set[str]]):
        return {name: house.Module(name, ROOT / f"{name}.py", "", imports=set(to)) for name, to in edges.items()}

    assert house.cycles(graph({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]
    assert house.cycles(graph({"a": {"b"}, "b": set()})) == []
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    import x\nelse:\n    import w\ndef f():\n    from y import _z\n")
    assert [(type(n).__name__, inside) for n, inside in house.functions_and_imports(tree)[1]] == [
        ("Import", False), ("Import", False), ("ImportFrom", True)]
    modules = _modules()
    assert "an8flower.atomic" in modules["an8flower.eval.cache"].imports  # a top-level import
    assert "an8flower.eval.scoring" in modules["an8flower.eval.shards"].imports  # one inside a function
    assert "an8flower.eval.runner" in modules and "an8flower.baselines.spec" in modules  # package-dir folders


def test_the_import_graph_has_no_cycle() -> None:
    assert _house().cycles(_modules()) == []


def test_no_cycle_runs_through_the_shared_helpers_and_the_leaf_helpers_import_nothing_heavy() -> None:
    modules = _modules()
    assert not {"an8flower.eval.report", "an8flower.eval.runner"} & modules["an8flower.eval.stats"].imports
    assert not modules["an8flower.eval.markdown"].imports


def test_no_private_name_is_imported_across_modules() -> None:
    assert [p for m in _modules().values() for p in m.private_imports] == []
