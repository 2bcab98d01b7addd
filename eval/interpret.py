"""The ``interpret`` and ``explain`` commands: VEBI's per-class sheets and one-image explanations.

* ``an8flower interpret --weights CKPT --out DIR`` fits VEBI (:class:`an8flower.baselines.VEBI`)
  on the training split the checkpoint's model card names (or ``--data``/``--variant``), and writes
  ``vebi.npz`` (the fitted state), ``interpretation.json`` (each class's relevant features with
  their weights) and one PNG sheet per class: for each relevant feature, largest weight first, its
  average visualisation over the training images that activate it most (colour, and as a heatmap),
  the way Oramas et al. (ICLR 2019, Figs. 1 and 5) show them.
* ``an8flower explain IMAGE --weights CKPT --out PNG`` runs one explainer on one image and writes
  the image, the heatmap over it and, for VEBI, each of its k feature maps.

These commands live in ``an8flower.eval`` rather than ``an8flower.baselines`` because they load
checkpoints and datasets, which is the evaluation side's job (dependencies run
``eval -> baselines -> an8flower``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from an8flower.errors import UsageError
from an8flower.eval.commands import add_import_option

__all__ = ["register", "heatmap_overlay", "colourise", "interpretation_sheet", "explanation_figure"]

_BG = (255, 255, 255)
_PAD = 6


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``interpret`` and ``explain`` to the CLI."""
    _register_interpret(subparsers)
    _register_explain(subparsers)


# ----------------------------------------------------------------------------------- drawing


def _unit_scale(heatmap: np.ndarray) -> np.ndarray:
    """A float (H, W) map min-max scaled to [0, 1], float64; a constant map gives zeros, NaN/inf 0."""
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(h.min()), float(h.max())
    return (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)


def colourise(heatmap: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A float (H, W) map min-max scaled to [0, 1] (constant: zeros; NaN: 0) as uint8 RGB (H, W, 3)."""
    from matplotlib import colormaps

    lut = (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    return lut[np.rint(_unit_scale(heatmap) * 255.0).astype(np.intp)]


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The coloured heatmap blended over the image, weighted by the heatmap itself, uint8 (H, W, 3).

    ``out = (1 - a) * image + a * colourise(heatmap)`` with the per-pixel weight
    ``a = alpha * sqrt(s)``, ``s`` the min-max scaled heatmap: irrelevant pixels keep the image, the
    most relevant get ``alpha`` of the colour, and the square root keeps sparse maps visible.

    Args:
        image: uint8 (H, W, 3) or (H, W) grey. heatmap: float (H, W), same size.
        alpha: weight of the colour at the heatmap's maximum.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[:2] != np.shape(heatmap):
        raise UsageError(f"heatmap {np.shape(heatmap)} and image {img.shape[:2]} differ in size")
    weight = alpha * np.sqrt(_unit_scale(heatmap))[:, :, None]
    mixed = (1.0 - weight) * img.astype(np.float64) + weight * colourise(heatmap).astype(np.float64)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _to_uint8_image(x: np.ndarray) -> np.ndarray:
    """(C, H, W) float in [0, 1] (C = 1 or 3) -> uint8 (H, W, 3)."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    elif x.shape[0] != 3:
        x = np.repeat(x.mean(axis=0, keepdims=True), 3, axis=0)  # a non-RGB model: show the mean channel
    return np.clip(x.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _visualisation(avg_image: np.ndarray) -> np.ndarray:
    """The colour average visualisation scaled so its brightest value is white-ish (uint8 HxWx3)."""
    peak = float(np.max(avg_image)) if avg_image.size else 0.0
    return _to_uint8_image(avg_image / peak if peak > 0 else avg_image)


def _tile(arr: np.ndarray, side: int) -> Image.Image:
    img = Image.fromarray(arr)
    if img.size != (side, side):
        img = img.resize((side, side), Image.NEAREST if max(img.size) < side else Image.BILINEAR)
    return img


def _text_width(text: str, font: Any) -> int:
    return int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) + 1


def _text_sheet(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    sheet = Image.new("RGB", (width, height), _BG)
    return sheet, ImageDraw.Draw(sheet)


def _fit_text(text: str, font: Any, width: int) -> str:
    """``text`` cut with an ellipsis so that it is at most ``width`` pixels wide in ``font``."""
    if _text_width(text, font) <= width:
        return text
    while text and _text_width(text + "…", font) > width:
        text = text[:-1]
    return text + "…"


def _feature_caption(name: str) -> tuple[str, str]:
    """``"features.relu4:11"`` -> ``("features.relu4", "channel 11")``: two short lines, not one long one."""
    layer, sep, channel = name.rpartition(":")
    return (layer, f"channel {channel}") if sep and channel.isdigit() else (name, "")


def interpretation_sheet(class_name: str, features: Sequence[Any], max_features: int = 8, thumb: int = 96) -> Image.Image:
    """One class's sheet: a column per relevant feature (largest weight first, at most ``max_features``).

    Each column is captioned with the feature's layer, its channel, its lasso weight and the number
    of training images averaged; below come two rows, labelled on the left: the feature's average
    colour visualisation, and its average heatmap (jet). A feature no training image activates
    shows grey tiles.

    Args:
        class_name: the title. features: :class:`~an8flower.baselines.vebi.RelevantFeature` list
            with ``average_image``/``average_map`` filled by :meth:`VEBI.interpret`.
    """
    from an8flower.show import _font

    shown = list(features)[:max_features]
    font, title_font = _font(11), _font(14)
    rows = ("average image", "average heatmap")
    label_w = max(_text_width(word, font) for r in rows for word in r.split()) + 2 * _PAD
    cols = max(1, len(shown))
    header, caption = 24, 44
    width = label_w + cols * (thumb + _PAD) + _PAD
    height = header + caption + 2 * (thumb + _PAD) + _PAD
    more = f" (top {len(shown)} of {len(features)})" if len(features) > len(shown) else ""
    title = f"{class_name}: {len(features)} relevant features{more}"
    sheet, draw = _text_sheet(max(width, _text_width(title, title_font) + 2 * _PAD), height)
    draw.text((_PAD, 4), title, fill=(0, 0, 0), font=title_font)
    if not shown:
        draw.text((_PAD, header + 4), "no relevant features (the lasso selected none for this class)", fill=(90, 0, 0), font=font)
        return sheet
    for r, label in enumerate(rows):
        y = header + caption + r * (thumb + _PAD) + thumb // 2 - 13
        for j, word in enumerate(label.split()):
            draw.text((_PAD, y + 13 * j), word, fill=(60, 60, 60), font=font)
    for i, f in enumerate(shown):
        x = label_w + i * (thumb + _PAD)
        layer, channel = _feature_caption(f.name)
        lines = [layer, channel, f"w={f.weight:.3g}, {f.n_images} img"]
        for j, line in enumerate(l for l in lines if l):
            draw.text((x, header + 13 * j), _fit_text(line, font, thumb), fill=(0, 0, 0) if j == 0 else (70, 70, 70),
                      font=font)
        y = header + caption
        if f.average_image is None or f.average_map is None:
            grey = np.full((thumb, thumb, 3), 200, np.uint8)
            sheet.paste(_tile(grey, thumb), (x, y))
            sheet.paste(_tile(grey, thumb), (x, y + thumb + _PAD))
            continue
        sheet.paste(_tile(_visualisation(f.average_image.numpy()), thumb), (x, y))
        sheet.paste(_tile(colourise(f.average_map.numpy()), thumb), (x, y + thumb + _PAD))
    return sheet


def explanation_figure(
    image: np.ndarray,
    heatmap: np.ndarray,
    title: str,
    maps: Optional[Mapping[str, np.ndarray]] = None,
    thumb: int = 160,
) -> Image.Image:
    """The image, the heatmap and, optionally, named extra maps (VEBI's k feature maps).

    Two rows, labelled on the left: each map blended over the image (:func:`heatmap_overlay`), and
    the map alone on black ("inferno" colour map, min-max scaled), where a sparse map such as
    VEBI's stays visible. A caption ``"name (detail)"`` is written on two lines, name then detail.

    Args:
        image: uint8 (H, W, 3). heatmap: float (H, W). title: one line above the panels.
        maps: name -> float (H, W), each drawn like the heatmap.
    """
    from an8flower.show import _font

    font = _font(12)
    named = [("heatmap", heatmap)] + list((maps or {}).items())
    rows = ("over the image", "alone")
    label_w = max(_text_width(word, font) for r in rows for word in r.split()) + 2 * _PAD
    header, caption = 22, 32
    width = label_w + (1 + len(named)) * (thumb + _PAD) + _PAD
    height = header + caption + 2 * (thumb + _PAD) + _PAD
    sheet, draw = _text_sheet(max(width, _text_width(title, font) + 2 * _PAD), height)
    draw.text((_PAD, 4), title, fill=(0, 0, 0), font=font)
    for r, label in enumerate(rows):
        y = header + caption + r * (thumb + _PAD) + thumb // 2 - 14
        for j, word in enumerate(label.split()):
            draw.text((_PAD, y + 15 * j), word, fill=(60, 60, 60), font=font)
    y0 = header + caption
    draw.text((label_w, header), "image", fill=(40, 40, 40), font=font)
    sheet.paste(_tile(image, thumb), (label_w, y0))
    for i, (name, m) in enumerate(named, start=1):
        x = label_w + i * (thumb + _PAD)
        first, _, rest = name.partition(" (")
        draw.text((x, header), _fit_text(first, font, thumb), fill=(40, 40, 40), font=font)
        if rest:
            draw.text((x, header + 15), _fit_text("(" + rest, font, thumb), fill=(90, 90, 90), font=font)
        sheet.paste(_tile(heatmap_overlay(image, m), thumb), (x, y0))
        sheet.paste(_tile(colourise(m, "inferno"), thumb), (x, y0 + thumb + _PAD))
    return sheet


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write(path: str, data: bytes, flag: str) -> None:
    from an8flower.atomic import atomic_write_bytes

    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write ({exc.strerror})") from None


# ---------------------------------------------------------------------------------- interpret


def _register_interpret(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "interpret",
        help="fit VEBI on a trained classifier and write each class's relevant features as PNG sheets",
        description="Fit VEBI (Oramas et al., ICLR 2019) on the training split a checkpoint was trained on: select "
        "each class's relevant internal features with the mu-lasso, and draw for each the average visualisation "
        "over the training images that activate it most. Writes vebi.npz (for `an8flower explain --vebi` and the "
        "leaderboard), interpretation.json and class_<i>_<name>.png.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint written by `an8flower train` or the leaderboard")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for vebi.npz, interpretation.json and the sheets")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="a generated an8Flower folder (default: what the model card names)")
    src.add_argument("--variant", help="variant or spec file to render in memory (default: the model card's)")
    p.add_argument("--size", type=int, help="image side when rendering (default: the model's input size)")
    p.add_argument("--per-class", type=int, help="samples per class when rendering (default: the model card's)")
    p.add_argument("--seed", type=int, help="dataset seed when rendering (default: the model card's)")
    p.add_argument("--mu", type=float, default=5.0, help="L1 radius of the lasso (default: 5, the paper's an8Flower value)")
    p.add_argument("--k", type=int, default=3, help="features per explanation stored with the state (default: 3)")
    p.add_argument("--top-n", type=int, default=10, help="training images averaged per feature (default: 10)")
    p.add_argument("--labels", choices=["ground_truth", "predicted"], default="ground_truth",
                   help="lasso targets (default: ground_truth)")
    p.add_argument("--layer", action="append", metavar="NAME",
                   help="module path of a feature layer (repeatable; default: every ReLU and pooling output)")
    p.add_argument("--no-stride-fix", action="store_true", help="visualise without the stride fix")
    p.add_argument("--max-features", type=int, default=8, help="features drawn per class sheet (default: 8)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_interpret)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "class"


def _training_data(args: argparse.Namespace, card: Mapping[str, Any]) -> Any:
    """The PreparedData the interpretation runs on: --data/--variant, else the model card's dataset."""
    from an8flower.eval.config import RunConfig
    from an8flower.eval.runner import prepare_an8flower

    ds = card.get("dataset") or {}
    folder = args.data
    variant = args.variant
    if folder is None and variant is None:
        source = ds.get("source")
        if source and source != "rendered in memory" and os.path.isdir(source):
            folder = source
        elif ds.get("variant"):
            variant = ds["variant"]
        else:
            raise UsageError(f"--weights {args.weights}: the model card names no an8Flower dataset; pass --data or --variant")
    if folder is not None and not os.path.isdir(folder):
        raise UsageError(f"--data: no such folder: {folder}")
    size = args.size or int((card.get("input_size") or [3, 112, 112])[-1])
    per_class = args.per_class or int(ds.get("per_class") or 1000)
    seed = args.seed if args.seed is not None else int(ds.get("seed") or 0)
    key = variant or "data"
    config = RunConfig(variants=[key], data={key: folder} if folder else {}, size=size, per_class=per_class,
                       seed=seed, device=args.device)
    return prepare_an8flower(key, config, need_train=True, progress=False if args.quiet else None), config


def _interpret(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from an8flower.baselines import VEBI
    from an8flower.eval.models import load_checkpoint
    from an8flower.eval.runner import run_device

    for flag, value, low in (("--k", args.k, 1), ("--top-n", args.top_n, 1), ("--max-features", args.max_features, 1),
                             ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: exists and is not a folder")
    model, card = load_checkpoint(args.weights)
    data, config = _training_data(args, card)
    if len(data.classes) != int(card["num_classes"]):
        raise UsageError(f"--weights {args.weights} has {card['num_classes']} classes; the data has {len(data.classes)}")
    device = run_device(config)
    model = model.to(device).eval()
    vebi = VEBI(mu=args.mu, k=args.k, top_n=args.top_n, labels=args.labels, layers=args.layer,
                stride_fix=not args.no_stride_fix, batch_size=args.batch_size)
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=False)
    progress = False if args.quiet else None
    vebi.fit(model, loader, progress=progress)
    per_class = vebi.interpret(model, loader, progress=progress)
    os.makedirs(args.out, exist_ok=True)
    vebi.save(os.path.join(args.out, "vebi.npz"))
    sheets = []
    for c, feats in per_class.items():
        name = data.classes[c]
        path = os.path.join(args.out, f"class_{c:02d}_{_slug(name)}.png")
        _write(path, _png_bytes(interpretation_sheet(f"class {c} ({name})", feats, args.max_features)), "--out")
        sheets.append(path)
    summary = {
        "model": {"weights": os.fspath(args.weights), "architecture": card["architecture"]},
        "dataset": {"variant": data.variant, "source": data.source, "hash": data.hash, "train_images": len(data.train)},
        "options": vebi.options(),
        "fit_info": vebi.fit_info_,
        "classes": [
            {"class": c, "name": data.classes[c],
             "features": [{"name": f.name, "layer": f.layer, "channel": f.channel, "weight": f.weight,
                           "n_images": f.n_images} for f in feats]}
            for c, feats in per_class.items()
        ],
    }
    _write(os.path.join(args.out, "interpretation.json"), json.dumps(summary, indent=1).encode(), "--out")
    counts = vebi.fit_info_.get("relevant_per_class", [])
    print(f"vebi fitted on {len(data.train)} {data.variant} training images: {vebi.fit_info_.get('n_features')} features, "
          f"relevant per class {counts}; wrote {len(sheets)} sheets, vebi.npz and interpretation.json to {args.out}",
          file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ explain


def _register_explain(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="explain one image with one explainer and write the heatmap over it as a PNG",
        description="Run an explainer on one image (resized to the model's input size) and write a PNG: the image, "
        "the heatmap over it and, for VEBI, each of its top-k feature maps with the feature's name.",
    )
    p.add_argument("image", help="an image file (PNG, JPEG, ...)")
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint with a model card")
    p.add_argument("--out", required=True, metavar="PNG", help="the figure to write")
    p.add_argument("--explainer", default="vebi", help="registered explainer (default: vebi)")
    add_import_option(p)
    p.add_argument("--vebi", metavar="NPZ", help="VEBI state from `an8flower interpret` (needed for --explainer vebi)")
    p.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="explainer option, VALUE parsed as JSON when it can be (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.set_defaults(func=_explain)


def _read_image(path: str, channels: int, size: Sequence[int]) -> np.ndarray:
    """The image file as float32 (C, H, W) in [0, 1] at the model's input size.

    Decoded by :func:`an8flower.untrusted.load_image`: the header's size is checked against the
    photo limit (:data:`~an8flower.untrusted.PHOTO_MAX_PIXELS`) before anything is decoded, so a
    decompression bomb is refused naming the file.
    """
    from an8flower.untrusted import load_image

    if not os.path.isfile(path):
        raise UsageError(f"image file not found: {path}")
    img = load_image(path, "L" if channels == 1 else "RGB")
    h, w = int(size[0]), int(size[1])
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _explain(args: argparse.Namespace) -> int:
    import torch

    from an8flower.baselines import VEBI, build_explainer
    from an8flower.eval.commands import _parse_value, apply_imports
    from an8flower.eval.models import load_checkpoint
    from an8flower.eval.config import RunConfig
    from an8flower.eval.runner import run_device

    apply_imports(args)
    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out {args.out}: the figure is a PNG; give a path ending in .png")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {args.out}: folder {folder} does not exist")
    options: dict[str, Any] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = _parse_value(value)
    explainer = build_explainer(args.explainer, **options)
    if isinstance(explainer, VEBI):
        if not args.vebi:
            raise UsageError("--explainer vebi needs --vebi NPZ (write one with `an8flower interpret`)")
        explainer.load(args.vebi)
    elif explainer.requires_fit:
        raise UsageError(f"explainer {args.explainer!r} must be fitted first; explain runs only fitted or fit-free explainers")
    model, card = load_checkpoint(args.weights)
    device = run_device(RunConfig(device=args.device))
    model = model.to(device).eval()
    c, h, w = card.get("input_size") or [3, 112, 112]  # model_card stores (channels, height, width)
    x = torch.from_numpy(_read_image(args.image, int(c), (h, w)))[None].to(device)
    classes = card.get("classes") or [str(i) for i in range(int(card["num_classes"]))]
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)[0]
    pred = int(probs.argmax())
    target = pred if args.target is None else int(args.target)
    if not 0 <= target < len(classes):
        raise UsageError(f"--target {target} is out of range for {len(classes)} classes")
    t = torch.tensor([target], device=device)
    maps: dict[str, np.ndarray] = {}
    if isinstance(explainer, VEBI):
        out = explainer.explain_features(model, x, t)
        heatmap = out.heatmaps[0]
        for r, name in enumerate(out.names[0]):
            maps[f"{name} (r={float(out.contributions[0, r]):.3g})"] = out.maps[0, r].cpu().numpy()
    else:
        heatmap = explainer(model, x, t)[0]
    heatmap = heatmap.detach().float().cpu().numpy()
    image = _to_uint8_image(x[0].cpu().numpy())
    title = (f"{args.explainer} for class {target} ({classes[target]}); predicted {pred} ({classes[pred]}, "
             f"p={float(probs[pred]):.2f})")
    _write(args.out, _png_bytes(explanation_figure(image, heatmap, title, maps)), "--out")
    print(json.dumps({"out": args.out, "explainer": args.explainer, "target": target, "target_name": classes[target],
                      "predicted": pred, "predicted_name": classes[pred], "probability": round(float(probs[pred]), 6),
                      "features": list(maps)}, indent=1))
    return 0
