"""VEBI's per-class interpretation sheets and one-image explanations (``interpret``, ``explain``).

* :func:`interpret_checkpoint` (``an8flower interpret --weights CKPT --out DIR``) fits VEBI (:class:`an8flower.baselines.VEBI`)
  on the training split the checkpoint's model card names (or ``--data``/``--variant``), and writes
  ``vebi.npz`` (the fitted state), ``interpretation.json`` (each class's relevant features with
  their weights) and one PNG sheet per class: for each relevant feature, largest weight first, its
  average visualisation over the training images that activate it most (colour, and as a heatmap),
  the way Oramas et al. (ICLR 2019, Figs. 1 and 5) show them.
* :func:`explain_image` (``an8flower explain IMAGE --weights CKPT --out PNG``) runs one explainer on one image and writes
  the image, the heatmap over it and, for VEBI, each of its k feature maps.

They live in ``an8flower.eval`` rather than ``an8flower.baselines`` because they load checkpoints
and datasets, which is the evaluation side's job (dependencies run ``eval -> baselines ->
an8flower``). Their command-line parsers are in :mod:`an8flower.cli.interpret`.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from an8flower.baselines import VEBI, build_explainer
from an8flower.defaults import INTERPRET_DEFAULTS
from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.data import prepare_an8flower
from an8flower.eval.models import load_checkpoint
from an8flower.eval.train import resolve_device
from an8flower.manifest import atomic_write_bytes
from an8flower.show import label_font
from an8flower.untrusted import load_image

__all__ = ["heatmap_overlay", "colourise", "interpretation_sheet", "explanation_figure", "interpret_checkpoint",
           "explain_image", "png_bytes"]

_BG = (255, 255, 255)
_PAD = 6


# ----------------------------------------------------------------------------------- drawing


def _unit_scale(heatmap: np.ndarray) -> np.ndarray:
    """A float (H, W) map min-max scaled to [0, 1], float64; a constant map gives zeros, NaN/inf 0."""
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(h.min()), float(h.max())
    return (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)


def colourise(heatmap: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A float (H, W) map min-max scaled to [0, 1] (constant: zeros; NaN: 0) as uint8 RGB (H, W, 3)."""
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
        img = img.resize((side, side), Image.Resampling.NEAREST if max(img.size) < side else Image.Resampling.BILINEAR)
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
    shown = list(features)[:max_features]
    font, title_font = label_font(11), label_font(14)
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
        for j, line in enumerate(s for s in lines if s):
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
    maps: Mapping[str, np.ndarray] | None = None,
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
    font = label_font(12)
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


def png_bytes(img: Image.Image) -> bytes:
    """The PNG encoding of ``img`` (zlib level 6)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write(path: str, data: bytes, flag: str) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write ({exc.strerror})") from None


# ---------------------------------------------------------------------------------- interpret


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "class"


def _training_data(card: Mapping[str, Any], weights: str, data: str | None, variant: str | None,
                   size: int | None, per_class: int | None, seed: int | None, device: str | None,
                   progress: bool | None) -> Any:
    """The PreparedData the interpretation runs on: ``data``/``variant``, else the model card's dataset."""
    ds = card.get("dataset") or {}
    if data is None and variant is None:
        source = ds.get("source")
        if source and source != "rendered in memory" and os.path.isdir(source):
            data = source
        elif ds.get("variant"):
            variant = ds["variant"]
        else:
            raise UsageError(f"--weights {weights}: the model card names no an8Flower dataset; pass --data or --variant")
    if data is not None and not os.path.isdir(data):
        raise UsageError(f"--data: no such folder: {data}")
    size = size or int((card.get("input_size") or [3, 112, 112])[-1])
    per_class = per_class or int(ds.get("per_class") or 1000)
    seed = seed if seed is not None else int(ds.get("seed") or 0)
    key = variant or "data"
    config = RunConfig(variants=[key], data={key: data} if data else {}, size=size, per_class=per_class,
                       seed=seed, device=device)
    return prepare_an8flower(key, config, need_train=True, progress=progress)


def interpret_checkpoint(weights: str, out: str, *, data: str | None = None, variant: str | None = None,
                         size: int | None = None, per_class: int | None = None, seed: int | None = None,
                         mu: float = INTERPRET_DEFAULTS["mu"], k: int = INTERPRET_DEFAULTS["k"],
                         top_n: int = INTERPRET_DEFAULTS["top_n"], labels: str = "ground_truth",
                         layers: Sequence[str] | None = None, stride_fix: bool = True,
                         max_features: int = INTERPRET_DEFAULTS["max_features"],
                         batch_size: int = INTERPRET_DEFAULTS["batch_size"], device: str | None = None,
                         progress: bool | None = None) -> dict[str, Any]:
    """Fit VEBI on a checkpoint's training data; write ``vebi.npz``, ``interpretation.json`` and the sheets to ``out``.

    The data is the generated folder ``data`` or the variant ``variant`` rendered in memory
    (``size``, ``per_class``, ``seed``), by default the dataset the checkpoint's model card names.
    ``mu``, ``k``, ``top_n``, ``labels``, ``layers``, ``stride_fix`` and ``batch_size`` are
    :class:`~an8flower.baselines.VEBI`'s; ``max_features`` the features drawn per class sheet
    (:func:`interpretation_sheet`, one ``class_<i>_<name>.png`` per class).

    Returns:
        The content of ``interpretation.json`` (model, dataset, VEBI's options and fit, each class's
        relevant features with their weights), and ``sheets``: the PNG paths written.

    Raises:
        UsageError: a count below 1, ``out`` an existing file, a checkpoint or dataset that cannot be
        read, or a class count that differs between them (naming the flag).
    """
    for flag, value in (("--k", k), ("--top-n", top_n), ("--max-features", max_features), ("--batch-size", batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a folder")
    model, card = load_checkpoint(weights)
    prepared = _training_data(card, weights, data, variant, size, per_class, seed, device, progress)
    if len(prepared.classes) != int(card["num_classes"]):
        raise UsageError(f"--weights {weights} has {card['num_classes']} classes; the data has {len(prepared.classes)}")
    model = model.to(resolve_device(device)).eval()
    vebi = VEBI(mu=mu, k=k, top_n=top_n, labels=labels, layers=layers, stride_fix=stride_fix, batch_size=batch_size)
    loader = DataLoader(prepared.train, batch_size=batch_size, shuffle=False)
    vebi.fit(model, loader, progress=progress)
    per_class_features = vebi.interpret(model, loader, progress=progress)
    os.makedirs(out, exist_ok=True)
    vebi.save(os.path.join(out, "vebi.npz"))
    sheets = []
    for c, feats in per_class_features.items():
        name = prepared.classes[c]
        path = os.path.join(out, f"class_{c:02d}_{_slug(name)}.png")
        _write(path, png_bytes(interpretation_sheet(f"class {c} ({name})", feats, max_features)), "--out")
        sheets.append(path)
    summary = {
        "model": {"weights": os.fspath(weights), "architecture": card["architecture"]},
        "dataset": {"variant": prepared.variant, "source": prepared.source, "hash": prepared.hash,
                    "train_images": len(prepared.train)},
        "options": vebi.options(),
        "fit_info": vebi.fit_info_,
        "classes": [
            {"class": c, "name": prepared.classes[c],
             "features": [{"name": f.name, "layer": f.layer, "channel": f.channel, "weight": f.weight,
                           "n_images": f.n_images} for f in feats]}
            for c, feats in per_class_features.items()
        ],
    }
    _write(os.path.join(out, "interpretation.json"), json.dumps(summary, indent=1).encode(), "--out")
    return {**summary, "sheets": sheets}


# ------------------------------------------------------------------------------------ explain


def _read_image(path: str, channels: int, size: Sequence[int]) -> np.ndarray:
    """The image file as float32 (C, H, W) in [0, 1] at the model's input size.

    Decoded by :func:`an8flower.untrusted.load_image`: the header's size is checked against the
    photo limit (:data:`~an8flower.untrusted.PHOTO_MAX_PIXELS`) before anything is decoded, so a
    decompression bomb is refused naming the file.
    """
    if os.path.isdir(path):
        raise UsageError(f"IMAGE {path} is a folder; give one image file (PNG, JPEG, ...)")
    if not os.path.isfile(path):
        raise UsageError(f"image file not found: {path}")
    img = load_image(path, "L" if channels == 1 else "RGB")
    h, w = int(size[0]), int(size[1])
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def explain_image(image: str, weights: str, out: str, *, explainer: str = INTERPRET_DEFAULTS["explainer"],
                  vebi: str | None = None, target: int | None = None,
                  options: Mapping[str, Any] | None = None, device: str | None = None) -> dict[str, Any]:
    """Explain one image file with one explainer; write :func:`explanation_figure` as the PNG ``out``.

    The image is resized to the checkpoint's input size; ``target`` defaults to the predicted
    class. VEBI (the default ``explainer``) needs its fitted state ``vebi`` (``vebi.npz`` of
    :func:`interpret_checkpoint`) and adds each of its k feature maps to the figure; any other
    explainer must be fit-free. ``options`` are the explainer's keyword options.

    Returns:
        out, explainer, target and predicted class (index and name), the probability of the
        predicted class, and the names of the feature maps drawn.

    Raises:
        UsageError: ``out`` not a ``.png`` in an existing folder, VEBI without ``vebi``, an explainer
        that needs fitting, an unreadable image or checkpoint, a target out of range.
    """
    if not out.lower().endswith(".png"):
        raise UsageError(f"--out {out}: the figure is a PNG; give a path ending in .png")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {out}: folder {folder} does not exist")
    method = build_explainer(explainer, **dict(options or {}))
    if isinstance(method, VEBI):
        if not vebi:
            raise UsageError(f"--explainer {explainer} needs --vebi NPZ (write one with `an8flower interpret`); "
                             "without one, name a fit-free explainer, e.g. --explainer gradcam")
        method.load(vebi)
    elif method.requires_fit:
        raise UsageError(f"explainer {explainer!r} must be fitted first; explain runs only fitted or fit-free explainers")
    model, card = load_checkpoint(weights)
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    c, h, w = card.get("input_size") or [3, 112, 112]  # model_card stores (channels, height, width)
    x = torch.from_numpy(_read_image(image, int(c), (h, w)))[None].to(torch_device)
    classes = card.get("classes") or [str(i) for i in range(int(card["num_classes"]))]
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)[0]
    pred = int(probs.argmax())
    target = pred if target is None else int(target)
    if not 0 <= target < len(classes):
        raise UsageError(f"--target {target} is out of range for {len(classes)} classes")
    t = torch.tensor([target], device=torch_device)
    maps: dict[str, np.ndarray] = {}
    if isinstance(method, VEBI):
        explained = method.explain_features(model, x, t)
        heatmap = explained.heatmaps[0]
        for r, name in enumerate(explained.names[0]):
            maps[f"{name} (r={float(explained.contributions[0, r]):.3g})"] = explained.maps[0, r].cpu().numpy()
    else:
        heatmap = method(model, x, t)[0]
    heatmap = heatmap.detach().float().cpu().numpy()
    picture = _to_uint8_image(x[0].cpu().numpy())
    title = (f"{explainer} for class {target} ({classes[target]}); predicted {pred} ({classes[pred]}, "
             f"p={float(probs[pred]):.2f})")
    _write(out, png_bytes(explanation_figure(picture, heatmap, title, maps)), "--out")
    return {"out": out, "explainer": explainer, "target": target, "target_name": classes[target],
            "predicted": pred, "predicted_name": classes[pred], "probability": round(float(probs[pred]), 6),
            "features": list(maps)}
