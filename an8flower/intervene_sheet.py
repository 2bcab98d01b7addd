"""A counterfactual beside its original: the figure ``an8flower intervene`` writes.

:func:`write_intervention` re-renders one sample with a change (:func:`an8flower.intervene.intervene`)
and writes original | counterfactual | difference as a PNG (:func:`intervention_sheet`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from an8flower.errors import UsageError
from an8flower.intervene import intervene
from an8flower.manifest import atomic_write_bytes
from an8flower.render import render
from an8flower.show import label_font
from an8flower.spec import load_spec

__all__ = ["parse_colour", "parse_recolour", "intervention_sheet", "write_intervention", "InterventionResult"]

def parse_colour(text: str) -> Any:
    """A ``--recolour`` colour: a name, ``"r,g,b"`` or ``"#rrggbb"`` (names are checked later)."""
    text = text.strip()
    if text.startswith("#"):
        if len(text) != 7:
            raise UsageError(f"colour {text!r}: expected #rrggbb")
        try:
            return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
        except ValueError:
            raise UsageError(f"colour {text!r}: expected #rrggbb") from None
    if "," in text:
        try:
            return tuple(int(v) for v in text.split(","))
        except ValueError:
            raise UsageError(f"colour {text!r}: expected three integers r,g,b") from None
    return text


def intervention_sheet(original: Any, changed: Any, classes: Any, what: str) -> bytes:
    """PNG bytes: original | counterfactual | absolute difference, each with a caption.

    The difference is ``255 * sqrt(|a - b| / max |a - b|)`` per channel (black where equal); panels
    are enlarged by an integer factor (nearest neighbour) to at least 256 px.

    Args:
        original, changed: :class:`~an8flower.render.Sample` of the same size.
        classes: class names of the spec. what: a caption of the change.
    """
    a, b = original.image, changed.image
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    peak = int(diff.max())
    # square-root scale, the largest difference white: one-level differences still show
    diff_img = np.clip(255.0 * np.sqrt(diff / max(peak, 1)) + 0.5, 0, 255).astype(np.uint8)
    n_changed = int((diff > 0).any(axis=2).sum())
    size = a.shape[0]
    scale = max(1, -(-256 // size))
    side = size * scale
    pad = 8
    font = label_font(13)

    def cls(s: Any) -> str:
        return f"class {s.label} {classes[s.label]}" if s.label >= 0 else "class undefined"

    captions = [f"original: {cls(original)}", f"{what}: {cls(changed)}",
                f"|difference| (sqrt scale, max {peak}): {n_changed} px" if peak else "no difference"]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = math.ceil(max(probe.textbbox((0, 0), c, font=font)[3] for c in captions)) + pad
    width = max(3 * side + 4 * pad, sum(int(probe.textlength(c, font=font)) for c in captions) + 4 * pad)
    sheet = Image.new("RGB", (width, side + text_h + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = pad
    for caption, panel in zip(captions, (a, b, diff_img), strict=True):
        draw.text((x, pad), caption, fill=(0, 0, 0), font=font)
        big = Image.fromarray(panel).resize((side, side), Image.Resampling.NEAREST)
        sheet.paste(big, (x, pad + text_h))
        x += max(side, int(probe.textlength(caption, font=font))) + pad
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def parse_recolour(items: Sequence[str]) -> dict[str, Any]:
    """``PART=COLOUR`` items (``--recolour``) as ``{part: colour}`` (see :func:`parse_colour`)."""
    recolour = {}
    for item in items:
        part, sep, colour = item.partition("=")
        if not sep or not part or not colour:
            raise UsageError(f"--recolour {item!r}: expected PART=COLOUR")
        recolour[part.strip()] = parse_colour(colour)
    return recolour


@dataclass(frozen=True)
class InterventionResult:
    """What :func:`write_intervention` wrote: the spec's name, the change in words, the pixels changed
    and the labels before and after (-1: undefined)."""

    out: str
    variant: str
    index: int
    what: str
    pixels_changed: int
    label_before: int
    label_after: int


def write_intervention(variant: Any, index: int, out: str, *, seed: int = 0, size: int | None = None,
                       label: Any = None, recolour: dict[str, Any] | None = None,
                       remove: Sequence[str] | None = None, allow_invisible: bool = False) -> InterventionResult:
    """Render sample ``index`` of ``variant`` and its counterfactual; write :func:`intervention_sheet` to ``out``.

    Args:
        variant: a built-in name, a spec file or a :class:`~an8flower.spec.VariantSpec`.
        out: the PNG to write (atomically; its folder must exist). The other arguments are those of
            :func:`an8flower.intervene.intervene`.

    Raises:
        UsageError: ``out`` is not a writable ``.png`` path, or a bad change (naming it).
    """
    if not out.lower().endswith(".png"):
        raise UsageError(f"--out {out}: the sheet is a PNG; give a path ending in .png")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {out}: folder {folder} does not exist")
    spec = load_spec(variant)
    changed = intervene(spec, seed, index, size, label=label, recolour=recolour or None,
                        remove=list(remove) if remove else None, allow_invisible=allow_invisible)
    original = render(spec, seed, index, size)
    rec = changed.meta["intervention"]
    what = ", ".join([f"as class {rec['label']}"] * (rec["label"] is not None)
                     + [f"{p}={c}" for p, c in rec["recolour"].items()]
                     + [f"no {p}" for p in rec["remove"]]) or "unchanged"
    try:
        atomic_write_bytes(out, intervention_sheet(original, changed, spec.classes, what))
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write ({exc.strerror})") from None
    n = int((original.image != changed.image).any(axis=2).sum())
    return InterventionResult(out, spec.name, index, what, n, original.label, changed.label)
