"""Scoring a cell: the metrics the leaderboard knows, per-cell accumulators, and one explainer's pass.

:func:`run_explainer` explains the scored images batch by batch and feeds every batch of heatmaps
to the accumulators of the cells still to compute (:class:`Accumulator`); :func:`finish_cell`
turns an accumulator into the cell dict the cache and the report store.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from an8flower.baselines.base import Explainer, GroundTruth, check_options, complete_options
from an8flower.baselines.spec import ExplainerSpec
from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.data import PreparedData, TensorSplit
from an8flower.eval.metric_spec import MetricSpec

__all__ = [
    "MetricSpec", "METRICS", "SUBSET_KINDS", "DEFAULT_METRICS", "IMAGENET_METRICS", "Timer",
    "explainer_options", "error_text", "Accumulator", "score_batch", "finish_cell", "for_json", "randomisation_layers",
    "metric_options", "check_metric_options", "batches", "merge_accumulators", "build_and_fit", "new_accumulators",
    "run_explainer",
]


class _MetricTable(dict):
    """:data:`METRICS`: the built-in metrics, and ``quantus:<Name>`` resolved on demand.

    Iteration, ``len`` and ``DEFAULT_METRICS`` see the built-in metrics only; ``METRICS[name]``
    and ``name in METRICS`` also resolve Quantus names (:mod:`an8flower.eval.quantus_metrics`),
    and the membership test raises its :class:`~an8flower.errors.UsageError` (Quantus missing,
    unsupported or unknown metric) so that a bad name fails before any work.
    """

    def __missing__(self, name: str) -> MetricSpec:
        if isinstance(name, str) and name.startswith("quantus:"):
            from an8flower.eval.quantus_metrics import metric_spec

            return metric_spec(name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        return isinstance(name, str) and name.startswith("quantus:") and self[name] is not None


#: Every metric the leaderboard can score, in column order. ``top_k_intersection`` uses k = 5% of
#: the image (a fraction, so that scores compare across image sizes); ``randomisation`` is the
#: Spearman correlation between the heatmaps of the trained model and of the model with all its
#: top-level parameterised blocks re-initialised in cascade (Adebayo et al. 2018; lower = the
#: explanation depends more on the learned weights); ``part_attribution`` scores the share of
#: positive attribution on the discriminative parts and feeds the part table and plot.
#: ``deletion_auc`` and ``insertion_auc`` replace pixels by uniform grey 0.5 (``baseline="grey"``,
#: see :mod:`an8flower.eval.metrics.faithfulness`): RISE's blurred insertion baseline keeps the
#: colours that decide an an8Flower class, so insertion from it scored 0.91-0.99 for every row,
#: ``random`` included, and could not rank anything. The
#: model-aware metrics use the model's runner-up class b (the most probable other than the target):
#: ``counterfactual_mass`` is the share of positive attribution on the pixels that change when the
#: image is painted as b, ``reliance_rank_correlation`` the Spearman correlation of attribution per
#: part with the model's reliance per part (the largest drop of the target probability an
#: intervention on the part causes), ``contrastivity`` the share of the difference between the
#: explanations of the target and of b on the pixels that tell them apart. Their oracle: the mask
#: (counterfactual mass ``|C| / |M|``; reliance correlation: attribution on the discriminative parts
#: only); for contrastivity the mask for the target and the mask less the changed pixels for b
#: (the parts the image shares with b), which scores 1.
METRICS: dict[str, MetricSpec] = _MetricTable({
    m.name: m
    for m in (
        MetricSpec("iou_auc", "IoU-AUC", "mask", function="iou_curve",
                   description="mean IoU with the mask of the min-max normalised heatmap binarised at 0.05, ..., 0.95 "
                               "(the paper's protocol)"),
        MetricSpec("iou_top_mask", "IoU@|M|", "mask",
                   description="IoU with the mask of the heatmap's top-|M| pixels (|M| = mask area)"),
        MetricSpec("pointing_game", "pointing", "mask",
                   description="pointing game: whether the heatmap's maximum lies in the mask (ties: fraction)"),
        MetricSpec("energy_pointing_game", "energy PG", "mask",
                   description="energy pointing game: share of positive heatmap mass inside the mask"),
        MetricSpec("relevance_mass_accuracy", "rel. mass", "mask",
                   description="relevance mass accuracy (Arras et al.): share of positive relevance inside the mask"),
        MetricSpec("relevance_rank_accuracy", "rel. rank", "mask",
                   description="relevance rank accuracy: share of the top-|M| pixels inside the mask"),
        MetricSpec("top_k_intersection", "top-5%", "mask", defaults={"k": 0.05},
                   description="share of the heatmap's top 5% pixels inside the mask"),
        MetricSpec("pixel_auc", "pixel AUC", "mask",
                   description="ROC AUC of the heatmap as a per-pixel score of the mask (0.5 = chance)"),
        MetricSpec("pixel_average_precision", "PxAP", "set", function="PixelAveragePrecision", skip=0,
                   description="pixel average precision over the set (Choe et al. 2020; no per-image CI)"),
        MetricSpec("part_attribution", "part share", "parts", skip=3,
                   description="share of positive attribution on the discriminative parts (per-part table below)"),
        MetricSpec("deletion_auc", "deletion", "model", higher_is_better=False, skip=4, defaults={"baseline": "grey"},
                   description="area under the target probability as the most relevant pixels are replaced by grey "
                               "first"),
        MetricSpec("insertion_auc", "insertion", "model", skip=4, defaults={"baseline": "grey"},
                   description="area under the target probability as the most relevant pixels are inserted into a "
                               "grey image first"),
        MetricSpec("randomisation", "randomisation", "explainer", higher_is_better=False,
                   function="randomisation_similarity", skip=5,
                   description="Spearman correlation with the heatmap of the fully re-initialised model (sanity check; "
                               "lower is better)"),
        MetricSpec("counterfactual_mass", "CF mass", "counterfactual", skip=2,
                   description="share of positive attribution on the pixels that change when the image is painted as "
                               "the model's runner-up class (oracle: |changed| / |mask|)"),
        MetricSpec("reliance_rank_correlation", "reliance corr.", "counterfactual", skip=3,
                   description="Spearman correlation, per image, of attribution per part with the model's reliance "
                               "per part measured by intervention"),
        MetricSpec("contrastivity", "contrast", "contrast", skip=3,
                   description="share of the difference between the explanations of the target and of the runner-up "
                               "class on the pixels that tell them apart (reference rows: n/a)"),
    )
})
#: Kinds scored on the first ``model_metric_images`` images only (each image costs model passes or
#: explainer calls).
SUBSET_KINDS: tuple[str, ...] = ("model", "explainer", "contrast", "quantus_model")
#: The metrics scored by default on an8Flower: all of them.
DEFAULT_METRICS: tuple[str, ...] = tuple(METRICS)
#: The metrics scored by default on ILSVRC12 validation boxes.
IMAGENET_METRICS: tuple[str, ...] = ("pointing_game", "energy_pointing_game")


class Timer:
    """Wall time per category (data, train, explainers, metrics, io), and per explainer/metric."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {"data": 0.0, "train": 0.0, "fit": 0.0, "explainers": 0.0, "metrics": 0.0, "io": 0.0}
        self.explainers: dict[str, dict[str, float]] = {}
        self.metrics: dict[str, float] = {}

    def add(self, category: str, seconds: float, explainer: str | None = None, metric: str | None = None,
            images: int = 0) -> None:
        self.total[category] = self.total.get(category, 0.0) + seconds
        if explainer is not None:
            e = self.explainers.setdefault(explainer, {"seconds": 0.0, "images": 0, "fit_seconds": 0.0})
            e["fit_seconds" if category == "fit" else "seconds"] += seconds
            e["images"] += images
        if metric is not None:
            self.metrics[metric] = self.metrics.get(metric, 0.0) + seconds

    def to_dict(self) -> dict[str, Any]:
        per = {
            name: {**v, "seconds_per_image": v["seconds"] / v["images"] if v["images"] else None}
            for name, v in self.explainers.items()
        }
        return {"seconds": dict(self.total), "explainers": per, "metrics": dict(self.metrics)}


#: Options the runner gives an explainer on an8Flower unless the run sets them: VEBI's lasso radius
#: mu = 5, the value Oramas et al. used on an8Flower (their code's default, 10, is for ImageNet).
AN8FLOWER_EXPLAINER_DEFAULTS: dict[str, dict[str, Any]] = {"vebi": {"mu": 5.0}}


def explainer_options(spec: ExplainerSpec | str, model_name: str, config: RunConfig,
                      dataset: str = "an8flower") -> dict[str, Any]:
    """The options an explainer is built with in a group: the spec's, over the dataset's defaults
    (:data:`AN8FLOWER_EXPLAINER_DEFAULTS` on an8Flower), plus the model's CAM layer and the run's
    seed where the constructor takes them and no option sets them (:meth:`ExplainerSpec.completed`).

    ``spec`` may be a name, resolved first under ``config.explainer_options``
    (:meth:`ExplainerSpec.resolve`).
    """
    from an8flower.eval.models import DEFAULT_CAM_LAYER

    if isinstance(spec, str):
        spec = ExplainerSpec.resolve(spec, config.explainer_options)
    defaults = AN8FLOWER_EXPLAINER_DEFAULTS.get(spec.base, {}) if dataset == "an8flower" else {}
    return spec.completed(defaults, layer=DEFAULT_CAM_LAYER.get(model_name), seed=config.seed)


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]


@dataclass
class Accumulator:
    """The per-image scores of one cell, and the extras the plots need, as batches arrive.

    Everything is kept per scored-image *position* (the image's place in the group's scoring
    order), so the accumulators of several processes, each scoring some of the batches, merge into
    exactly the one a single process fills (:func:`merge_accumulators`). ``limit`` (model-based
    metrics) scores only the positions below it.
    """

    spec: MetricSpec
    options: dict[str, Any]
    limit: int | None
    positions: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    curve_sum: np.ndarray | None = None
    curve_n: np.ndarray | None = None
    share: list[np.ndarray] = field(default_factory=list)
    normalised: list[np.ndarray] = field(default_factory=list)
    pxap_counts: np.ndarray | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def n_images(self) -> int:
        return len(self.positions)

    def key(self) -> dict[str, Any]:
        """The metric's part of its cell's cache key, from the very object that scores the cell:
        name, options completed with the metric function's defaults, the image limit, the code
        identity (:func:`an8flower.eval.cache.metric_code_identity`) and, for a Quantus metric, the
        library's version."""
        from an8flower.eval.cache import distribution_version, metric_code_identity

        fn = self.spec.callable()
        part = {"name": self.spec.name, "options": complete_options(fn, self.options, skip=self.spec.skip),
                "limit": self.limit, "code": metric_code_identity(fn)}
        if self.spec.kind.startswith("quantus"):
            part["library"] = distribution_version("quantus")
        return part

    def wants(self, start: int, n: int) -> int:
        """How many images of a batch of ``n`` starting at position ``start`` this cell scores."""
        if self.error is not None:
            return 0
        return n if self.limit is None else max(0, min(n, self.limit - start))


def merge_accumulators(parts: Sequence[Accumulator]) -> Accumulator:
    """One accumulator from those of disjoint position sets (processes or shards), in position order.

    The scores, part shares and positions are concatenated and sorted by position; the IoU curve
    sums and the PxAP counts (exact integers) are added; the first error (in ``parts`` order) wins.
    """
    first = parts[0]
    out = Accumulator(first.spec, first.options, first.limit)
    rows = sorted((p, i, a) for a in parts for i, p in enumerate(a.positions))
    out.positions = [p for p, _, _ in rows]
    if len(set(out.positions)) != len(out.positions):
        raise ValueError(f"{first.spec.name}: two shares scored the same image")
    if any(a.scores for a in parts):
        out.scores = [a.scores[i] for _, i, a in rows]
    if any(a.share for a in parts):
        flat = {id(a): (np.concatenate(a.share), np.concatenate(a.normalised)) for a in parts if a.share}
        out.share = [np.stack([flat[id(a)][0][i] for _, i, a in rows])]
        out.normalised = [np.stack([flat[id(a)][1][i] for _, i, a in rows])]
    for a in parts:
        if a.curve_sum is not None and a.curve_n is not None:  # set together
            out.curve_sum = a.curve_sum.copy() if out.curve_sum is None else out.curve_sum + a.curve_sum
            out.curve_n = a.curve_n.copy() if out.curve_n is None else out.curve_n + a.curve_n
        if a.pxap_counts is not None:
            out.pxap_counts = a.pxap_counts.copy() if out.pxap_counts is None else out.pxap_counts + a.pxap_counts
        out.seconds += a.seconds
        if out.error is None and a.error is not None:
            out.error = a.error
    return out


def score_batch(acc: Accumulator, ctx: dict[str, Any], h: torch.Tensor, k: int, start: int = 0) -> None:
    """Score the first ``k`` images of a heatmap batch, at positions ``start ...``, into ``acc``."""
    from an8flower.eval import metrics as M

    spec, opts = acc.spec, acc.options
    masks = ctx["masks"][:k] if ctx["masks"] is not None else None
    h = h[:k]
    if spec.kind == "mask":
        if spec.name == "iou_auc":
            curve = M.iou_curve(h, masks, **opts).cpu().numpy()
            valid = np.isfinite(curve)
            if acc.curve_sum is None:
                acc.curve_sum, acc.curve_n = np.zeros(curve.shape[1]), np.zeros(curve.shape[1])
            acc.curve_sum += np.where(valid, curve, 0).sum(0)
            acc.curve_n += valid.sum(0)
            values = torch.from_numpy(curve).mean(1)
        else:
            values = getattr(M, spec.name)(h, masks, **opts)
    elif spec.kind == "set":
        pxap = M.PixelAveragePrecision(**opts)
        pxap.update(h, masks)
        counts = pxap.counts.numpy()
        acc.pxap_counts = counts if acc.pxap_counts is None else acc.pxap_counts + counts
        values = None
    elif spec.kind == "parts":
        parts = ctx["parts"]
        if parts is None:
            raise UsageError("part_attribution needs part maps (an8Flower)")
        n_parts = len(ctx["part_names"])
        res = M.part_attribution(h, parts[:k], n_parts, **opts)
        share, norm = res.share.cpu().numpy(), res.normalised.cpu().numpy()
        acc.share.append(share)
        acc.normalised.append(norm)
        values = torch.from_numpy(share[:, ctx["disc_ids"]].sum(1))
    elif spec.kind == "model":
        fn = getattr(M, spec.name)
        values = fn(ctx["model"], ctx["images"][:k], h, ctx["targets"][:k], **opts)
    elif spec.kind in ("counterfactual", "contrast"):
        values = _counterfactual_values(spec, opts, ctx, h, k)
    elif spec.kind == "explainer":
        explainer = ctx["explainer"].given(ctx["truth"].first(k))
        options = {"layers": ctx["random_layers"], "seed": ctx["seed"], **opts}
        values = M.randomisation_similarity(ctx["model"], explainer, ctx["images"][:k], ctx["targets"][:k], **options)[:, -1]
    elif spec.kind in ("quantus", "quantus_model"):
        from an8flower.eval.quantus_metrics import quantus_scores

        explainer = ctx["explainer"].given(ctx["truth"].first(k))
        values = quantus_scores(spec.name, opts, ctx["model"], ctx["images"][:k], ctx["targets"][:k], h, masks,
                                explainer, seed=ctx["seed"])
    else:  # pragma: no cover - METRICS is fixed
        raise AssertionError(spec.kind)
    if values is not None:
        acc.scores.extend(float(v) for v in values.detach().double().cpu())
    acc.positions.extend(range(start, start + k))


def _counterfactual_values(spec: MetricSpec, opts: dict[str, Any], ctx: dict[str, Any], h: torch.Tensor,
                           k: int) -> torch.Tensor:
    """The model-aware metrics of the first ``k`` images (inputs: ``ctx["counterfactual"]``)."""
    from an8flower.eval import metrics as M

    cf = ctx.get("counterfactual")
    if cf is None:
        raise UsageError(f"{spec.name} needs counterfactual renders: an an8Flower dataset with its spec and seed")
    changed = cf["changed"][:k]
    if spec.name == "counterfactual_mass":
        return M.counterfactual_mass(h, changed, **opts)
    if spec.name == "reliance_rank_correlation":
        return M.reliance_rank_correlation(h, ctx["parts"][:k], cf["reliance"][:k], **opts)
    explainer = ctx["explainer"].given(ctx["truth"].first(k))
    other = explainer(ctx["model"], ctx["images"][:k], cf["runner_up"][:k])
    return M.contrastivity(h, other, changed, **opts)


def finish_cell(acc: Accumulator, base: dict[str, Any], image_ids: Sequence[int], part_names: Sequence[str]) -> dict[str, Any]:
    cell = {**base, "metric": acc.spec.name, "metric_options": acc.options, "error": acc.error,
            "seconds_metric": acc.seconds, "extra": {}}
    if acc.error is not None:
        return {**cell, "value": math.nan, "n": 0, "scores": None, "image_ids": None}
    ids = [int(image_ids[p]) for p in acc.positions]
    if acc.spec.kind == "set":
        from an8flower.eval.metrics import PixelAveragePrecision

        value = math.nan
        if acc.pxap_counts is not None:
            pxap = PixelAveragePrecision(**acc.options)
            pxap.add_counts(torch.from_numpy(acc.pxap_counts))
            value = float(pxap.compute())
        return {**cell, "value": value, "n": acc.n_images if math.isfinite(value) else 0, "scores": None, "image_ids": ids}
    scores = np.asarray(acc.scores, dtype=np.float64)
    finite = np.isfinite(scores)
    cell.update(value=float(scores[finite].mean()) if finite.any() else math.nan, n=int(finite.sum()),
                scores=[float(s) if math.isfinite(s) else None for s in scores], image_ids=ids)
    if acc.curve_sum is not None and acc.curve_n is not None:  # set together
        from an8flower.eval.metrics import DEFAULT_IOU_THRESHOLDS

        thr = acc.options.get("thresholds", DEFAULT_IOU_THRESHOLDS)
        thr = [float(t) for t in (thr.tolist() if hasattr(thr, "tolist") else thr)]
        curve = np.where(acc.curve_n > 0, acc.curve_sum / np.maximum(acc.curve_n, 1), np.nan)
        cell["extra"] = {"thresholds": thr, "curve": [None if not math.isfinite(c) else float(c) for c in curve]}
    if acc.share:
        share = np.concatenate(acc.share)
        norm = np.concatenate(acc.normalised)
        with np.errstate(all="ignore"):
            ms = np.nanmean(np.where(np.isfinite(share), share, np.nan), 0) if len(share) else share
            mn = np.nanmean(np.where(np.isfinite(norm), norm, np.nan), 0) if len(norm) else norm
        cell["extra"] = {
            "parts": list(part_names),
            "share": [None if not math.isfinite(v) else float(v) for v in ms],
            "normalised": [None if not math.isfinite(v) else float(v) for v in mn],
        }
    return cell


def for_json(cell: dict[str, Any]) -> dict[str, Any]:
    """Scores lists may hold None for undefined values; restore NaN for the report."""
    if cell.get("scores") is not None:
        cell = {**cell, "scores": [math.nan if s is None else s for s in cell["scores"]]}
    return cell


def randomisation_layers(model: nn.Module) -> list[str]:
    """Top-level children that hold parameters, input first (re-initialised in cascade)."""
    names = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    if len(names) == 1:  # a wrapper around one network: go one level down
        inner = model.get_submodule(names[0])
        sub = [f"{names[0]}.{n}" for n, m in inner.named_children() if any(True for _ in m.parameters())]
        names = sub or names
    return names


def metric_options(name: str, config: RunConfig) -> dict[str, Any]:
    """The options a metric is scored with: its leaderboard defaults, then the run's."""
    return {**METRICS[name].defaults, **config.metric_options.get(name, {})}


def check_metric_options(name: str, config: RunConfig) -> None:
    """Check the run's options of metric ``name`` against its function's signature and types
    (:func:`~an8flower.baselines.base.check_options`); a UsageError names the metric.

    The metric's data parameters and the ones the board supplies itself (the randomisation's
    ``layers`` and ``seed``) are not options. Quantus metrics check their options when their
    name is resolved (:mod:`an8flower.eval.quantus_metrics`)."""
    spec = METRICS[name]
    fn = spec.callable()
    if fn is not None:
        check_options(f"metric {name!r}", fn, metric_options(name, config), skip=spec.skip)


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def build_and_fit(spec: ExplainerSpec, options: dict[str, Any], model: nn.Module, data: PreparedData,
                  config: RunConfig, timer: Timer, progress: bool | None = None) -> Explainer:
    """The explainer of ``spec`` built with ``options`` and, if it needs it, fitted on the training split."""
    explainer = spec.build(options)
    name = spec.row
    if spec.needs_fit:
        if data.train is None:
            raise UsageError(f"{name} must be fitted on a training split, and {data.dataset} has none here")
        t0 = time.perf_counter()
        from an8flower.eval.train import collate_images_labels

        loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=False, num_workers=0, collate_fn=collate_images_labels)
        if "progress" in inspect.signature(explainer.fit).parameters:
            explainer.fit(model, loader, progress=progress)
        else:
            explainer.fit(model, loader)
        timer.add("fit", time.perf_counter() - t0, explainer=name)
    return explainer


def new_accumulators(missing: Sequence[str], config: RunConfig, n_images: int,
                     model: str | None = None) -> list[Accumulator]:
    """One empty accumulator per metric of ``missing``, for ``n_images`` scored images of ``model``.

    The one place the image limit of a cell is decided: the metrics of :data:`SUBSET_KINDS` score
    the first ``min(model_metric_images, n_images)`` images (the model's own limit where
    ``per_model`` sets one), the others all. The cache key of a cell is taken from its accumulator
    (:meth:`Accumulator.key`)."""
    limit = config.model_metric_images if model is None else config.model_metric_images_for(model)
    return [Accumulator(METRICS[m], metric_options(m, config), min(limit, n_images) if METRICS[m].kind in SUBSET_KINDS else None)
            for m in missing]


def run_explainer(explainer: Explainer, name: str, accs: Sequence[Accumulator], model: nn.Module, data: PreparedData,
                  scored: TensorSplit, shares: Iterable[slice], config: RunConfig, device: torch.device, timer: Timer,
                  n_ex: int, disc_ids: list[int], log: Callable[[str], None],
                  counterfactual: dict[str, torch.Tensor] | None = None, *, amp: bool = False) -> dict[str, Any]:
    """Explain the batches ``shares`` (slices of ``scored``, the group's scored images in scoring
    order, already on ``device``) and score them into ``accs``.

    ``counterfactual``: the inputs of the model-aware metrics, one row per scored image in the same
    order (``changed`` (N, H, W) bool, ``reliance`` (N, P), ``runner_up`` (N,)); None where there are
    none. Each batch's :class:`~an8flower.baselines.base.GroundTruth` (masks, labels, changed
    pixels) is handed to the explainer with :meth:`~an8flower.baselines.base.Explainer.given`
    (reference rows such as ``oracle`` read it) and to the metrics that call it again. ``amp``: run
    the explainer under autocast (float16 on CUDA, bfloat16 on a CPU); the runner passes the value
    its cells' keys hold (the run's ``amp`` for an ``amp_safe`` explainer).

    Returns:
        ``{"examples": [(position, heatmap float16 (H, W)), ...] for positions < n_ex, "calls": n}``.
        An explainer that raises (or returns NaN/inf) sets the error of every accumulator and stops.
    """
    out: dict[str, Any] = {"examples": [], "calls": 0}
    random_layers = randomisation_layers(model)
    for sl in shares:
        idx = range(sl.start, sl.stop)
        images = scored.float_images(sl).to(device)
        targets = scored.labels[sl].to(device)
        masks = scored.masks[sl].to(device) if scored.masks is not None else None
        parts = scored.parts[sl].to(device) if scored.parts is not None else None
        cf = None if counterfactual is None else {key: v[sl].to(device) for key, v in counterfactual.items()}
        truth = GroundTruth(masks, targets, None if cf is None else cf["changed"])
        t0 = time.perf_counter()
        try:
            with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                                enabled=amp):
                h = explainer.given(truth)(model, images, targets)
            h = h.float()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            bad = (~torch.isfinite(h.reshape(h.shape[0], -1))).any(1).nonzero()
            if bad.numel():
                raise FloatingPointError(f"returned NaN or inf heatmaps (image {scored.ids[sl.start + int(bad[0, 0])]})")
        except Exception as exc:  # noqa: BLE001
            msg = error_text(exc)
            log(f"  {name}: {msg}")
            for acc in accs:
                if acc.error is None:
                    acc.error = msg
            timer.add("explainers", time.perf_counter() - t0, explainer=name)
            break
        out["calls"] += 1
        timer.add("explainers", time.perf_counter() - t0, explainer=name, images=len(idx))
        for j in range(max(0, min(len(idx), n_ex - sl.start))):
            out["examples"].append((sl.start + j, h[j].float().cpu().numpy().astype(np.float16)))
        ctx = {"masks": masks, "parts": parts, "model": model, "images": images, "targets": targets,
               "explainer": explainer, "truth": truth, "part_names": data.parts, "disc_ids": disc_ids,
               "random_layers": random_layers, "seed": config.seed, "counterfactual": cf}
        for acc in accs:
            k = acc.wants(sl.start, len(idx))
            if k == 0:
                continue
            t0 = time.perf_counter()
            try:
                score_batch(acc, ctx, h, k, sl.start)
            except Exception as exc:  # noqa: BLE001 - one metric failing fails its cell only
                acc.error = error_text(exc)
                log(f"  {name} / {acc.spec.name}: {acc.error}")
            dt = time.perf_counter() - t0
            acc.seconds += dt
            # randomisation re-runs the explainer: its time counts as metric time, as it is the metric's cost
            timer.add("metrics", dt, metric=acc.spec.name)
    return out
