"""The leaderboard runner: variants x models x explainers x metrics, cached, resumable.

:func:`run_leaderboard` takes a :class:`~an8flower.eval.config.RunConfig` and, for each dataset
(an an8Flower variant rendered in memory or read from a generated folder; or ILSVRC12 validation
images with their boxes) and each model (loaded from a local checkpoint, or trained by the run and
kept under ``<out>/models``):

1. predicts the scored split and keeps the correctly classified images (``all_images``: every
   image), at most ``max_images`` of them, in split order; explanations target the ground-truth
   class (equal to the prediction for correctly classified images);
2. runs each explainer batch by batch on the model's device and scores every heatmap batch at once
   against the masks, part maps and model (:data:`METRICS`), keeping only the per-image scores, the
   mean IoU curve and the heatmaps of the first ``examples`` images for the plots. Model-based
   metrics (deletion, insertion, randomisation) run on the first ``model_metric_images`` scored
   images only: each costs tens of forward passes (or explainer calls) per image;
3. stores every (dataset, model, explainer, metric) *cell* as a JSON file under ``<out>/cache``,
   keyed by the SHA-256 of (dataset hash, scored image ids, model hash, explainer name and
   options, metric name and options, package version). A later run with the same key reads the
   cell instead of computing it, so an interrupted run resumes and an extended run (another
   explainer, metric, variant) computes only what is new. Failed cells are not cached: a rerun
   tries them again;
4. records an explainer that raises, or returns NaN/inf, as an error in all its cells (``value``
   NaN, ``n`` 0, the message in ``leaderboard.json`` and ``leaderboard.md``) and goes on; a metric
   that raises fails only its own cell.

Reference rows: ``oracle`` (the mask itself as heatmap: the ceiling of every mask metric),
``random`` and ``centre`` (chance). Outputs (see :mod:`an8flower.eval.report`): ``results.csv``,
``per_image.csv.gz``, ``leaderboard.md``, ``leaderboard.json``, PNG plots and ``run.json`` (the
command, configuration, versions, seeds, dataset and model hashes, accuracies, errors, and the
wall time split into data, training, explainers, metrics and I/O).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.report import atomic_write, write_report

__all__ = [
    "MetricSpec",
    "METRICS",
    "DEFAULT_METRICS",
    "IMAGENET_METRICS",
    "ORACLE",
    "TensorSplit",
    "PreparedData",
    "RunSummary",
    "run_leaderboard",
    "prepare_an8flower",
    "cell_key",
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
            (heatmaps, part maps), ``"model"`` (model, images, heatmaps, targets) or
            ``"explainer"`` (model, explainer, images, targets).
        higher_is_better: the direction in which the best explainer of a column is picked.
        defaults: keyword options passed to the metric function unless the run overrides them.
    """

    name: str
    label: str
    kind: str
    higher_is_better: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)


#: Every metric the leaderboard can score, in column order. ``top_k_intersection`` uses k = 5% of
#: the image (a fraction, so that scores compare across image sizes); ``randomisation`` is the
#: Spearman correlation between the heatmaps of the trained model and of the model with all its
#: top-level parameterised blocks re-initialised in cascade (Adebayo et al. 2018; lower = the
#: explanation depends more on the learned weights); ``part_attribution`` scores the share of
#: positive attribution on the discriminative parts and feeds the part table and plot.
METRICS: dict[str, MetricSpec] = {
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
}
#: The metrics scored by default on an8Flower: all of them.
DEFAULT_METRICS: tuple[str, ...] = tuple(METRICS)
#: The metrics scored by default on ILSVRC12 validation boxes.
IMAGENET_METRICS: tuple[str, ...] = ("pointing_game", "energy_pointing_game")


# ----------------------------------------------------------------------------------- data


class TensorSplit(Dataset):
    """A split held in memory: uint8 images (N, C, H, W), labels, masks and part maps.

    Items are ``(image float32 (C, H, W) in [0, 1], label, mask)`` as every dataset of the package
    yields them, so a split trains a model or fits VEBI through an ordinary ``DataLoader``.

    Attributes:
        images: uint8 (N, C, H, W). labels: long (N,). masks: bool (N, H, W) or None.
        parts: uint8 (N, H, W) or None. ids: the sample index of each item in its source.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, masks: Optional[torch.Tensor],
                 parts: Optional[torch.Tensor], ids: Sequence[int]) -> None:
        self.images, self.labels, self.masks, self.parts = images, labels, masks, parts
        self.ids = [int(i) for i in ids]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, Optional[torch.Tensor]]:
        return self.images[i].float().div_(255.0), int(self.labels[i]), None if self.masks is None else self.masks[i]

    def float_images(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Images ``index`` as float32 in [0, 1]."""
        return self.images[index].float().div_(255.0)

    def sha256(self) -> str:
        """SHA-256 of the split's bytes (images, labels, masks, part maps, ids)."""
        d = hashlib.sha256()
        for t in (self.images, self.labels, self.masks, self.parts):
            if t is not None:
                d.update(f"{t.dtype}{tuple(t.shape)}".encode())
                d.update(t.contiguous().numpy().tobytes())
        d.update(json.dumps(self.ids).encode())
        return d.hexdigest()


def _raw_item(item: Sequence[Any]) -> tuple[torch.Tensor, int, Optional[torch.Tensor], Optional[torch.Tensor]]:
    image = item[0]
    image = image if image.dtype == torch.uint8 else image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    mask = item[2] if len(item) > 2 else None
    parts = item[3] if len(item) > 3 else None
    return image, int(item[1]), mask, parts


def _collate_raw(batch: Sequence[Sequence[Any]]) -> list:
    return [_raw_item(b) for b in batch]


def materialise(dataset: Dataset, workers: int = 0, desc: str = "load", progress: Optional[bool] = None) -> TensorSplit:
    """Read every item of ``dataset`` into a :class:`TensorSplit` (images stored as uint8).

    Items are ``(image float in [0, 1], label, mask[, parts])``; images are assumed to be 8-bit
    (an8Flower PNGs, JPEGs) so the uint8 round trip is exact. ``ids`` come from the dataset's
    ``sample_index`` when it has one.
    """
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=_collate_raw)
    images, labels, masks, parts = [], [], [], []
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=None if progress is None else not progress) as bar:
        for batch in loader:
            for image, label, mask, part in batch:
                images.append(image)
                labels.append(label)
                masks.append(mask)
                parts.append(part)
            bar.update(len(batch))
    if not images:
        raise UsageError(f"{desc}: the dataset is empty")
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise UsageError(f"{desc}: images of different sizes {sorted(shapes)[:2]}; resize them with a transform")
    ids = [dataset.sample_index(i) for i in range(len(dataset))] if hasattr(dataset, "sample_index") else list(range(len(dataset)))
    return TensorSplit(
        torch.stack(images),
        torch.tensor(labels, dtype=torch.long),
        torch.stack(masks).bool() if all(m is not None for m in masks) else None,
        torch.stack(parts).to(torch.uint8) if all(p is not None for p in parts) else None,
        ids,
    )


@dataclass
class PreparedData:
    """A dataset ready to score: splits in memory and what the report needs to know of it.

    Attributes:
        dataset: ``"an8flower"`` or ``"ilsvrc12"``. variant: the variant name (``""`` for ILSVRC12).
        source: ``"rendered in memory"`` or the folder read. hash: the dataset hash (the manifest
        SHA-256 of a generated folder; the SHA-256 of the rendered splits' bytes otherwise).
        classes, parts, discriminative: class names, part names and the discriminative parts.
        train, val: the training splits (None when the model is loaded, not trained). test: the
        scored split. size: image side. info: facts recorded in ``run.json``.
    """

    dataset: str
    variant: str
    source: str
    hash: str
    classes: list[str]
    parts: list[str]
    discriminative: list[str]
    train: Optional[TensorSplit]
    val: Optional[TensorSplit]
    test: TensorSplit
    size: int
    info: dict[str, Any] = field(default_factory=dict)


def prepare_an8flower(variant: str, config: RunConfig, need_train: bool = True, progress: Optional[bool] = None) -> PreparedData:
    """Load (``config.data[variant]``, a generated folder) or render in memory an an8Flower variant.

    Rendered in memory, the splits are exactly those ``an8flower generate VARIANT --size SIZE
    --per-class PER_CLASS --seed SEED`` writes.
    """
    from an8flower.datasets.generated import An8Flower, An8FlowerOnTheFly

    folder = config.data.get(variant)
    splits = ["train", "val", config.split] if need_train else [config.split]
    splits = list(dict.fromkeys(splits))
    loaded: dict[str, TensorSplit] = {}
    if folder is not None:
        for split in splits:
            ds = An8Flower(folder, split, return_parts=True)
            loaded[split] = materialise(ds, config.workers, f"{variant} {split}", progress)
        info = ds.info
        name = info.get("variant", variant)
        digest = info.get("manifest_sha256") or info.get("manifest_hash")
        if not digest:
            raise UsageError(f"{folder}: dataset.json has no manifest_sha256")
        classes, parts, disc = list(ds.classes), list(ds.parts), list(ds.discriminative_parts)
        source, size = os.fspath(folder), int(loaded[config.split].images.shape[-1])
        facts = {"seed": info.get("seed"), "per_class": info.get("per_class"), "version": info.get("version")}
    else:
        for split in splits:
            ds = An8FlowerOnTheFly(variant, split, size=config.size, per_class=config.per_class,
                                   seed=config.seed, return_parts=True)
            loaded[split] = materialise(ds, config.workers, f"render {ds.spec.name} {split}", progress)
        spec = ds.spec
        name, classes, parts, disc = spec.name, list(spec.classes), list(spec.parts), list(spec.discriminative)
        d = hashlib.sha256()
        for split in splits:
            d.update(split.encode() + loaded[split].sha256().encode())
        digest, source, size = d.hexdigest(), "rendered in memory", config.size
        facts = {"seed": config.seed, "per_class": config.per_class, "spec_sha256": spec.sha256()}
    facts["sizes"] = {s: len(t) for s, t in loaded.items()}
    return PreparedData(
        dataset="an8flower", variant=name, source=source, hash=digest, classes=classes, parts=parts,
        discriminative=disc, train=loaded.get("train"), val=loaded.get("val"), test=loaded[config.split],
        size=size, info=facts,
    )


def prepare_imagenet(config: RunConfig, progress: Optional[bool] = None) -> PreparedData:
    """ILSVRC12 validation images resized to 256 (shorter side), centre-cropped to ``config.size``
    (224 unless set), with the union of the labelled class's boxes as mask (same transform,
    nearest-neighbour)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    from an8flower.datasets.imagenet import ILSVRC12

    size = config.size
    resize = round(size * 256 / 224)

    def transform(img: Any) -> torch.Tensor:
        return F.to_tensor(F.center_crop(F.resize(img, resize, InterpolationMode.BILINEAR), size))

    def mask_transform(mask: torch.Tensor) -> torch.Tensor:
        m = F.resize(mask[None].to(torch.uint8), resize, InterpolationMode.NEAREST)
        return F.center_crop(m, size)[0].bool()

    ds = ILSVRC12(config.imagenet, "val", transform=transform, mask_transform=mask_transform, num_classes=None)
    n = len(ds) if config.max_images is None else min(len(ds), 4 * config.max_images)
    subset = torch.utils.data.Subset(ds, range(n))
    test = materialise(subset, config.workers, "ILSVRC12 val", progress)
    if test.masks is None:
        raise UsageError(f"{config.imagenet}: no validation boxes found (XML annotations or LOC_val_solution.csv)")
    digest = hashlib.sha256(("ilsvrc12-val" + test.sha256()).encode()).hexdigest()
    return PreparedData(
        dataset="ilsvrc12", variant="", source=os.fspath(config.imagenet), hash=digest, classes=list(ds.classes),
        parts=[], discriminative=[], train=None, val=None, test=test, size=size,
        info={"images_read": n, "val_images": len(ds), "class_source": getattr(ds, "class_source", None)},
    )


# ---------------------------------------------------------------------------------- cache


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cell_key(dataset_hash: str, image_ids: Sequence[int], model_hash: str, explainer: str,
             explainer_options: dict[str, Any], metric: str, metric_options: dict[str, Any]) -> str:
    """The cache key of a cell: SHA-256 of its inputs and the package version (hex)."""
    from an8flower import __version__

    payload = {
        "dataset": dataset_hash,
        "images": hashlib.sha256(_canonical(list(map(int, image_ids))).encode()).hexdigest(),
        "model": model_hash,
        "explainer": explainer,
        "explainer_options": explainer_options,
        "metric": metric,
        "metric_options": metric_options,
        "version": __version__,
    }
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


class _Cache:
    """Cells as JSON files ``<out>/cache/<key[:2]>/<key>.json``; example heatmaps as ``.npz``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "cache")

    def _path(self, key: str, ext: str) -> str:
        return os.path.join(self.root, key[:2], f"{key}.{ext}")

    def get(self, key: str) -> Optional[dict[str, Any]]:
        path = self._path(key, "json")
        try:
            with open(path, encoding="utf-8") as fh:
                cell = json.load(fh)
        except (OSError, ValueError):
            return None
        return cell if cell.get("key") == key else None

    def put(self, key: str, cell: dict[str, Any]) -> None:
        atomic_write(self._path(key, "json"), json.dumps({**cell, "key": key}, allow_nan=True))

    def get_arrays(self, key: str) -> Optional[dict[str, np.ndarray]]:
        try:
            with np.load(self._path(key, "npz")) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError):
            return None

    def put_arrays(self, key: str, **arrays: np.ndarray) -> None:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write(self._path(key, "npz"), buf.getvalue())


# -------------------------------------------------------------------------------- timings


class _Timer:
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


# ------------------------------------------------------------------------------ explainers


class _Oracle:
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


def _explainer_options(name: str, model_name: str, config: RunConfig, dataset: str = "an8flower") -> dict[str, Any]:
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


def _build(name: str, options: dict[str, Any]) -> Any:
    if name == ORACLE:
        return _Oracle()
    from an8flower.baselines import build_explainer

    return build_explainer(name, **options)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]


# ------------------------------------------------------------------------------- scoring


@dataclass
class _Accumulator:
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


def _score_batch(acc: _Accumulator, ctx: dict[str, Any], h: torch.Tensor, k: int) -> None:
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
        if isinstance(explainer, _Oracle):
            oracle = _Oracle()
            oracle.masks = masks
            explainer = oracle
        options = {"layers": ctx["random_layers"], "seed": ctx["seed"], **opts}
        values = M.randomisation_similarity(ctx["model"], explainer, ctx["images"][:k], ctx["targets"][:k], **options)[:, -1]
    else:  # pragma: no cover - METRICS is fixed
        raise AssertionError(spec.kind)
    if values is not None:
        acc.scores.extend(float(v) for v in values.detach().double().cpu())
    acc.n_images += k


def _finish_cell(acc: _Accumulator, base: dict[str, Any], image_ids: Sequence[int], part_names: Sequence[str]) -> dict[str, Any]:
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


def _for_json(cell: dict[str, Any]) -> dict[str, Any]:
    """Scores lists may hold None for undefined values; restore NaN for the report."""
    if cell.get("scores") is not None:
        cell = {**cell, "scores": [math.nan if s is None else s for s in cell["scores"]]}
    return cell


def _randomisation_layers(model: nn.Module) -> list[str]:
    """Top-level children that hold parameters, input first (re-initialised in cascade)."""
    names = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    if len(names) == 1:  # a wrapper around one network: go one level down
        inner = model.get_submodule(names[0])
        sub = [f"{names[0]}.{n}" for n, m in inner.named_children() if any(True for _ in m.parameters())]
        names = sub or names
    return names


# ---------------------------------------------------------------------------------- models


def _device(config: RunConfig) -> torch.device:
    if config.device:
        try:
            return torch.device(config.device)
        except RuntimeError as exc:
            raise UsageError(f"--device {config.device!r}: {exc}") from None
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _weights_for(config: RunConfig, variant: str, model_name: str) -> Optional[str]:
    for key in (f"{variant}:{model_name}", model_name):
        if key in config.weights:
            return config.weights[key]
    return None


def _obtain_model(config: RunConfig, data: PreparedData, model_name: str, device: torch.device, timer: _Timer,
                  progress: Optional[bool], log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any]]:
    """Load the model from ``config.weights`` or train it (cached under ``<out>/models``)."""
    from an8flower.eval.models import build_model, load_checkpoint, model_hash, read_checkpoint
    from an8flower.eval.train import evaluate, model_card, save_checkpoint, train

    k = len(data.classes)
    weights = _weights_for(config, data.variant, model_name)
    if weights is not None:
        t0 = time.perf_counter()
        ckpt = read_checkpoint(weights)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("model_card"), dict):
            model, card = load_checkpoint(weights, name=model_name)
            if int(card["num_classes"]) != k:
                raise UsageError(f"weights file {weights} has {card['num_classes']} classes; {data.variant or data.dataset} has {k}")
        else:
            model, card = build_model(model_name, k, weights=weights), {"architecture": model_name, "num_classes": k}
        timer.add("io", time.perf_counter() - t0)
        return model.to(device).eval(), {"source": os.fspath(weights), "card": card, "trained": False}
    if data.train is None:
        raise UsageError(f"no --weights for {model_name} and {data.dataset} has no training split to train one")
    tconf = config.train_config()
    recipe = _canonical({"model": model_name, "data": data.hash, "train": tconf.__dict__})
    path = os.path.join(config.out, "models", f"{data.variant}_{model_name}_{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.pt")
    if os.path.isfile(path):
        t0 = time.perf_counter()
        model, card = load_checkpoint(path, name=model_name)
        timer.add("io", time.perf_counter() - t0)
        log(f"{data.variant} / {model_name}: reusing the trained model {path}")
        return model.to(device).eval(), {"source": path, "card": card, "trained": False, "reused": True}
    log(f"{data.variant} / {model_name}: training on {len(data.train)} images ({data.size} px)")
    t0 = time.perf_counter()
    model = build_model(model_name, k, seed=config.seed)
    result = train(model, data.train, data.val, tconf, device=device, progress=progress)
    test_acc = evaluate(result.model, data.test, batch_size=128)
    timer.add("train", time.perf_counter() - t0)
    card = model_card(
        model_name, k, (int(data.test.images.shape[1]), data.size, data.size),
        {"name": data.dataset, "variant": data.variant, "hash": data.hash, "source": data.source, **data.info},
        {"train": result.train_accuracy, "val": result.val_accuracy, config.split: test_acc},
        seed=config.seed, config=tconf, history=result.history, classes=data.classes,
    )
    t0 = time.perf_counter()
    save_checkpoint(path, result.model, card)
    timer.add("io", time.perf_counter() - t0)
    info = {"source": path, "card": card, "trained": True, "train_seconds": round(result.seconds, 3),
            "epochs": len(result.history), "best_epoch": result.best_epoch, "hash": model_hash(result.model)}
    return result.model.to(device).eval(), info


# ------------------------------------------------------------------------------------ run


@dataclass
class RunSummary:
    """What :func:`run_leaderboard` returns.

    Attributes:
        out: the results folder. cells: every cell (dicts as written to the cache).
        markdown: the leaderboard. record: the ``run.json`` content. computed, cached: cells
        computed by this run and read from the cache. explainer_calls: explainer batches run.
    """

    out: str
    cells: list[dict[str, Any]]
    markdown: str
    record: dict[str, Any]
    computed: int
    cached: int
    explainer_calls: int


def _metric_options(name: str, config: RunConfig) -> dict[str, Any]:
    return {**METRICS[name].defaults, **config.metric_options.get(name, {})}


def _resolve_lists(config: RunConfig) -> tuple[list[str], list[str]]:
    from an8flower.baselines import list_explainers

    registered = list_explainers()
    if config.explainers is None:
        explainers = [ORACLE] + registered
    else:
        explainers = list(dict.fromkeys(config.explainers))
        for name in explainers:
            if name != ORACLE and name not in registered:
                raise UsageError(f"unknown explainer {name!r}; registered: {', '.join([ORACLE] + registered)}")
    default = IMAGENET_METRICS if config.imagenet else DEFAULT_METRICS
    metrics = list(dict.fromkeys(config.metrics)) if config.metrics is not None else list(default)
    for name in metrics:
        if name not in METRICS:
            raise UsageError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}")
    for name in config.explainer_options:
        if name != ORACLE and name not in registered:
            raise UsageError(f"explainer_options: unknown explainer {name!r}")
    for name in config.metric_options:
        if name not in METRICS:
            raise UsageError(f"metric_options: unknown metric {name!r}")
    return explainers, metrics


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def run_leaderboard(
    config: RunConfig,
    *,
    datasets: Optional[Sequence[PreparedData]] = None,
    models: Optional[dict[str, nn.Module]] = None,
    command: Optional[Sequence[str]] = None,
    progress: Optional[bool] = None,
    log: Optional[Callable[[str], None]] = None,
) -> RunSummary:
    """Run the leaderboard that ``config`` describes; write its results folder; return a summary.

    Args:
        config: the run (see :class:`~an8flower.eval.config.RunConfig`).
        datasets: score these prepared datasets instead of ``config.variants``/``config.imagenet``
            (e.g. a user's own images with masks, as :class:`TensorSplit`).
        models: ready models by name, used instead of loading or training the models of
            ``config.models`` with those names (the table shows the name).
        command: the command line recorded in ``run.json`` (default ``sys.argv``).
        progress: tqdm bars (``None``: on a terminal only).
        log: where one-line progress messages go (default: stderr when ``progress`` is not False).

    Returns:
        A :class:`RunSummary`.

    Raises:
        UsageError: unknown explainer, metric or model names, unreadable weights or data (before
        any explainer runs).
    """
    from tqdm.auto import tqdm

    from an8flower.eval.models import list_models, model_hash
    from an8flower.eval.train import predict, software_versions

    start = time.perf_counter()
    if log is None:
        def log(msg: str) -> None:
            if progress is not False:
                print(msg, file=sys.stderr, flush=True)

    explainers, metrics = _resolve_lists(config)
    given = dict(models or {})
    model_names = list(dict.fromkeys(list(config.models) if models is None else list(given)))
    for name in model_names:
        if name not in given and name not in list_models():
            raise UsageError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    os.makedirs(config.out, exist_ok=True)
    device = _device(config)
    cache = _Cache(config.out)
    timer = _Timer()
    cells: list[dict[str, Any]] = []
    group_meta: dict[tuple, dict[str, Any]] = {}
    examples: dict[tuple, dict[str, Any]] = {}
    datasets_rec, models_rec, errors = [], [], []
    computed = cached = calls = 0

    from an8flower.baselines import explainer_class

    any_fit = any(e != ORACLE and explainer_class(e).requires_fit for e in explainers)
    sources: list[Any] = list(datasets) if datasets is not None else ([None] if config.imagenet else list(config.variants))
    for source in sources:
        t0 = time.perf_counter()
        if isinstance(source, PreparedData):
            data = source
        elif source is None:
            data = prepare_imagenet(config, progress)
        else:
            needs_train = any_fit or any(m not in given and _weights_for(config, source, m) is None for m in model_names)
            data = prepare_an8flower(source, config, needs_train, progress)
        timer.add("data", time.perf_counter() - t0)
        datasets_rec.append({"dataset": data.dataset, "variant": data.variant, "source": data.source,
                             "hash": data.hash, "size": data.size, **data.info})
        for model_name in model_names:
            if model_name in given:
                model = given[model_name].to(device).eval()
                minfo = {"source": "given", "card": {}, "trained": False}
            else:
                model, minfo = _obtain_model(config, data, model_name, device, timer, progress, log)
            mhash = model_hash(model)
            t0 = time.perf_counter()
            test = data.test
            pred, labels = predict(model, test, batch_size=max(64, config.batch_size))
            accuracy = float((pred == labels).float().mean())
            keep = torch.arange(len(test)) if config.all_images else (pred == labels).nonzero().flatten()
            if config.max_images is not None:
                keep = keep[: config.max_images]
            timer.add("metrics", time.perf_counter() - t0)
            image_ids = [test.ids[i] for i in keep.tolist()]
            models_rec.append({"variant": data.variant, "model": model_name, "hash": mhash,
                               "accuracy": {config.split: round(accuracy, 6)},
                               **{k: v for k, v in minfo.items() if k != "card"},
                               "card_accuracy": minfo["card"].get("accuracy")})
            log(f"{data.variant or data.dataset} / {model_name}: {config.split} accuracy {100 * accuracy:.1f}%, "
                f"scoring {len(keep)} images on {device}")
            group = (data.dataset, data.variant, model_name, config.split, config.seed)
            group_meta[group] = {"accuracy": accuracy, "n_images": len(keep), "all_images": config.all_images,
                                 "image_size": data.size, "discriminative": data.discriminative}
            if len(keep) == 0:
                log(f"{data.variant} / {model_name}: no image to score")
                continue
            n_ex = min(config.examples, len(keep))
            ex = {"images": test.images[keep[:n_ex]].permute(0, 2, 3, 1).numpy(),
                  "masks": test.masks[keep[:n_ex]].numpy() if test.masks is not None else np.zeros((n_ex, data.size, data.size), bool),
                  "heatmaps": {}}
            examples[group] = ex
            disc_ids = [data.parts.index(p) for p in data.discriminative]
            base_meta = {"dataset": data.dataset, "variant": data.variant, "model": model_name, "split": config.split,
                         "seed": config.seed}
            bar = tqdm(total=len(explainers), desc=f"{data.variant or data.dataset}/{model_name}", unit="explainer",
                       disable=None if progress is None else not progress)
            for name in explainers:
                bar.set_postfix_str(name)
                options = _explainer_options(name, model_name, config, data.dataset)
                base = {**base_meta, "explainer": name, "options": options}
                wanted = [m for m in metrics if not (METRICS[m].kind == "parts" and test.parts is None)]
                keys = {m: cell_key(data.hash, image_ids, mhash, name, options, m, _metric_options(m, config)) for m in wanted}
                ex_key = cell_key(data.hash, image_ids[:n_ex], mhash, name, options, "examples", {})
                t0 = time.perf_counter()
                found = {m: cache.get(k) for m, k in keys.items()}
                found = {m: c for m, c in found.items() if c is not None}
                ex_arrays = cache.get_arrays(ex_key)
                timer.add("io", time.perf_counter() - t0)
                for m in wanted:
                    if m in found:
                        cells.append(_for_json(found[m]))
                        cached += 1
                missing = [m for m in wanted if m not in found]
                if not missing and ex_arrays is not None:
                    ex["heatmaps"][name] = ex_arrays["heatmaps"]
                    bar.update(1)
                    continue
                # With every cell cached, only the example heatmaps are missing: explain those images only.
                todo = keep if missing else keep[:n_ex]
                result = _run_explainer(name, options, missing, model, model_name, data, todo, config, device,
                                        timer, n_ex, disc_ids, log, progress)
                calls += result["calls"]
                if result["examples"] is not None:
                    ex["heatmaps"][name] = result["examples"]
                    t0 = time.perf_counter()
                    cache.put_arrays(ex_key, heatmaps=result["examples"])
                    timer.add("io", time.perf_counter() - t0)
                for acc in result["accumulators"]:
                    cell = _finish_cell(acc, base, image_ids, data.parts)
                    t0 = time.perf_counter()
                    if cell["error"] is None:
                        cache.put(keys[acc.spec.name], cell)
                    else:
                        errors.append({"variant": data.variant, "model": model_name, "explainer": name,
                                       "metric": acc.spec.name, "error": cell["error"]})
                    timer.add("io", time.perf_counter() - t0)
                    cells.append(_for_json(cell))
                    computed += 1
                bar.update(1)
            bar.close()
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    order = {m: i for i, m in enumerate(metrics)}
    expl_order = {e: i for i, e in enumerate(explainers)}
    cells.sort(key=lambda c: (c["dataset"], c["variant"], c["model"], expl_order.get(c["explainer"], 1 << 30),
                              order.get(c["metric"], 1 << 30)))
    t0 = time.perf_counter()
    metric_info = {m: {"label": METRICS[m].label, "higher_is_better": METRICS[m].higher_is_better,
                       "kind": METRICS[m].kind, "options": _metric_options(m, config)} for m in metrics}
    title = "an8flower leaderboard" + (" (--quick)" if config.quick else "")
    report = write_report(config.out, cells, metric_info, group_meta, examples, title=title, plots=config.plots)
    timer.add("io", time.perf_counter() - t0)
    wall = time.perf_counter() - start

    record = {
        "command": list(command) if command is not None else list(sys.argv),
        "config": config.to_dict(),
        "versions": software_versions(),
        "platform": {"machine": platform.machine(), "system": platform.system(), "processor": platform.processor(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
                     "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "seeds": {"dataset": config.seed, "model": config.seed, "explainers": config.seed},
        "datasets": datasets_rec,
        "models": models_rec,
        "explainers": {e: {"options": _explainer_options(e, model_names[0], config,
                                                         "ilsvrc12" if config.imagenet and datasets is None else "an8flower"),
                           "requires_fit": e != ORACLE and bool(explainer_class(e).requires_fit)} for e in explainers},
        "metrics": metric_info,
        "cells": {"computed": computed, "cached": cached, "errors": len(errors)},
        "errors": errors,
        "timings": {**timer.to_dict(), "wall_seconds": round(wall, 3)},
        "files": report["files"] + ["run.json"],
    }
    atomic_write(os.path.join(config.out, "run.json"), json.dumps(_jsonable(record), indent=1, allow_nan=False) + "\n")
    return RunSummary(config.out, cells, report["markdown"], record, computed, cached, calls)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 6) if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


def _run_explainer(name: str, options: dict[str, Any], missing: Sequence[str], model: nn.Module, model_name: str,
                   data: PreparedData, keep: torch.Tensor, config: RunConfig, device: torch.device, timer: _Timer,
                   n_ex: int, disc_ids: list[int], log: Callable[[str], None],
                   progress: Optional[bool] = None) -> dict[str, Any]:
    """Explain the kept images batch by batch; score each batch into the missing cells."""
    accs = [_Accumulator(METRICS[m], _metric_options(m, config),
                         config.model_metric_images if METRICS[m].kind in ("model", "explainer") else None)
            for m in missing]
    out: dict[str, Any] = {"accumulators": accs, "examples": None, "calls": 0}
    try:
        explainer = _build(name, options)
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
        msg = _error_text(exc)
        log(f"  {name}: failed to build/fit: {msg}")
        for acc in accs:
            acc.error = msg
        return out
    test = data.test
    examples: list[np.ndarray] = []
    random_layers = _randomisation_layers(model)
    for sl in _batches(len(keep), config.batch_size):
        idx = keep[sl]
        images = test.float_images(idx).to(device)
        targets = test.labels[idx].to(device)
        masks = test.masks[idx].to(device) if test.masks is not None else None
        parts = test.parts[idx].to(device) if test.parts is not None else None
        if isinstance(explainer, _Oracle):
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
            msg = _error_text(exc)
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
                _score_batch(acc, ctx, h, k)
            except Exception as exc:  # noqa: BLE001 - one metric failing fails its cell only
                acc.error = _error_text(exc)
                log(f"  {name} / {acc.spec.name}: {acc.error}")
            dt = time.perf_counter() - t0
            acc.seconds += dt
            # randomisation re-runs the explainer: its time counts as metric time, as it is the metric's cost
            timer.add("metrics", dt, metric=acc.spec.name)
    if examples and (not accs or any(acc.error is None for acc in accs)):
        out["examples"] = np.concatenate(examples)
    return out
