"""Localisation metrics: how well a heatmap overlaps a ground-truth mask.

Every function takes ``heatmaps`` (B, H, W) floating (larger = more relevant) and ``masks``
(B, H, W) bool on the same device, and returns per-image scores (B,) as **float64** on that device
(``iou_curve``: (B, T)), except :func:`pixel_average_precision`, which scores a whole set. The
conventions shared by all of them (thresholds, ties, NaN cases) are listed in the package
docstring, :mod:`an8flower.eval.metrics`.

All metrics are computed a chunk of images at a time (``chunk_size`` images, default 2**18
pixels per chunk), vectorised within the chunk; memory is bounded by the chunk, not the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from an8flower.errors import UsageError
from an8flower.eval.metrics._checks import (
    check_finite,
    check_heatmaps,
    check_masks,
    check_positive_int,
    chunks,
    resolve_chunk_size,
)
from an8flower.eval.metrics._ranks import (
    Workspace,
    count_true,
    midrank_sum_x2_of_flagged,
    normalised_at_least,
    top_k_counts,
)

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "iou_curve",
    "iou_auc",
    "iou_top_mask",
    "pointing_game",
    "energy_pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_k_intersection",
    "pixel_auc",
    "pixel_average_precision",
    "PixelAveragePrecision",
]

#: The IoU threshold grid: 0.05, 0.10, ..., 0.95 (19 values, each k/20 correctly rounded).
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(k / 20 for k in range(1, 20))

_NAN = float("nan")

ChunkFn = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


def _per_image(
    heatmaps: torch.Tensor,
    masks: torch.Tensor,
    fn: ChunkFn,
    chunk_size: int | None,
    trailing: tuple[int, ...] = (),
) -> torch.Tensor:
    """Validate, then apply ``fn(h (c, N), m (c, N), (H, W))`` chunk by chunk and concatenate."""
    h = check_heatmaps(heatmaps)
    m = check_masks(masks, h)
    b, hh, ww = h.shape
    n = hh * ww
    size = resolve_chunk_size(chunk_size, n)
    out = torch.empty((b, *trailing), dtype=torch.float64, device=h.device)
    for sl in chunks(b, size):
        hc = h[sl].reshape(-1, n)
        check_finite(hc, sl.start)
        out[sl] = fn(hc, m[sl].reshape(-1, n), (hh, ww))
    return out


def _nan_where(values: torch.Tensor, undefined: torch.Tensor) -> torch.Tensor:
    if undefined.dim() < values.dim():
        undefined = undefined.unsqueeze(-1)
    return values.masked_fill(undefined, _NAN)


# --------------------------------------------------------------------------------------------- IoU


def _check_thresholds(thresholds: Sequence[float] | torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if thresholds is None:
        thresholds = DEFAULT_IOU_THRESHOLDS
    t = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise UsageError("thresholds must hold at least one value")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()) or bool((t > 1).any()):
        raise UsageError(f"thresholds must lie in (0, 1], got {t.tolist()}")
    if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        raise UsageError(f"thresholds must be strictly increasing, got {t.tolist()}")
    return t.to(device)


def iou_curve(
    heatmaps: torch.Tensor,
    masks: torch.Tensor,
    thresholds: Sequence[float] | torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """IoU of the mask with the heatmap binarised at each threshold: (B, T) float64.

    The protocol of Oramas et al. (ICLR 2019, "Visual Explanation by Interpretation"), as this
    project fixes it: each heatmap is min-max normalised, ``h' = (h - min h) / (max h - min h)``
    (in float64), binarised non-strictly, ``A_t = {p : h'(p) >= t}``, and compared with the mask
    ``M``::

        IoU_t = |A_t & M| / |A_t | M|

    Args:
        heatmaps: (B, H, W) floating.
        masks: (B, H, W) bool.
        thresholds: strictly increasing values in (0, 1]; default :data:`DEFAULT_IOU_THRESHOLDS`
            (0.05, 0.10, ..., 0.95).
        chunk_size: images per chunk (default: 2**18 pixels, 5 heatmaps of 224 x 224).

    Returns:
        (B, T) float64. A row is NaN when the mask is empty or the heatmap is constant (no range
        to normalise).
    """
    h = check_heatmaps(heatmaps)
    t = _check_thresholds(thresholds, h.device)
    ws = Workspace()

    def chunk(hc: torch.Tensor, mc: torch.Tensor, _: tuple[int, int]) -> torch.Tensor:
        selected, inter, span = normalised_at_least(hc, mc, t, ws)  # |A_t|, |A_t & M|, max - min
        k = count_true(mc)
        union = selected + k.unsqueeze(1) - inter
        iou = inter.double() / union.double()
        return _nan_where(iou, (k == 0) | (span <= 0))

    return _per_image(h, masks, chunk, chunk_size, trailing=(t.numel(),))


def iou_auc(
    heatmaps: torch.Tensor,
    masks: torch.Tensor,
    thresholds: Sequence[float] | torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Area under the IoU-threshold curve: the mean of :func:`iou_curve` over the grid, (B,) float64.

    On the default uniform grid this is a Riemann-sum estimate of ``(1 / 0.9) * integral of IoU(t)
    dt over [0.05, 0.95]``, a value in [0, 1]. NaN where the curve is.
    """
    return iou_curve(heatmaps, masks, thresholds, chunk_size=chunk_size).mean(dim=1)


def _expected_top_k_hits(h: torch.Tensor, m: torch.Tensor, k: torch.Tensor | int, ws: Workspace) -> torch.Tensor:
    """Expected number of mask pixels among the ``k`` highest pixels, ties broken at random.

    With ``v`` the k-th largest value, every pixel above ``v`` is selected and the remaining
    ``k - #{h > v}`` slots go to the ``#{h == v}`` tied pixels with equal probability. On a CPU the
    counts come without a sort (:func:`~an8flower.eval.metrics._ranks.top_k_counts`).
    """
    n_above, n_tied, hits_above, hits_tied = top_k_counts(h, m, k, ws)
    return hits_above.double() + (k - n_above).double() * hits_tied.double() / n_tied.double()


def iou_top_mask(heatmaps: torch.Tensor, masks: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """IoU of the mask with the heatmap's top-|M| pixels, (B,) float64.

    The heatmap is binarised at its ``k = |M|`` highest pixels ``T_k``; with ``|T_k| = |M| = k``
    the IoU is ``I / (2k - I)`` where ``I = |T_k & M|``. Pixels tied at the k-th value are taken
    fractionally: ``I`` is the expected intersection when the ties are broken uniformly at random
    (so a constant heatmap scores ``k / (2N - k)``, N pixels). NaN for an empty mask.
    """

    ws = Workspace()

    def chunk(hc: torch.Tensor, mc: torch.Tensor, _: tuple[int, int]) -> torch.Tensor:
        k = count_true(mc)
        inter = _expected_top_k_hits(hc, mc, k.clamp(min=1), ws)
        return _nan_where(inter / (2 * k.double() - inter), k == 0)

    return _per_image(heatmaps, masks, chunk, chunk_size)


# ---------------------------------------------------------------------------------- pointing game


def _reach(radius: float, dx: int) -> int:
    """Largest integer ``a >= 0`` with ``a**2 + dx**2 <= radius**2`` (exact for integer radii)."""
    r2 = radius * radius - dx * dx
    a = int(math.isqrt(int(r2))) if r2 >= 0 else -1
    while (a + 1) ** 2 + dx * dx <= radius * radius:
        a += 1
    return a


def _dilate_disk(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Dilate bool masks (c, H, W) by a Euclidean disk: pixels within ``radius`` of a mask pixel.

    Distances are between pixel centres. Computed exactly without a distance transform: the
    vertical distance from each pixel to the nearest mask pixel in its column (two cumulative
    scans), then one shifted comparison per column offset ``dx`` in ``[-r, r]``.
    """
    r = int(math.floor(radius))
    if r < 1:
        return masks
    c, hh, ww = masks.shape
    rows = torch.arange(hh, device=masks.device).view(1, hh, 1)
    far = hh + r + 1
    # Arithmetic instead of torch.where: branch-free on random masks.
    above = (masks * (rows + far) - far).cummax(dim=1).values
    below = (hh + far - masks * (hh + far - rows)).flip(1).cummin(dim=1).values.flip(1)
    gap = torch.minimum(rows - above, below - rows)
    out = torch.zeros_like(masks)
    for dx in range(-r, r + 1):
        if abs(dx) >= ww:
            continue
        near = gap <= _reach(radius, dx)
        if dx >= 0:
            out[:, :, : ww - dx] |= near[:, :, dx:]
        else:
            out[:, :, -dx:] |= near[:, :, : ww + dx]
    return out


def pointing_game(
    heatmaps: torch.Tensor,
    masks: torch.Tensor,
    tolerance: float = 0.0,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Pointing game (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop").

    A hit when the heatmap's maximum lies in the mask, or within ``tolerance`` pixels of it
    (Euclidean distance between pixel centres; Zhang et al. use 15 px). When several pixels tie
    for the maximum the score is the fraction of them that hit::

        PG = |argmax h & D_r(M)| / |argmax h|,   D_r(M) = {p : dist(p, M) <= r}

    so a constant heatmap scores the (dilated) mask's area fraction, i.e. chance, never 1.

    Args:
        heatmaps: (B, H, W) floating.
        masks: (B, H, W) bool.
        tolerance: radius in pixels (>= 0); 0 means the maximum must be on a mask pixel.
        chunk_size: images per chunk.

    Returns:
        (B,) float64 in [0, 1]; NaN for an empty mask (Quantus counts it as a hit).
    """
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance >= 0:
        raise UsageError(f"tolerance must be a number >= 0 (pixels), got {tolerance!r}")
    if not math.isfinite(tolerance):
        raise UsageError(f"tolerance must be finite, got {tolerance!r}")

    def chunk(hc: torch.Tensor, mc: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        empty = ~mc.any(dim=1)
        if tolerance >= 1:
            mc = _dilate_disk(mc.view(-1, *shape), tolerance).view(mc.shape)
        top_value, top_index = hc.max(dim=1, keepdim=True)
        top = hc == top_value
        n_top = top.sum(dim=1)
        if bool((n_top == 1).all()):  # a single maximum per image: look it up
            score = mc.gather(1, top_index).squeeze(1).double()
        else:
            score = (top & mc).sum(dim=1).double() / n_top.double()
        return _nan_where(score, empty)

    return _per_image(heatmaps, masks, chunk, chunk_size)


# ------------------------------------------------------------------------------------ mass shares


def _positive_share(hc: torch.Tensor, mc: torch.Tensor) -> torch.Tensor:
    positive = hc.clamp(min=0)
    total = positive.sum(dim=1, dtype=torch.float64)
    inside = (positive * mc).sum(dim=1, dtype=torch.float64)
    return _nan_where(inside / total, ~mc.any(dim=1) | (total <= 0))


def energy_pointing_game(heatmaps: torch.Tensor, masks: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., CVPR-W 2020, "Score-CAM"), (B,) float64.

    The share of the heatmap's positive energy inside the mask (Score-CAM uses the object's
    bounding box; a box mask gives exactly that)::

        EPG = sum_{p in M} max(h_p, 0) / sum_p max(h_p, 0)

    A constant positive heatmap scores the mask's area fraction (chance). NaN for an empty mask or
    a heatmap without positive values. The same number as :func:`relevance_mass_accuracy`.
    """
    return _per_image(heatmaps, masks, lambda h, m, _: _positive_share(h, m), chunk_size)


def relevance_mass_accuracy(heatmaps: torch.Tensor, masks: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Relevance mass accuracy (Arras, Osman, Samek, Information Fusion 2022, "CLEVR-XAI"), (B,) float64.

    ``R_within / R_total``: the relevance inside the mask over the total relevance. Arras et al.
    first pool relevance to a non-negative map; for a (possibly signed) 2-D heatmap we take its
    positive part, the "sum,pos" pooling of a single channel::

        RMA = sum_{p in M} max(h_p, 0) / sum_p max(h_p, 0)

    Identical to :func:`energy_pointing_game`. NaN for an empty mask or no positive relevance.
    """
    return _per_image(heatmaps, masks, lambda h, m, _: _positive_share(h, m), chunk_size)


# ------------------------------------------------------------------------------------ rank based


def relevance_rank_accuracy(heatmaps: torch.Tensor, masks: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Relevance rank accuracy (Arras, Osman, Samek 2022, "CLEVR-XAI"), (B,) float64.

    The fraction of the ``K = |M|`` highest-ranked pixels ``P_K`` that lie in the mask::

        RRA = |P_K & M| / K

    Ties at the K-th value are counted fractionally (expected value under random tie-breaking), so
    a constant heatmap scores ``K / N`` (chance). NaN for an empty mask.
    """

    ws = Workspace()

    def chunk(hc: torch.Tensor, mc: torch.Tensor, _: tuple[int, int]) -> torch.Tensor:
        k = count_true(mc)
        hits = _expected_top_k_hits(hc, mc, k.clamp(min=1), ws)
        return _nan_where(hits / k.double(), k == 0)

    return _per_image(heatmaps, masks, chunk, chunk_size)


def _resolve_k(k: int | float, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise UsageError(f"k must be a pixel count (int) or a fraction of the image (float), got {k!r}")
    if isinstance(k, float):
        if not 0 < k <= 1:
            raise UsageError(f"k as a fraction of the image must lie in (0, 1], got {k!r}")
        return max(1, round(k * n))
    if not 1 <= k <= n:
        raise UsageError(f"k = {k} pixels must lie in [1, {n}] (the heatmap has {n} pixels)")
    return k


def top_k_intersection(
    heatmaps: torch.Tensor,
    masks: torch.Tensor,
    k: int | float = 1000,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Top-k intersection (Theiner, Müller-Budack, Ewerth, WACV 2022), (B,) float64.

    The fraction of the ``k`` highest pixels ``P_k`` that lie in the mask::

        TKI = |P_k & M| / k

    Args:
        heatmaps: (B, H, W) floating.
        masks: (B, H, W) bool.
        k: an int is a number of pixels (default 1000, as Quantus; must not exceed H*W); a float
            in (0, 1] is a fraction of the image, rounded to the nearest pixel count. Use
            :func:`relevance_rank_accuracy` for k = |M| per image.
        chunk_size: images per chunk.

    Returns:
        (B,) float64 in [0, 1]; ties at the k-th value counted fractionally (a constant heatmap
        scores |M| / N). NaN for an empty mask.
    """
    h = check_heatmaps(heatmaps)
    kk = _resolve_k(k, h.shape[1] * h.shape[2])
    ws = Workspace()

    def chunk(hc: torch.Tensor, mc: torch.Tensor, _: tuple[int, int]) -> torch.Tensor:
        return _nan_where(_expected_top_k_hits(hc, mc, kk, ws) / kk, ~mc.any(dim=1))

    return _per_image(h, masks, chunk, chunk_size)


def pixel_auc(heatmaps: torch.Tensor, masks: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
    """Area under the ROC curve of the pixels' heatmap values against the mask, (B,) float64.

    Computed from ranks (Mann-Whitney U, Hanley & McNeil 1982), with ``n+ = |M|``, ``n- = N - |M|``
    and ``R+`` the sum of the mask pixels' 1-based ranks in ascending order, ties given their mean
    rank::

        AUC = (R+ - n+ (n+ + 1) / 2) / (n+ n-)

    i.e. ``P(h_pos > h_neg) + P(h_pos == h_neg) / 2``, the same number as the trapezoidal ROC AUC
    (scikit-learn's ``roc_auc_score``). A constant heatmap scores 0.5. NaN when the mask is empty or
    covers the whole image.
    """

    ws = Workspace()

    def chunk(hc: torch.Tensor, mc: torch.Tensor, _: tuple[int, int]) -> torch.Tensor:
        n = hc.shape[1]
        n_pos = count_true(mc)
        n_neg = n - n_pos
        u = (midrank_sum_x2_of_flagged(hc, mc, ws) - n_pos * (n_pos + 1)).double() / 2
        return _nan_where(u / (n_pos * n_neg).double(), (n_pos == 0) | (n_neg == 0))

    return _per_image(heatmaps, masks, chunk, chunk_size)


# ------------------------------------------------------------------------------------------ PxAP


class PixelAveragePrecision:
    """Streaming pixel average precision, PxAP (Choe et al., CVPR 2020, "Evaluating Weakly
    Supervised Object Localization Methods Right"; their wsolevaluation code).

    A set-level metric: every pixel of every image is one sample, the mask its label. Each heatmap
    is min-max normalised to ``s`` in [0, 1] (a constant heatmap becomes all zeros, as in
    wsolevaluation) and counted into ``n_thresholds + 1`` bins ``b = floor(n_thresholds * s)``.
    At each threshold ``theta_j = j / n_thresholds`` (j = n_thresholds, ..., 0) the pixels with
    ``b >= j`` are predicted positive, giving precision ``P_j`` and recall ``R_j`` over the set::

        PxAP = sum_j P_j (R_j - R_{j+1}),   R_{n_thresholds + 1} = 0

    The result is a fraction in [0, 1] (wsolevaluation reports it times 100); NaN when the set has
    no mask pixel. Counts are exact integers, so the value does not depend on how the set is split
    into batches.

    Usage::

        pxap = PixelAveragePrecision()
        for heatmaps, masks in batches:
            pxap.update(heatmaps, masks)
        value = pxap.compute()
    """

    def __init__(self, n_thresholds: int = 100) -> None:
        self.n_thresholds = check_positive_int(n_thresholds, "n_thresholds")
        self.reset()

    def reset(self) -> None:
        """Forget every pixel counted so far."""
        self._counts = torch.zeros(2 * (self.n_thresholds + 1), dtype=torch.int64)

    def update(self, heatmaps: torch.Tensor, masks: torch.Tensor, *, chunk_size: int | None = None) -> None:
        """Count the pixels of a batch: ``heatmaps`` (B, H, W) floating, ``masks`` (B, H, W) bool."""
        h = check_heatmaps(heatmaps)
        m = check_masks(masks, h)
        b, hh, ww = h.shape
        n = hh * ww
        bins = self.n_thresholds + 1
        counts = torch.zeros(2 * bins, dtype=torch.int64, device=h.device)
        for sl in chunks(b, resolve_chunk_size(chunk_size, n)):
            hc = h[sl].reshape(-1, n)
            check_finite(hc, sl.start)
            low = hc.amin(dim=1, keepdim=True).double()
            span = hc.amax(dim=1, keepdim=True).double() - low
            scores = (hc.double() - low) / torch.where(span > 0, span, 1.0)
            index = (scores * self.n_thresholds).floor_().long().clamp_(0, self.n_thresholds)
            index += bins * m[sl].reshape(-1, n)
            counts += torch.bincount(index.flatten(), minlength=2 * bins)
        self._counts += counts.cpu()

    @property
    def counts(self) -> torch.Tensor:
        """The int64 (2 (n_thresholds + 1),) counts: negatives per bin, then positives per bin (a copy)."""
        return self._counts.clone()

    def add_counts(self, counts: torch.Tensor) -> None:
        """Add counts of another accumulator with the same ``n_thresholds`` (another process's share)."""
        counts = torch.as_tensor(counts, dtype=torch.int64).cpu()
        if counts.shape != self._counts.shape:
            raise ValueError(f"counts of shape {tuple(counts.shape)} do not fit {tuple(self._counts.shape)}")
        self._counts += counts

    def compute(self) -> torch.Tensor:
        """PxAP of all pixels counted so far, a 0-dim float64 CPU tensor (NaN if no mask pixel)."""
        bins = self.n_thresholds + 1
        negatives, positives = self._counts[:bins], self._counts[bins:]
        n_pos = int(positives.sum())
        if n_pos == 0:
            return torch.tensor(_NAN, dtype=torch.float64)
        tp = positives.flip(0).cumsum(0).double()
        fp = negatives.flip(0).cumsum(0).double()
        predicted = tp + fp
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
        recall = tp / n_pos
        gain = torch.diff(recall, prepend=recall.new_zeros(1))
        return (precision * gain).sum()


def pixel_average_precision(
    heatmaps: torch.Tensor,
    masks: torch.Tensor,
    n_thresholds: int = 100,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """PxAP of one batch taken as the whole set: a 0-dim float64 tensor on the heatmaps' device.

    See :class:`PixelAveragePrecision` for the formula; use the class to stream a set that does
    not fit in memory.
    """
    acc = PixelAveragePrecision(n_thresholds)
    acc.update(heatmaps, masks, chunk_size=chunk_size)
    return acc.compute().to(check_heatmaps(heatmaps).device)
