"""The house in numbers: sizes, import cycles and private imports of the package, per room.

    python benchmarks/house.py [ROOT]        # ROOT: a checkout of the repository (default: this one)

Reads the source with :mod:`ast` only (imports nothing of the package, so it measures any commit:
``git worktree add /tmp/house-base REV`` then ``python benchmarks/house.py /tmp/house-base``) and
prints, per room (a folder of the import package: ``an8flower``, ``an8flower/cli``, ``eval``,
``eval/metrics``, ...) and in total:

* files and lines (every line of the ``.py`` files);
* function sizes: ``def`` and ``async def`` statements, methods and nested functions included, each
  from its first line (decorators excluded) to its last: the median, the largest and how many
  exceed 50 lines;
* imports inside functions (``import`` / ``from ... import`` statements under a ``def``);
* imports of private names across modules: ``from M import _name`` where M is another module of
  the package (a private *module* imported from its own package, ``from . import _options``, is
  not counted: the leading underscore there marks it private to the package, not to a module).

And for the whole package:

* import cycles: the module graph has an edge A -> B for every import in A (top level or inside a
  function; not under ``if TYPE_CHECKING:``, which never runs) of a module B of the package; ``from P import n`` is an edge to ``P.n`` when that is a
  module, else to ``P``. Importing ``P.m`` also runs ``P/__init__``; those implicit edges are left
  out (an ``__init__`` that imports its submodules would otherwise put every package in a cycle).
  Each strongly connected component of more than one module (or a module importing itself) is
  one cycle; its modules are listed;
* when the ``duplicates`` command is on PATH, its count of pairs of places in the tree (``--repo
  ROOT``: tracked and untracked, not ignored files) that share six or more lines.

The import names of the folders come from ``pyproject.toml``'s ``[tool.setuptools] package-dir``
(``eval`` is ``an8flower.eval``).
"""

from __future__ import annotations

import ast
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

#: A function longer than this many lines is counted as long.
LONG_FUNCTION = 50


@dataclass
class Module:
    """One ``.py`` file: its import name, room, size, functions and imports."""

    name: str
    path: Path
    room: str
    lines: int = 0
    function_sizes: list[int] = field(default_factory=list)
    in_function_imports: int = 0
    imports: set[str] = field(default_factory=set)
    private_imports: list[str] = field(default_factory=list)


def package_dirs(root: Path) -> dict[str, Path]:
    """Import package name -> folder, from ``pyproject.toml`` (``{"an8flower": root / "an8flower"}`` if absent)."""
    try:
        with open(root / "pyproject.toml", "rb") as fh:
            setuptools = tomllib.load(fh).get("tool", {}).get("setuptools", {})
    except FileNotFoundError:
        setuptools = {}
    mapping = setuptools.get("package-dir") or {"an8flower": "an8flower"}
    return {name: root / folder for name, folder in mapping.items() if name}


def discover(root: Path) -> dict[str, Module]:
    """Every module of the package under ``root`` by import name (a folder mapped twice counts once)."""
    dirs = package_dirs(root)
    modules: dict[str, Module] = {}
    # the most specific mapping wins: eval/ is an8flower.eval, not an8flower/../eval
    for pkg, folder in sorted(dirs.items(), key=lambda kv: -len(kv[0])):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg] + parts)
            if name in modules or any(m.path == path for m in modules.values()):
                continue
            room = path.parent.relative_to(root).as_posix()
            modules[name] = Module(name, path, room)
    return modules


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if module.path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


Function = ast.FunctionDef | ast.AsyncFunctionDef


def is_type_checking(node: ast.AST) -> bool:
    """Whether ``node`` is ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): its body never runs."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def functions_and_imports(tree: ast.AST) -> tuple[list[Function], list[tuple[ast.Import | ast.ImportFrom, bool]]]:
    """Every function node, and every import node with whether it lies inside a function.

    Imports in the body of ``if TYPE_CHECKING:`` never run and are left out (its ``else`` counts)."""
    functions: list[Function] = []
    imports: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if is_type_checking(child):
                for branch in child.orelse:  # type: ignore[attr-defined]
                    visit(ast.Module(body=[branch], type_ignores=[]), in_function)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(child)
                visit(child, True)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                imports.append((child, in_function))
            else:
                visit(child, in_function)

    visit(tree, False)
    return functions, imports


def analyse(modules: dict[str, Module]) -> None:
    """Fill each module's size, functions, in-function imports, graph edges and private imports."""
    for module in modules.values():
        text = module.path.read_text(encoding="utf-8")
        module.lines = len(text.splitlines())
        tree = ast.parse(text, filename=str(module.path))
        functions, imports = functions_and_imports(tree)
        module.function_sizes = [(f.end_lineno or f.lineno) - f.lineno + 1 for f in functions]
        for node, in_function in imports:
            module.in_function_imports += in_function
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        module.imports.add(alias.name)
                continue
            source = _resolve(module, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    module.imports.add(sub)
                elif source in modules:
                    module.imports.add(source)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and source != module.name:
                        module.private_imports.append(f"{module.name} <- {source}.{alias.name}")


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components of the import graph that form a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(modules[start].imports)))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(modules[nxt].imports))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in modules[node].imports:
                    found.append(sorted(component))
    return sorted(found)


def duplicate_pairs(root: Path) -> str | None:
    """The pair count ``duplicates --repo ROOT`` reports (its first line), or None without the command."""
    if shutil.which("duplicates") is None:
        return None
    done = subprocess.run(["duplicates", "--repo", str(root), "--seconds", "120"], capture_output=True, text=True,
                          check=False)
    first = (done.stdout.splitlines() or [""])[0]
    match = re.match(r"(\d+) pairs? of places \((\d+) files read\)", first)
    if match:
        return f"{match.group(1)} pairs ({match.group(2)} files read)"
    return first or f"no output (exit {done.returncode})"


def _row(name: str, mods: list[Module]) -> str:
    sizes = [s for m in mods for s in m.function_sizes]
    median = statistics.median(sizes) if sizes else 0
    return (f"| {name} | {len(mods)} | {sum(m.lines for m in mods):,} | {len(sizes)} | {median:g} | "
            f"{max(sizes, default=0)} | {sum(s > LONG_FUNCTION for s in sizes)} | "
            f"{sum(m.in_function_imports for m in mods)} | {sum(len(m.private_imports) for m in mods)} |")


def report(root: Path) -> str:
    """The Markdown report of the checkout at ``root``."""
    modules = discover(root)
    analyse(modules)
    rooms: dict[str, list[Module]] = defaultdict(list)
    for module in modules.values():
        rooms[module.room].append(module)
    lines = [f"# The house: {root}", "",
             f"| room | files | lines | functions | median lines | max lines | > {LONG_FUNCTION} lines | "
             "imports in functions | private imports across modules |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|--:|"]
    lines += [_row(room, rooms[room]) for room in sorted(rooms)]
    lines.append(_row("**total**", list(modules.values())))
    found = cycles(modules)
    lines += ["", f"Import cycles (strongly connected components, in-function imports included): {len(found)}"]
    lines += [f"- {len(c)} modules: {', '.join(c)}" for c in found]
    private = sorted(p for m in modules.values() for p in m.private_imports)
    distinct = sorted(set(private))
    lines += ["", f"Private names imported across modules: {len(private)} import statements, {len(distinct)} distinct"]
    lines += [f"- {p}" + (f" (x{private.count(p)})" if private.count(p) > 1 else "") for p in distinct]
    pairs = duplicate_pairs(root)
    lines += ["", f"duplicates: {pairs}" if pairs is not None else "duplicates: command not on PATH"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parent.parent).resolve()
    if not (root / "pyproject.toml").is_file():
        print(f"house.py: {root} is not a checkout of the repository (no pyproject.toml)", file=sys.stderr)
        return 2
    sys.stdout.write(report(root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
