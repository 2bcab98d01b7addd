"""Part attribution: how a heatmap's positive relevance spreads over the parts of an an8Flower image."""

from __future__ import annotations

from typing import NamedTuple

import torch

from an8flower.errors import UsageError
from an8flower.eval.metrics._checks import (
    as_tensor,
    check_finite,
    check_heatmaps,
    check_positive_int,
    chunks,
    resolve_chunk_size,
)

__all__ = ["PartAttribution", "part_attribution"]

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class PartAttribution(NamedTuple):
    """Result of :func:`part_attribution`, both (B, P) float64.

    ``share[b, p]``: the fraction of image b's positive relevance that falls on part p (each row
    sums to 1). ``normalised[b, p]``: ``share / area share``, 1 meaning "as much as a heatmap
    spread uniformly over the image would give the part", above 1 an over-attributed part.
    """

    share: torch.Tensor
    normalised: torch.Tensor


def part_attribution(
    heatmaps: torch.Tensor,
    part_maps: torch.Tensor,
    n_parts: int,
    *,
    chunk_size: int | None = None,
) -> PartAttribution:
    """Share of positive attribution on each part of a part map, raw and chance-normalised.

    With ``h+ = max(h, 0)``, ``S_p`` the pixels labelled p and N the number of pixels::

        share_p      = sum_{S_p} h+ / sum h+
        normalised_p = share_p / (|S_p| / N)

    Every pixel belongs to exactly one part (background included, if the part map labels it), so
    the shares of an image sum to 1; a constant positive heatmap has ``normalised == 1`` on every
    part present. This is the part-level reading of the an8Flower ground truth (Oramas et al.,
    ICLR 2019): the class is decided by the colour of given parts, so a faithful explanation puts
    its relevance on those parts.

    Args:
        heatmaps: (B, H, W) floating.
        part_maps: (B, H, W) integer (uint8 or int16/32/64) part labels in ``[0, n_parts)``, on the
            heatmaps' device.
        n_parts: number of part labels P.
        chunk_size: images per chunk (default 2**18 pixels).

    Returns:
        :class:`PartAttribution` of two (B, P) float64 tensors. A row of both is NaN when the
        heatmap has no positive value; ``normalised`` is NaN for a part absent from the image.

    The sums run one part at a time (O(P N) per image, deterministic on every device).
    """
    h = check_heatmaps(heatmaps)
    parts = as_tensor(part_maps, "part_maps")
    p_count = check_positive_int(n_parts, "n_parts")
    if parts.dtype not in _INTEGER_DTYPES:
        raise UsageError(f"part_maps must be an integer tensor (uint8 or int64), got {parts.dtype}")
    if tuple(parts.shape) != tuple(h.shape):
        raise UsageError(f"part_maps has shape {tuple(parts.shape)} but heatmaps have shape {tuple(h.shape)}")
    if parts.device != h.device:
        raise UsageError(f"part_maps is on {parts.device} but heatmaps are on {h.device}")
    if parts.numel():
        low, high = int(parts.min()), int(parts.max())
        if low < 0 or high >= p_count:
            bad = low if low < 0 else high
            raise UsageError(f"part_maps holds label {bad}, outside [0, n_parts) = [0, {p_count})")

    b, hh, ww = h.shape
    n = hh * ww
    share = torch.empty((b, p_count), dtype=torch.float64, device=h.device)
    area = torch.empty((b, p_count), dtype=torch.float64, device=h.device)
    for sl in chunks(b, resolve_chunk_size(chunk_size, n)):
        hc = h[sl].reshape(-1, n)
        check_finite(hc, sl.start)
        positive = hc.clamp(min=0)
        labels = parts[sl].reshape(-1, n)
        total = positive.sum(dim=1, dtype=torch.float64)
        for p in range(p_count):
            on_part = labels == p
            share[sl, p] = (positive * on_part).sum(dim=1, dtype=torch.float64) / total
            area[sl, p] = on_part.sum(dim=1).double() / n
    normalised = (share / area).masked_fill(area == 0, float("nan"))
    return PartAttribution(share, normalised)
