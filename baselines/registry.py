"""The registry of explainers by name: registering, listing, looking up and building them.

:func:`register_explainer` adds an :class:`~an8flower.baselines.base.Explainer` subclass under a
name; :func:`explainer_class`, :func:`build_explainer` and :func:`list_explainers` find it again.
Names with a library prefix (``captum:Saliency``, ``zennit:EpsilonPlusFlat``, ``gradcam:ScoreCAM``)
are adapters to other libraries' explainers (:mod:`an8flower.baselines.adapters`), resolved on
demand: the library is imported only when such a name is built, so each library stays optional.

This module imports no explainer. The built-in explainers are registered by their own modules,
which the package ``an8flower.baselines`` imports (importing any module of the package runs the
package's ``__init__`` first, so they are registered before any lookup); explainers of installed
plugins are registered by :func:`~an8flower.baselines.plugins.load_entry_points`, called by every
lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from an8flower.baselines.adapters import adapter_class, list_adapter_explainers
from an8flower.baselines.base import Explainer, check_options
from an8flower.baselines.plugins import load_entry_points
from an8flower.errors import UsageError

__all__ = [
    "ADAPTER_SEPARATOR",
    "RESERVED_NAMES",
    "register_explainer",
    "build_explainer",
    "list_explainers",
    "explainer_class",
]

_REGISTRY: dict[str, type[Explainer]] = {}
#: Separates a library prefix from the library's method name in adapter names (``captum:Saliency``).
ADAPTER_SEPARATOR = ":"
#: Names of the reference explainers: the oracle (the board's own) and the package's ``random`` and
#: ``centre``; no other code may register them (in any letter case).
RESERVED_NAMES: frozenset[str] = frozenset({"oracle", "random", "centre"})

E = TypeVar("E", bound=type)


def register_explainer(name: str) -> Callable[[E], E]:
    """Class decorator adding an :class:`Explainer` subclass to the registry under ``name``.

    A user registers their own explainer the same way::

        @register_explainer("my_method")
        class MyMethod(Explainer):
            def explain(self, model, images, targets):
                ...
    """

    def decorate(cls: E) -> E:
        if ADAPTER_SEPARATOR in name:
            raise UsageError(f"explainer names with {ADAPTER_SEPARATOR!r} are reserved for library adapters, got {name!r}")
        if name.casefold() in RESERVED_NAMES and not (getattr(cls, "__module__", "") or "").startswith("an8flower."):
            raise UsageError(f"explainer name {name!r} is reserved for the package's reference explainers "
                             f"({', '.join(sorted(RESERVED_NAMES))})")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise UsageError(f"an explainer named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise UsageError(f"register_explainer({name!r}) decorates Explainer subclasses, got {cls!r}")
        explainer: type[Explainer] = cls
        explainer.name = name
        _REGISTRY[name] = explainer
        return cls

    return decorate


def list_explainers(include_adapters: bool = False) -> list[str]:
    """Names of the registered explainers (built-in and user-registered), sorted.

    Args:
        include_adapters: also list every adapter name available in this installation
            (``captum:...``, ``zennit:...``, ``gradcam:...`` for the libraries that are installed),
            after the registered ones. Off by default, so that "every registered explainer" (the
            leaderboard's default) stays the package's own set; the recommended adapter set for
            the board is :data:`an8flower.baselines.adapters.BOARD_ADAPTERS`.
    """
    load_entry_points()
    names = sorted(_REGISTRY)
    if include_adapters:
        names += list_adapter_explainers()
    return names


def explainer_class(name: str) -> type[Explainer]:
    """The class registered as ``name``, or the adapter class of a prefixed name.

    Raises:
        UsageError: an unknown name; for adapter names also a library that is not installed
        (naming the extra that installs it) or a method the library does not offer.
    """
    if ADAPTER_SEPARATOR in name:
        return adapter_class(name)
    load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown explainer {name!r}; registered: {', '.join(sorted(_REGISTRY))}; library adapters: "
            "captum:<Name>, zennit:<Name>, gradcam:<Name> (`an8flower explainers` lists them)"
        ) from None


def build_explainer(name: str, **options: Any) -> Explainer:
    """Build the explainer registered as ``name`` with keyword ``options``.

    An option the constructor does not take, or of a type its annotation rules out, raises
    :class:`~an8flower.errors.UsageError` naming the option (:func:`check_options`).
    """
    cls = explainer_class(name)
    check_options(f"explainer {name!r}", cls, options)
    return cls(**options)
