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
