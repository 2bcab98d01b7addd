"""Model-aware metrics on tiny hand-made inputs, with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from an8flower.errors import UsageError
from an8flower.eval.metrics import contrastivity, counterfactual_mass, reliance_rank_correlation


def _t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


# ----------------------------------------------------------------------------- counterfactual mass


def test_counterfactual_mass_by_hand():
    # one 2 x 3 image: positive attribution 1 + 2 + 3 + 4 = 10 (the -5 does not count)
    h = _t([[[1.0, 2.0, -5.0], [3.0, 4.0, 0.0]]])
    changed = torch.tensor([[[True, False, True], [False, True, False]]])
    # sum over changed of h+ = 1 + 0 + 4 = 5 -> 5 / 10
    assert counterfactual_mass(h, changed).tolist() == [0.5]
    # chance-normalised: changed area 3 / 6 = 0.5 -> 0.5 / 0.5
    assert counterfactual_mass(h, changed, normalised=True).tolist() == [1.0]


def test_counterfactual_mass_undefined_and_batched():
    h = _t([[[1.0, 1.0]], [[-1.0, -2.0]], [[0.0, 3.0]]])
    changed = torch.tensor([[[False, False]], [[True, False]], [[False, True]]])
    out = counterfactual_mass(h, changed)
    assert math.isnan(out[0]) and math.isnan(out[1]) and out[2] == 1.0  # nothing changed; no positive
    norm = counterfactual_mass(h, changed, normalised=True)
    assert math.isnan(norm[0]) and norm[2] == 2.0  # 1 / (1/2)
    assert out.dtype == torch.float64


def test_counterfactual_mass_checks_its_inputs():
    with pytest.raises(UsageError, match="bool"):
        counterfactual_mass(torch.ones(1, 2, 2), torch.ones(1, 2, 2))
    with pytest.raises(UsageError, match=r"heatmaps\[0\] contains NaN"):
        counterfactual_mass(torch.full((1, 2, 2), float("nan")), torch.ones(1, 2, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------- reliance rank correlation


def test_reliance_rank_correlation_by_hand():
    # a 1 x 4 image with 4 parts, one pixel each: attribution shares 0.1, 0.2, 0.3, 0.4
    h = _t([[[1.0, 2.0, 3.0, 4.0]]])
    parts = torch.tensor([[[0, 1, 2, 3]]], dtype=torch.uint8)
    same = _t([[0.0, 0.1, 0.5, 0.9]])  # the same order
    reverse = _t([[0.9, 0.5, 0.1, 0.0]])
    assert reliance_rank_correlation(h, parts, same).item() == pytest.approx(1.0)
    assert reliance_rank_correlation(h, parts, reverse).item() == pytest.approx(-1.0)
    # reliance ranks (1, 2.5, 2.5, 4) against share ranks (1, 2, 3, 4): centred (-1.5, 0, 0, 1.5) and
    # (-1.5, -0.5, 0.5, 1.5): covariance 4.5, norms sqrt(4.5) and sqrt(5) -> 4.5 / sqrt(22.5)
    tied = _t([[0.0, 0.3, 0.3, 1.0]])
    assert reliance_rank_correlation(h, parts, tied).item() == pytest.approx(4.5 / math.sqrt(22.5))


def test_an_explainer_marking_only_the_relied_part_scores_the_maximum():
    """Reliance 1 on one part and 0 elsewhere, attribution only on that part: correlation 1."""
    h = torch.zeros(1, 3, 3)
    h[0, 1, 1] = 5.0
    parts = torch.tensor([[[0, 0, 1], [2, 3, 4], [5, 5, 5]]], dtype=torch.uint8)
    reliance = _t([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])  # part 3 is the pixel (1, 1)
    assert reliance_rank_correlation(h, parts, reliance).item() == pytest.approx(1.0)
    other = torch.zeros(1, 3, 3)
    other[0, 0, 0] = 5.0  # all attribution on part 0
    assert reliance_rank_correlation(other, parts, reliance).item() < 0


def test_reliance_rank_correlation_undefined():
    parts = torch.tensor([[[0, 1]], [[0, 1]]], dtype=torch.uint8)
    h = _t([[[1.0, 2.0]], [[-1.0, -1.0]]])
    out = reliance_rank_correlation(h, parts, _t([[0.3, 0.3], [0.1, 0.2]]))
    assert math.isnan(out[0]) and math.isnan(out[1])  # constant reliance; no positive attribution
    with pytest.raises(UsageError, match=r"reliance\[1\] contains NaN"):
        reliance_rank_correlation(h, parts, _t([[0.3, 0.1], [float("nan"), 0.2]]))
    with pytest.raises(UsageError, match="reliance must be"):
        reliance_rank_correlation(h, parts, _t([0.3, 0.1]))


# ----------------------------------------------------------------------------- contrastivity


def test_contrastivity_by_hand():
    ha = _t([[[4.0, 1.0, 0.0, 2.0]]])
    hb = _t([[[1.0, 1.0, -3.0, 3.0]]])
    d = torch.tensor([[[True, True, False, False]]])
    # |ha+ - hb+| = (3, 0, 0, 1): 3 of 4 on D
    assert contrastivity(ha, hb, d).tolist() == [0.75]
    # swapping the roles gives the same difference
    assert contrastivity(hb, ha, d).tolist() == [0.75]


def test_contrastivity_undefined_for_class_insensitive_maps():
    h = _t([[[1.0, 2.0]], [[1.0, 0.0]]])
    d = torch.tensor([[[True, False]], [[False, False]]])
    out = contrastivity(h, h.clone(), d)
    assert math.isnan(out[0]) and math.isnan(out[1])  # no difference; empty D
    hb = _t([[[0.0, 2.0]], [[0.0, 0.0]]])
    out = contrastivity(h, hb, d)
    assert out[0] == 1.0 and math.isnan(out[1])
    with pytest.raises(UsageError, match="contrast_heatmaps has shape"):
        contrastivity(h, h[:, :, :1], d)
    with pytest.raises(UsageError, match=r"contrast_heatmaps\[1\] contains NaN"):
        contrastivity(h, torch.tensor([[[0.0, 0.0]], [[float("nan"), 0.0]]]), d)


def test_oracle_contrast_is_one():
    """The oracle: the mask for the target, the mask less D for the runner-up -> all difference on D."""
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(rng.random((3, 8, 8)) < 0.4)
    d = mask & torch.from_numpy(rng.random((3, 8, 8)) < 0.5)
    out = contrastivity(mask.float(), (mask & ~d).float(), d)
    assert torch.equal(out, torch.ones(3, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_values_on_cuda():
    rng = np.random.default_rng(1)
    h = torch.from_numpy(rng.random((4, 16, 16)).astype(np.float32))
    hb = torch.from_numpy(rng.random((4, 16, 16)).astype(np.float32))
    d = torch.from_numpy(rng.random((4, 16, 16)) < 0.3)
    parts = torch.from_numpy(rng.integers(0, 5, (4, 16, 16)).astype(np.uint8))
    rel = torch.from_numpy(rng.random((4, 5)))
    for f, args in ((counterfactual_mass, (h, d)), (contrastivity, (h, hb, d)),
                    (reliance_rank_correlation, (h, parts, rel))):
        cpu = f(*args)
        gpu = f(*(a.cuda() for a in args)).cpu()
        assert torch.allclose(cpu, gpu, rtol=1e-6, equal_nan=True)
