"""Quantus metrics on an8Flower batches: ``quantus:<MetricName>`` leaderboard columns.

`Quantus <https://github.com/understandable-machine-intelligence-lab/Quantus>`_ (Hedström et
al., JMLR 2023) implements some 40 explanation metrics but no benchmark data or leaderboard. This
module runs a Quantus metric on what the leaderboard already has for a batch, so a Quantus user
gets our data and board, and our metrics can be compared with Quantus's on the same heatmaps:

* ``x_batch``: the images (B, C, H, W), float32 in [0, 1] (the models normalise them);
* ``y_batch``: the explained classes (B,);
* ``a_batch``: the explainer's heatmaps (B, 1, H, W);
* ``s_batch``: the ground-truth masks (B, 1, H, W) as 0/1 floats;
* ``explain_func``: the run's explainer itself (the metrics that explain perturbed inputs or a
  randomised model call it), returning (B, 1, H, W);
* ``model``: the classifier, on its device, in eval mode for the call (Quantus requires it; the
  mode is restored).

Each metric is built as ``quantus.<Name>(disable_warnings=True, display_progressbar=False,
**options)`` with the options of :data:`SUPPORTED` (``--option quantus:<Name>.KEY=VALUE`` or the
run's ``metric_options`` override them), called on the batch with ``batch_size=B`` inside
:func:`~an8flower.baselines.adapters.seeded` with the run's seed (Quantus draws its perturbations
from NumPy's and torch's global generators), Python warnings silenced. Its per-image values
become the cell's scores: a Quantus NaN stays NaN (the image is left out of the mean and of
``n``), booleans (PointingGame, Monotonicity, Completeness) become 1.0 / 0.0, and anything that is
not one finite-or-NaN number per image, or any exception Quantus raises, is a cell error with
Quantus's message.

Supported metrics (:data:`SUPPORTED`): every Quantus metric that returns one number per image on
our batches; the others are listed in :data:`UNSUPPORTED` with the reason. Localisation and
complexity metrics read only heatmaps (and masks): they score every image (kind ``"quantus"``).
Faithfulness, robustness, randomisation and axiomatic metrics run the model or the explainer
tens to hundreds of times per image: like deletion/insertion they score the first
``model_metric_images`` images only (kind ``"quantus_model"``). The direction of the column (best
in bold) is Quantus's ``score_direction``.

Defaults that differ from Quantus's, and why (the rest are Quantus's own):

========================================  ===================================================
``FaithfulnessCorrelation``               ``return_aggregate=False``: one value per image
``FaithfulnessEstimate``, ``PixelFlipping``, ``Monotonicity``, ``MonotonicityCorrelation``
                                          ``features_in_step=64``: Quantus's 1 flips one value
                                          per forward pass (12,288 passes per 64 px image)
``PixelFlipping``                         ``return_auc_per_sample=True``: the area under the
                                          curve, not the curve
``MonotonicityCorrelation``               ``nr_samples=10`` (Quantus: 100 per step)
``MaxSensitivity``, ``AvgSensitivity``, ``LocalLipschitzEstimate``, ``Relative*Stability``
                                          ``nr_samples=10`` (Quantus: 200 explainer calls)
``RandomLogit``                           ``num_classes`` = the model's number of logits
                                          (Quantus: 1000), set per call unless given
========================================  ===================================================

Quantus's normalisation of heatmaps (divide by the maximum absolute value) and its ``abs``
defaults are kept: the values are Quantus's, on our data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import torch
from torch import nn

from an8flower.errors import UsageError
from an8flower.eval.metric_spec import MetricSpec

__all__ = ["PREFIX", "SUPPORTED", "UNSUPPORTED", "KINDS", "metric_spec", "quantus_scores", "list_quantus_metrics"]

#: Prefix of Quantus metric names on the leaderboard.
PREFIX = "quantus:"
#: Metric kinds of Quantus columns: heatmap-only (every image) and model-based (model_metric_images).
KINDS = ("quantus", "quantus_model")

_STEP = {"features_in_step": 64}
_SAMPLES = {"nr_samples": 10}

#: Supported Quantus metrics -> the options they are built with unless the run overrides them.
SUPPORTED: dict[str, dict[str, Any]] = {
    # localisation
    "PointingGame": {},
    "AttributionLocalisation": {},
    "TopKIntersection": {},
    "RelevanceRankAccuracy": {},
    "RelevanceMassAccuracy": {},
    "AUC": {},
    # complexity
    "Sparseness": {},
    "Complexity": {},
    "EffectiveComplexity": {},
    # faithfulness
    "FaithfulnessCorrelation": {"return_aggregate": False},
    "FaithfulnessEstimate": dict(_STEP),
    "PixelFlipping": {**_STEP, "return_auc_per_sample": True},
    "Monotonicity": dict(_STEP),
    "MonotonicityCorrelation": {**_STEP, **_SAMPLES},
    "Infidelity": {},
    "Sufficiency": {},
    # robustness
    "MaxSensitivity": dict(_SAMPLES),
    "AvgSensitivity": dict(_SAMPLES),
    "LocalLipschitzEstimate": dict(_SAMPLES),
    "Continuity": {},
    "Consistency": {},
    "RelativeInputStability": dict(_SAMPLES),
    "RelativeOutputStability": dict(_SAMPLES),
    "RelativeRepresentationStability": dict(_SAMPLES),
    # randomisation
    "RandomLogit": {},
    "EfficientMPRT": {},
    # axiomatic
    "Completeness": {},
}

#: Quantus metrics that are not supported, with the reason.
UNSUPPORTED: dict[str, str] = {
    "Focus": "needs 2 x 2 mosaics of images of different classes, not single images",
    "MPRT": "returns a curve per randomised layer (use quantus:EfficientMPRT or our randomisation)",
    "ModelParameterRandomisation": "the former name of MPRT: a curve per randomised layer",
    "SmoothMPRT": "returns a curve per randomised layer",
    "RegionPerturbation": "returns a curve per image, with no per-image summary",
    "Selectivity": "returns a curve per image, with no per-image summary",
    "SensitivityN": "returns one correlation per batch, not per image",
    "ROAD": "fails on single-channel heatmaps in Quantus 0.6 (an index error)",
    "NonSensitivity": "fails on single-channel heatmaps in Quantus 0.6 (a shape error)",
    "InputInvariance": "needs a model whose first module is a convolution (ours normalise first)",
    "BatchSufficiency": "fails on (B, 1, H, W) heatmaps in Quantus 0.6 (a reshape error)",
    "IROF": "fails on single-channel heatmaps in Quantus 0.6 (a mask shape error)",
}


def _quantus() -> Any:
    try:
        import quantus
    except ImportError as exc:
        raise UsageError(f'quantus: metrics need the quantus library ({exc}); install it with '
                         'pip install "an8flower[quantus]" (in a clone: pip install ".[quantus]")') from None
    return quantus


def list_quantus_metrics() -> list[str]:
    """The ``quantus:<Name>`` metrics available in this installation (empty without Quantus)."""
    try:
        quantus = _quantus()
    except UsageError:
        return []
    return [PREFIX + name for name in SUPPORTED if hasattr(quantus, name)]


@cache
def _spec(metric: str) -> MetricSpec:
    quantus = _quantus()
    cls = getattr(quantus, metric)
    category = getattr(getattr(cls, "evaluation_category", None), "value", "")
    kind = "quantus" if category in ("Localisation", "Complexity") else "quantus_model"
    direction = getattr(getattr(cls, "score_direction", None), "value", "higher")
    return MetricSpec(PREFIX + metric, f"Q {metric}", kind, higher_is_better=direction != "lower",
                      defaults=dict(SUPPORTED[metric]))


def metric_spec(name: str) -> MetricSpec:
    """The :class:`~an8flower.eval.metric_spec.MetricSpec` of ``quantus:<Name>``.

    Raises:
        UsageError: Quantus is not installed (naming the extra), the metric is unsupported (with
        the reason) or unknown (listing the supported ones).
    """
    if not name.startswith(PREFIX):
        raise UsageError(f"{name!r} is not a Quantus metric name ({PREFIX}<MetricName>)")
    metric = name[len(PREFIX):]
    quantus = _quantus()
    if metric in UNSUPPORTED:
        raise UsageError(f"{name} is not supported: {UNSUPPORTED[metric]}")
    if metric not in SUPPORTED or not hasattr(quantus, metric):
        raise UsageError(f"unknown Quantus metric {name!r}; supported: {', '.join(list_quantus_metrics())}")
    return _spec(metric)


def _explain_func(explainer: Callable[..., torch.Tensor], device: torch.device) -> Callable[..., np.ndarray]:
    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        images = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device)
        labels = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device)
        return explainer(model, images, labels).detach().float().cpu().numpy()[:, None]

    return explain


def quantus_scores(name: str, options: dict[str, Any], model: nn.Module, images: torch.Tensor,
                   targets: torch.Tensor, heatmaps: torch.Tensor, masks: torch.Tensor | None,
                   explainer: Callable[..., torch.Tensor], seed: int = 0) -> torch.Tensor:
    """Per-image values (B,) float64 of the Quantus metric ``name`` (``quantus:<Name>``) on one batch.

    Args:
        name: ``quantus:<Name>``.
        options: keyword options of the Quantus metric's constructor.
        model: the classifier.
        images: (B, C, H, W) in [0, 1]; targets: (B,) explained classes.
        heatmaps: (B, H, W) of ``explainer``; masks: (B, H, W) bool, or None where there are none.
        explainer: called as ``explainer(model, images, targets)`` by metrics that re-explain.
        seed: seeds Quantus's random draws for the call.

    Returns:
        (B,) float64; NaN where Quantus returns NaN.

    Raises:
        UsageError: an unsupported name or a result that is not one number per image; any error
        of Quantus propagates (the runner records it as the cell's error).
    """
    import warnings

    from an8flower.baselines.adapters import seeded
    from an8flower.baselines.base import eval_mode

    spec = metric_spec(name)
    quantus = _quantus()
    metric_name = name[len(PREFIX):]
    kwargs = dict(options)
    if metric_name == "RandomLogit" and "num_classes" not in kwargs:
        with torch.no_grad():
            kwargs["num_classes"] = int(model(images[:1]).shape[1])
    b = images.shape[0]
    s_batch = None if masks is None else masks.detach().cpu().numpy()[:, None].astype(np.float32)
    with warnings.catch_warnings(), seeded(seed, images.device), eval_mode(model):
        warnings.simplefilter("ignore")
        metric = getattr(quantus, metric_name)(disable_warnings=True, display_progressbar=False, **kwargs)
        scores = metric(
            model=model,
            x_batch=images.detach().float().cpu().numpy(),
            y_batch=targets.detach().cpu().numpy(),
            a_batch=heatmaps.detach().float().cpu().numpy()[:, None],
            s_batch=s_batch,
            channel_first=True,
            explain_func=_explain_func(explainer, images.device),
            explain_func_kwargs={},
            device=str(images.device),
            batch_size=b,
        )
    try:
        values = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (b,):
        shape = getattr(values, "shape", type(scores).__name__)
        raise UsageError(f"{spec.name} returned {shape} for {b} images, not one number per image")
    values[~np.isfinite(values)] = math.nan
    return torch.from_numpy(values)
