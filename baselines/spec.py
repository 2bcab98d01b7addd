"""The resolved explainer: a name the user types becomes one :class:`ExplainerSpec`, once, at the edge.

Everything past the edge (the leaderboard's option completion, building and fitting, the cache key,
the run record) takes the spec; nothing parses or looks up the name again.

**Names.** ``NAME`` is a registered explainer (``gradient``), a reference row (``oracle``,
``random``, ``centre``) or a library adapter (``captum:Saliency``). ``NAME[KEY=VALUE,...]`` is a
*named variant*: the explainer ``NAME`` with those options on top of the run's options for ``NAME``
(:func:`split_explainer_name`); the leaderboard shows it as its own row, under the full name.

**Options.** A spec's :attr:`~ExplainerSpec.options` are the run's options for ``NAME``, then
those given for the full variant name, then the variant's own, checked against the explainer's
constructor when the spec is made (:func:`~an8flower.baselines.base.check_options`: names, and types
from the annotations or the defaults), so that a typo fails before any data is read or any model
trained.

**Identity.** :func:`explainer_code_identity`: the hash of the explainer's import closure
(:mod:`an8flower.code_identity`) plus, for adapters, the library and its version.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from an8flower.baselines.base import Explainer, check_options, complete_options
from an8flower.baselines.reference import ORACLE
from an8flower.baselines.registry import explainer_class, list_explainers
from an8flower.code_identity import code_identity
from an8flower.errors import UsageError

__all__ = [
    "ExplainerSpec",
    "RunOptions",
    "split_explainer_name",
    "resolve_explainers",
    "default_explainers",
    "explainer_code_identity",
]

#: Options per explainer name (or variant name), as a run's ``explainer_options`` table holds them.
RunOptions = Mapping[str, Mapping[str, Any]]


def split_explainer_name(name: str) -> tuple[str, dict[str, Any]]:
    """A row name and its explainer: ``"vebi[k=1,stride_fix=false]"`` -> ``("vebi", {"k": 1, "stride_fix": False})``.

    Values are read as JSON when they parse (``1``, ``5.0``, ``false``, ``["a", "b"]``), as strings
    otherwise (``labels=predicted``); commas inside brackets or quotes do not split. A plain name
    gives ``(name, {})``.

    Raises:
        UsageError: a malformed variant (no closing bracket, an item without ``=``, a repeated key).
    """
    if "[" not in name:
        return name, {}
    base, _, rest = name.partition("[")
    if not base or not rest.endswith("]"):
        raise UsageError(f"explainer {name!r}: a variant is written NAME[KEY=VALUE,...]")
    items, depth, quoted, current = [], 0, False, ""
    for ch in rest[:-1]:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "[{":
            depth += 1
        elif not quoted and ch in "]}":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or key in options:
            raise UsageError(f"explainer {name!r}: expected distinct KEY=VALUE items, got {item!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value.strip()
    return base, options


def explainer_code_identity(cls: type) -> dict[str, Any]:
    """What identifies the code of an explainer class in a cache key.

    ``{"class": "module.QualName", "source_sha256", "modules"}`` from
    :func:`an8flower.code_identity.code_identity` (the SHA-256 of the class's import closure:
    within this package for built-in explainers, within the user's own folder or package for
    theirs), plus ``"library"``: what the class's optional ``cache_identity()`` classmethod returns
    (adapters give their library's name and version).
    """
    identity: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}", **code_identity(cls)}
    extra = getattr(cls, "cache_identity", None)
    if callable(extra):
        identity["library"] = extra()
    return identity


@dataclass(frozen=True)
class ExplainerSpec:
    """One requested explainer, resolved: what every stage after the command line takes.

    Attributes:
        row: the name as requested, the leaderboard's row (``"vebi[k=1]"``).
        base: the explainer's registered or adapter name (``"vebi"``).
        cls: its class.
        options: the options requested for it (run's for ``base``, run's for ``row``, the
            variant's), checked against ``cls``'s constructor; read-only.
        code_identity: :func:`explainer_code_identity` of ``cls``; read-only.
        needs_fit: it must be fitted (``fit(model, loader)``) before it explains.
        amp_safe: it may run under mixed precision (the leaderboard's ``amp``).
        reference: a reference row (``oracle``, ``random``, ``centre``), not a method.
    """

    row: str
    base: str
    cls: type[Explainer]
    options: Mapping[str, Any]
    code_identity: Mapping[str, Any] = field(repr=False)
    needs_fit: bool
    amp_safe: bool
    reference: bool

    @classmethod
    def resolve(cls, row: str, run_options: RunOptions = MappingProxyType({})) -> ExplainerSpec:
        """The spec of the requested name ``row`` under a run's ``explainer_options``.

        Raises:
            UsageError: a malformed variant, an unknown explainer (or adapter library not
                installed, naming its extra), an option the constructor does not take or of the
                wrong type, naming the option and ``row``.
        """
        base, variant = split_explainer_name(row)
        klass = explainer_class(base)
        options = {**run_options.get(base, {}), **(run_options.get(row, {}) if variant else {}), **variant}
        check_options(f"explainer {row!r}", klass, options)
        return cls(row=row, base=base, cls=klass, options=MappingProxyType(options),
                   code_identity=MappingProxyType(explainer_code_identity(klass)),
                   needs_fit=bool(klass.requires_fit), amp_safe=bool(klass.amp_safe), reference=bool(klass.reference))

    def takes(self, option: str) -> bool:
        """Whether the constructor has a parameter ``option`` (``layer``, ``seed``, ...)."""
        return option in inspect.signature(self.cls.__init__).parameters

    def completed(self, defaults: Mapping[str, Any] = MappingProxyType({}), **supplied: Any) -> dict[str, Any]:
        """The options the explainer is built with.

        ``defaults`` (e.g. the dataset's recommended values) under :attr:`options`; then each
        ``supplied`` value (a model's CAM ``layer``, the run's ``seed``) that the constructor takes,
        the options do not set, and is not None.
        """
        options = {**defaults, **self.options}
        for name, value in supplied.items():
            if value is not None and name not in options and self.takes(name):
                options[name] = value
        return options

    def build(self, options: Mapping[str, Any] | None = None) -> Explainer:
        """An explainer of this spec with ``options`` (default: :attr:`options`)."""
        return self.cls(**dict(self.options if options is None else options))

    def key(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The explainer's part of a cache key: row, ``options`` completed with the constructor's
        defaults (:func:`~an8flower.baselines.base.complete_options`), code identity."""
        return {"name": self.row, "options": complete_options(self.cls.__init__, options, skip=1),
                "code": dict(self.code_identity)}


def default_explainers() -> list[str]:
    """The explainers a run without an explainer list scores: every registered one, ``oracle`` (the
    ceiling) first, then by name."""
    return sorted(list_explainers(), key=lambda n: n != ORACLE)


def resolve_explainers(rows: Sequence[str] | None,
                       run_options: RunOptions = MappingProxyType({})) -> list[ExplainerSpec]:
    """The specs of the requested ``rows`` (duplicates dropped), checking every table of ``run_options``.

    ``rows=None`` means :func:`default_explainers`. A table of
    ``run_options`` for an explainer that is not requested is checked too (its name must exist,
    its options must fit), so a typo in a config file fails at once.
    """
    names = list(dict.fromkeys(rows)) if rows is not None else default_explainers()
    specs = [ExplainerSpec.resolve(name, run_options) for name in names]
    for name in run_options:
        if name not in names:
            try:
                ExplainerSpec.resolve(name, run_options)
            except UsageError as exc:
                raise UsageError(f"explainer_options: {exc}") from None
    return specs
