"""Variant specs: the frozen, serialisable description of an an8Flower variant.

A variant is fixed by its :class:`VariantSpec`:

* ``parts``: the part names, ``parts[0] == "background"``; a part's id in the part maps is its
  position in this tuple. The renderer knows the parts ``background``, ``clutter``, ``stem``,
  ``leaves``, ``petals`` and ``centre`` and draws them in that painter's order (``clutter`` is drawn
  twice: behind the flower and, as a few thin occluders, in front of it).
* ``colours``: named RGB colours; palettes and the class rule refer to colours by name.
* the **class rule**: ``class_colours[c]`` gives, for class ``c``, the colour of every
  discriminative part. The class of an image is a function of the colours of the discriminative
  parts only; every combination names one class (no two classes share a combination).
* **class colours stay apart**: two colours that the rule uses for the same discriminative part
  (so that they tell two classes apart) must remain distinguishable after every jitter and
  lighting draw, in at least one channel. A class colour ``c`` is rendered, per channel ``k``, as
  ``(c_k + j_k) * g * t_k`` with jitter ``|j_k| <= J`` (``nuisance.class_jitter`` max, clipped to
  0..255), grey lighting ``g`` in ``[1 - a, 1 + a]`` (``nuisance.illumination`` max) and tint
  ``t_k`` in ``[1 - t, 1 + t]`` (``nuisance.tint`` max), so it lies in the interval
  ``[max(0, c_k - J) * (1 - a)(1 - t), min(255, c_k + J) * (1 + a)(1 + t)]``. Two colours are
  accepted when, in some channel, their intervals are separated by more than
  :data:`CLASS_COLOUR_MARGIN` (2 levels: one for the uint8 rounding of each colour and of the
  fixed-point lighting). Otherwise some pair of draws paints both classes in the same colour and
  no classifier can tell them apart from the part's colour; the spec is refused naming both
  colours. (The built-ins pass with at least 43 levels to spare: single-6c's blue and cyan in
  green.)
* ``palettes``: for every *nuisance* part (each part that is neither the background, nor clutter,
  nor discriminative) and for ``background`` and ``clutter``, a weighted set of colour names that
  part's colour is drawn from, independently of the class. Every nuisance palette must contain
  every class colour of every discriminative part, so that the mere presence of a colour in the
  image does not reveal the class: a model has to look at the right part.
* ``nuisance``: the ranges of every class-independent attribute (pose, scale, petal count and
  shape, leaf placement, lighting, background kind, clutter, occluders, colour jitter) and the
  visibility guarantee of the discriminative parts.

Specs round-trip through :meth:`VariantSpec.to_dict` / :meth:`VariantSpec.from_dict` and through a
canonical JSON text (:meth:`VariantSpec.to_json`, sorted keys, fixed separators): the same spec
always gives the same bytes and :meth:`VariantSpec.sha256`. :func:`load_spec` reads a built-in
variant by name or a user's ``.json`` / ``.toml`` spec file.

Built-in variants (``an8flower/specs/*.json``):

* ``single-6c``: 6 classes, decided by the colour of the flower **centre** (red, yellow, green,
  cyan, blue, magenta: six hues 60 degrees apart).
* ``double-12c``: 12 classes, decided by the pair (colour of the **centre**, colour of the
  **leaves**): centre in {red, yellow, blue, magenta} x leaves in {green, orange, purple}. The two
  parts are spatially separate, so an explanation must cover both.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import os
import re
import reprlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from an8flower.errors import DatasetFormatError, DatasetNotFoundError, SpecError, UsageError
from an8flower.untrusted import read_bounded

__all__ = [
    "KNOWN_PARTS",
    "BACKGROUND_KINDS",
    "PETAL_SHAPES",
    "Nuisance",
    "VariantSpec",
    "load_spec",
    "resolve_spec",
    "check_seed",
    "MAX_SEED",
    "builtin_variants",
    "CLASS_COLOUR_MARGIN",
    "class_colour_range",
    "class_colour_gap",
]

#: Parts the renderer can draw, in painter's order (clutter is also drawn in front of the flower).
KNOWN_PARTS: tuple[str, ...] = ("background", "clutter", "stem", "leaves", "petals", "centre")
#: Parts that must be present in every spec.
REQUIRED_PARTS: tuple[str, ...] = ("background", "stem", "leaves", "petals", "centre")
#: Parts that may decide the class (the background and clutter may not).
DISCRIMINABLE_PARTS: tuple[str, ...] = ("stem", "leaves", "petals", "centre")
#: Kinds of background the renderer can paint.
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "noise", "clutter")
#: Petal outlines the renderer can draw.
PETAL_SHAPES: tuple[str, ...] = ("ellipse", "pointed", "round", "notched")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MIN_SIZE, MAX_SIZE = 64, 512
#: Largest dataset seed: seeds are 63-bit non-negative integers (the range of a signed 64-bit
#: integer, which every tool that stores one keeps exactly).
MAX_SEED = 2**63 - 1
#: Largest spec file read (the built-in ones are about 6 KB).
SPEC_MAX_BYTES = 1 << 20
#: Levels (0..255) by which two class colours of one part must stay apart in some channel after
#: the worst-case jitter and lighting (see the module docstring).
CLASS_COLOUR_MARGIN = 2


def _fail(field: str, problem: str) -> SpecError:
    return SpecError(f"spec field {_show(field)}: {problem}")


#: How a value from a spec file is shown in an error: nesting, strings and integers abbreviated, so
#: that a 400-digit number or a list nested 100,000 deep makes a short message.
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 3, 80, 80, 40


def _show(value: Any) -> str:
    return _SHOW.repr(value)


def _range(value: Any, field: str, *, integer: bool, lo: float, hi: float) -> tuple:
    """Validate a ``[min, max]`` pair inside ``[lo, hi]``."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _fail(field, f"expected a [min, max] pair, got {_show(value)}")
    out = [_number(v, field, lo=lo, hi=hi, integer=integer, shown=value) for v in value]
    if out[0] > out[1]:
        raise _fail(field, f"min > max in {_show(value)}")
    return tuple(out)


def _number(value: Any, field: str, *, lo: float, hi: float, integer: bool = False, shown: Any = None):
    """``value`` as an int or float inside ``[lo, hi]``. Integers are compared as integers (exact,
    and no ``OverflowError`` for a 400-digit one); floats must be finite. ``shown``: what the
    message quotes (default ``value``)."""
    kind = ("integers" if integer else "numbers") if shown is not None else ("an integer" if integer else "a number")
    shown = _show(value if shown is None else shown)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, f"expected {kind}, got {shown}")
    if isinstance(value, float) and (not math.isfinite(value) or (integer and not value.is_integer())):
        raise _fail(field, f"expected finite {kind}, got {shown}" if not math.isfinite(value) else
                    f"expected {kind}, got {shown}")
    if not lo <= value <= hi:
        raise _fail(field, f"must lie in [{lo}, {hi}], got {shown}")
    return int(value) if integer else float(value)


def _weights(value: Any, field: str, allowed: tuple[str, ...] | None = None) -> tuple:
    """Validate a ``{name: weight}`` mapping into a sorted tuple of ``(name, weight)`` pairs."""
    if not isinstance(value, Mapping) or not value:
        raise _fail(field, f"expected a non-empty {{name: weight}} table, got {_show(value)}")
    out = []
    for name, w in value.items():
        if not isinstance(name, str):
            raise _fail(field, f"names must be strings, got {_show(name)}")
        if allowed is not None and name not in allowed:
            raise _fail(field, f"unknown entry {_show(name)} (known: {', '.join(allowed)})")
        w = _number(w, f"{field}.{name}", lo=0.0, hi=1e6)
        if w <= 0:
            raise _fail(f"{field}.{name}", f"weights must be > 0, got {_show(w)}")
        out.append((name, w))
    return tuple(sorted(out))


#: Fields of :class:`Nuisance`: kind ("int", "float", "weights") and the admissible bounds.
_NUISANCE_FIELDS: dict[str, tuple[str, float, float]] = {
    "head_x": ("float", 0.0, 1.0),
    "head_y": ("float", 0.0, 1.0),
    "scale": ("float", 0.3, 2.0),
    "rotation_deg": ("float", -360.0, 360.0),
    "head_squash": ("float", 0.5, 1.0),
    "petal_count": ("int", 3, 24),
    "petal_length": ("float", 0.02, 0.5),
    "petal_width": ("float", 0.05, 1.0),
    "petal_layers": ("int", 1, 2),
    "centre_radius": ("float", 0.02, 0.25),
    "stem_width": ("float", 0.004, 0.08),
    "stem_curvature": ("float", -0.5, 0.5),
    "leaf_count": ("int", 0, 6),
    "leaf_length": ("float", 0.02, 0.5),
    "leaf_width": ("float", 0.05, 1.0),
    "leaf_position": ("float", 0.0, 1.0),
    "leaf_angle_deg": ("float", 0.0, 90.0),
    "leaf_bend": ("float", -0.5, 0.5),
    "illumination": ("float", 0.0, 0.3),
    "tint": ("float", 0.0, 0.1),
    "clutter_count": ("int", 0, 40),
    "occluder_count": ("int", 0, 8),
    "class_jitter": ("int", 0, 40),
    "nuisance_jitter": ("int", 0, 80),
}
_NUISANCE_SCALARS: dict[str, tuple[str, float, float]] = {
    "min_visible_fraction": ("float", 0.0, 1.0),
    "min_visible_area": ("float", 0.0, 0.2),
}


@dataclass(frozen=True)
class Nuisance:
    """Distributions of the class-independent attributes of a sample.

    Ranges are ``(min, max)`` pairs, sampled uniformly (integers inclusive). Lengths are fractions
    of the image side (times ``scale``); widths are fractions of the matching length.

    Attributes:
        head_x, head_y: position of the flower head (centre of the centre disc).
        scale: overall size factor of the flower.
        rotation_deg: rotation of the petal ring about the head.
        head_squash: foreshortening of the head (petals and centre) along a random axis, as the
            ratio of its short to its long axis (1 = seen face-on).
        petal_count, petal_length, petal_width, petal_layers: the corolla; with two layers the
            second ring is shorter, rotated by half a petal and drawn on top.
        petal_shapes: weights of the petal outlines (``ellipse``, ``pointed``, ``round``,
            ``notched``).
        centre_radius: radius of the centre disc.
        stem_width, stem_curvature: the stem, a quadratic Bezier curve from the head to below the
            bottom edge; curvature is the lateral offset of its control point.
        leaf_count, leaf_length, leaf_width: leaves along the stem.
        leaf_position: where leaves attach, as a fraction of the stem from the head (0) to the
            bottom edge (1).
        leaf_angle_deg: angle between a leaf and the horizontal, pointing up.
        leaf_bend: sideways bend of a leaf's midrib, as a fraction of its length.
        illumination: amplitude ``a`` of the smooth multiplicative grey lighting field, which lies
            in ``[1 - a, 1 + a]``.
        tint: amplitude of a per-channel factor of the same field (a mild colour cast).
        backgrounds: weights of the background kinds (``plain``, ``gradient``, ``noise``,
            ``clutter``).
        clutter_count: number of clutter shapes painted behind the flower on a ``clutter``
            background (triangles, quadrilaterals, bars, zig-zags: never discs, ellipses or leaves).
        occluder_count: thin blades drawn in front of the flower, which may partly hide any part.
        class_jitter: per-channel uniform jitter (+-, 0..255 units) of the class colours.
        nuisance_jitter: per-channel uniform jitter of every other colour.
        min_visible_fraction: each discriminative part keeps at least this fraction of its own
            (unoccluded) area visible.
        min_visible_area: ... and at least this fraction of the image area.
    """

    head_x: tuple[float, float] = (0.38, 0.62)
    head_y: tuple[float, float] = (0.28, 0.42)
    scale: tuple[float, float] = (0.85, 1.15)
    rotation_deg: tuple[float, float] = (0.0, 360.0)
    head_squash: tuple[float, float] = (0.8, 1.0)
    petal_count: tuple[int, int] = (5, 12)
    petal_length: tuple[float, float] = (0.15, 0.21)
    petal_width: tuple[float, float] = (0.3, 0.55)
    petal_layers: tuple[int, int] = (1, 2)
    petal_shapes: tuple[tuple[str, float], ...] = (
        ("ellipse", 1.0), ("notched", 1.0), ("pointed", 1.0), ("round", 1.0))
    centre_radius: tuple[float, float] = (0.07, 0.09)
    stem_width: tuple[float, float] = (0.018, 0.03)
    stem_curvature: tuple[float, float] = (-0.18, 0.18)
    leaf_count: tuple[int, int] = (1, 3)
    leaf_length: tuple[float, float] = (0.14, 0.22)
    leaf_width: tuple[float, float] = (0.3, 0.45)
    leaf_position: tuple[float, float] = (0.35, 0.8)
    leaf_angle_deg: tuple[float, float] = (10.0, 50.0)
    leaf_bend: tuple[float, float] = (-0.2, 0.2)
    illumination: tuple[float, float] = (0.0, 0.18)
    tint: tuple[float, float] = (0.0, 0.04)
    backgrounds: tuple[tuple[str, float], ...] = (
        ("clutter", 1.0), ("gradient", 1.0), ("noise", 1.0), ("plain", 1.0))
    clutter_count: tuple[int, int] = (4, 12)
    occluder_count: tuple[int, int] = (0, 2)
    class_jitter: tuple[int, int] = (0, 12)
    nuisance_jitter: tuple[int, int] = (0, 24)
    min_visible_fraction: float = 0.5
    min_visible_area: float = 0.004

    def to_dict(self) -> dict:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("petal_shapes", "backgrounds"):
                d[f.name] = {k: w for k, w in v}
            elif isinstance(v, tuple):
                d[f.name] = list(v)
            else:
                d[f.name] = v
        return d

    @classmethod
    def from_dict(cls, d: Any, prefix: str = "nuisance") -> Nuisance:
        if not isinstance(d, Mapping):
            raise _fail(prefix, f"expected a table, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise _fail(f"{prefix}.{unknown[0]}", "unknown field")
        kw: dict[str, Any] = {}
        for name, value in d.items():
            field = f"{prefix}.{name}"
            if name == "petal_shapes":
                kw[name] = _weights(value, field, PETAL_SHAPES)
            elif name == "backgrounds":
                kw[name] = _weights(value, field, BACKGROUND_KINDS)
            elif name in _NUISANCE_SCALARS:
                _, lo, hi = _NUISANCE_SCALARS[name]
                kw[name] = _number(value, field, lo=lo, hi=hi)
            else:
                kind, lo, hi = _NUISANCE_FIELDS[name]
                kw[name] = _range(value, field, integer=kind == "int", lo=lo, hi=hi)
        return cls(**kw)


@dataclass(frozen=True)
class VariantSpec:
    """A frozen, serialisable description of an an8Flower variant (see the module docstring).

    Attributes:
        name: variant name (filesystem-safe).
        size: default image side in pixels (64..512).
        parts: part names; a part's id in part maps is its position; ``parts[0] == "background"``.
        classes: class names (filesystem-safe, used as folder names), index = label.
        discriminative: names of the discriminative parts; the ground-truth mask is their visible
            pixels.
        colours: sorted ``(name, (r, g, b))`` pairs.
        class_colours: ``class_colours[c][j]`` is the colour name of ``discriminative[j]`` in class
            ``c``.
        palettes: sorted ``(part, ((colour, weight), ...))`` pairs, one per non-discriminative part.
        nuisance: the class-independent distributions.
        description: free text (shown in data cards).
    """

    name: str
    size: int
    parts: tuple[str, ...]
    classes: tuple[str, ...]
    discriminative: tuple[str, ...]
    colours: tuple[tuple[str, tuple[int, int, int]], ...]
    class_colours: tuple[tuple[str, ...], ...]
    palettes: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]
    nuisance: Nuisance = Nuisance()
    description: str = ""

    # ------------------------------------------------------------------ derived views
    @property
    def num_classes(self) -> int:
        """Number of classes K; labels are 0..K-1."""
        return len(self.classes)

    def part_id(self, part: str) -> int:
        """Id of ``part`` in the part maps (its position in :attr:`parts`)."""
        return self.parts.index(part)

    @functools.cached_property
    def discriminative_ids(self) -> tuple[int, ...]:
        """Part-map ids of the discriminative parts."""
        return tuple(self.parts.index(p) for p in self.discriminative)

    @functools.cached_property
    def _colour_table(self) -> dict[str, tuple[int, int, int]]:
        return dict(self.colours)

    @functools.cached_property
    def _palette_table(self) -> dict[str, tuple[tuple[str, float], ...]]:
        return dict(self.palettes)

    def rgb(self, colour: str) -> tuple[int, int, int]:
        """RGB triple of a named colour."""
        return self._colour_table[colour]

    def palette(self, part: str) -> tuple[tuple[str, float], ...]:
        """Weighted palette ``((colour, weight), ...)`` of a non-discriminative part."""
        return self._palette_table[part]

    def class_colour_rgb(self, label: int) -> dict[str, tuple[int, int, int]]:
        """``{discriminative part: RGB}`` of class ``label`` (before jitter and lighting)."""
        names = self.class_colours[label]
        table = dict(self.colours)
        return {p: table[c] for p, c in zip(self.discriminative, names, strict=True)}

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """A JSON-serialisable dict that :meth:`from_dict` turns back into an equal spec."""
        return {
            "name": self.name,
            "size": self.size,
            "parts": list(self.parts),
            "classes": list(self.classes),
            "discriminative": list(self.discriminative),
            "colours": {k: list(v) for k, v in self.colours},
            "class_colours": {
                c: dict(zip(self.discriminative, cols, strict=True))
                for c, cols in zip(self.classes, self.class_colours, strict=True)
            },
            "palettes": {p: {k: w for k, w in pal} for p, pal in self.palettes},
            "nuisance": self.nuisance.to_dict(),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, d: Any) -> VariantSpec:
        """Validate a dict (as :meth:`to_dict` makes, or as read from a spec file).

        ``class_colours`` maps each class name to ``{discriminative part: colour name}``; the order
        of ``classes`` gives the labels. ``nuisance`` fields that are left out take the defaults
        of :class:`Nuisance`.

        Raises:
            SpecError: naming the first missing, mistyped, unknown or inconsistent field.
        """
        if not isinstance(d, Mapping):
            raise SpecError(f"a spec must be a table/object, got {type(d).__name__}")
        required = ("name", "size", "parts", "classes", "discriminative", "colours",
                    "class_colours", "palettes")
        for key in required:
            if key not in d:
                raise _fail(key, "missing")
        allowed = set(required) | {"nuisance", "description"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise _fail(unknown[0], "unknown field")

        name = d["name"]
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise _fail("name", f"expected a filesystem-safe name, got {_show(name)}")
        size = _number(d["size"], "size", lo=MIN_SIZE, hi=MAX_SIZE, integer=True)

        parts = _str_list(d["parts"], "parts")
        if parts[0] != "background":
            raise _fail("parts", f"parts[0] must be 'background', got {_show(parts[0])}")
        for p in parts:
            if p not in KNOWN_PARTS:
                raise _fail("parts", f"unknown part {_show(p)} (known: {', '.join(KNOWN_PARTS)})")
        for p in REQUIRED_PARTS:
            if p not in parts:
                raise _fail("parts", f"missing required part {_show(p)}")
        if len(set(parts)) != len(parts):
            raise _fail("parts", "duplicate part names")

        disc = _str_list(d["discriminative"], "discriminative")
        for p in disc:
            if p not in parts:
                raise _fail("discriminative", f"unknown part {_show(p)} (not in parts)")
            if p not in DISCRIMINABLE_PARTS:
                raise _fail("discriminative",
                            f"part {_show(p)} cannot be discriminative "
                            f"(choose from {', '.join(DISCRIMINABLE_PARTS)})")
        if len(set(disc)) != len(disc):
            raise _fail("discriminative", "duplicate part names")

        colours_in = d["colours"]
        if not isinstance(colours_in, Mapping) or not colours_in:
            raise _fail("colours", "expected a non-empty {name: [r, g, b]} table")
        colours: list[tuple[str, tuple[int, int, int]]] = []
        for cname, rgb in colours_in.items():
            field = f"colours.{cname}"
            if not isinstance(cname, str) or not _SAFE_NAME.match(cname):
                raise _fail(field, "colour names must be filesystem-safe strings")
            if (not isinstance(rgb, (list, tuple)) or len(rgb) != 3
                    or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255
                           for v in rgb)):
                raise _fail(field, f"expected [r, g, b] integers in 0..255, got {_show(rgb)}")
            r, g, b = rgb
            colours.append((cname, (int(r), int(g), int(b))))
        colours_t = tuple(sorted(colours))
        colour_names = {c for c, _ in colours_t}

        classes = _str_list(d["classes"], "classes")
        for c in classes:
            if not _SAFE_NAME.match(c):
                raise _fail("classes", f"class name {_show(c)} is not filesystem-safe")
        if len(set(classes)) != len(classes):
            raise _fail("classes", "duplicate class names")
        if len(classes) < 2:
            raise _fail("classes", "need at least 2 classes")

        rule = d["class_colours"]
        if not isinstance(rule, Mapping):
            raise _fail("class_colours", "expected a {class: {part: colour}} table")
        extra = sorted(set(rule) - set(classes))
        if extra:
            raise _fail(f"class_colours.{extra[0]}", "not a class listed in 'classes'")
        class_colours: list[tuple[str, ...]] = []
        seen: dict[tuple[str, ...], str] = {}
        for c in classes:
            field = f"class_colours.{c}"
            if c not in rule:
                raise _fail(field, "missing (every class needs its part colours)")
            entry = rule[c]
            if not isinstance(entry, Mapping):
                raise _fail(field, "expected a {part: colour} table")
            if set(entry) != set(disc):
                raise _fail(field, f"must give exactly the discriminative parts {disc}, "
                                   f"got {sorted(entry)}")
            cols = []
            for p in disc:
                col = entry[p]
                if not isinstance(col, str) or col not in colour_names:
                    raise _fail(f"{field}.{p}", f"unknown colour {_show(col)}")
                cols.append(col)
            combination = tuple(cols)
            if combination in seen:
                raise _fail(field, f"same part colours as class {_show(seen[combination])}: the class rule "
                                   "must map each combination of colours to one class")
            seen[combination] = c
            class_colours.append(combination)

        pal_in = d["palettes"]
        if not isinstance(pal_in, Mapping):
            raise _fail("palettes", "expected a {part: {colour: weight}} table")
        nuisance_parts = [p for p in parts if p not in disc]
        for p in pal_in:
            if p not in parts:
                raise _fail(f"palettes.{p}", "unknown part (not in parts)")
            if p in disc:
                raise _fail(f"palettes.{p}", "a discriminative part takes its colour from the "
                                             "class rule, not from a palette")
        class_cols = sorted({c for cols in class_colours for c in cols})
        palettes = []
        for p in nuisance_parts:
            field = f"palettes.{p}"
            if p not in pal_in:
                raise _fail(field, "missing (every non-discriminative part needs a palette)")
            pal = _weights(pal_in[p], field)
            for cname, _ in pal:
                if cname not in colour_names:
                    raise _fail(f"{field}.{cname}", "unknown colour")
            if p not in ("background", "clutter"):
                names = {c for c, _ in pal}
                missing = [c for c in class_cols if c not in names]
                if missing:
                    raise _fail(field, f"lacks class colour {_show(missing[0])}: nuisance palettes "
                                       "must contain every class colour")
            palettes.append((p, pal))

        nuisance = Nuisance.from_dict(d.get("nuisance", {}))
        if "leaves" in disc and nuisance.leaf_count[0] < 1:
            raise _fail("nuisance.leaf_count", "must be >= 1 when the leaves are discriminative")
        _check_class_colours_apart(disc, class_colours, dict(colours_t), nuisance)
        description = d.get("description", "")
        if not isinstance(description, str):
            raise _fail("description", "expected a string")
        return cls(name=name, size=size, parts=parts, classes=classes, discriminative=disc,
                   colours=colours_t, class_colours=tuple(class_colours),
                   palettes=tuple(sorted(palettes)), nuisance=nuisance, description=description)

    def to_json(self) -> str:
        """Canonical JSON text: sorted keys, separators ``(",", ":")``, ASCII only."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def sha256(self) -> str:
        """Hex SHA-256 of :meth:`to_json` (UTF-8)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def with_size(self, size: int) -> VariantSpec:
        """The same spec with another default image side.

        Raises:
            UsageError: ``size`` is not an integer in 64..512.
        """
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not (
            MIN_SIZE <= size <= MAX_SIZE
        ):
            raise UsageError(f"size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {_show(size)}")
        return dataclasses.replace(self, size=int(size))


def class_colour_range(rgb: tuple[int, int, int], nuisance: Nuisance) -> tuple[tuple[float, float], ...]:
    """Per channel, the ``(lowest, highest)`` value a class colour can be rendered with.

    ``[max(0, c - J) * (1 - a)(1 - t), min(255, c + J) * (1 + a)(1 + t)]`` with ``J``, ``a`` and
    ``t`` the largest class jitter, illumination and tint of ``nuisance`` (module docstring).
    """
    jitter, a, t = nuisance.class_jitter[1], nuisance.illumination[1], nuisance.tint[1]
    low, high = (1.0 - a) * (1.0 - t), (1.0 + a) * (1.0 + t)
    return tuple((max(0, c - jitter) * low, min(255, c + jitter) * high) for c in rgb)


def class_colour_gap(rgb1: tuple[int, int, int], rgb2: tuple[int, int, int], nuisance: Nuisance) -> float:
    """The largest gap, over the channels, between the ranges of :func:`class_colour_range`
    (negative when the ranges overlap in every channel)."""
    return max(max(lo2 - hi1, lo1 - hi2) for (lo1, hi1), (lo2, hi2)
               in zip(class_colour_range(rgb1, nuisance), class_colour_range(rgb2, nuisance), strict=True))


def _check_class_colours_apart(disc: tuple[str, ...], class_colours: list[tuple[str, ...]],
                               table: dict[str, tuple[int, int, int]], nuisance: Nuisance) -> None:
    for j, part in enumerate(disc):
        used = sorted({cols[j] for cols in class_colours})
        for k, c1 in enumerate(used):
            for c2 in used[k + 1:]:
                gap = class_colour_gap(table[c1], table[c2], nuisance)
                if gap <= CLASS_COLOUR_MARGIN:
                    raise _fail("colours", (
                        f"class colours {_show(c1)} {list(table[c1])} and {_show(c2)} {list(table[c2])} of part {_show(part)} "
                        f"can be rendered alike: after jitter (+-{nuisance.class_jitter[1]}) and lighting "
                        f"(illumination {nuisance.illumination[1]:g}, tint {nuisance.tint[1]:g}) their channel "
                        f"ranges are at most {gap:.1f} levels apart, and must be more than {CLASS_COLOUR_MARGIN} "
                        "apart in some channel"))


def _str_list(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail(field, f"expected a non-empty list of strings, got {_show(value)}")
    for v in value:
        if not isinstance(v, str) or not v:
            raise _fail(field, f"expected strings, got {_show(v)}")
    return tuple(value)


def builtin_variants() -> list[str]:
    """Names of the built-in variants (``an8flower/specs/*.json``), sorted."""
    root = resources.files("an8flower") / "specs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def _read_spec_file(path: Path) -> Any:
    """The parsed spec file, read only when a regular file of at most :data:`SPEC_MAX_BYTES`."""
    try:
        raw = read_bounded(path, SPEC_MAX_BYTES, "spec file", follow=True)
    except DatasetNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except DatasetFormatError as exc:
        raise SpecError(str(exc)) from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(raw.decode("utf-8"))
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:
                import tomli as tomllib
            return tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise SpecError(f"{path}: not a spec: {suffix[1:].upper()} nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, TOMLDecodeError
        raise SpecError(f"{path}: not valid {suffix[1:].upper()} ({exc})") from None
    raise SpecError(f"{path}: spec files must end in .json or .toml")


def load_spec(name_or_path: str | os.PathLike[str]) -> VariantSpec:
    """A built-in variant by name (``"single-6c"``, ``"double-12c"``) or a ``.json``/``.toml`` file.

    Raises:
        SpecError: unknown variant, unreadable or malformed file; the message names the file (or
            variant) and the bad field.
    """
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and text in builtin_variants():
        ref = resources.files("an8flower") / "specs" / f"{text}.json"
        return VariantSpec.from_dict(json.loads(ref.read_text(encoding="utf-8")))
    path = Path(text)
    if path.suffix.lower() not in (".json", ".toml"):
        raise SpecError(f"unknown variant {_show(text)} (built-in: {', '.join(builtin_variants())}; "
                        "or give a .json/.toml spec file)")
    data = _read_spec_file(path)
    try:
        return VariantSpec.from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def resolve_spec(variant: str | os.PathLike[str] | VariantSpec, size: int | None = None) -> VariantSpec:
    """A spec from a built-in name, a spec file or a spec, at image side ``size`` if given.

    Raises:
        SpecError: unknown variant or bad spec file. UsageError: ``size`` outside 64..512.
    """
    spec = variant if isinstance(variant, VariantSpec) else load_spec(variant)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
            raise UsageError(f"size {_show(size)}: must be an integer number of pixels in {MIN_SIZE}..{MAX_SIZE}")
        spec = spec.with_size(size)
    return spec


def check_seed(seed: Any, name: str = "seed") -> int:
    """The one seed rule of the package: an integer in ``0..MAX_SEED`` (``2**63 - 1``).

    ``generate``, the on-the-fly dataset, ``intervene`` and ``verify`` (for ``dataset.json``'s seed)
    apply it, so a seed one accepts the others accept too.

    Raises:
        UsageError: ``"{name} {seed!r}: must be an integer in 0..2**63-1"``.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise UsageError(f"{name} {_show(seed)}: must be an integer in 0..2**63-1")
    return int(seed)
