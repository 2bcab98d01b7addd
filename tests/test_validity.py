"""Validity of the ground truth: the class is readable inside the masks and nowhere else.

A simple classifier on colour statistics: each image is described by the normalised colour
histogram (4 x 4 x 4 bins over RGB) of a chosen set of its pixels, and a ridge-regression
classifier (one-hot targets, standardised features, closed-form solution) is trained on the first
half of the samples and scored on the second half. With the features restricted to

* the pixels INSIDE the masks, it must predict the class well (accuracy > 0.9);
* the pixels OUTSIDE the masks (all of them, or only a 3-pixel ring around the mask, where a leak
  from the part's edge would show), it must be at chance: accuracy within 4 binomial standard
  deviations ``sqrt(p (1 - p) / n_test)`` of ``p = 1/K``;
* and, as a control that the check has power: the ring around a mask made ONE pixel too tight
  (eroded, as a naive hard-edged mask would be, leaving the anti-aliased fringe outside) predicts
  the class far above chance (> ``1/K + 8`` standard deviations).

The exact statement behind the chance level is in ``test_render.py``
(``test_class_changes_nothing_outside_the_mask``): outside the mask the image is byte-identical
whatever the class. This file checks the statistical consequence with a learned classifier.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from an8flower.render import render
from an8flower.spec import load_spec

SIZE = 64
BINS = 4
#: Samples per variant: train on the first half, test on the second (both class-balanced).
N_SAMPLES = {"single-6c": 1200, "double-12c": 2400}


def colour_histograms(images: np.ndarray, select: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Per-image normalised RGB histograms of the selected pixels.

    Args:
        images: (N, H, W, 3) uint8.
        select: (N, H, W) bool, the pixels to count.
        bins: bins per channel (a divisor of 256).

    Returns:
        (N, bins**3) float64, each row summing to 1 (0 where no pixel is selected).
    """
    q = (images // (256 // bins)).astype(np.int64)
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    code += (np.arange(len(images)) * bins**3)[:, None, None]
    counts = np.bincount(code[select], minlength=len(images) * bins**3)
    h = counts.reshape(len(images), bins**3).astype(np.float64)
    return h / np.maximum(h.sum(axis=1, keepdims=True), 1.0)


def ridge_accuracy(x: np.ndarray, y: np.ndarray, k: int, lam: float = 1.0) -> float:
    """Train a ridge classifier on the first half of (x, y), return its accuracy on the second.

    ``W = (X^T X + lam * n I)^-1 X^T (Y - 1/K)`` on standardised features; prediction
    ``argmax(x W)``.
    """
    n = len(x) // 2
    xtr, xte, ytr, yte = x[:n], x[n:], y[:n], y[n:]
    mu, sd = xtr.mean(axis=0), xtr.std(axis=0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    targets = np.eye(k)[ytr] - 1.0 / k
    w = np.linalg.solve(xtr.T @ xtr + lam * n * np.eye(x.shape[1]), xtr.T @ targets)
    return float(np.mean((xte @ w).argmax(axis=1) == yte))


def _ring(masks: np.ndarray, width: int = 3) -> np.ndarray:
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    grown = np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])
    return grown & ~masks


@pytest.fixture(scope="module", params=sorted(N_SAMPLES))
def rendered(request):
    spec = load_spec(request.param)
    n = N_SAMPLES[request.param]
    samples = [render(spec, 2024, i, SIZE) for i in range(n)]
    images = np.stack([s.image for s in samples])
    masks = np.stack([s.mask for s in samples])
    labels = np.array([s.label for s in samples])
    chance = 1.0 / spec.num_classes
    sd = float(np.sqrt(chance * (1.0 - chance) / (n - n // 2)))
    return spec, images, masks, labels, chance, sd


def test_inside_the_mask_predicts_the_class(rendered):
    spec, images, masks, labels, chance, _ = rendered
    acc = ridge_accuracy(colour_histograms(images, masks), labels, spec.num_classes)
    assert acc > 0.9, acc


def test_outside_the_mask_is_at_chance(rendered):
    spec, images, masks, labels, chance, sd = rendered
    acc = ridge_accuracy(colour_histograms(images, ~masks), labels, spec.num_classes)
    assert abs(acc - chance) <= 4 * sd, (acc, chance, sd)


def test_ring_around_the_mask_is_at_chance(rendered):
    spec, images, masks, labels, chance, sd = rendered
    acc = ridge_accuracy(colour_histograms(images, _ring(masks)), labels, spec.num_classes)
    assert abs(acc - chance) <= 4 * sd, (acc, chance, sd)


def test_control_a_one_pixel_too_tight_mask_leaks(rendered):
    """The check has power: leaving the anti-aliased fringe outside the mask is detected."""
    spec, images, masks, labels, chance, sd = rendered
    kernel = np.ones((3, 3), np.uint8)
    tight = np.stack([cv2.erode(m.astype(np.uint8), kernel) > 0 for m in masks])
    acc = ridge_accuracy(colour_histograms(images, _ring(tight)), labels, spec.num_classes)
    assert acc > chance + 8 * sd, (acc, chance, sd)


def test_histogram_by_hand():
    """A 1 x 2 image: one black and one white pixel, both selected, then only the white one."""
    img = np.array([[[[0, 0, 0], [255, 255, 255]]]], np.uint8)
    both = colour_histograms(img, np.ones((1, 1, 2), bool))
    assert both.shape == (1, 64) and both[0, 0] == 0.5 and both[0, 63] == 0.5
    white = colour_histograms(img, np.array([[[False, True]]]))
    assert white[0, 63] == 1.0 and white.sum() == 1.0


def test_ridge_by_hand():
    """Perfectly separable 1-D features are classified perfectly."""
    x = np.array([[0.0], [1.0]] * 20)
    y = np.array([0, 1] * 20)
    assert ridge_accuracy(x, y, 2, lam=1e-3) == 1.0


# ----------------------------------------------------------------------------- validity by intervention


def _near(region: np.ndarray, px: int) -> np.ndarray:
    """``region`` grown by ``px`` pixels (square structuring element)."""
    return cv2.dilate(region.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_painting_as_another_class_changes_exactly_the_mask(variant):
    """Every class pair (a, b): sample of class a painted as b changes pixels inside the mask only,
    all of the mask's inside (2 px from its edge), keeps mask and part map, and gets label b."""
    from an8flower.intervene import intervene

    spec = load_spec(variant)
    k = spec.num_classes
    for a in range(k):
        index = a + k * (a % 3)
        ref = render(spec, 7, index, SIZE)
        inner = cv2.erode(ref.mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert ref.label == a and inner.sum() > 0
        for b in range(k):
            s = intervene(spec, 7, index, SIZE, label=b)
            changed = (s.image != ref.image).any(axis=2)
            assert s.label == b and s.meta["class"] == spec.classes[b]
            assert np.array_equal(s.mask, ref.mask) and np.array_equal(s.parts, ref.parts)
            assert not changed[~ref.mask].any(), (a, b)
            if b != a:
                # the parts whose colour differs between a and b change everywhere inside
                moved = [spec.part_id(p) for j, p in enumerate(spec.discriminative)
                         if spec.class_colours[a][j] != spec.class_colours[b][j]]
                inside = inner & np.isin(ref.parts, moved)
                assert inside.any() and changed[inside].all(), (a, b)
            else:
                assert not changed.any()


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_nuisance_interventions_never_change_the_class(variant):
    """Recolouring any nuisance part (to every class colour and the farthest non-class colour) or
    removing it never changes the label. The discriminative mask stays, except: where a removed
    part lay over a discriminative part (which then shows), and, for a recolour, on at most a few
    single pixels where the part's anti-aliased edge lies over a discriminative part's edge (the
    rounding of the blend depends on the colour there). Pixels away from the part never change."""
    from an8flower.intervene import farthest_nonclass_colour, intervene

    spec = load_spec(variant)
    colours = sorted({c for cols in spec.class_colours for c in cols}) + [farthest_nonclass_colour(spec)]
    nuisance = [p for p in spec.parts if p not in spec.discriminative]
    recoloured = masks_moved = 0
    for index in range(12):
        ref = render(spec, 3, index, SIZE)
        for part in nuisance:
            region = None
            if part != "background":  # where the part is drawn: its hard pixels with nothing else on top
                others = [p for p in spec.parts if p not in ("background", part)]
                alone = intervene(spec, 3, index, SIZE, remove=others, allow_invisible=True)
                region = _near(alone.parts == spec.part_id(part), 2)
            for colour in colours:
                s = intervene(spec, 3, index, SIZE, recolour={part: colour})
                recoloured += 1
                assert s.label == ref.label
                moved = s.mask != ref.mask
                if moved.any():
                    masks_moved += 1
                    assert moved.sum() <= 3, (index, part, colour)
                if region is not None:
                    assert not moved[~region].any(), (index, part, colour)
                    assert not (s.image != ref.image).any(axis=2)[~region].any()
            if part == "background":
                continue
            s = intervene(spec, 3, index, SIZE, remove=[part])
            assert s.label == ref.label
            moved = s.mask != ref.mask
            assert not moved[~region].any(), (index, part)
            assert np.array_equal(s.mask[~region], ref.mask[~region])
    print(f"{variant}: {masks_moved} of {recoloured} recolours moved the mask")
    assert masks_moved <= 0.05 * recoloured, (masks_moved, recoloured)


@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_recolouring_a_discriminative_part_follows_the_rule(variant):
    """A discriminative part recoloured to each of its class colours: the label is the class of the
    new combination (the other parts keep theirs); image changes stay inside the mask."""
    from an8flower.intervene import UNDEFINED, class_for_colours, intervene

    spec = load_spec(variant)
    for index in range(spec.num_classes):
        ref = render(spec, 5, index, SIZE)
        base = dict(zip(spec.discriminative, spec.class_colours[ref.label], strict=True))
        for j, part in enumerate(spec.discriminative):
            for colour in sorted({cols[j] for cols in spec.class_colours}):
                s = intervene(spec, 5, index, SIZE, recolour={part: colour})
                want = class_for_colours(spec, {**base, part: colour})
                assert want is not None and s.label == want
                assert spec.class_colours[want][j] == colour
                assert np.array_equal(s.mask, ref.mask)
                assert not (s.image != ref.image).any(axis=2)[~ref.mask].any()
            other = next(c for c, _ in spec.colours if c not in {cols[j] for cols in spec.class_colours})
            assert intervene(spec, 5, index, SIZE, recolour={part: other}).label == UNDEFINED
