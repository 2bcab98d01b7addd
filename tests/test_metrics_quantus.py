"""Agreement with Quantus (the optional ``compare`` extra) where it implements the same formula.

Random inputs with non-empty masks and no tied maxima; the deliberate differences (empty masks,
ties, signed relevance) are listed in the docstring of :mod:`an8flower.eval.metrics`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from an8flower.eval.metrics import (
    pixel_auc,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)

quantus = pytest.importorskip("quantus")

B, S = 12, 20


@pytest.fixture(scope="module")
def data():
    g = np.random.default_rng(0)
    heatmaps = g.random((B, S, S)).astype(np.float32)  # non-negative, continuous: no ties
    masks = np.zeros((B, S, S), dtype=bool)
    for i in range(B):  # a random rectangle per image, plus scattered pixels
        y, x = g.integers(0, S - 4, size=2)
        h, w = g.integers(2, S - max(y, x), size=2)
        masks[i, y : y + h, x : x + w] = True
    masks |= g.random((B, S, S)) < 0.05
    masks[0] = g.random((S, S)) < 0.5
    return heatmaps, masks


def run_quantus(metric, heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    x = np.zeros((heatmaps.shape[0], 3, S, S), dtype=np.float32)
    y = np.zeros(heatmaps.shape[0], dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=None,
            x_batch=x,
            y_batch=y,
            a_batch=heatmaps[:, None],
            s_batch=masks[:, None].astype(np.float32),
            batch_size=heatmaps.shape[0],
        )
    return np.asarray(scores, dtype=np.float64)


CASES = {
    "PointingGame": (lambda: quantus.PointingGame(disable_warnings=True), pointing_game),
    "AttributionLocalisation": (lambda: quantus.AttributionLocalisation(disable_warnings=True), relevance_mass_accuracy),
    "RelevanceMassAccuracy": (lambda: quantus.RelevanceMassAccuracy(disable_warnings=True), relevance_mass_accuracy),
    "RelevanceRankAccuracy": (lambda: quantus.RelevanceRankAccuracy(disable_warnings=True), relevance_rank_accuracy),
    "TopKIntersection": (
        lambda: quantus.TopKIntersection(k=40, disable_warnings=True),
        lambda h, m: top_k_intersection(h, m, k=40),
    ),
    "AUC": (lambda: quantus.AUC(disable_warnings=True), pixel_auc),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_agrees_with_quantus(name, data):
    heatmaps, masks = data
    make, ours = CASES[name]
    expected = run_quantus(make(), heatmaps, masks)
    got = ours(torch.from_numpy(heatmaps), torch.from_numpy(masks)).numpy()
    # Quantus adds 1e-9 to some denominators and normalises by the maximum in float32.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_auc_agrees_with_ties(data):
    heatmaps, masks = data
    coarse = np.round(heatmaps * 4) / 4  # five levels: many ties
    expected = run_quantus(quantus.AUC(disable_warnings=True), coarse, masks)
    np.testing.assert_allclose(pixel_auc(torch.from_numpy(coarse), torch.from_numpy(masks)).numpy(), expected, rtol=1e-9)


def test_pointing_game_differs_on_empty_masks_and_ties(data):
    heatmaps, masks = data
    masks = masks.copy()
    masks[1] = False
    flat = np.full_like(heatmaps[:3], 0.5)  # every pixel ties for the maximum
    theirs = run_quantus(quantus.PointingGame(disable_warnings=True), np.concatenate([heatmaps[:2], flat[2:]]), masks[:3])
    ours = pointing_game(torch.from_numpy(np.concatenate([heatmaps[:2], flat[2:]])), torch.from_numpy(masks[:3])).numpy()
    assert np.isnan(ours[1]) and not np.isnan(theirs[1])  # Quantus: an empty mask is not NaN
    assert theirs[2] == 1.0 and ours[2] == pytest.approx(masks[2].mean())  # ties: any hit vs fraction
