"""The leaderboard's figures: one overlay, one palette, pages and small multiples that stay readable.

* :func:`overlay`: an image with a heatmap over it and the mask outlined, as uint8 RGB (the PNG
  figures and the HTML page both use it).
* :data:`PALETTE`: eight series styles, each a colour *and* a dash pattern of its own (after Paul
  Tol's colour-blind safe schemes; the dashes tell lines apart in grey print).
  A panel never holds more than :data:`MAX_SERIES` series: longer lists are split into panels
  (:func:`panels`).
* :func:`plot_examples`: pages of at most :data:`MAX_SERIES` explainers; per image its class and
  the model's prediction, per page a colour bar of the normalised relevance.
* :func:`plot_curves` and :func:`plot_part_bars`: small multiples, explainers in the order given
  (the report passes the overall ranking), at most :data:`MAX_SERIES` per panel, the reference rows
  (``oracle``, ``random``) repeated in each panel as grey context.
* :func:`plot_reliance`: the model's reliance per part and intervention.

Every figure is written with :func:`an8flower.eval.report.atomic_write` from PNG bytes without a
timestamp (same data, same bytes).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_SERIES",
    "PALETTE",
    "REFERENCE_STYLES",
    "CMAP",
    "overlay",
    "panels",
    "save_figure",
    "series_styles",
    "plot_examples",
    "plot_curves",
    "plot_part_bars",
    "plot_reliance",
]

#: At most this many series in one panel, and explainers on one page of examples.
MAX_SERIES = 8
#: Eight series styles: (colour, matplotlib dash pattern). Colours: Paul Tol's "bright" scheme without
#: its grey (greys are the reference rows'), his "vibrant" orange, and black.
PALETTE: tuple[tuple[str, Any], ...] = (
    ("#4477AA", "-"), ("#EE6677", (0, (5, 2))), ("#228833", (0, (1, 1.5))), ("#CCBB44", (0, (6, 2, 1, 2))),
    ("#66CCEE", (0, (3, 1, 1, 1, 1, 1))), ("#AA3377", (0, (8, 3))), ("#EE7733", (0, (4, 1, 1, 1))),
    ("#000000", (0, (2, 2))),
)
#: Reference rows in every panel: the ceiling and chance, in greys.
REFERENCE_STYLES: dict[str, tuple[str, Any]] = {"oracle": ("#888888", (0, (1, 1))), "random": ("#AAAAAA", (0, (4, 2)))}
#: The colour map of heatmaps (perceptually ordered, dark = low).
CMAP = "inferno"
_REFERENCES = ("oracle", "random", "centre")


def overlay(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.85) -> np.ndarray:
    """The heatmap in :data:`CMAP` over a faded grey copy of the image, the mask outlined in white.

    ``h`` is the heatmap scaled to [0, 1] by its minimum and its 99th percentile (clipped: one
    extreme pixel does not make the rest of a sparse gradient map invisible; a constant map is 0);
    the image is shown as ``g = 0.4 + 0.5 * luminance`` (Rec. 601 weights) so that the map's colours
    stand out on any flower; per pixel ``out = (1 - alpha * h) * g + alpha * h * cmap(h)``: relevant
    pixels take the map's colour, irrelevant ones keep the faded image. The outline is the mask's
    pixels with a 4-neighbour outside it. A heatmap of zeros gives the faded image alone.

    Args:
        image: uint8 (H, W, 3), or (H, W, 1) / (H, W) grey. heatmap: float (H, W). mask: bool (H, W) or None.
        alpha: the heatmap's opacity where it is most relevant.

    Returns:
        uint8 (H, W, 3).
    """
    from matplotlib import colormaps

    h = np.asarray(heatmap, dtype=np.float64)
    finite = np.isfinite(h)
    if finite.any():
        lo, hi = float(h[finite].min()), float(np.percentile(h[finite], 99))
        hi = hi if hi > lo else float(h[finite].max())
        h = np.clip(np.nan_to_num((h - lo) / (hi - lo)), 0.0, 1.0) if hi > lo else np.zeros_like(h)
    else:
        h = np.zeros_like(h)
    colour = colormaps[CMAP](h)[..., :3]
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    lum = rgb @ np.array([0.299, 0.587, 0.114]) if rgb.ndim == 3 and rgb.shape[-1] == 3 else rgb.reshape(h.shape)
    grey = 0.4 + 0.5 * lum[..., None]
    w = alpha * h[..., None]
    out = (1.0 - w) * grey + w * colour
    if mask is not None and np.asarray(mask).any():
        m = np.asarray(mask, dtype=bool)
        inner = m.copy()
        inner[1:] &= m[:-1]
        inner[:-1] &= m[1:]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        out[m & ~inner] = 1.0
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def panels(names: Sequence[str], size: int = MAX_SERIES) -> list[list[str]]:
    """``names`` without the reference rows, in order, cut into panels of at most ``size`` series."""
    own = [n for n in names if n not in _REFERENCES]
    return [own[i : i + size] for i in range(0, len(own), size)] or [[]]


def series_styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per name ``color`` and ``linestyle``: references their greys, the others :data:`PALETTE` in order
    (a panel holds at most :data:`MAX_SERIES`, so within a panel no two series share a style)."""
    out, i = {}, 0
    for name in names:
        if name in REFERENCE_STYLES:
            color, dash = REFERENCE_STYLES[name]
        else:
            color, dash = PALETTE[i % len(PALETTE)]
            i += 1
        out[name] = {"color": color, "linestyle": dash}
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write a matplotlib figure as PNG to ``path`` atomically, without a timestamp, and close it."""
    from an8flower.atomic import atomic_write

    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _show(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image for ``imshow`` and its colour map: a one-channel image as grey."""
    return (image[..., 0], "gray") if image.ndim == 3 and image.shape[-1] == 1 else (image, None)


def plot_examples(
    path: str | os.PathLike[str],
    images: np.ndarray,
    masks: np.ndarray,
    heatmaps: Mapping[str, np.ndarray],
    labels: Sequence[str] | None = None,
    predictions: Sequence[str] | None = None,
    title: str = "",
) -> list[str]:
    """Example heatmaps, in pages of at most :data:`MAX_SERIES` explainers.

    A page is a grid: one row per image (its class and the model's prediction on the left), one
    column per explainer (its name on top), each panel :func:`overlay`; a colour bar of the
    normalised relevance on the right. Page 1 is written to ``path``, page k > 1 beside it with
    ``_k`` before the extension.

    Args:
        path: the first page's PNG.
        images: uint8 (K, H, W, 3). masks: bool (K, H, W).
        heatmaps: explainer -> float (K, H, W), in the order to show.
        labels, predictions: per image, the class and the predicted class (names).
        title: the figure title (the page number is added when there are several).

    Returns:
        The file names written (base names), page order.
    """
    plt = _pyplot()
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    names = list(heatmaps)
    pages = [names[i : i + MAX_SERIES] for i in range(0, len(names), MAX_SERIES)] or [[]]
    base, ext = os.path.splitext(os.fspath(path))
    k = images.shape[0]
    written = []
    for p, page in enumerate(pages, 1):
        cols = 1 + len(page)
        fig, axes = plt.subplots(k, cols, figsize=(1.55 * cols + 0.9, 1.55 * k + 0.7), dpi=100, squeeze=False)
        for i in range(k):
            for j in range(cols):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    picture, cmap = _show(images[i])
                    ax.imshow(picture, cmap=cmap)
                    if masks[i].any():
                        ax.contour(masks[i].astype(np.float32), levels=[0.5], colors="white", linewidths=0.8)
                    text = [] if labels is None else ["class", _wrap(labels[i])]
                    wrong = predictions is not None and labels is not None and predictions[i] != labels[i]
                    if predictions is not None:
                        text += ["predicted", _wrap(predictions[i])]
                    ax.set_ylabel("\n".join(text), fontsize=6.5, color="#B00000" if wrong else "black")
                else:
                    ax.imshow(overlay(images[i], heatmaps[page[j - 1]][i], masks[i]))
                if i == 0:
                    ax.set_title("image" if j == 0 else _wrap(page[j - 1]), fontsize=7)
        fig.subplots_adjust(left=0.07, right=0.9, top=1 - 0.55 / (1.55 * k + 0.7), bottom=0.02, wspace=0.05,
                            hspace=0.05)
        cax = fig.add_axes((0.92, 0.15, 0.015, 0.6))
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps[CMAP]), cax=cax)
        bar.set_label("relevance (per map: min to 99th percentile)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
        head = title + (f"  (page {p} of {len(pages)})" if len(pages) > 1 else "")
        if head:
            fig.suptitle(head, fontsize=9, y=0.995, va="top")
        out = os.fspath(path) if p == 1 else f"{base}_{p}{ext}"
        save_figure(fig, out)
        written.append(os.path.basename(out))
    return written


def _wrap(name: str, width: int = 16) -> str:
    """``name`` on two lines when longer than ``width``: cut after its library prefix (``lib:``) or
    after the ``_`` nearest its middle."""
    if len(name) <= width:
        return name
    if ":" in name:
        lib, rest = name.split(":", 1)
        return f"{lib}:\n{rest}"
    cuts = [i for i, c in enumerate(name) if c == "_"]
    if not cuts:
        return name
    at = min(cuts, key=lambda i: abs(i - len(name) / 2))
    return name[: at + 1] + "\n" + name[at + 1 :]


def _grid(n: int, plt: Any, width: float = 4.2, height: float = 3.0) -> tuple[Any, np.ndarray]:
    cols = min(n, 2)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 0.4, height * rows + 0.5), dpi=100, squeeze=False,
                             sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_curves(
    path: str | os.PathLike[str],
    curves: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] = (0.0, 1.03),
) -> None:
    """Small multiples of curves: at most :data:`MAX_SERIES` explainers per panel, in the order given,
    ``oracle`` and ``random`` repeated in each panel in grey; each panel with its own legend.

    Args:
        path: the PNG. curves: explainer -> (x, y) (None in y: a gap).
        xlabel, ylabel, title: the labels. ylim: the shared y range.
    """
    plt = _pyplot()
    groups = panels(list(curves))
    fig, axes = _grid(len(groups), plt)
    refs = [r for r in REFERENCE_STYLES if r in curves]
    start = 1
    for ax, group in zip(axes.flat, groups, strict=False):
        if len(groups) > 1:
            ax.set_title(f"explainers {start}-{start + len(group) - 1} in table order", fontsize=8)
            start += len(group)
        styles = series_styles(refs + group)
        for name in refs + group:
            x, y = curves[name]
            st = styles[name]
            ax.plot(x, [np.nan if v is None else v for v in y], color=st["color"], linestyle=st["linestyle"],
                    linewidth=1.2 if name in refs else 1.8, label=name)
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="upper right", frameon=False, handlelength=3.2)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_part_bars(
    path: str | os.PathLike[str],
    parts: Sequence[str],
    normalised: Mapping[str, Sequence[float | None]],
    discriminative: Sequence[str] = (),
    title: str = "",
) -> None:
    """Small multiples of bars on a log axis: per part, each explainer's chance-normalised share of
    positive attribution (1 = chance, dashed), at most :data:`MAX_SERIES` explainers per panel,
    discriminative parts starred and shaded; values clipped to [0.01, 100] for display.

    Args:
        path: the PNG. parts: part names. normalised: explainer -> value per part (None: undefined).
        discriminative: the parts whose colour decides the class. title: the figure title.
    """
    plt = _pyplot()
    groups = panels([n for n in normalised if n != "oracle"])
    fig, axes = _grid(len(groups), plt, width=max(4.2, 0.75 * len(parts) + 1.2))
    x = np.arange(len(parts))
    start = 1
    for ax, group in zip(axes.flat, groups, strict=False):
        if len(groups) > 1:
            ax.set_title(f"explainers {start}-{start + len(group) - 1} in table order", fontsize=8)
            start += len(group)
        styles = series_styles(group)
        width = 0.8 / max(len(group), 1)
        for i, name in enumerate(group):
            vals = np.array([np.nan if v is None else v for v in normalised[name]], dtype=np.float64)
            ax.bar(x - 0.4 + (i + 0.5) * width, np.clip(vals, 0.01, 100), width, color=styles[name]["color"],
                   edgecolor="black", linewidth=0.3, label=name)
        for j, p in enumerate(parts):
            if p in discriminative:
                ax.axvspan(j - 0.5, j + 0.5, color="#EEEEEE", zorder=0)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylim(0.01, 100)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{p}*" if p in discriminative else p for p in parts], fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left", frameon=False, ncol=2)
    for ax in axes[:, 0]:
        ax.set_ylabel("attribution share / area share", fontsize=8)
    fig.suptitle(title + ("  (* = discriminative part, shaded; 1 = chance)" if discriminative else "  (1 = chance)"),
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_reliance(path: str | os.PathLike[str], rel: Mapping[str, Any], title: str = "") -> None:
    """Grouped bars: per part, the mean drop of the target probability (95% CI) under each intervention
    (recolour, remove, repaint as another class), in the first three :data:`PALETTE` colours.

    Args:
        path: the PNG to write.
        rel: a :meth:`an8flower.eval.reliance.Reliance.summary`.
        title: the figure title.
    """
    plt = _pyplot()
    by = {(r["part"], r["intervention"]): r for r in rel["rows"]}
    parts = list(dict.fromkeys([p for p, _ in by]))
    kinds = [("recolour", f"recolour ({rel['colour']})"), ("remove", "remove"), ("repaint", "repaint as another class")]
    x = np.arange(len(parts))
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(parts) + 2), 3.8), dpi=100)
    for i, (kind, label) in enumerate(kinds):
        vals = [by.get((p, kind), {}).get("drop") for p in parts]
        errs = [by.get((p, kind), {}).get("ci95") for p in parts]
        ax.bar(x - 0.4 + (i + 0.5) * width, [np.nan if v is None else v for v in vals], width,
               yerr=[0 if e is None else e for e in errs], label=label, capsize=2, color=PALETTE[i][0])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    disc = set(rel.get("discriminative", []))
    ax.set_xticklabels([f"{p}*" if p in disc else p for p in parts], fontsize=8)
    ax.set_ylabel("drop of the target probability")
    ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title}  (* = discriminative; n = {rel['n_images']})", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
