"""Contact sheet of a generated dataset: a few images per class, each beside its mask."""

from __future__ import annotations

import io
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from an8flower.defaults import SHOW_PER_CLASS, SHOW_THUMB
from an8flower.errors import UsageError
from an8flower.layout import MAX_PER_CLASS
from an8flower.manifest import atomic_write_bytes, decode_png
from an8flower.spec import MAX_SIZE
from an8flower.verify import open_dataset, read_sample_file

__all__ = ["ALL_SPLITS", "SHEET_MAX_PIXELS", "mask_overlay", "contact_sheet", "write_contact_sheet"]

_PAD = 6
_BG = (255, 255, 255)
#: Largest contact sheet drawn: 50 Mpx, 150 MB as RGB (the default sheet of a 6-class dataset is
#: about 0.3 Mpx).
SHEET_MAX_PIXELS = 50_000_000


def mask_overlay(image: np.ndarray, mask: np.ndarray, dim: float = 0.25) -> np.ndarray:
    """The image with the pixels outside ``mask`` dimmed to ``dim`` of their value and the
    mask's boundary (mask pixels with a 4-neighbour outside it) drawn in white.

    Args:
        image: uint8 (H, W, 3). mask: bool (H, W).
    Returns:
        uint8 (H, W, 3).
    """
    mask = np.asarray(mask, dtype=bool)
    out = image.astype(np.float32)
    out[~mask] *= dim
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    out[mask & ~interior] = 255.0
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


#: ``split`` value of :func:`contact_sheet` that draws from every split.
ALL_SPLITS = "all"


def contact_sheet(root: str | os.PathLike[str], per_class: int = SHOW_PER_CLASS, split: str = ALL_SPLITS,
                  thumb: int = SHOW_THUMB) -> Image.Image:
    """Build the contact sheet of a dataset folder.

    A two-line title (variant, seed, size, split; the legend), then one row per class, labelled
    with its label and name; in each row the first ``per_class`` samples of the class in ``split``
    (by sample index), each as the image and, beside it, :func:`mask_overlay`. The sheet is wide
    enough for the title and the rows.

    Args:
        root: dataset folder. per_class: samples per class (>= 1; fewer are shown where the split
            holds fewer). split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (default: every
            split, so train samples come first). thumb: side of each thumbnail in pixels, 16..512
            (a sample is at most 512 px). The sheet's size is computed and refused above
            :data:`SHEET_MAX_PIXELS` before it is allocated.

    Raises:
        UsageError: bad ``per_class``/``split``/``thumb``, or a sheet above :data:`SHEET_MAX_PIXELS`. DatasetNotFoundError /
        DatasetFormatError: not a dataset, or one that is not what generate writes
        (:func:`an8flower.verify.open_dataset`), a sample file of the wrong size or outside the
        folder.
    """
    for name, value, lo, hi in (("per-class", per_class, 1, MAX_PER_CLASS), ("thumb", thumb, 16, MAX_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise UsageError(f"{name} {value!r}: must be an integer in {lo}..{hi:,}")
    info, spec, all_rows = open_dataset(root)
    classes: list[str] = list(info["classes"])
    rows = [r for r in all_rows if split in (ALL_SPLITS, r.split)]
    if not rows:
        raise UsageError(f"split {split!r}: no samples in {root} (splits: {', '.join(info['counts'])})")
    chosen: dict[int, list] = {c: [] for c in range(len(classes))}
    for r in sorted(rows, key=lambda r: r.index):
        if len(chosen[r.label]) < per_class:
            chosen[r.label].append(r)

    font = label_font(max(10, thumb // 9))
    title_font = label_font(max(12, thumb // 7))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(probe.textlength(f"{i} {c}", font=font)) for i, c in enumerate(classes)) + 2 * _PAD
    cell = 2 * thumb + _PAD
    n_cols = max(len(v) for v in chosen.values())
    title = (f"an8Flower {info['variant']}: seed {info['seed']}, {info['size']} px, "
             f"{'all splits' if split == ALL_SPLITS else f'split {split}'}\n"
             f"image | mask (outside dimmed, outline white)")
    left, top, right, bottom = probe.multiline_textbbox((_PAD, _PAD), title, font=title_font)
    title_h = math.ceil(bottom) + _PAD
    width = max(label_w + n_cols * (cell + 2 * _PAD), math.ceil(right) + _PAD)
    height = title_h + len(classes) * (thumb + _PAD) + _PAD
    if width * height > SHEET_MAX_PIXELS:
        raise UsageError(f"per-class {per_class}, thumb {thumb}: the sheet would be {width:,} x {height:,} = "
                         f"{width * height:,} pixels, more than {SHEET_MAX_PIXELS:,}; lower --per-class or --thumb")
    sheet = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(sheet)
    draw.multiline_text((_PAD, _PAD), title, fill=(0, 0, 0), font=title_font)
    for label, name in enumerate(classes):
        y = title_h + label * (thumb + _PAD)
        draw.text((_PAD, y + thumb // 2), f"{label} {name}", fill=(0, 0, 0), font=font, anchor="lm")
        for j, r in enumerate(chosen[label]):
            files = {k: read_sample_file(root, r, k, spec.size, check_hash=False) for k in ("image", "mask")}
            image, mask = (decode_png(files[k][1], k, size=spec.size, name=files[k][0]) for k in ("image", "mask"))
            small = Image.fromarray(image).resize((thumb, thumb), Image.Resampling.BILINEAR)
            small_mask = np.asarray(
                Image.fromarray(mask.astype(np.uint8) * 255).resize((thumb, thumb), Image.Resampling.NEAREST)) > 127
            over = Image.fromarray(mask_overlay(np.asarray(small), small_mask))
            x = label_w + j * (cell + 2 * _PAD)
            sheet.paste(small, (x, y))
            sheet.paste(over, (x + thumb + _PAD, y))
    return sheet


def write_contact_sheet(root: str | os.PathLike[str], out: str | os.PathLike[str], per_class: int = SHOW_PER_CLASS,
                        split: str = ALL_SPLITS, thumb: int = SHOW_THUMB) -> Path:
    """:func:`contact_sheet` written atomically as a PNG to ``out``; returns the path.

    Missing folders of ``out`` are created (as ``generate --out`` does), once the sheet is built;
    if the write then fails they are removed again.

    Raises:
        UsageError: ``out`` does not end in ``.png``, or cannot be written (a parent is a file,
            no permission).
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: the contact sheet is a PNG; give a path ending in .png")
    buf = io.BytesIO()
    contact_sheet(root, per_class, split, thumb).save(buf, format="PNG", compress_level=6)
    created = next((p for p in reversed(out.parents) if not p.exists()), None)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buf.getvalue())
    except OSError as exc:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise UsageError(f"--out {out}: cannot write ({exc.strerror})") from None
    return out
