"""The figures module: overlay by hand, at most 8 series per panel with distinct styles, pages of examples."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from an8flower.eval.figures import (
    CMAP,
    MAX_SERIES,
    PALETTE,
    overlay,
    panels,
    plot_curves,
    plot_examples,
    plot_part_bars,
    series_styles,
)


def test_overlay_blends_by_relevance_over_the_faded_image_and_outlines_the_mask() -> None:
    image = np.full((5, 5, 3), 100, np.uint8)
    heat = np.zeros((5, 5))
    heat[0, 0] = 2.0  # above the 99th percentile: clipped to 1
    heat[0, 1] = 1.0
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    out = overlay(image, heat, mask, alpha=0.8)
    grey = 0.4 + 0.5 * 100 / 255  # luminance of a grey pixel is its value
    q99 = np.percentile(heat, 99)  # 1.76 for 23 zeros, a 1 and a 2
    h01 = 1.0 / q99
    expect00 = 0.2 * grey + 0.8 * np.array(colormaps[CMAP](1.0)[:3])
    expect01 = (1 - 0.8 * h01) * grey + 0.8 * h01 * np.array(colormaps[CMAP](h01)[:3])
    np.testing.assert_array_equal(out[0, 0], np.round(255 * expect00).astype(np.uint8))
    np.testing.assert_array_equal(out[0, 1], np.round(255 * expect01).astype(np.uint8))
    # zero relevance: the faded image; the outline is the mask's border ring, the centre untouched
    faded = round(255 * grey)
    assert (out[4, 4] == faded).all() and (out[2, 2] == faded).all()
    ring = mask.copy()
    ring[2, 2] = False
    assert (out[ring] == 255).all()
    # a constant map carries no relevance: the faded image alone
    np.testing.assert_array_equal(overlay(image, np.ones((5, 5))), np.full((5, 5, 3), faded, np.uint8))
    # a one-channel image (MNIST) is its own luminance
    np.testing.assert_array_equal(overlay(image[..., :1], heat, mask, alpha=0.8), out)


def test_panels_hold_at_most_eight_series_with_distinct_colour_and_dash() -> None:
    names = ["oracle", "random", "centre"] + [f"e{i}" for i in range(19)]
    groups = panels(names)
    assert [len(g) for g in groups] == [8, 8, 3] and sum(groups, []) == [f"e{i}" for i in range(19)]
    assert len({c for c, _ in PALETTE}) == len({str(d) for _, d in PALETTE}) == MAX_SERIES == len(PALETTE)
    for g in groups:
        styles = series_styles(["oracle", "random"] + g)
        colours = [s["color"] for s in styles.values()]
        dashes = [str(s["linestyle"]) for s in styles.values()]
        assert len(set(colours)) == len(colours) and len(set(dashes)) == len(dashes)


def test_examples_come_in_pages_of_eight_with_the_same_bytes_twice(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((2, 16, 16), bool)
    masks[:, 4:8, 4:8] = True
    heat = {f"lib:explainer{i}": rng.random((2, 16, 16)) for i in range(11)}
    files = plot_examples(tmp_path / "ex.png", images, masks, heat, ["red", "blue"], ["red", "green"], "toy")
    assert files == ["ex.png", "ex_2.png"]
    widths = []
    for name in files:
        with Image.open(tmp_path / name) as im:
            widths.append(im.size[0])
    # 1 image column + 8 (then 3) explainers at 155 px each, plus 90 px for the labels and colour bar
    assert widths == [round(100 * (1.55 * 9 + 0.9)), round(100 * (1.55 * 4 + 0.9))]
    first = (tmp_path / "ex.png").read_bytes()
    plot_examples(tmp_path / "again.png", images, masks, heat, ["red", "blue"], ["red", "green"], "toy")
    assert (tmp_path / "again.png").read_bytes() == first


@pytest.mark.parametrize("n", [5, 12])
def test_curves_and_bars_are_small_multiples(tmp_path, n) -> None:
    x = np.linspace(0, 1, 5)
    curves = {"oracle": (x, [1.0] * 5), "random": (x, [0.1] * 5)}
    curves.update({f"e{i}": (x, list(x * i / n)) for i in range(n)})
    plot_curves(tmp_path / "c.png", curves, "threshold", "IoU", "toy")
    plot_part_bars(tmp_path / "b.png", ["a", "b", "c"], {e: [1.0, 2.0, None] for e in curves}, ["b"], "toy")
    with Image.open(tmp_path / "c.png") as im:
        # one panel per 8 explainers, two panels a row
        assert im.size == (round(100 * (4.2 * min(len(panels(list(curves))), 2) + 0.4)), round(100 * (3.0 + 0.5)))
    assert len(panels(list(curves))) == (1 if n <= 8 else 2)
