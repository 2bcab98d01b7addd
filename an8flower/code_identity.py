"""The code identity of a class or function: a hash of the source files it imports (its import closure).

The leaderboard keys each cell by the code that can change its numbers (see
:mod:`an8flower.eval.cache`). That code is found statically: the import statements of a module
(read with :mod:`ast`, at module level and inside functions alike) are resolved to files, and
those files' imports in turn, recursively. The closure stays inside a *scope*:

* this package (``an8flower``, ``an8flower.baselines``, ``an8flower.eval``, ...): followed by
  module name, wherever the package is installed;
* a user's code (a file given to ``--import``, a module on ``sys.path``, a plugin package): its
  own folder for a top-level module, its own top-level package for a module of a package; a
  module installed as a single file in site-packages is its own scope;
* everything else (the standard library, site-packages: torch, Captum, ...) is left out; the
  versions of the libraries an adapter calls are part of its identity instead
  (:meth:`an8flower.baselines.adapters.AdapterExplainer.cache_identity`).

Three rules keep the closure to what a module really uses:

* ``import a.b.c`` follows ``a.b.c`` only (not the ``__init__`` of ``a`` and ``a.b``);
* ``from a.b import name`` follows the submodule ``a.b.name`` when there is one, else, when ``a.b``
  is a package, the module its ``__init__`` imports ``name`` from (a re-export), else ``a.b``;
* the ``__init__`` of a package of ``an8flower`` is hashed but its imports are not followed: those
  files only re-export names (the names a module takes from them are followed to their own
  modules). So the registry's ``import an8flower.baselines``, which registers every built-in
  explainer, does not make every explainer part of every other's closure.

The hash is the SHA-256 over the files in sorted order of their labels, as ``label NUL bytes NUL``;
a label is the module name for this package and the path relative to the scope's root for user
code, so the same code gives the same hash in any checkout or installation. Parsed imports are
cached per process by the SHA-256 of the file's bytes, so an edited file is parsed again. Nothing
depends on what happens to be imported: the closure is the same in every process.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import marshal
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PACKAGE", "Scope", "in_library", "import_closure", "closure_sha256", "code_identity"]

#: The top-level name of this package: modules under it are always in scope.
PACKAGE = "an8flower"


@functools.lru_cache(maxsize=1)
def _library_dirs() -> frozenset[str]:
    """The standard library's and site-packages' folders (real paths)."""
    paths = sysconfig.get_paths()
    return frozenset(os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def in_library(path: str) -> bool:
    """Whether ``path`` lies in the standard library or site-packages (installed, not edited, code)."""
    path = os.path.realpath(path)
    return any(_inside(path, d) for d in _library_dirs())


@dataclass(frozen=True)
class Scope:
    """Where a user's code lives: files under ``folder`` are followed; labels are relative to ``root``.

    Attributes:
        root: the folder the scope's module names start from (``sys.path`` entry).
        folder: the folder whose files are in scope (the top-level package's folder, or ``root``).
        only: for a single-file module among libraries: that file alone.
    """

    root: str
    folder: str
    only: str | None = None

    def holds(self, path: str) -> bool:
        if self.only is not None:
            return path == self.only
        return _inside(path, self.folder) and not any(_inside(path, d) and not _inside(self.folder, d)
                                                      for d in _library_dirs())

    def label(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    @classmethod
    def of(cls, path: str, module: str | None) -> Scope:
        """The scope of the file ``path`` holding the module ``module`` (None: unknown, a top-level file)."""
        folder = os.path.dirname(path)
        is_init = os.path.basename(path) == "__init__.py"
        if not module or ("." not in module and not is_init):  # a top-level module: its folder
            return cls(root=folder, folder=folder, only=path if folder in _library_dirs() else None)
        package_dir = folder
        for _ in range(module.count(".") - (0 if is_init else 1)):
            package_dir = os.path.dirname(package_dir)
        return cls(root=os.path.dirname(package_dir), folder=package_dir)


@dataclass(frozen=True)
class _Node:
    """A file of the closure, with its module name when known and the scope it was reached in."""

    path: str
    module: str | None
    scope: Scope | None  # None: a module of this package

    @property
    def label(self) -> str:
        if self.scope is None:
            return str(self.module)
        return self.scope.label(self.path)


#: One import statement: ``(level, module, ((name, bound name), ...))``; no names for ``import``.
_Import = tuple[int, str, tuple[tuple[str, str], ...]]


@functools.lru_cache(maxsize=4096)
def _parse(digest: str, path: str) -> tuple[_Import, ...]:
    """The import statements of the file ``path`` whose bytes have SHA-256 ``digest`` (the cache key)."""
    out: list[_Import] = []
    for node in ast.walk(ast.parse(_read(path), filename=path)):
        if isinstance(node, ast.Import):
            out += [(0, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or "", tuple((a.name, a.asname or a.name) for a in node.names)))
    return tuple(out)


def _imports(path: str, source: bytes) -> tuple[_Import, ...]:
    return _parse(hashlib.sha256(source).hexdigest(), path)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@functools.cache
def _package_file(name: str) -> str | None:
    """The file of the module ``name`` of this package, or None when there is no such module."""
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None) if module is not None else None
    if path is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        path = spec.origin if spec is not None and spec.has_location else None
    return os.path.realpath(path) if path and path.endswith(".py") else None


def _is_package_name(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _module_file(name: str, scope: Scope | None) -> _Node | None:
    """The node of the absolute module ``name``: in this package, or in ``scope``'s folder; None otherwise.

    Both are found without looking at what is imported now (this package by its import spec, user
    code by its path under the scope's root), so the closure is the same in every process.
    """
    if _is_package_name(name):
        path = _package_file(name)
        return _Node(path, name, None) if path else None
    if scope is None or scope.only is not None:
        return None
    base = os.path.join(scope.root, *name.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate) and scope.holds(os.path.realpath(candidate)):
            return _Node(os.path.realpath(candidate), name, scope)
    return None


def _absolute(node: _Node, level: int, module: str) -> str | None:
    """The absolute name of a relative import in ``node`` (None when ``node``'s module is unknown)."""
    if not level:
        return module
    if node.module is None:
        return None
    package = node.module if os.path.basename(node.path) == "__init__.py" else node.module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{module}" if module else package


def _by_path(node: _Node, level: int, module: str, names: tuple[str, ...]) -> Iterator[_Node]:
    """The files a relative import of a file loaded by path (no module name) reaches, by path."""
    base = os.path.dirname(node.path)
    for _ in range(level - 1):
        base = os.path.dirname(base)
    stem = os.path.join(base, *module.split(".")) if module else base
    for path in [stem + ".py", os.path.join(stem, "__init__.py")] + [os.path.join(stem, n + ".py") for n in names]:
        if os.path.isfile(path) and (node.scope is None or node.scope.holds(os.path.realpath(path))):
            yield _Node(os.path.realpath(path), None, node.scope)


def _source_of(package: _Node, name: str, depth: int = 0) -> _Node:
    """The node that defines ``name`` imported from ``package``: the module a package ``__init__``
    re-exports it from (``from .module import name`` in it, followed through sub-packages), else
    ``package`` itself (``name`` is defined there, or made at run time)."""
    if os.path.basename(package.path) != "__init__.py" or depth > 8:
        return package
    for level, module, names in _imports(package.path, _read(package.path)):
        for original, bound in names:
            if bound == name and original != "*":
                target = next(_targets(package, level, module, ((original, bound),), depth + 1), None)
                return target if target is not None else package
    return package


def _targets(node: _Node, level: int, module: str, names: tuple[tuple[str, str], ...],
             depth: int = 0) -> Iterator[_Node]:
    """The nodes one import statement of ``node`` reaches (see the module docstring for the rules)."""
    absolute = _absolute(node, level, module)
    if absolute is None:
        yield from _by_path(node, level, module, tuple(n for n, _ in names))
        return
    if not names:
        target = _module_file(absolute, node.scope)
        if target is not None:
            yield target
        return
    package = _module_file(absolute, node.scope)
    for name, _ in names:
        sub = _module_file(f"{absolute}.{name}", node.scope) if name != "*" else None
        if sub is not None:
            yield sub
        elif package is not None:
            yield _source_of(package, name, depth) if name != "*" else package


def import_closure(roots: list[tuple[str, str | None]], also: Sequence[str] = ()) -> dict[str, bytes]:
    """The source files ``roots`` import, directly or not, within their scopes, by label.

    Args:
        roots: ``(path, module name or None)`` of each starting file (None: a file loaded by path).
        also: modules of this package added as they are, without following their imports.

    Returns:
        ``{label: bytes}`` of every file of the closure, the roots and ``also`` included.
    """
    todo = []
    for path, module in roots:
        path = os.path.realpath(path)
        scope = None if module and _is_package_name(module) else Scope.of(path, module)
        todo.append(_Node(path, module, scope))
    seen: dict[str, _Node] = {}
    files: dict[str, bytes] = {}
    while todo:
        node = todo.pop()
        if node.path in seen:
            continue
        seen[node.path] = node
        source = _read(node.path)
        files[node.label] = source
        reexports = node.scope is None and os.path.basename(node.path) == "__init__.py"
        if reexports and node.module not in (r[1] for r in roots):
            continue  # a re-exporting package __init__ of this package (see the module docstring)
        for level, module, names in _imports(node.path, source):
            todo.extend(t for t in _targets(node, level, module, names) if t.path not in seen)
    for name in also:
        found = _package_file(name)
        if found is None:
            raise ValueError(f"no module {name!r} in this package")
        files[name] = _read(found)
    return files


def closure_sha256(files: dict[str, bytes]) -> str:
    """SHA-256 over ``files`` in sorted label order, each as ``label NUL bytes NUL``."""
    digest = hashlib.sha256()
    for label in sorted(files):
        digest.update(label.encode() + b"\0" + files[label] + b"\0")
    return digest.hexdigest()


def _installed(cls: type) -> bool:
    """Whether ``cls`` is defined in the standard library or site-packages (or is built in)."""
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return path is None or in_library(path)


def _roots(obj: Any) -> tuple[list[tuple[str, str | None]], list[Callable[..., Any]]]:
    """The files that define ``obj`` (a module: itself; a class: its methods and those of its
    bases up to the first one of this package or of an installed library; a function: itself),
    and the functions found there."""
    functions: list[Callable[..., Any]] = []
    modules: list[str | None]
    if inspect.ismodule(obj):
        return ([(os.path.realpath(obj.__file__), obj.__name__)] if obj.__file__ else []), []
    if inspect.isclass(obj):
        for klass in obj.__mro__:
            if klass is not obj and (_is_package_name(klass.__module__ or "") or _installed(klass)):
                break
            functions += [v for _, v in sorted(vars(klass).items()) if inspect.isfunction(v)]
        modules = [obj.__module__]
    else:
        functions, modules = [obj], [getattr(obj, "__module__", None)]
    roots: dict[str, str | None] = {}
    for name in modules:
        path = getattr(sys.modules.get(name or ""), "__file__", None)
        if path and path.endswith(".py") and os.path.isfile(path):
            roots[os.path.realpath(path)] = name
    for f in functions:
        code = getattr(f, "__code__", None)
        path = os.path.realpath(code.co_filename) if code is not None else ""
        if os.path.isfile(path) and path not in roots:
            loaded = getattr(sys.modules.get(f.__module__), "__file__", None)
            roots[path] = f.__module__ if loaded and os.path.realpath(loaded) == path else None
    return list(roots.items()), functions


def code_identity(obj: Any, also: Sequence[str] = ()) -> dict[str, Any]:
    """What identifies the code of a class, function or module: ``{"source_sha256", "modules"}``.

    ``source_sha256`` is :func:`closure_sha256` of the :func:`import_closure` of the files that
    define ``obj`` (for a class, its methods and those of its base classes up to the first one of
    this package, whose file is reached by the import); ``modules`` the labels of those files.
    Code whose source cannot be read (a class typed into a notebook) is identified by its methods'
    compiled code objects instead (``modules`` empty). ``also``: see :func:`import_closure`.
    """
    roots, functions = _roots(obj)
    if roots:
        files = import_closure(roots, also)
        return {"source_sha256": closure_sha256(files), "modules": sorted(files)}
    digest = hashlib.sha256()
    for f in functions:
        digest.update(marshal.dumps(f.__code__))
    if not functions:
        raise ValueError(f"{getattr(obj, '__qualname__', obj)!r} has no source file and no method to hash")
    return {"source_sha256": digest.hexdigest(), "modules": []}
