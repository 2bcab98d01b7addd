"""User explainers: importing the code that registers them, from the CLI or from installed packages.

An explainer registered with :func:`~an8flower.baselines.register_explainer` exists once the module
that defines it has been imported. Two ways bring such a module in:

* ``--import MODULE_OR_FILE`` on the commands that take explainers (``leaderboard``, ``explain``,
  ``interpret``): a module name on ``sys.path`` (``my_lab.explainers``) or the path of a ``.py``
  file (``./my_method.py``), imported before the explainer names are resolved;
* the entry-point group ``an8flower.explainers`` of an installed package, loaded the first time
  the registry is listed or queried. A package declares, in its ``pyproject.toml``::

      [project.entry-points."an8flower.explainers"]
      my_method = "my_package.explainers"

  (the value is the module to import; an entry point naming an attribute, ``module:attr``, imports
  the module too). A plugin that fails to import is reported with a warning naming the entry point
  and the error; the built-in explainers stay available.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType

from an8flower.errors import UsageError

__all__ = ["ENTRY_POINT_GROUP", "import_explainers", "load_entry_points"]

#: The entry-point group scanned for explainer plugins.
ENTRY_POINT_GROUP = "an8flower.explainers"

_LOADED = False


def import_explainers(target: str) -> ModuleType:
    """Import a module name or a ``.py`` file so that the explainers it registers are available.

    Raises:
        UsageError: naming ``target`` when it is neither an importable module nor a readable Python
            file, or when importing it raises (the error is quoted).
    """
    text = os.fspath(target)
    if text.endswith(".py") or os.sep in text or (os.altsep and os.altsep in text):
        path = os.path.abspath(text)
        if not os.path.isfile(path):
            raise UsageError(f"--import {target}: no such Python file")
        name = "an8flower_user_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_").replace(".", "_")
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"--import {target}: not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # so that inspect (the cache's source hash) and pickling find it
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's code: quote what it raised
            sys.modules.pop(name, None)
            raise UsageError(f"--import {target}: importing it raised {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(text)
    except ModuleNotFoundError as exc:
        if exc.name and text.startswith(exc.name):
            raise UsageError(f"--import {target}: no module named {exc.name!r} (give a module on sys.path or a .py file)") from None
        raise UsageError(f"--import {target}: importing it raised {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"--import {target}: importing it raised {type(exc).__name__}: {exc}") from exc


def load_entry_points() -> list[str]:
    """Import every module of the ``an8flower.explainers`` entry-point group (once per process).

    Returns:
        The names of the entry points loaded by this call (empty after the first call).
    """
    global _LOADED
    if _LOADED:
        return []
    _LOADED = True
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.module)
            loaded.append(ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the built-ins down
            warnings.warn(f"an8flower.explainers entry point {ep.name!r} ({ep.value}) failed to import: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
    return loaded
