"""Scoring a cell: the metrics the leaderboard knows, per-cell accumulators, and one explainer's pass.

:func:`run_explainer` explains the scored images batch by batch and feeds every batch of heatmaps
to the accumulators of the cells still to compute (:class:`Accumulator`); :func:`finish_cell`
turns an accumulator into the cell dict the cache and the report store.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.data import PreparedData

__all__ = [
    "ORACLE", "MetricSpec", "METRICS", "DEFAULT_METRICS", "IMAGENET_METRICS", "Timer", "Oracle",
    "explainer_options", "build", "error_text", "Accumulator", "score_batch", "finish_cell", "for_json",
    "randomisation_layers", "metric_options", "batches", "run_explainer",
]


#: Name of the reference row whose heatmap is the ground-truth mask itself.
ORACLE = "oracle"


@dataclass(frozen=True)
class MetricSpec:
    """A metric as the leaderboard uses it.

    Attributes:
        name: the metric's name in tables and ``results.csv``.
        label: the column header in ``leaderboard.md``.
        kind: ``"mask"`` (heatmaps, masks), ``"set"`` (a set-level accumulator), ``"parts"``
            (heatmaps, part maps), ``"model"`` (model, images, heatmaps, targets),
            ``"explainer"`` (model, explainer, images, targets), or ``"quantus"`` /
            ``"quantus_model"`` (a Quantus metric on the batch, heatmap-only / model-based:
            :mod:`an8flower.eval.quantus_metrics`).
        higher_is_better: the direction in which the best explainer of a column is picked.
        defaults: keyword options passed to the metric function unless the run overrides them.
    """

    name: str
    label: str
    kind: str
    higher_is_better: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)


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
METRICS: dict[str, MetricSpec] = _MetricTable({
    m.name: m
    for m in (
        MetricSpec("iou_auc", "IoU-AUC", "mask"),
        MetricSpec("iou_top_mask", "IoU@|M|", "mask"),
        MetricSpec("pointing_game", "pointing", "mask"),
        MetricSpec("energy_pointing_game", "energy PG", "mask"),
        MetricSpec("relevance_mass_accuracy", "rel. mass", "mask"),
        MetricSpec("relevance_rank_accuracy", "rel. rank", "mask"),
        MetricSpec("top_k_intersection", "top-5%", "mask", defaults={"k": 0.05}),
        MetricSpec("pixel_auc", "pixel AUC", "mask"),
        MetricSpec("pixel_average_precision", "PxAP", "set"),
        MetricSpec("part_attribution", "part share", "parts"),
        MetricSpec("deletion_auc", "deletion", "model", higher_is_better=False),
        MetricSpec("insertion_auc", "insertion", "model"),
        MetricSpec("randomisation", "randomisation", "explainer", higher_is_better=False),
    )
})
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

    def add(self, category: str, seconds: float, explainer: Optional[str] = None, metric: Optional[str] = None,
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


class Oracle:
    """The ``oracle`` reference row: the ground-truth mask of each image as its heatmap."""

    name = ORACLE
    requires_fit = False

    def __init__(self) -> None:
        self.masks: Optional[torch.Tensor] = None

    def options(self) -> dict[str, Any]:
        return {}

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: Any = None) -> torch.Tensor:
        if self.masks is None or self.masks.shape[0] != images.shape[0]:
            raise RuntimeError("oracle: no masks for this batch")
        return self.masks.to(images.device).float()


#: Options the runner gives an explainer on an8Flower unless the run sets them: VEBI's lasso radius
#: mu = 5, the value Oramas et al. used on an8Flower (their code's default, 10, is for ImageNet).
AN8FLOWER_EXPLAINER_DEFAULTS: dict[str, dict[str, Any]] = {"vebi": {"mu": 5.0}}


def explainer_options(name: str, model_name: str, config: RunConfig, dataset: str = "an8flower") -> dict[str, Any]:
    """The options an explainer is built with: the run's, plus the CAM layer, seed and an8Flower defaults."""
    from an8flower.baselines import explainer_class
    from an8flower.eval.models import DEFAULT_CAM_LAYER

    options = dict(config.explainer_options.get(name, {}))
    if name == ORACLE:
        return options
    if dataset == "an8flower":
        options = {**AN8FLOWER_EXPLAINER_DEFAULTS.get(name, {}), **options}
    params = inspect.signature(explainer_class(name).__init__).parameters
    if "layer" in params and "layer" not in options and model_name in DEFAULT_CAM_LAYER:
        options["layer"] = DEFAULT_CAM_LAYER[model_name]
    if "seed" in params and "seed" not in options:
        options["seed"] = config.seed
    return options


def build(name: str, options: dict[str, Any]) -> Any:
    if name == ORACLE:
        return Oracle()
    from an8flower.baselines import build_explainer

    return build_explainer(name, **options)


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]


@dataclass
class Accumulator:
    """Per-image scores of one cell as batches arrive, plus the extras the plots need."""

    spec: MetricSpec
    options: dict[str, Any]
    limit: Optional[int]
    scores: list[float] = field(default_factory=list)
    curve_sum: Optional[np.ndarray] = None
    curve_n: Optional[np.ndarray] = None
    share: list[np.ndarray] = field(default_factory=list)
    normalised: list[np.ndarray] = field(default_factory=list)
    pxap: Any = None
    n_images: int = 0
    seconds: float = 0.0
    error: Optional[str] = None

    def wants(self) -> int:
        """How many images of the next batch this cell still scores."""
        if self.error is not None:
            return 0
        return 1 << 62 if self.limit is None else max(0, self.limit - self.n_images)


def score_batch(acc: Accumulator, ctx: dict[str, Any], h: torch.Tensor, k: int) -> None:
    """Score the first ``k`` images of a heatmap batch into ``acc``."""
    from an8flower.eval import metrics as M

    spec, opts = acc.spec, acc.options
    masks = ctx["masks"][:k]
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
        if acc.pxap is None:
            acc.pxap = M.PixelAveragePrecision(**opts)
        acc.pxap.update(h, masks)
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
    elif spec.kind == "explainer":
        explainer = ctx["explainer"]
        if isinstance(explainer, Oracle):
            oracle = Oracle()
            oracle.masks = masks
            explainer = oracle
        options = {"layers": ctx["random_layers"], "seed": ctx["seed"], **opts}
        values = M.randomisation_similarity(ctx["model"], explainer, ctx["images"][:k], ctx["targets"][:k], **options)[:, -1]
    elif spec.kind in ("quantus", "quantus_model"):
        from an8flower.eval.quantus_metrics import quantus_scores

        explainer = ctx["explainer"]
        if isinstance(explainer, Oracle):
            explainer = Oracle()
            explainer.masks = masks
        values = quantus_scores(spec.name, opts, ctx["model"], ctx["images"][:k], ctx["targets"][:k], h, masks,
                                explainer, seed=ctx["seed"])
    else:  # pragma: no cover - METRICS is fixed
        raise AssertionError(spec.kind)
    if values is not None:
        acc.scores.extend(float(v) for v in values.detach().double().cpu())
    acc.n_images += k


def finish_cell(acc: Accumulator, base: dict[str, Any], image_ids: Sequence[int], part_names: Sequence[str]) -> dict[str, Any]:
    cell = {**base, "metric": acc.spec.name, "metric_options": acc.options, "error": acc.error,
            "seconds_metric": acc.seconds, "extra": {}}
    if acc.error is not None:
        return {**cell, "value": math.nan, "n": 0, "scores": None, "image_ids": None}
    ids = list(image_ids[: acc.n_images])
    if acc.spec.kind == "set":
        value = float(acc.pxap.compute()) if acc.pxap is not None else math.nan
        return {**cell, "value": value, "n": acc.n_images if math.isfinite(value) else 0, "scores": None, "image_ids": ids}
    scores = np.asarray(acc.scores, dtype=np.float64)
    finite = np.isfinite(scores)
    cell.update(value=float(scores[finite].mean()) if finite.any() else math.nan, n=int(finite.sum()),
                scores=[float(s) if math.isfinite(s) else None for s in scores], image_ids=ids)
    if acc.curve_sum is not None:
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
    return {**METRICS[name].defaults, **config.metric_options.get(name, {})}


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def run_explainer(name: str, options: dict[str, Any], missing: Sequence[str], model: nn.Module, model_name: str,
                   data: PreparedData, keep: torch.Tensor, config: RunConfig, device: torch.device, timer: Timer,
                   n_ex: int, disc_ids: list[int], log: Callable[[str], None],
                   progress: Optional[bool] = None) -> dict[str, Any]:
    """Explain the kept images batch by batch; score each batch into the missing cells."""
    accs = [Accumulator(METRICS[m], metric_options(m, config),
                         config.model_metric_images if METRICS[m].kind in ("model", "explainer", "quantus_model")
                         else None)
            for m in missing]
    out: dict[str, Any] = {"accumulators": accs, "examples": None, "calls": 0}
    try:
        explainer = build(name, options)
        if getattr(explainer, "requires_fit", False):
            if data.train is None:
                raise UsageError(f"{name} must be fitted on a training split, and {data.dataset} has none here")
            t0 = time.perf_counter()
            loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=False, num_workers=0)
            if "progress" in inspect.signature(explainer.fit).parameters:
                explainer.fit(model, loader, progress=progress)
            else:
                explainer.fit(model, loader)
            timer.add("fit", time.perf_counter() - t0, explainer=name)
    except Exception as exc:  # noqa: BLE001 - any failure of an explainer is recorded, the run goes on
        msg = error_text(exc)
        log(f"  {name}: failed to build/fit: {msg}")
        for acc in accs:
            acc.error = msg
        return out
    test = data.test
    examples: list[np.ndarray] = []
    random_layers = randomisation_layers(model)
    for sl in batches(len(keep), config.batch_size):
        idx = keep[sl]
        images = test.float_images(idx).to(device)
        targets = test.labels[idx].to(device)
        masks = test.masks[idx].to(device) if test.masks is not None else None
        parts = test.parts[idx].to(device) if test.parts is not None else None
        if isinstance(explainer, Oracle):
            explainer.masks = masks
        t0 = time.perf_counter()
        try:
            h = explainer(model, images, targets)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            bad = (~torch.isfinite(h.reshape(h.shape[0], -1))).any(1).nonzero()
            if bad.numel():
                raise FloatingPointError(f"returned NaN or inf heatmaps (image {test.ids[int(idx[int(bad[0, 0])])]})")
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
        if sum(e.shape[0] for e in examples) < n_ex:
            examples.append(h[: n_ex - sum(e.shape[0] for e in examples)].float().cpu().numpy().astype(np.float16))
        ctx = {"masks": masks, "parts": parts, "model": model, "images": images, "targets": targets,
               "explainer": explainer, "part_names": data.parts, "disc_ids": disc_ids,
               "random_layers": random_layers, "seed": config.seed}
        for acc in accs:
            k = min(acc.wants(), len(idx))
            if k == 0:
                continue
            t0 = time.perf_counter()
            try:
                score_batch(acc, ctx, h, k)
            except Exception as exc:  # noqa: BLE001 - one metric failing fails its cell only
                acc.error = error_text(exc)
                log(f"  {name} / {acc.spec.name}: {acc.error}")
            dt = time.perf_counter() - t0
            acc.seconds += dt
            # randomisation re-runs the explainer: its time counts as metric time, as it is the metric's cost
            timer.add("metrics", dt, metric=acc.spec.name)
    if examples and (not accs or any(acc.error is None for acc in accs)):
        out["examples"] = np.concatenate(examples)
    return out
