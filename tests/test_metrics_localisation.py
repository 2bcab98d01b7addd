"""Localisation metrics: hand-computed values, edge cases, invariances, properties, references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from an8flower.errors import UsageError
from an8flower.eval.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    PixelAveragePrecision,
    energy_pointing_game,
    iou_auc,
    iou_curve,
    iou_top_mask,
    pixel_auc,
    pixel_average_precision,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from an8flower.eval.metrics.localisation import _dilate_disk

NAN = float("nan")

# 3x3 heatmap 0..8 in raster order; the mask holds the pixels valued 5, 7 and 8.
RAMP = torch.arange(9, dtype=torch.float32).view(1, 3, 3)
RAMP_MASK = torch.tensor([[[False, False, False], [False, False, True], [False, True, True]]])

PER_IMAGE = {
    "pointing_game": pointing_game,
    "energy_pointing_game": energy_pointing_game,
    "relevance_mass_accuracy": relevance_mass_accuracy,
    "relevance_rank_accuracy": relevance_rank_accuracy,
    "top_k_intersection": lambda h, m, **kw: top_k_intersection(h, m, k=3, **kw),
    "iou_top_mask": iou_top_mask,
    "iou_auc": iou_auc,
    "pixel_auc": pixel_auc,
}
RANK_BASED = ["pointing_game", "relevance_rank_accuracy", "top_k_intersection", "iou_top_mask", "pixel_auc"]


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), equal_nan=True)


# ----------------------------------------------------------------------------- hand-computed


def test_iou_curve_hand_computed_and_non_strict():
    # h' = v / 8. t = 0.25 keeps v >= 2 (v = 2 sits exactly on the threshold: non-strict), 7 pixels,
    # all 3 mask pixels inside: 3/7. t = 0.5: v >= 4, 3/5. t = 0.75: v in {6,7,8}, 2 in the mask,
    # union 4: 1/2. t = 1: v = 8, 1/3.
    curve = iou_curve(RAMP, RAMP_MASK, thresholds=[0.25, 0.5, 0.75, 1.0])
    close(curve, [[3 / 7, 3 / 5, 1 / 2, 1 / 3]])
    close(iou_auc(RAMP, RAMP_MASK, thresholds=[0.25, 0.5, 0.75, 1.0]), [(3 / 7 + 3 / 5 + 1 / 2 + 1 / 3) / 4])


def test_iou_default_grid():
    assert DEFAULT_IOU_THRESHOLDS == tuple(k / 20 for k in range(1, 20))
    curve = iou_curve(RAMP, RAMP_MASK)
    assert curve.shape == (1, 19) and curve.dtype == torch.float64
    # t = 0.05 keeps every v >= 1 (8 pixels): 3/8; t = 0.95 keeps v = 8 only: 1/3.
    assert curve[0, 0].item() == pytest.approx(3 / 8)
    assert curve[0, -1].item() == pytest.approx(1 / 3)
    assert iou_auc(RAMP, RAMP_MASK).item() == pytest.approx(curve.mean().item())


def test_iou_curve_is_min_max_normalised():
    shifted = RAMP * 3.0 - 7.0
    torch.testing.assert_close(iou_curve(shifted, RAMP_MASK), iou_curve(RAMP, RAMP_MASK))


@pytest.mark.parametrize("bad", [[], [0.0, 0.5], [0.5, 0.5], [0.7, 0.3], [0.5, 1.5], [float("nan")]])
def test_iou_thresholds_validated(bad):
    with pytest.raises(UsageError, match="thresholds"):
        iou_curve(RAMP, RAMP_MASK, thresholds=bad)


def test_iou_top_mask_hand_computed():
    # k = 3: the top 3 are {6, 7, 8}, 2 of them in the mask: IoU = 2 / (3 + 3 - 2).
    close(iou_top_mask(RAMP, RAMP_MASK), [0.5])
    # k = 2 with three pixels tied at the 2nd value: expected intersection 2 * 1/3, IoU = (2/3) / (4 - 2/3).
    h = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    m = torch.tensor([[[True, False, False], [True, False, False], [False, False, False]]])
    close(iou_top_mask(h, m), [(2 / 3) / (4 - 2 / 3)])


def test_pointing_game_hand_computed_and_ties():
    h = torch.zeros(4, 3, 3)
    m = torch.zeros(4, 3, 3, dtype=torch.bool)
    m[:, 1, 1] = True
    h[0, 1, 1] = 1  # maximum in the mask
    h[1, 0, 0] = 1  # maximum outside
    h[2, 1, 1] = h[2, 0, 0] = 1  # two tied maxima, one hits
    m[3, 0, :2] = True  # constant heatmap, mask of 3 of 9 pixels: chance
    close(pointing_game(h, m), [1.0, 0.0, 0.5, 3 / 9])


def test_pointing_game_tolerance_is_euclidean():
    h = torch.zeros(1, 5, 5)
    h[0, 0, 0] = 1
    m = torch.zeros(1, 5, 5, dtype=torch.bool)
    m[0, 2, 1] = True  # distance sqrt(5) ~ 2.236 from the maximum
    close(pointing_game(h, m, tolerance=2), [0.0])
    close(pointing_game(h, m, tolerance=2.3), [1.0])
    m2 = torch.zeros(1, 5, 5, dtype=torch.bool)
    m2[0, 2, 2] = True  # distance sqrt(8) ~ 2.83: a square (Chebyshev) window of 2 would hit
    close(pointing_game(h, m2, tolerance=2.5), [0.0])
    close(pointing_game(h, m2, tolerance=3), [1.0])


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "2", True])
def test_pointing_game_tolerance_validated(bad):
    with pytest.raises(UsageError, match="tolerance"):
        pointing_game(RAMP, RAMP_MASK, tolerance=bad)


@pytest.mark.parametrize("radius", [1, 1.5, 2, 2.9, 4])
def test_dilation_matches_brute_force_distance(radius):
    g = np.random.default_rng(int(radius * 10))
    masks = torch.from_numpy(g.random((3, 9, 7)) > 0.9)
    masks[2] = False
    ys, xs = np.mgrid[0:9, 0:7]
    expected = np.zeros((3, 9, 7), dtype=bool)
    for b in range(3):
        for y, x in zip(*np.nonzero(masks[b].numpy()), strict=True):
            expected[b] |= (ys - y) ** 2 + (xs - x) ** 2 <= radius**2
    assert torch.equal(_dilate_disk(masks, radius), torch.from_numpy(expected))


def test_energy_and_mass_use_the_positive_part():
    h = torch.tensor([[[-1.0, 2.0], [3.0, 0.0]]])
    m = torch.tensor([[[False, True], [False, False]]])
    close(energy_pointing_game(h, m), [2 / 5])
    close(relevance_mass_accuracy(h, m), [2 / 5])
    negative = -torch.ones(1, 2, 2)
    close(relevance_mass_accuracy(negative, m), [NAN])
    close(energy_pointing_game(torch.zeros(1, 2, 2), m), [NAN])


def test_relevance_rank_accuracy_hand_computed():
    close(relevance_rank_accuracy(RAMP, RAMP_MASK), [2 / 3])  # top 3 = {6, 7, 8}
    # |M| = 2; values 5 > 4 = 4 = 4: pixel 5 (outside) is first, 1 slot left for 3 tied pixels of
    # which 2 are in the mask: expected hits 2/3, accuracy 1/3.
    h = torch.tensor([[[5.0, 4.0, 4.0, 4.0]]])
    m = torch.tensor([[[False, True, True, False]]])
    close(relevance_rank_accuracy(h, m), [1 / 3])


def test_top_k_intersection_hand_computed():
    close(top_k_intersection(RAMP, RAMP_MASK, k=2), [1.0])  # {7, 8}
    close(top_k_intersection(RAMP, RAMP_MASK, k=4), [3 / 4])  # {5, 6, 7, 8}
    close(top_k_intersection(RAMP, RAMP_MASK, k=1 / 3), [2 / 3])  # a third of 9 pixels: {6, 7, 8}
    close(top_k_intersection(RAMP, RAMP_MASK, k=9), [1 / 3])


@pytest.mark.parametrize("bad", [0, 10, 0.0, 1.5, "3", True])
def test_top_k_validated(bad):
    with pytest.raises(UsageError, match="k"):
        top_k_intersection(RAMP, RAMP_MASK, k=bad)


def test_pixel_auc_hand_computed_with_ties():
    # Ranks of the mask pixels 5, 7, 8 among 0..8: 6, 8, 9 -> U = 23 - 6 = 17 of 3 * 6 pairs.
    close(pixel_auc(RAMP, RAMP_MASK), [17 / 18])
    h = torch.tensor([[[2.0, 1.0, 1.0, 0.0]], [[1.0, 1.0, 0.0, 0.0]]])
    m = torch.tensor([[[True, True, False, False]], [[True, False, True, False]]])
    # pairs (pos, neg): (2,1) 1, (2,0) 1, (1,1) 1/2, (1,0) 1 -> 3.5/4; second: 2/4.
    close(pixel_auc(h, m), [0.875, 0.5])
    close(pixel_auc(h.double(), m), [0.875, 0.5])


def test_pixel_auc_signed_zero_ties():
    h = torch.tensor([[[-0.0, 0.0, 1.0, -1.0]]])
    m = torch.tensor([[[True, False, False, False]]])
    # -0.0 == 0.0: the mask pixel ties with one negative and beats one: (0.5 + 1 + 0) / 3.
    close(pixel_auc(h, m), [0.5])


def test_pixel_average_precision_hand_computed():
    # n_thresholds = 2: scores (0, .25, .5, 1) fall in bins (0, 0, 1, 2).
    h = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    m = torch.tensor([[[False, False], [True, True]]])
    assert pixel_average_precision(h, m, n_thresholds=2).item() == pytest.approx(1.0)
    m2 = torch.tensor([[[True, False], [False, True]]])
    # bin 2: {4} P=1 R=1/2; bin >= 1: P=1/2, no recall gain; all: P=1/2, R=1 -> 1/2 + 1/4.
    assert pixel_average_precision(h, m2, n_thresholds=2).item() == pytest.approx(0.75)


def test_pixel_average_precision_mask_is_the_ceiling_and_uniform_is_chance():
    g = torch.Generator().manual_seed(5)
    m = torch.rand(6, 16, 16, generator=g) > 0.8
    assert pixel_average_precision(m.float(), m).item() == 1.0
    # A constant heatmap puts every pixel in bin 0: one operating point, P = |M| / N, R = 1.
    uniform = pixel_average_precision(torch.full((6, 16, 16), 0.3), m).item()
    assert uniform == pytest.approx(m.sum().item() / m.numel(), abs=1e-12)
    # Min-max normalisation makes it invariant under a positive affine map of the heatmap.
    h = torch.rand(6, 16, 16, generator=g)
    assert pixel_average_precision(3 * h + 2, m).item() == pytest.approx(pixel_average_precision(h, m).item(), abs=1e-12)


def test_pixel_average_precision_streams_exactly_and_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(3)
    h = torch.rand(10, 12, 12, generator=g) ** 3
    h[4] = 0.5  # constant: all pixels at score 0
    m = torch.rand(10, 12, 12, generator=g) > 0.7
    m[2] = False
    whole = pixel_average_precision(h, m)
    acc = PixelAveragePrecision()
    for part in (slice(0, 3), slice(3, 4), slice(4, 10)):
        acc.update(h[part], m[part], chunk_size=2)
    assert acc.compute().item() == whole.item()
    low = h.amin(dim=(1, 2), keepdim=True).double()
    span = h.amax(dim=(1, 2), keepdim=True).double() - low
    scores = ((h.double() - low) / torch.where(span > 0, span, 1.0) * 100).floor()
    reference = sklearn.average_precision_score(m.flatten().numpy(), scores.flatten().numpy())
    assert whole.item() == pytest.approx(reference, abs=1e-12)
    acc.reset()
    acc.update(h, torch.zeros_like(m))
    assert math.isnan(acc.compute().item())


# ------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("name", sorted(PER_IMAGE))
def test_empty_mask_is_nan(name):
    h = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    m = torch.zeros(2, 4, 4, dtype=torch.bool)
    m[1, 0, 0] = True
    out = PER_IMAGE[name](h, m)
    assert out.shape == (2,) and out.dtype == torch.float64
    assert math.isnan(out[0].item()) and not math.isnan(out[1].item())


def test_iou_curve_nan_for_constant_heatmap():
    out = iou_curve(torch.ones(1, 3, 3), RAMP_MASK)
    assert torch.isnan(out).all()


def test_pixel_auc_matches_sklearn_roc_auc():
    """Against scikit-learn's trapezoidal ROC AUC, with ties (values rounded to 1/8)."""
    sklearn = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(11)
    h = (torch.rand(6, 20, 20, generator=g) * 8).round() / 8
    m = torch.rand(6, 20, 20, generator=g) > 0.6
    got = pixel_auc(h, m)
    for i in range(6):
        expected = sklearn.roc_auc_score(m[i].flatten().numpy(), h[i].flatten().numpy())
        assert got[i].item() == pytest.approx(expected, abs=1e-12)


def test_pixel_auc_nonnegative_fast_path_equals_the_general_path():
    """Non-negative float32 rows take the 32-bit key sort; shifted below zero they take the float64
    packing. Pixel AUC is rank-based, so both must give the same numbers, ties and -0.0 included."""
    g = torch.Generator().manual_seed(4)
    h = (torch.rand(7, 24, 24, generator=g) * 8).round() / 8  # many ties, exact in float32
    h[0, :3] = -0.0
    h[1] = 0.0  # constant row: 0.5
    m = torch.rand(7, 24, 24, generator=g) > 0.7
    fast = pixel_auc(h, m, chunk_size=3)
    general = pixel_auc(h - 10.0, m, chunk_size=3)
    assert torch.equal(fast, general)
    assert fast[1].item() == 0.5


def test_pixel_auc_nan_for_full_mask():
    assert math.isnan(pixel_auc(RAMP, torch.ones(1, 3, 3, dtype=torch.bool)).item())


@pytest.mark.parametrize("name", sorted(PER_IMAGE) + ["iou_curve", "pixel_average_precision"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_heatmap_names_the_index(name, bad):
    fn = {"iou_curve": iou_curve, "pixel_average_precision": pixel_average_precision}.get(name) or PER_IMAGE[name]
    h = torch.rand(7, 4, 4, generator=torch.Generator().manual_seed(1))
    h[5, 2, 3] = bad
    m = torch.ones(7, 4, 4, dtype=torch.bool)
    m[:, 0] = False
    with pytest.raises(UsageError, match=r"heatmaps\[5\] contains NaN or inf"):
        fn(h, m, chunk_size=2)


def test_huge_finite_float64_values_are_accepted():
    h = torch.full((1, 2, 2), 1e308, dtype=torch.float64)
    h[0, 0, 0] = 1.7e308
    m = torch.tensor([[[True, False], [False, False]]])
    close(pointing_game(h, m), [1.0])


@pytest.mark.parametrize(
    "heatmaps, masks, match",
    [
        (torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool), "heatmaps must have shape"),
        (torch.ones(1, 4, 4, dtype=torch.int64), torch.ones(1, 4, 4, dtype=torch.bool), "heatmaps must be a floating"),
        (torch.rand(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.uint8), "masks must be a bool"),
        (torch.rand(1, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool), "masks has shape"),
        (torch.rand(2, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool), "masks has shape"),
        ([[0.0]], torch.ones(1, 1, 1, dtype=torch.bool), "heatmaps must be a torch.Tensor"),
    ],
)
def test_bad_inputs_name_the_argument(heatmaps, masks, match):
    for fn in list(PER_IMAGE.values()) + [iou_curve, pixel_average_precision]:
        with pytest.raises(UsageError, match=match):
            fn(heatmaps, masks)


def test_chunk_size_validated():
    with pytest.raises(UsageError, match="chunk_size"):
        pointing_game(RAMP, RAMP_MASK, chunk_size=0)


def test_numpy_and_half_inputs():
    out = pixel_auc(RAMP.numpy(), RAMP_MASK.numpy())
    close(out, [17 / 18])
    close(pixel_auc(RAMP.half(), RAMP_MASK), [17 / 18])
    close(pixel_auc(RAMP.bfloat16(), RAMP_MASK), [17 / 18])


def test_empty_batch():
    out = pixel_auc(torch.zeros(0, 3, 3), torch.zeros(0, 3, 3, dtype=torch.bool))
    assert out.shape == (0,)
    assert iou_curve(torch.zeros(0, 3, 3), torch.zeros(0, 3, 3, dtype=torch.bool)).shape == (0, 19)


# ------------------------------------------------------------------------------ invariances


def test_mask_as_heatmap_scores_the_maximum():
    g = torch.Generator().manual_seed(5)
    m = torch.rand(6, 10, 10, generator=g) > 0.6
    h = m.float()
    for name in ["pointing_game", "energy_pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy",
                 "iou_top_mask", "iou_auc", "pixel_auc"]:
        torch.testing.assert_close(PER_IMAGE[name](h, m), torch.ones(6, dtype=torch.float64), msg=name)
    k = int(m.sum(dim=(1, 2)).min())
    torch.testing.assert_close(top_k_intersection(h, m, k=k), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(iou_curve(h, m), torch.ones(6, 19, dtype=torch.float64))


def test_uniform_heatmap_scores_chance():
    g = torch.Generator().manual_seed(6)
    m = torch.rand(5, 8, 8, generator=g) > 0.5
    h = torch.full((5, 8, 8), 0.3)
    area = m.sum(dim=(1, 2)).double() / 64
    for name in ["pointing_game", "energy_pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy"]:
        torch.testing.assert_close(PER_IMAGE[name](h, m), area, msg=name)
    torch.testing.assert_close(top_k_intersection(h, m, k=7), area)
    torch.testing.assert_close(pixel_auc(h, m), torch.full((5,), 0.5, dtype=torch.float64))
    k = m.sum(dim=(1, 2)).double()
    torch.testing.assert_close(iou_top_mask(h, m), k / (2 * 64 - k))
    assert torch.isnan(iou_auc(h, m)).all()


# ----------------------------------------------------------------------- property-based tests


@st.composite
def batches(draw, min_side: int = 1):
    b = draw(st.integers(1, 5))
    hh = draw(st.integers(min_side, 9))
    ww = draw(st.integers(min_side, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    ties = draw(st.booleans())
    g = np.random.default_rng(seed)
    h = g.integers(-3, 4, size=(b, hh, ww)) if ties else g.normal(size=(b, hh, ww))
    m = g.random((b, hh, ww)) < draw(st.floats(0.05, 0.95))
    m.reshape(b, -1)[:, 0] = True  # never empty
    return torch.from_numpy(h.astype(np.float32)), torch.from_numpy(m)


def brute_force_auc(h: np.ndarray, m: np.ndarray) -> float:
    pos, neg = h[m], h[~m]
    if pos.size == 0 or neg.size == 0:
        return NAN
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@settings(max_examples=40, deadline=None)
@given(batches())
def test_pixel_auc_matches_pairwise_reference(batch):
    h, m = batch
    out = pixel_auc(h, m)
    expected = [brute_force_auc(h[i].numpy(), m[i].numpy()) for i in range(h.shape[0])]
    close(out, expected)
    close(pixel_auc(h.double(), m), expected)


@settings(max_examples=25, deadline=None)
@given(batches())
def test_ranges_batch_equals_per_image_and_chunking(batch):
    h, m = batch
    for name, fn in PER_IMAGE.items():
        if name == "top_k_intersection" and h.shape[1] * h.shape[2] < 3:
            continue
        out = fn(h, m)
        finite = out[~torch.isnan(out)]
        assert ((finite >= 0) & (finite <= 1 + 1e-12)).all(), name
        assert torch.equal(torch.isnan(fn(h, m, chunk_size=1)), torch.isnan(out)), name
        torch.testing.assert_close(fn(h, m, chunk_size=1), out, equal_nan=True, rtol=0, atol=0, msg=name)
        singles = torch.cat([fn(h[i : i + 1], m[i : i + 1]) for i in range(h.shape[0])])
        torch.testing.assert_close(singles, out, equal_nan=True, rtol=0, atol=0, msg=name)
    curve = iou_curve(h, m)
    torch.testing.assert_close(iou_curve(h, m, chunk_size=2), curve, equal_nan=True, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(batches())
def test_rank_metrics_invariant_under_monotone_transform(batch):
    h, m = batch
    h = h.round()  # small integers: x**3 + 2x is exact and strictly increasing in float32
    transformed = h**3 + 2 * h + 5
    for name in RANK_BASED:
        if name == "top_k_intersection" and h.shape[1] * h.shape[2] < 3:
            continue
        fn = PER_IMAGE[name]
        torch.testing.assert_close(fn(transformed, m), fn(h, m), equal_nan=True, msg=name)
    # The IoU protocol normalises by min and max: invariant under positive affine maps.
    torch.testing.assert_close(iou_curve(h * 4 - 3, m), iou_curve(h, m), equal_nan=True)


@settings(max_examples=25, deadline=None)
@given(batches(), st.floats(0, 4))
def test_pointing_game_matches_brute_force(batch, tolerance):
    h, m = batch
    out = pointing_game(h, m, tolerance=tolerance)
    for i in range(h.shape[0]):
        top = np.argwhere(h[i].numpy() == h[i].numpy().max())
        inside = np.argwhere(m[i].numpy())
        d2 = ((top[:, None, :] - inside[None, :, :]) ** 2).sum(-1).min(axis=1)
        assert out[i].item() == pytest.approx(float((d2 <= tolerance**2).mean()))


@settings(max_examples=25, deadline=None)
@given(batches())
def test_top_k_matches_expectation_over_tie_breaks(batch):
    h, m = batch
    n = h.shape[1] * h.shape[2]
    k = max(1, n // 3)
    out = top_k_intersection(h, m, k=k)
    rra = relevance_rank_accuracy(h, m)
    for i in range(h.shape[0]):
        flat, mask = h[i].flatten().numpy(), m[i].flatten().numpy()
        for kk, got in ((k, out[i].item()), (int(mask.sum()), rra[i].item())):
            v = np.sort(flat)[::-1][kk - 1]
            above, tied = flat > v, flat == v
            expected = (mask[above].sum() + (kk - above.sum()) * mask[tied].mean()) / kk
            assert got == pytest.approx(expected)


@settings(max_examples=15, deadline=None)
@given(batches())
def test_torch_code_paths_agree_with_numpy_paths(batch):
    """Other devices sort and find ties with torch; run those paths on the CPU and compare."""
    from an8flower.eval.metrics import _ranks

    h, m = batch
    fns = {**PER_IMAGE, "iou_curve": iou_curve}
    if h.shape[1] * h.shape[2] < 3:
        fns.pop("top_k_intersection")
    numpy_scores = {name: fn(h, m) for name, fn in fns.items()}
    numpy_double = pixel_auc(h.double(), m)
    _ranks.NUMPY_ON_CPU = False
    try:
        torch_scores = {name: fn(h, m) for name, fn in fns.items()}
        torch_double = pixel_auc(h.double(), m)
    finally:
        _ranks.NUMPY_ON_CPU = True
    for name in fns:
        torch.testing.assert_close(torch_scores[name], numpy_scores[name], equal_nan=True, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(torch_double, numpy_double, equal_nan=True, rtol=0, atol=0)


# ------------------------------------------------------- CPU kernels against reference implementations


def tie_heavy_batch(kind: str, b: int = 4, side: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps that stress the kernels: ties, signs, signed zeros, denormals, tiny and huge values."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(b, side, side))
    if kind == "levels8":
        x = np.round(g.random((b, side, side)) * 8) / 8  # nine values, exact in float16
    elif kind == "levels256":
        x = np.round(g.random((b, side, side)) * 255) - 128.0  # signed integers
    elif kind == "relu":
        x = np.maximum(x, 0.0)  # about half the pixels are exactly 0
        x[0, :4] = -0.0
    elif kind == "constant":
        x = np.full((b, side, side), 0.25)
        x[0, ::2] = -0.0
        x[0, 1::2] = 0.0  # -0.0 and 0.0 tie
    elif kind == "denormal":
        x = np.abs(x) * 1e-41
    elif kind == "huge":
        x = x * 1e36
    elif kind == "striped":  # every 16th pixel is large: a strided sample sees only those
        x = g.random((b, side, side)) * 0.01
        x.reshape(b, -1)[:, ::16] += 5.0
    m = g.random((b, side, side)) < g.uniform(0.05, 0.6, size=(b, 1, 1))
    m.reshape(b, -1)[:, :2] = [True, False]  # neither empty nor full
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(m)


KINDS = ["normal", "levels8", "levels256", "relu", "constant", "denormal", "huge", "striped"]


@pytest.fixture(params=["numpy", "radix"])
def sort_kernel(request):
    """Run a test once with each CPU sort kernel of pixel AUC (both must give identical scores)."""
    from an8flower.eval.metrics import _ranks

    saved = _ranks.SORT_KERNEL
    _ranks.SORT_KERNEL = request.param
    yield request.param
    _ranks.SORT_KERNEL = saved


def rankdata_auc(h: np.ndarray, m: np.ndarray) -> float:
    """The Mann-Whitney AUC from scipy's mid-ranks (exact in float64 at these sizes)."""
    stats = pytest.importorskip("scipy.stats")
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    ranks = stats.rankdata(h.astype(np.float64))  # -0.0 == 0.0 for the comparison
    return ((ranks[m].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("side", [37, 224])  # 1,369 pixels (not a multiple of 8); 50,176 (a radix block)
def test_pixel_auc_kernels_match_rankdata_and_sklearn(sort_kernel, kind, side):
    sklearn = pytest.importorskip("sklearn.metrics")
    h, m = tie_heavy_batch(kind, b=3 if side < 100 else 2, side=side)
    # float16 is widened exactly to float32 (huge values overflow it); float64 takes the argsort path.
    for heatmaps in (h, h.double()) if kind == "huge" else (h, h.half(), h.double()):
        got = pixel_auc(heatmaps, m, chunk_size=2)
        for i in range(h.shape[0]):
            flat, mask = heatmaps[i].float().flatten().numpy(), m[i].flatten().numpy()
            assert got[i].item() == rankdata_auc(flat, mask), (kind, heatmaps.dtype, i)
            if side < 100:
                assert got[i].item() == pytest.approx(sklearn.roc_auc_score(mask, flat), abs=1e-12)


def sorted_top_k_hits(flat: np.ndarray, mask: np.ndarray, k: int) -> float:
    """Expected mask pixels among the top k, ties at the k-th value shared: from a full sort."""
    v = np.sort(flat)[::-1][k - 1]
    above, tied = flat > v, flat == v
    return float(mask[above].sum() + (k - above.sum()) * mask[tied].sum() / tied.sum())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_top_k_metrics_match_a_sorted_reference(kind, dtype):
    if kind == "huge" and dtype == torch.float16:
        pytest.skip("float16 overflows")
    h, m = tie_heavy_batch(kind, b=5, side=64)
    h = h.to(dtype)
    n = 64 * 64
    rra = relevance_rank_accuracy(h, m, chunk_size=2)
    topk = top_k_intersection(h, m, k=300, chunk_size=2)
    iou = iou_top_mask(h, m, chunk_size=2)
    for i in range(h.shape[0]):
        flat, mask = h[i].double().flatten().numpy(), m[i].flatten().numpy()
        k = int(mask.sum())
        hits = sorted_top_k_hits(flat, mask, k)
        assert rra[i].item() == pytest.approx(hits / k, rel=1e-12, abs=1e-15), (kind, i)
        assert iou[i].item() == pytest.approx(hits / (2 * k - hits), rel=1e-12, abs=1e-15), (kind, i)
        assert topk[i].item() == pytest.approx(sorted_top_k_hits(flat, mask, 300) / 300, rel=1e-12, abs=1e-15)
    assert n > 1024  # the bracket samples a strided subset of each row


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_kernels_equal_the_torch_paths_on_large_tie_heavy_inputs(kind):
    """The NumPy kernels (radix select, both sorts) and the torch code of other devices: same bits."""
    from an8flower.eval.metrics import _ranks

    h, m = tie_heavy_batch(kind, b=3, side=96)
    fns = {
        "rra": relevance_rank_accuracy,
        "topk": lambda h, m: top_k_intersection(h, m, k=0.1),
        "iou_top_mask": iou_top_mask,
        "pixel_auc": pixel_auc,
    }
    saved = _ranks.SORT_KERNEL
    try:
        cpu = {}
        for kernel in ("numpy", "radix"):
            _ranks.SORT_KERNEL = kernel
            cpu[kernel] = {name: fn(h, m) for name, fn in fns.items()}
        _ranks.NUMPY_ON_CPU = False
        reference = {name: fn(h, m) for name, fn in fns.items()}
    finally:
        _ranks.NUMPY_ON_CPU = True
        _ranks.SORT_KERNEL = saved
    for kernel, scores in cpu.items():
        for name in fns:
            assert torch.equal(scores[name], reference[name]), (kernel, name)


def test_radix_sort_equals_np_sort():
    from an8flower.eval.metrics import _ranks

    g = np.random.default_rng(3)
    for bits, dtype, shape in [(32, np.uint32, (5, 30000)), (33, np.uint64, (3, 1001)), (16, np.uint32, (70, 900))]:
        keys = g.integers(0, 1 << bits, size=shape, dtype=np.uint64).astype(dtype)
        keys[0, :100] = keys[0, 0]  # a run of ties
        expected = np.sort(keys, axis=1)
        got = _ranks._radix_sort_rows(keys.copy(), bits, _ranks.Workspace())
        np.testing.assert_array_equal(got, expected)


def test_sort_kernel_is_measured_or_forced():
    from an8flower.eval.metrics import _ranks

    saved = _ranks.SORT_KERNEL
    try:
        _ranks.SORT_KERNEL = None
        assert _ranks.sort_kernel(32) in ("numpy", "radix")
        _ranks.SORT_KERNEL = "radix"
        assert _ranks.sort_kernel(32) == "radix"
        _ranks.SORT_KERNEL = "fast"
        with pytest.raises(ValueError, match="SORT_KERNEL"):
            _ranks.sort_kernel(32)
    finally:
        _ranks.SORT_KERNEL = saved


def test_order_keys_order_like_the_values():
    from an8flower.eval.metrics import _ranks

    values = np.array([-np.inf, -3.5, -1e-45, -0.0, 0.0, 1e-45, 2.0, np.finfo(np.float32).max, np.inf])
    for dtype in (np.float32, np.float64):
        keys = _ranks.order_keys(values.astype(dtype)).copy()
        assert keys[3] == keys[4]  # -0.0 and 0.0
        assert (np.diff(np.delete(keys, 3).astype(np.float64)) > 0).all()
        descending = _ranks.order_keys(values.astype(dtype), descending=True)
        np.testing.assert_array_equal(descending, ~keys)


@pytest.mark.parametrize("width", [1, 7, 8, 64, 1001])
def test_row_counts(width):
    from an8flower.eval.metrics import _ranks

    b = np.random.default_rng(width).random((3, width)) < 0.4
    np.testing.assert_array_equal(_ranks.row_counts(b), b.sum(axis=1))
    padded, view = _ranks._mask_buffer(None, "m", 3, width)
    view[...] = b
    np.testing.assert_array_equal(_ranks.row_counts(padded), b.sum(axis=1))


@pytest.mark.parametrize("kind", KINDS)
def test_iou_curve_counting_equals_the_sorting_path(kind):
    """Up to 32 thresholds are counted by comparisons, more by sorting: the same numbers."""
    h, m = tie_heavy_batch(kind, b=3, side=40)
    h[1] = h[1] * 0 + 2.0  # constant: NaN
    grid = torch.linspace(0.02, 1.0, 40, dtype=torch.float64)
    whole = iou_curve(h, m, thresholds=grid)  # 40 thresholds: sorts
    halves = torch.cat([iou_curve(h, m, thresholds=grid[:20]), iou_curve(h, m, thresholds=grid[20:])], dim=1)
    torch.testing.assert_close(halves, whole, equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(whole[1]).all()
    assert torch.isnan(whole[0]).any() == (kind == "constant")  # its row 0 holds only -0.0 and 0.0
