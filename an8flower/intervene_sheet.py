"""The ``an8flower intervene`` command: one sample, its counterfactual and their difference.

Registration is light (argparse only); the handler imports the renderer and Pillow when it runs.
"""

from __future__ import annotations

import argparse
import io
import os
from typing import Any

__all__ = ["register", "parse_colour", "intervention_sheet"]

_EPILOG = """\
COLOUR is a colour name of the spec (red, white, slate, ...), an RGB triple "r,g,b" or "#rrggbb";
it is the part's base colour, before the colour jitter and the lighting. The background takes it
for both its colours; clutter for every clutter shape and occluding blade. A removed part is not
painted: what was under it shows. Everything else (pose, lighting, noise, other colours) stays.

The PNG shows the original, the counterfactual and their absolute difference per channel on a
square-root scale (the largest difference white), so that one-level differences still show.

examples:
  an8flower intervene double-12c --index 7 --label 0 --out cf.png
  an8flower intervene double-12c --index 7 --recolour petals=red --recolour stem=0,0,255 --out cf.png
  an8flower intervene single-6c --index 3 --size 224 --remove petals --out cf.png
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``intervene`` to the CLI."""
    p = subparsers.add_parser(
        "intervene",
        help="render a sample with one part changed (a counterfactual) beside the original",
        description="Re-render sample INDEX of an an8Flower variant with its class, a part's colour or a part's "
        "presence changed, every other pixel as in the original; write original | counterfactual | "
        "difference as a PNG.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("variant", metavar="VARIANT", help="built-in variant (single-6c, double-12c) or a .json/.toml spec file")
    p.add_argument("--index", required=True, metavar="I", help="sample index (its class is I mod K)")
    p.add_argument("--seed", default="0", metavar="S", help="dataset seed (default 0)")
    p.add_argument("--size", default=None, metavar="PX", help="image side, 64..512 (default: the spec's)")
    p.add_argument("--label", default=None, metavar="C", help="paint the discriminative parts as class C (index or name)")
    p.add_argument("--recolour", action="append", default=[], metavar="PART=COLOUR",
                   help="give PART the base colour COLOUR (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="PART", help="leave PART out (repeatable)")
    p.add_argument("--allow-invisible", action="store_true",
                   help="allow removing a discriminative part (the class is then undefined)")
    p.add_argument("--out", required=True, metavar="PNG", help="the PNG to write")
    p.set_defaults(func=_cmd_intervene)


def parse_colour(text: str) -> Any:
    """A ``--recolour`` colour: a name, ``"r,g,b"`` or ``"#rrggbb"`` (names are checked later)."""
    from an8flower.errors import UsageError

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
    import numpy as np
    from PIL import Image, ImageDraw

    from an8flower.show import _font

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
    font = _font(13)

    def cls(s: Any) -> str:
        return f"class {s.label} {classes[s.label]}" if s.label >= 0 else "class undefined"

    captions = [f"original: {cls(original)}", f"{what}: {cls(changed)}",
                f"|difference| (sqrt scale, max {peak}): {n_changed} px" if peak else "no difference"]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(probe.textbbox((0, 0), c, font=font)[3] for c in captions) + pad
    width = max(3 * side + 4 * pad, sum(int(probe.textlength(c, font=font)) for c in captions) + 4 * pad)
    sheet = Image.new("RGB", (width, side + text_h + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = pad
    for caption, panel in zip(captions, (a, b, diff_img)):
        draw.text((x, pad), caption, fill=(0, 0, 0), font=font)
        big = Image.fromarray(panel).resize((side, side), Image.Resampling.NEAREST)
        sheet.paste(big, (x, pad + text_h))
        x += max(side, int(probe.textlength(caption, font=font))) + pad
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _cmd_intervene(args: argparse.Namespace) -> int:
    from an8flower.commands import _int_arg
    from an8flower.errors import UsageError
    from an8flower.intervene import intervene
    from an8flower.manifest import atomic_write_bytes
    from an8flower.render import render
    from an8flower.spec import load_spec

    out = args.out
    if not out.lower().endswith(".png"):
        raise UsageError(f"--out {out}: the sheet is a PNG; give a path ending in .png")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {out}: folder {folder} does not exist")
    recolour = {}
    for item in args.recolour:
        part, sep, colour = item.partition("=")
        if not sep or not part or not colour:
            raise UsageError(f"--recolour {item!r}: expected PART=COLOUR")
        recolour[part.strip()] = parse_colour(colour)
    spec = load_spec(args.variant)
    index, seed = _int_arg(args.index, "--index", 0), _int_arg(args.seed, "--seed", 0)
    size = _int_arg(args.size, "--size", 0)
    changed = intervene(spec, seed, index, size, label=args.label, recolour=recolour or None,
                        remove=args.remove or None, allow_invisible=args.allow_invisible)
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
    print(f"wrote {out}: {spec.name} sample {index} ({what}): {n} pixels changed, "
          f"label {original.label} -> {changed.label if changed.label >= 0 else 'undefined'}")
    return 0
