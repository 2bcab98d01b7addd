"""Metrics: localisation (heatmap vs mask) and faithfulness (model-based) scores.

A metric is a plain function ``metric(heatmaps (B, H, W) float, masks (B, H, W) bool, **params)``
returning per-image scores ``(B,)`` (``iou_curve``: (B, T); ``part_attribution``: two (B, P)),
batched and vectorised, on the inputs' device. Model-based metrics take the model too and run on
its device. Set-level PxAP is an accumulator, :class:`PixelAveragePrecision`.

Conventions
-----------
* **Types.** Heatmaps: any floating dtype (float16/bfloat16 are widened to float32); masks: bool;
  part maps: integer. NumPy arrays are accepted. Every score is **float64**. A wrong type, shape,
  dtype or device raises :class:`~an8flower.errors.UsageError` naming the argument; a heatmap with
  NaN or inf raises it naming the batch index (``heatmaps[3] contains NaN or inf``).
* **Undefined is NaN**, never a silent 0 or 1: an empty mask (every mask metric); a constant
  heatmap where a range is needed (``iou_curve``/``iou_auc``, the rank correlation of
  ``randomisation_similarity``); no positive value where a share of positive relevance is taken
  (``energy_pointing_game``, ``relevance_mass_accuracy``, ``part_attribution``); a mask covering
  the whole image for ``pixel_auc`` (no negatives); a part absent from the image for the
  normalised ``part_attribution``. Aggregate with ``torch.nanmean`` and report the NaN count.
* **Chance, not victory, for uninformative heatmaps.** Ties are never resolved in the mask's
  favour: the pointing game scores the fraction of tied maxima that hit; top-k selections
  (``relevance_rank_accuracy``, ``top_k_intersection``, ``iou_top_mask``) count the pixels tied
  at the k-th value fractionally (the expectation under random tie-breaking); ``pixel_auc`` gives
  ties half credit (mid-ranks). A constant heatmap therefore scores the mask's area fraction
  |M|/N on the pointing game, energy pointing game, relevance mass and rank accuracy and top-k
  intersection, 0.5 on ``pixel_auc``, and NaN on the IoU curve.
* **IoU protocol** (Oramas et al., ICLR 2019). Min-max normalise each heatmap (float64), binarise
  non-strictly (``h' >= t``) at each threshold of the grid 0.05, 0.10, ..., 0.95 (19 values,
  :data:`DEFAULT_IOU_THRESHOLDS`), IoU with the mask; ``iou_auc`` is the mean over the grid.
  ``iou_top_mask`` binarises at the heatmap's top-|M| pixels instead (no normalisation).
* **Pointing game tolerance**: Euclidean distance between pixel centres, ``dist <= tolerance``
  (exact disk dilation of the mask, batched); default 0 (Zhang et al. use 15 px).
* **Positive part.** Energy pointing game (Score-CAM, Wang et al. 2020), relevance mass accuracy
  (Arras et al. 2022) and part attribution use ``max(h, 0)``; the first two are the same number.
* **Top-k intersection** (Theiner et al. 2022): ``k`` pixels, default 1000 (as Quantus), or a
  fraction of the image when a float; ``relevance_rank_accuracy`` is the k = |M| case.
* **PxAP** (Choe et al., CVPR 2020): per-image min-max normalisation (a constant heatmap becomes
  zeros, as in wsolevaluation), thresholds j/100 for j = 100, ..., 0, exact integer counts over the set;
  returned as a fraction (wsolevaluation prints it times 100).
* **Deletion / insertion** (Petsiuk et al., BMVC 2018): softmax probability of the target,
  ``steps`` = 100 by default, pixels in decreasing heatmap order (ties in raster order), baseline
  zeros for deletion and the blurred image (Gaussian 11 px, sigma 5, edges replicated) for
  insertion, trapezoidal AUC over the fraction of pixels changed.
* **Randomisation** (Adebayo et al., NeurIPS 2018): cascading from the top layer (or independent),
  Spearman rank correlation with average ranks for ties, seeded re-initialisation from PyTorch's
  default initialisers on a deep copy (the caller's model is untouched).
* **Memory.** Per-image metrics work ``chunk_size`` images at a time (default 2**18 pixels,
  5 heatmaps of 224 x 224), so a (B, H, W) batch needs no more than a few chunk-sized
  temporaries. A set larger than memory (50,000 heatmaps of 224 x 224 are 10 GB) is streamed:
  call a metric per batch and concatenate the (B,) results; PxAP, being set-level, accumulates
  integer counts in :class:`PixelAveragePrecision`.
* **Precision.** Sums of heatmap values accumulate in float64; counts are integers.
* **Model-aware metrics** (:mod:`~an8flower.eval.metrics.counterfactual`): ``counterfactual_mass``
  (relevance mass on the pixels an exact counterfactual render changes), ``reliance_rank_correlation``
  (Spearman, per image, of attribution per part against the model's reliance per part measured by
  intervention) and ``contrastivity`` (share of the difference between two classes' explanations on
  the parts that tell them apart); their inputs come from :mod:`an8flower.eval.reliance`.

Deliberate differences from Quantus (0.6)
-----------------------------------------
* ``PointingGame``: Quantus scores an empty mask as a hit (its NaN is written into a bool array)
  and any tied maximum in the mask as a full hit; we return NaN and the fraction of tied maxima.
* ``RelevanceMassAccuracy``: Quantus divides signed sums (values outside [0, 1] when the heatmap
  has negative parts); we use the positive part as Arras et al.'s pooled maps do. On non-negative
  heatmaps the two agree, and agree with ``AttributionLocalisation`` (its default ``abs=True``).
* ``RelevanceRankAccuracy``, ``TopKIntersection``: Quantus breaks ties by ``np.argsort`` order;
  we count ties fractionally. Without ties the values agree.
* ``AUC``: the same number (scikit-learn's trapezoidal ROC AUC equals the mid-rank formula, ties
  included); NaN also when the mask covers the whole image.
* Quantus normalises heatmaps by their maximum before scoring; none of the metrics above depends
  on a positive rescaling, so we do not.
"""

from an8flower.eval.metrics.counterfactual import contrastivity, counterfactual_mass, reliance_rank_correlation
from an8flower.eval.metrics.faithfulness import (
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
    randomisable_layers,
    randomisation_similarity,
)
from an8flower.eval.metrics.localisation import (
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
from an8flower.eval.metrics.parts import PartAttribution, part_attribution

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "PartAttribution",
    "PixelAveragePrecision",
    "contrastivity",
    "counterfactual_mass",
    "deletion_auc",
    "deletion_curve",
    "energy_pointing_game",
    "insertion_auc",
    "insertion_curve",
    "iou_auc",
    "iou_curve",
    "iou_top_mask",
    "part_attribution",
    "pixel_auc",
    "pixel_average_precision",
    "pointing_game",
    "randomisable_layers",
    "randomisation_similarity",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "reliance_rank_correlation",
    "top_k_intersection",
]
