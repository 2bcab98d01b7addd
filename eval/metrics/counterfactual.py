"""Model-aware metrics: explanations scored against counterfactual renders and the model's reliance.

A mask says where the class information *is*; these metrics ask whether an explanation follows
what the *model* uses, with ground truth that only an8Flower's exact counterfactuals
(:mod:`an8flower.intervene`) give:

* :func:`counterfactual_mass`: the share of positive attribution on the pixels that change when
  the image is painted as another class (the evidence the model's decision can depend on), and
  its chance-normalised form;
* :func:`reliance_rank_correlation`: the Spearman correlation, per image, between an explainer's
  per-part attribution share and the model's per-part reliance measured by intervention
  (:mod:`an8flower.eval.reliance`);
* :func:`contrastivity`: for the explanations of classes ``a`` and ``b`` of the same image, the
  share of their difference that lies on the parts that tell ``a`` from ``b``.

Plain batched functions like the other metrics: tensors in, (B,) float64 out, NaN where a value
is undefined; the leaderboard computes the counterfactual inputs once per (dataset, model). The
counterfactual class there is the model's runner-up: the most probable class other than the
target on the original image, the alternative the decision is actually made against.
"""

from __future__ import annotations

import torch

from an8flower.errors import UsageError
from an8flower.eval.metrics._checks import as_tensor, check_finite, check_heatmaps, check_masks
from an8flower.eval.metrics._ranks import average_ranks, spearman_rows
from an8flower.eval.metrics.localisation import relevance_mass_accuracy
from an8flower.eval.metrics.parts import part_attribution

__all__ = ["counterfactual_mass", "reliance_rank_correlation", "contrastivity"]


def counterfactual_mass(
    heatmaps: torch.Tensor,
    changed: torch.Tensor,
    *,
    normalised: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Share of positive attribution on the pixels a counterfactual changes, (B,) float64.

    With ``C`` the pixels that differ between the image and its counterfactual as another class
    (an an8Flower sample re-rendered with another label: exactly the discriminative parts whose
    colours differ between the two classes, nothing else), ``h+ = max(h, 0)`` and N pixels::

        CM        = sum_{C} h+ / sum h+
        CM_normed = CM / (|C| / N)          (1 = a uniform heatmap; normalised=True)

    This is :func:`~an8flower.eval.metrics.relevance_mass_accuracy` with the counterfactual's
    change as the mask: where the relevance mass asks for attribution on every discriminative
    part, this asks for it on the evidence that separates the decision from its alternative.
    The mask as heatmap scores ``|C| / |M|`` (1 when the two classes differ in every
    discriminative part).

    Args:
        heatmaps: (B, H, W) floating.
        changed: (B, H, W) bool, the changed pixels.
        normalised: divide by the changed share of the image.
        chunk_size: images per chunk (default 2**18 pixels).

    Returns:
        (B,) float64; NaN where nothing changed or the heatmap has no positive value.
    """
    share = relevance_mass_accuracy(heatmaps, changed, chunk_size=chunk_size)
    if not normalised:
        return share
    c = check_masks(changed, check_heatmaps(heatmaps), "changed")
    area = c.reshape(c.shape[0], -1).sum(dim=1).double() / (c.shape[1] * c.shape[2])
    return share / area  # area 0 -> share is already NaN


def reliance_rank_correlation(
    heatmaps: torch.Tensor,
    part_maps: torch.Tensor,
    reliance: torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Spearman correlation per image between attribution per part and the model's reliance, (B,).

    With ``share[b, p]`` the share of image b's positive attribution on part p
    (:func:`~an8flower.eval.metrics.part_attribution`) and ``reliance[b, p]`` how much the model's
    target probability on image b falls when part p is intervened on
    (:meth:`an8flower.eval.reliance.Reliance.per_image`)::

        RRC[b] = pearson(rank(share[b, :]), rank(reliance[b, :]))   ranks averaged over ties

    1: the parts are attributed in the order of the model's reliance on them; parts whose
    intervention does not move the model should get the least attribution. The mask as heatmap
    puts all attribution on the discriminative parts (in proportion to their visible area), so it
    scores high exactly when the model relies on those parts.

    Args:
        heatmaps: (B, H, W) floating.
        part_maps: (B, H, W) integer part labels in ``[0, P)``.
        reliance: (B, P) floating, finite; ``P`` the number of parts.
        chunk_size: images per chunk of :func:`part_attribution`.

    Returns:
        (B,) float64; NaN where the heatmap has no positive value or either ranking is constant.

    Raises:
        UsageError: bad shapes or devices, a non-finite reliance (naming the image).
    """
    h = check_heatmaps(heatmaps)
    r = as_tensor(reliance, "reliance")
    if r.dim() != 2 or r.shape[0] != h.shape[0] or not r.is_floating_point():
        raise UsageError(f"reliance must be a floating (B, P) tensor with B = {h.shape[0]}, got "
                         f"{r.dtype} {tuple(r.shape)}")
    if r.device != h.device:
        raise UsageError(f"reliance is on {r.device} but heatmaps are on {h.device}")
    bad = (~torch.isfinite(r)).any(dim=1).nonzero()
    if bad.numel():
        raise UsageError(f"reliance[{int(bad[0, 0])}] contains NaN or inf")
    share = part_attribution(h, part_maps, int(r.shape[1]), chunk_size=chunk_size).share
    out = spearman_rows(average_ranks(r.double()), share.nan_to_num(0.0))
    return out.masked_fill(~torch.isfinite(share).all(dim=1), float("nan"))


def contrastivity(
    heatmaps: torch.Tensor,
    contrast_heatmaps: torch.Tensor,
    discriminating: torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Share of the difference between two classes' explanations on the parts that tell them apart, (B,).

    ``heatmaps`` explain class ``a`` (the target), ``contrast_heatmaps`` class ``b`` of the same
    images, with the same explainer and model (so on one scale); ``D`` are the pixels that tell
    ``a`` from ``b`` (those that change when the image is painted as ``b``)::

        d     = | max(h_a, 0) - max(h_b, 0) |
        CON   = sum_{D} d / sum d

    1: the explanation changes with the class only where the classes differ; a class-insensitive
    explainer (the same map for every target, like the ``random`` and ``centre`` references) has
    no difference at all: NaN. The leaderboard's oracle explains class ``c`` by the
    discriminative parts whose colour the image shares with ``c`` (the mask for the target, the
    mask less ``D`` for the runner-up), which scores 1.

    Args:
        heatmaps: (B, H, W) floating, explanations of class a.
        contrast_heatmaps: (B, H, W) floating, explanations of class b.
        discriminating: (B, H, W) bool, ``D``.
        chunk_size: images per chunk (default 2**18 pixels).

    Returns:
        (B,) float64; NaN where the two maps' positive parts are equal or ``D`` is empty.
    """
    ha = check_heatmaps(heatmaps)
    hb = check_heatmaps(contrast_heatmaps, "contrast_heatmaps")
    if tuple(ha.shape) != tuple(hb.shape) or ha.device != hb.device:
        raise UsageError(f"contrast_heatmaps has shape {tuple(hb.shape)} on {hb.device} but heatmaps have "
                         f"shape {tuple(ha.shape)} on {ha.device}")
    check_finite(ha.reshape(ha.shape[0], -1))
    check_finite(hb.reshape(hb.shape[0], -1), name="contrast_heatmaps")
    diff = (ha.clamp(min=0) - hb.clamp(min=0)).abs()
    return relevance_mass_accuracy(diff, discriminating, chunk_size=chunk_size)
