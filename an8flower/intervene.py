"""Counterfactual interventions: a sample re-rendered with one part changed, everything else identical.

Rendering is a pure function of ``(spec, seed, index, label)`` (:mod:`an8flower.render`), so any
sample can be drawn again with one thing changed and every other random draw, hence the
geometry, the lighting, the noise and every other colour, exactly as in
``render(spec, seed, index, size)``:

* ``label=c`` paints the discriminative parts in class ``c``'s colours (the counterfactual "the
  same flower, of another class");
* ``recolour={"petals": "red", "leaves": (12, 200, 40)}`` gives a part another base colour (a
  colour name of the spec or an RGB triple), before the part's colour jitter and the lighting.
  ``background`` replaces both background colours; ``clutter`` the colour of every clutter shape
  and occluding blade;
* ``remove=["leaves"]`` leaves a part out: its random draws are made, nothing of it is painted,
  and what was under it shows (the background, or the parts drawn before it). The background
  cannot be removed.

The accepted visibility attempt is the original's (the renderer's visibility test counts the hard
part map of the unchanged scene), so an intervention never moves or reshapes anything.

**The label of an intervened sample** is the class the spec's rule gives for the colours its
discriminative parts end up with. It is **undefined** (``Sample.label == -1``, ``meta["label"]``
and ``meta["class"]`` ``None``) when a discriminative part is given a combination of colours no
class has (an RGB triple counts as the spec colour it equals, if any), or when a discriminative
part is removed. Removing a discriminative part hides the evidence of the class, so it is refused
(:class:`~an8flower.errors.UsageError`) unless ``allow_invisible=True`` (model reliance uses it,
:mod:`an8flower.eval.reliance`).

**Mask and part map** are those of the intervened image, with the renderer's exact guarantee (no
pixel outside the mask depends on the discriminative colours). A label change or a recolour of a
discriminative part keeps them byte-identical; a removed part leaves the mask where it occluded a
discriminative part, which then shows; a recoloured nuisance part keeps them, except that where its
anti-aliased edge lies over a discriminative part's edge, the rounding of the blend depends on
its colour and can decide whether a faint trace of the discriminative part survives (about 2% of
``double-12c`` images at 64 px, one pixel each).

``meta`` is the renderer's, with ``<part>_colour`` / ``<part>_rgb`` as drawn, ``label`` and
``class`` of the result, ``original_label``, and ``intervention``: ``{"label": c or None,
"recolour": {part: colour name or "rgb(r,g,b)"}, "remove": [parts]}``.

:func:`intervene_many` renders many ``(index, change)`` pairs with a spawned worker pool, in the
order given, with the same bytes whatever the worker count.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import numbers
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from an8flower.errors import UsageError
from an8flower.render import Sample, SceneChange, class_of, render, render_as
from an8flower.spec import MAX_SIZE, MIN_SIZE, VariantSpec, check_seed

__all__ = ["Intervention", "intervene", "intervene_many", "class_for_colours", "farthest_nonclass_colour",
           "UNDEFINED"]

#: ``Sample.label`` of an intervened sample whose class the spec's rule does not define.
UNDEFINED = -1

Colour = str | Sequence[int]


@dataclass(frozen=True)
class Intervention:
    """One change of sample ``index`` (the keyword arguments of :func:`intervene`).

    Attributes:
        index: the sample index.
        label: class index or name to paint the discriminative parts with (None: the sample's).
        recolour: ``{part: colour name or (r, g, b)}``.
        remove: parts to leave out.
        allow_invisible: permit removing a discriminative part (the label is then undefined).
    """

    index: int
    label: int | str | None = None
    recolour: Mapping[str, Colour] | None = None
    remove: Sequence[str] | None = None
    allow_invisible: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {"label": self.label, "recolour": self.recolour, "remove": self.remove,
                "allow_invisible": self.allow_invisible}


def class_for_colours(spec: VariantSpec, colours: Mapping[str, str | None]) -> int | None:
    """The class the spec's rule gives to these discriminative colours, or None if none does.

    Args:
        spec: the variant.
        colours: ``{discriminative part: colour name}``; a part missing or ``None`` (removed, or an
            unnamed RGB) has no class.
    """
    key = tuple(colours.get(p) for p in spec.discriminative)
    for label, cols in enumerate(spec.class_colours):
        if cols == key:
            return label
    return None


def farthest_nonclass_colour(spec: VariantSpec) -> str:
    """The colour of the spec's table farthest from every class colour (not itself one).

    ``argmax_c min_k ||rgb(c) - rgb(k)||`` over the colours ``c`` that no class gives to any
    discriminative part, ``k`` ranging over those class colours (Euclidean RGB distance; ties:
    the first name). Recolouring a part to it changes the part as much as the table allows while
    never painting a colour that means a class: the intervention of model reliance.

    Raises:
        UsageError: every colour of the table is a class colour.
    """
    class_cols = {c for cols in spec.class_colours for c in cols}
    refs = np.array([spec.rgb(c) for c in sorted(class_cols)], np.float64)
    best, best_d = None, -1.0
    for name, rgb in spec.colours:
        if name in class_cols:
            continue
        d = float(np.sqrt(((refs - np.array(rgb, np.float64)) ** 2).sum(axis=1)).min())
        if d > best_d:
            best, best_d = name, d
    if best is None:
        raise UsageError(f"spec {spec.name!r}: every colour of its table is a class colour")
    return best


def _resolve_colour(spec: VariantSpec, part: str, value: Colour) -> tuple[str, tuple[int, int, int]]:
    """``(name, rgb)`` of a colour name or RGB triple; an RGB equal to a spec colour takes its name."""
    if isinstance(value, str):
        try:
            return value, spec.rgb(value)
        except KeyError:
            raise UsageError(f"recolour {part}={value!r}: unknown colour (the spec's colours: "
                             f"{', '.join(n for n, _ in spec.colours)}; or give an RGB triple)") from None
    try:
        rgb = tuple(value)
    except TypeError:
        raise UsageError(f"recolour {part}: expected a colour name or an (r, g, b) triple, got {value!r}") from None
    if len(rgb) != 3 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v <= 255
                                for v in rgb):
        raise UsageError(f"recolour {part}: an RGB colour is three integers in 0..255, got {value!r}")
    r, g, b = (int(v) for v in rgb)
    for name, named in spec.colours:
        if named == (r, g, b):
            return name, (r, g, b)
    return f"rgb({r},{g},{b})", (r, g, b)


def _resolve_label(spec: VariantSpec, label: int | str) -> int:
    if isinstance(label, str):
        if label in spec.classes:
            return spec.classes.index(label)
        try:
            label = int(label)
        except ValueError:
            raise UsageError(f"label {label!r}: not a class of {spec.name} "
                             f"(classes: {', '.join(spec.classes)})") from None
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < spec.num_classes:
        raise UsageError(f"label {label!r}: expected a class index in 0..{spec.num_classes - 1} or a class name")
    return int(label)


def _check_part(spec: VariantSpec, part: Any, what: str) -> str:
    if not isinstance(part, str) or part not in spec.parts:
        raise UsageError(f"{what} {part!r}: unknown part (the parts of {spec.name}: {', '.join(spec.parts)})")
    return part


def _plan(spec: VariantSpec, index: int, label: int | str | None, recolour: Mapping[str, Colour] | None,
          remove: Iterable[str] | None, allow_invisible: bool) -> tuple[int, SceneChange, int | None, dict]:
    """Check an intervention; ``(label to paint, change, resulting label or None, meta record)``."""
    if recolour is not None and not isinstance(recolour, Mapping):
        raise UsageError(f"recolour must map part names to colours, got {type(recolour).__name__}")
    if isinstance(remove, str):
        remove = [remove]
    removed = sorted({_check_part(spec, p, "remove") for p in (remove or ())})
    if "background" in removed:
        raise UsageError("remove 'background': the background cannot be removed (recolour it instead)")
    colours = []
    for part, value in (recolour or {}).items():
        _check_part(spec, part, "recolour")
        if part in removed:
            raise UsageError(f"recolour {part!r}: the part is also removed")
        colours.append((part, *_resolve_colour(spec, part, value)))
    for part in removed:
        if part in spec.discriminative and not allow_invisible:
            raise UsageError(f"remove {part!r}: {part} is a discriminative part of {spec.name}; without it the "
                             "class is undefined (pass allow_invisible=True to render it anyway)")
    paint = class_of(spec, index) if label is None else _resolve_label(spec, label)
    final: dict[str, str | None] = dict(zip(spec.discriminative, spec.class_colours[paint], strict=True))
    for part, name, _ in colours:
        if part in final:
            final[part] = name
    for part in removed:
        final[part] = None
    result = class_for_colours(spec, final)
    record = {"label": None if label is None else paint,
              "recolour": {part: name for part, name, _ in sorted(colours)}, "remove": removed}
    return paint, SceneChange(colours=tuple(sorted(colours)), removed=frozenset(removed)), result, record


def _check_args(seed: Any, index: Any, size: Any, spec: VariantSpec) -> tuple[int, int, int]:
    size = spec.size if size is None else size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise UsageError(f"size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise UsageError(f"index must be a non-negative integer, got {index!r}")
    return check_seed(seed), int(index), int(size)


def intervene(spec: VariantSpec, seed: int, index: int, size: int | None = None, *,
              label: int | str | None = None, recolour: Mapping[str, Colour] | None = None,
              remove: Iterable[str] | None = None, allow_invisible: bool = False) -> Sample:
    """Sample ``index`` of ``(spec, seed)`` re-rendered with the given changes (see the module docstring).

    With no change it is ``render(spec, seed, index, size)``, byte for byte.

    Args:
        spec: the variant. seed, index, size: as :func:`an8flower.render.render`.
        label: paint the discriminative parts as this class (index or name).
        recolour: ``{part: colour}``, a colour name of the spec or an ``(r, g, b)`` triple; the base
            colour before jitter and lighting.
        remove: parts to leave out (a name or a list).
        allow_invisible: permit removing a discriminative part (the label is then undefined).

    Returns:
        The intervened :class:`~an8flower.render.Sample`; ``label`` is the class by the spec's
        rule or :data:`UNDEFINED` (-1); ``meta["intervention"]`` records the change.

    Raises:
        UsageError: an unknown part, colour, class or bad argument (the message names it); removing
            the background; recolouring a removed part; removing a discriminative part without
            ``allow_invisible``.
    """
    seed, index, size = _check_args(seed, index, size, spec)
    paint, change, result, record = _plan(spec, index, label, recolour, remove, allow_invisible)
    if not change.colours and not change.removed:
        sample = render(spec, seed, index, size) if paint == class_of(spec, index) else \
            render_as(spec, seed, index, size, paint)
    else:
        sample = render_as(spec, seed, index, size, paint, change)
    meta = {**sample.meta, "label": result, "class": None if result is None else spec.classes[result],
            "original_label": class_of(spec, index), "intervention": record}
    return dataclasses.replace(sample, label=UNDEFINED if result is None else result, meta=meta)


# --------------------------------------------------------------------------------------------
# many at once

_POOL_SPEC: tuple[VariantSpec, int, int | None] | None = None


def _init_pool(spec: VariantSpec, seed: int, size: int | None) -> None:
    global _POOL_SPEC
    _POOL_SPEC = (spec, seed, size)


def _render_all(spec: VariantSpec, seed: int, size: int | None, items: Sequence[Intervention]) -> list[Sample]:
    return [intervene(spec, seed, it.index, size, **it.kwargs()) for it in items]


def _render_chunk(items: Sequence[Intervention]) -> list[Sample]:
    assert _POOL_SPEC is not None, "worker not initialised"
    return _render_all(*_POOL_SPEC, items)


def _as_intervention(item: Any) -> Intervention:
    if isinstance(item, Intervention):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Mapping):
        unknown = sorted(set(item[1]) - {"label", "recolour", "remove", "allow_invisible"})
        if unknown:
            raise UsageError(f"intervention {item!r}: unknown key {unknown[0]!r} "
                             "(keys: label, recolour, remove, allow_invisible)")
        return Intervention(item[0], **item[1])
    raise UsageError(f"expected an Intervention or an (index, {{change}}) pair, got {item!r}")


def intervene_many(spec: VariantSpec, seed: int, items: Iterable[Any], size: int | None = None,
                   workers: int | None = None) -> list[Sample]:
    """:func:`intervene` for many ``(index, change)`` pairs, with a worker pool; results in input order.

    Args:
        spec, seed, size: as :func:`intervene`.
        items: :class:`Intervention` objects or ``(index, {"label": ..., "recolour": ...,
            "remove": ..., "allow_invisible": ...})`` pairs.
        workers: processes (default: :func:`an8flower.generate.default_workers`); 1 renders in this
            process. Workers are spawned (safe beside threads and torch), so the first call pays
            their start-up: batch many items per call.

    Returns:
        One :class:`~an8flower.render.Sample` per item, in order; the same bytes whatever
        ``workers``.

    Raises:
        UsageError: as :func:`intervene`, for the first bad item (checked before any rendering).
    """
    from an8flower.generate import default_workers

    todo = [_as_intervention(it) for it in items]
    for it in todo:  # every argument error before any work
        _check_args(seed, it.index, size, spec)
        _plan(spec, int(it.index), it.label, it.recolour, it.remove, it.allow_invisible)
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be a positive integer, got {workers!r}")
    n = min(workers, len(todo))
    if n <= 1:
        return _render_all(spec, seed, size, todo)
    step = max(1, -(-len(todo) // (4 * n)))
    chunks = [todo[i:i + step] for i in range(0, len(todo), step)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_pool, initargs=(spec, seed, size)) as pool:
        return [s for chunk in pool.map(_render_chunk, chunks) for s in chunk]
