"""Part attribution: hand-computed shares, chance normalisation, NaN cases, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from an8flower.errors import UsageError
from an8flower.eval.metrics import PartAttribution, part_attribution

H = torch.tensor([[[1.0, -1.0], [3.0, 0.0]]])
PARTS = torch.tensor([[[0, 1], [1, 2]]], dtype=torch.uint8)


def test_hand_computed_shares_and_normalisation():
    out = part_attribution(H, PARTS, n_parts=4)
    assert isinstance(out, PartAttribution)
    # Positive part (1, 0, 3, 0), total 4. Part 0: 1/4 on 1/4 of the image; part 1: 3/4 on 2/4;
    # part 2: 0 on 1/4; part 3: absent.
    expected_share = torch.tensor([[0.25, 0.75, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out.share, expected_share)
    torch.testing.assert_close(out.normalised, torch.tensor([[1.0, 1.5, 0.0, math.nan]], dtype=torch.float64), equal_nan=True)
    assert out.share.dtype == out.normalised.dtype == torch.float64


def test_uniform_heatmap_is_chance_on_every_present_part():
    g = torch.Generator().manual_seed(0)
    parts = torch.randint(0, 3, (4, 6, 6), generator=g)
    out = part_attribution(torch.full((4, 6, 6), 2.0), parts, n_parts=3)
    present = torch.stack([(parts == p).any(dim=(1, 2)) for p in range(3)], dim=1)
    torch.testing.assert_close(out.normalised[present], torch.ones(int(present.sum()), dtype=torch.float64))
    torch.testing.assert_close(out.share.sum(dim=1), torch.ones(4, dtype=torch.float64))


def test_no_positive_relevance_is_nan():
    out = part_attribution(-torch.ones(1, 2, 2), PARTS, n_parts=3)
    assert torch.isnan(out.share).all() and torch.isnan(out.normalised).all()


def test_all_relevance_on_one_part():
    h = torch.tensor([[[0.0, 5.0], [2.0, 0.0]]])
    out = part_attribution(h, PARTS, n_parts=3)
    torch.testing.assert_close(out.share, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(out.normalised, torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 8), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_matches_loop_reference_and_chunking(b, hh, ww, p, seed):
    g = np.random.default_rng(seed)
    h = torch.from_numpy(g.normal(size=(b, hh, ww)).astype(np.float32))
    parts = torch.from_numpy(g.integers(0, p, size=(b, hh, ww)))
    out = part_attribution(h, parts, n_parts=p)
    chunked = part_attribution(h, parts, n_parts=p, chunk_size=1)
    torch.testing.assert_close(chunked.share, out.share, equal_nan=True, rtol=0, atol=0)
    for i in range(b):
        pos = np.clip(h[i].numpy().astype(np.float64), 0, None)
        for q in range(p):
            on = parts[i].numpy() == q
            share = pos[on].sum() / pos.sum() if pos.sum() > 0 else math.nan
            assert out.share[i, q].item() == pytest.approx(share, nan_ok=True)
            norm = share / on.mean() if on.any() else math.nan
            assert out.normalised[i, q].item() == pytest.approx(norm, nan_ok=True)


@pytest.mark.parametrize(
    "parts, n_parts, match",
    [
        (PARTS.float(), 3, "part_maps must be an integer"),
        (PARTS.bool(), 3, "part_maps must be an integer"),
        (PARTS, 2, r"label 2, outside \[0, n_parts\)"),
        (PARTS.long() - 1, 3, "label -1"),
        (PARTS[:, :1], 3, "part_maps has shape"),
        (PARTS, 0, "n_parts"),
        (PARTS, 2.0, "n_parts"),
    ],
)
def test_bad_part_maps(parts, n_parts, match):
    with pytest.raises(UsageError, match=match):
        part_attribution(H, parts, n_parts=n_parts)


def test_non_finite_heatmap_names_index():
    h = torch.rand(3, 2, 2)
    h[2, 0, 0] = float("nan")
    with pytest.raises(UsageError, match=r"heatmaps\[2\]"):
        part_attribution(h, PARTS.expand(3, 2, 2), n_parts=3)
