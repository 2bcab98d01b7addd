"""Deletion / insertion on a toy model with known outputs, and the randomisation sanity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from an8flower.errors import UsageError
from an8flower.eval.metrics import (
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
    randomisable_layers,
    randomisation_similarity,
)
from an8flower.eval.metrics._ranks import average_ranks
from an8flower.eval.metrics.faithfulness import gaussian_blur


class Linear2x2(nn.Module):
    """Two classes on 1x2x2 images: logits (w . x, 0), so p(class 0) = sigmoid(w . x)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([4.0, 3.0, 2.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.flatten(1) * self.w).sum(dim=1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


ONES = torch.ones(1, 1, 2, 2)
BY_WEIGHT = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # removes pixels in raster order
TARGET = torch.tensor([0])


def test_deletion_hand_computed():
    model = Linear2x2()
    # Remaining weight sum after removing 0..4 pixels (most relevant first): 10, 6, 3, 1, 0.
    p = [sig(v) for v in (10, 6, 3, 1, 0)]
    curve = deletion_curve(model, ONES, BY_WEIGHT, TARGET, steps=4)
    torch.testing.assert_close(curve, torch.tensor([p], dtype=torch.float64))
    auc = (p[0] / 2 + p[1] + p[2] + p[3] + p[4] / 2) / 4
    assert deletion_auc(model, ONES, BY_WEIGHT, TARGET, steps=4).item() == pytest.approx(auc)
    # Reversed heatmap removes the least relevant first: sums 10, 9, 7, 4, 0; a larger area.
    worse = deletion_auc(model, ONES, BY_WEIGHT.flip(-1).flip(-2), TARGET, steps=4).item()
    assert worse == pytest.approx((sig(10) / 2 + sig(9) + sig(7) + sig(4) + sig(0) / 2) / 4)
    assert worse > auc


def test_insertion_hand_computed_and_uneven_steps():
    model = Linear2x2()
    # Insert into zeros: sums 0, 4, 7, 9, 10.
    p = [sig(v) for v in (0, 4, 7, 9, 10)]
    curve = insertion_curve(model, ONES, BY_WEIGHT, TARGET, steps=4, baseline="zeros")
    torch.testing.assert_close(curve, torch.tensor([p], dtype=torch.float64))
    # steps = 3 on 4 pixels: n_i = floor(4 i / 3) = 0, 1, 2, 4 at x = 0, 1/4, 1/2, 1.
    q = [sig(v) for v in (0, 4, 7, 10)]
    expected = (q[0] + q[1]) / 2 * 0.25 + (q[1] + q[2]) / 2 * 0.25 + (q[2] + q[3]) / 2 * 0.5
    got = insertion_auc(model, ONES, BY_WEIGHT, TARGET, steps=3, baseline="zeros").item()
    assert got == pytest.approx(expected)


def test_ties_are_removed_in_raster_order_and_baselines():
    model = Linear2x2()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # w . x = 4 + 6 + 6 + 4 = 20
    flat = torch.zeros(1, 2, 2)
    curve = deletion_curve(model, x, flat, TARGET, steps=2, baseline=0.5)
    # Remove pixels 0, 1 then 2, 3 (raster order), replaced by 0.5: sums 20, 13.5, 5.
    torch.testing.assert_close(curve, torch.tensor([[sig(20), sig(13.5), sig(5)]], dtype=torch.float64))
    mean_curve = deletion_curve(model, x, flat, TARGET, steps=1, baseline="mean")
    torch.testing.assert_close(mean_curve, torch.tensor([[sig(20), sig(25.0)]], dtype=torch.float64))
    tensor_base = torch.full((1, 1, 1, 1), -1.0)
    tensor_curve = deletion_curve(model, x, flat, TARGET, steps=1, baseline=tensor_base)
    torch.testing.assert_close(tensor_curve, torch.tensor([[sig(20), sig(-10)]], dtype=torch.float64))


def test_blur_matches_scipy_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 17, 13, generator=g, dtype=torch.float64)
    expected = np.stack(
        [[ndimage.gaussian_filter(x[b, c].numpy(), sigma=5.0, mode="nearest", truncate=1.0) for c in range(3)] for b in range(2)]
    )
    torch.testing.assert_close(gaussian_blur(x), torch.from_numpy(expected))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


def test_batched_chunks_and_predicted_targets():
    model = small_cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 6, 6, generator=g)
    h = torch.rand(3, 6, 6, generator=g)
    predicted = model(x).argmax(dim=1)
    a = deletion_curve(model, x, h, None, steps=4, chunk_size=4)  # 15 images in chunks of 4, 4, 4, 3
    b = deletion_curve(model, x, h, predicted, steps=4, chunk_size=64)
    torch.testing.assert_close(a, b)
    # One image at a time gives the same rows: nothing leaks between images of a batch.
    single = torch.cat([insertion_curve(model, x[i : i + 1], h[i : i + 1], predicted[i : i + 1], steps=4) for i in range(3)])
    torch.testing.assert_close(insertion_curve(model, x, h, predicted, steps=4), single)
    # p_0 is the intact image's probability of the target class.
    intact = torch.softmax(model(x).double(), dim=1).gather(1, predicted[:, None]).squeeze(1)
    torch.testing.assert_close(a[:, 0], intact)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"heatmaps": torch.rand(1, 2, 3)}, "heatmaps has shape"),
        ({"steps": 5}, "steps"),
        ({"steps": 0}, "steps"),
        ({"baseline": "noise"}, "baseline"),
        ({"baseline": torch.zeros(2, 1, 1, 1)}, "baseline"),
        ({"targets": torch.tensor([2])}, r"targets\[0\] = 2"),
        ({"targets": torch.tensor([0, 1])}, "targets must have shape"),
        ({"images": torch.ones(1, 2, 2)}, "images must have shape"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"model": Linear2x2(), "images": ONES, "heatmaps": BY_WEIGHT, "targets": TARGET, "steps": 4}
    args.update(kwargs)
    with pytest.raises(UsageError, match=match):
        deletion_auc(**args)


def test_non_finite_heatmap_rejected():
    h = BY_WEIGHT.clone()
    h[0, 1, 1] = float("inf")
    with pytest.raises(UsageError, match=r"heatmaps\[0\]"):
        insertion_auc(Linear2x2(), ONES, h, TARGET, steps=2)


# ----------------------------------------------------------------------------- randomisation


def gradient(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    images = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(images).gather(1, targets[:, None]).sum(), images)
    return grad.abs().amax(dim=1)


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * 8 * 8, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()


def test_spearman_ranks_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = np.random.default_rng(0)
    x = g.integers(0, 5, size=(3, 40)).astype(np.float32)
    torch.testing.assert_close(average_ranks(torch.from_numpy(x)), torch.from_numpy(stats.rankdata(x, axis=1)))


def test_weight_independent_explainer_scores_one():
    model = small_mlp()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = randomisation_similarity(model, lambda m, images, t: images.mean(dim=1), x)
    assert out.shape == (2, len(randomisable_layers(model))) and out.dtype == torch.float64
    torch.testing.assert_close(out, torch.ones_like(out))


def test_gradient_explainer_decorrelates_seeded_and_model_untouched():
    model = small_mlp()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    a = randomisation_similarity(model, gradient, x, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    b = randomisation_similarity(model, gradient, x, seed=7)
    assert torch.equal(a, b)
    c = randomisation_similarity(model, gradient, x, seed=8)
    assert not torch.equal(a, c)
    # Fully randomised (last column): far from the trained model's heatmap.
    assert (a[:, -1].abs() < 0.9).all()
    # Randomising only the top layer is the same in both modes; later columns differ.
    independent = randomisation_similarity(model, gradient, x, seed=7, cascade=False)
    torch.testing.assert_close(independent[:, 0], a[:, 0])


def test_cascade_order_and_named_layers():
    model = small_mlp()
    assert randomisable_layers(model) == ["1", "2", "4", "6"]
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    out = randomisation_similarity(model, gradient, x, layers=["4", "6"])
    assert out.shape == (1, 2)


def test_constant_explanation_is_nan_and_bad_layers():
    model = small_mlp()
    x = torch.rand(1, 3, 8, 8)
    out = randomisation_similarity(model, lambda m, images, t: torch.ones(1, 8, 8), x, layers=["6"])
    assert torch.isnan(out).all()
    with pytest.raises(UsageError, match="no module named 'head'"):
        randomisation_similarity(model, gradient, x, layers=["head"])
    with pytest.raises(UsageError, match="no parameters"):
        randomisation_similarity(model, gradient, x, layers=["3"])
    with pytest.raises(UsageError, match="explainer output"):
        randomisation_similarity(model, lambda m, images, t: torch.ones(8, 8), x, layers=["6"])


@pytest.mark.parametrize("metric", ["deletion_auc", "insertion_auc", "randomisation_similarity"])
def test_model_based_metrics_leave_a_train_mode_model_untouched(metric: str) -> None:
    """A model handed over in train mode keeps its batch-norm statistics and its mode; scores are eval-mode scores."""
    import copy

    from an8flower.baselines import build_explainer
    from an8flower.eval import metrics as M

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    model.train()
    images, heatmaps = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    reference = copy.deepcopy(model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def run(m):
        if metric == "randomisation_similarity":
            return M.randomisation_similarity(m, build_explainer("gradient"), images, torch.tensor([0, 1]), seed=1)
        return getattr(M, metric)(m, images, heatmaps, torch.tensor([0, 1]), steps=4)

    scores = run(model)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(scores, run(reference))


def test_grey_baseline_is_uniform_half_and_mean_keeps_each_images_colour():
    model = Linear2x2()
    # From grey 0.5 every pixel contributes 0.5 w: p_0 = sig(5); insertion in raster order adds 0.5 w_i.
    curve = insertion_curve(model, ONES, BY_WEIGHT, TARGET, steps=4, baseline="grey")
    torch.testing.assert_close(curve, torch.tensor([[sig(v) for v in (5.0, 7.0, 8.5, 9.5, 10.0)]], dtype=torch.float64))
    # Deletion to grey ends at the grey image.
    assert deletion_curve(model, ONES, BY_WEIGHT, TARGET, steps=4, baseline="grey")[0, -1].item() == pytest.approx(sig(5.0))
    x = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # mean 0.25: the mean fill scores sig(0.25 * 10)
    assert deletion_curve(model, x, BY_WEIGHT, TARGET, steps=1, baseline="mean")[0, -1].item() == pytest.approx(sig(2.5))
    with pytest.raises(UsageError, match="'grey'"):
        deletion_auc(model, ONES, BY_WEIGHT, TARGET, steps=4, baseline="gray-ish")
