"""benchmarks/house.py counts what it says on a tiny repository written by the test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HOUSE = Path(__file__).resolve().parent.parent / "benchmarks" / "house.py"


def _house():
    spec = importlib.util.spec_from_file_location("house", HOUSE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["house"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_house_counts_sizes_cycles_in_function_and_private_imports(tmp_path):
    house = _house()
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "pkg" = "pkg", "pkg.ev" = "ev" }\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "ev").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text(  # a -> b at top level; b -> a inside a function: one cycle
        "from pkg import b\n\n\ndef long():\n" + "    x = 1\n" * 59 + "    return x\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg.a import long\n    return long\n\n\ndef _g():\n    return 1\n")
    (tmp_path / "ev" / "__init__.py").write_text("")
    (tmp_path / "ev" / "c.py").write_text("from ..b import _g\nfrom . import d\n")  # pkg.ev.c: relative imports
    (tmp_path / "ev" / "d.py").write_text("import pkg.ev.c\n")  # c <-> d: a second cycle
    modules = house.discover(tmp_path)
    assert sorted(modules) == ["pkg", "pkg.a", "pkg.b", "pkg.ev", "pkg.ev.c", "pkg.ev.d"]
    house.analyse(modules)
    assert modules["pkg.a"].function_sizes == [61] and modules["pkg.b"].function_sizes == [3, 2]
    assert modules["pkg.b"].in_function_imports == 1 and modules["pkg.a"].in_function_imports == 0
    assert modules["pkg.ev.c"].imports == {"pkg.b", "pkg.ev.d"}
    assert modules["pkg.ev.c"].private_imports == ["pkg.ev.c <- pkg.b._g"]
    assert house.cycles(modules) == [["pkg.a", "pkg.b"], ["pkg.ev.c", "pkg.ev.d"]]
    text = house.report(tmp_path)
    # pkg: 3 files, 64 + 7 lines, functions of 61, 3 and 2 lines (median 3), one over 50, one import in a function
    assert "| pkg | 3 | 71 | 3 | 3 | 61 | 1 | 1 | 0 |" in text and "| ev | 3 | 3 | 0 | 0 | 0 | 0 | 0 | 1 |" in text
    assert "Import cycles (strongly connected components, in-function imports included): 2" in text
    assert "Private names imported across modules: 1 import statements, 1 distinct" in text
