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
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from an8flower.errors import UsageError
from an8flower.eval.cache import CellCache, canonical, cell_key
from an8flower.eval.config import RunConfig
from an8flower.eval.data import PreparedData, TensorSplit, materialise, prepare_an8flower, prepare_imagenet
from an8flower.eval.report import atomic_write, write_report
from an8flower.eval.scoring import (
    DEFAULT_METRICS,
    IMAGENET_METRICS,
    METRICS,
    ORACLE,
    MetricSpec,
    Timer,
    explainer_options,
    finish_cell,
    for_json,
    metric_options,
    run_explainer,
)

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
    "prepare_imagenet",
    "materialise",
    "cell_key",
]


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


def _obtain_model(config: RunConfig, data: PreparedData, model_name: str, device: torch.device, timer: Timer,
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
    recipe = canonical({"model": model_name, "data": data.hash, "train": tconf.__dict__})
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


def _check_adapter(name: str) -> bool:
    """Whether ``name`` is a library adapter's name; resolving it raises the adapter's UsageError
    (library not installed, naming the extra; no such method)."""
    from an8flower.baselines import explainer_class
    from an8flower.baselines.adapters import is_adapter_name

    return is_adapter_name(name) and explainer_class(name) is not None


def _resolve_lists(config: RunConfig) -> tuple[list[str], list[str]]:
    from an8flower.baselines import list_explainers

    registered = list_explainers()
    if config.explainers is None:
        explainers = [ORACLE] + registered
    else:
        explainers = list(dict.fromkeys(config.explainers))
        for name in explainers:
            if name != ORACLE and name not in registered and not _check_adapter(name):
                raise UsageError(f"unknown explainer {name!r}; registered: {', '.join([ORACLE] + registered)}")
    default = IMAGENET_METRICS if config.imagenet else DEFAULT_METRICS
    metrics = list(dict.fromkeys(config.metrics)) if config.metrics is not None else list(default)
    for name in metrics:
        if name not in METRICS:
            raise UsageError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}")
    for name in config.explainer_options:
        if name != ORACLE and name not in registered and not _check_adapter(name):
            raise UsageError(f"explainer_options: unknown explainer {name!r}")
    for name in config.metric_options:
        if name not in METRICS:
            raise UsageError(f"metric_options: unknown metric {name!r}")
    return explainers, metrics


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
    run = _Run(config, models, progress, log)
    sources: list[Any] = list(datasets) if datasets is not None else ([None] if config.imagenet else list(config.variants))
    for source in sources:
        data = run.prepare(source)
        for model_name in run.model_names:
            run.score_group(data, model_name)
    return run.finish(command, imagenet=bool(config.imagenet) and datasets is None)


class _Run:
    """The state of one leaderboard run: cache, timer, the cells gathered so far and the run record."""

    def __init__(self, config: RunConfig, models: Optional[dict[str, nn.Module]], progress: Optional[bool],
                 log: Optional[Callable[[str], None]]) -> None:
        from an8flower.baselines import explainer_class
        from an8flower.eval.models import list_models

        self.start = time.perf_counter()
        self.config, self.progress = config, progress
        if log is None:
            def log(msg: str) -> None:
                if progress is not False:
                    print(msg, file=sys.stderr, flush=True)
        self.log = log
        self.explainers, self.metrics = _resolve_lists(config)
        self.given = dict(models or {})
        self.model_names = list(dict.fromkeys(list(config.models) if models is None else list(self.given)))
        for name in self.model_names:
            if name not in self.given and name not in list_models():
                raise UsageError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
        os.makedirs(config.out, exist_ok=True)
        self.device = _device(config)
        self.cache = CellCache(config.out)
        self.timer = Timer()
        self.cells: list[dict[str, Any]] = []
        self.group_meta: dict[tuple, dict[str, Any]] = {}
        self.examples: dict[tuple, dict[str, Any]] = {}
        self.datasets_rec: list[dict[str, Any]] = []
        self.models_rec: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.computed = self.cached = self.calls = 0
        self.any_fit = any(e != ORACLE and explainer_class(e).requires_fit for e in self.explainers)

    def prepare(self, source: Any) -> PreparedData:
        """A prepared dataset: given, ILSVRC12 (``None``) or an an8Flower variant name."""
        t0 = time.perf_counter()
        if isinstance(source, PreparedData):
            data = source
        elif source is None:
            data = prepare_imagenet(self.config, self.progress)
        else:
            needs_train = self.any_fit or any(m not in self.given and _weights_for(self.config, source, m) is None
                                              for m in self.model_names)
            data = prepare_an8flower(source, self.config, needs_train, self.progress)
        self.timer.add("data", time.perf_counter() - t0)
        self.datasets_rec.append({"dataset": data.dataset, "variant": data.variant, "source": data.source,
                                  "hash": data.hash, "size": data.size, **data.info})
        return data

    def score_group(self, data: PreparedData, model_name: str) -> None:
        """Every explainer x metric cell of one (dataset, model) group: from the cache or computed."""
        from tqdm.auto import tqdm

        from an8flower.eval.models import model_hash
        from an8flower.eval.train import predict

        config, device = self.config, self.device
        if model_name in self.given:
            model = self.given[model_name].to(device).eval()
            minfo: dict[str, Any] = {"source": "given", "card": {}, "trained": False}
        else:
            model, minfo = _obtain_model(config, data, model_name, device, self.timer, self.progress, self.log)
        mhash = model_hash(model)
        t0 = time.perf_counter()
        test = data.test
        pred, labels = predict(model, test, batch_size=max(64, config.batch_size))
        accuracy = float((pred == labels).float().mean())
        keep = torch.arange(len(test)) if config.all_images else (pred == labels).nonzero().flatten()
        if config.max_images is not None:
            keep = keep[: config.max_images]
        self.timer.add("metrics", time.perf_counter() - t0)
        image_ids = [test.ids[i] for i in keep.tolist()]
        self.models_rec.append({"variant": data.variant, "model": model_name, "hash": mhash,
                                "accuracy": {config.split: round(accuracy, 6)},
                                **{k: v for k, v in minfo.items() if k != "card"},
                                "card_accuracy": minfo["card"].get("accuracy")})
        self.log(f"{data.variant or data.dataset} / {model_name}: {config.split} accuracy {100 * accuracy:.1f}%, "
                 f"scoring {len(keep)} images on {device}")
        group = (data.dataset, data.variant, model_name, config.split, config.seed)
        self.group_meta[group] = {"accuracy": accuracy, "n_images": len(keep), "all_images": config.all_images,
                                  "image_size": data.size, "discriminative": data.discriminative}
        if len(keep) == 0:
            self.log(f"{data.variant} / {model_name}: no image to score")
            return
        n_ex = min(config.examples, len(keep))
        ex = {"images": test.images[keep[:n_ex]].permute(0, 2, 3, 1).numpy(),
              "masks": test.masks[keep[:n_ex]].numpy() if test.masks is not None else np.zeros((n_ex, data.size, data.size), bool),
              "heatmaps": {}}
        self.examples[group] = ex
        disc_ids = [data.parts.index(p) for p in data.discriminative]
        base_meta = {"dataset": data.dataset, "variant": data.variant, "model": model_name, "split": config.split,
                     "seed": config.seed}
        bar = tqdm(total=len(self.explainers), desc=f"{data.variant or data.dataset}/{model_name}", unit="explainer",
                   disable=None if self.progress is None else not self.progress)
        for name in self.explainers:
            bar.set_postfix_str(name)
            self._score_explainer(name, data, model, model_name, mhash, keep, image_ids, n_ex, ex, disc_ids, base_meta)
            bar.update(1)
        bar.close()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def _score_explainer(self, name: str, data: PreparedData, model: nn.Module, model_name: str, mhash: str,
                         keep: torch.Tensor, image_ids: list[int], n_ex: int, ex: dict[str, Any], disc_ids: list[int],
                         base_meta: dict[str, Any]) -> None:
        """The cells of one explainer in one group: read the cached ones, compute the missing ones."""
        config, cache, timer = self.config, self.cache, self.timer
        options = explainer_options(name, model_name, config, data.dataset)
        base = {**base_meta, "explainer": name, "options": options}
        wanted = [m for m in self.metrics if not (METRICS[m].kind == "parts" and data.test.parts is None)]
        keys = {m: cell_key(data.hash, image_ids, mhash, name, options, m, metric_options(m, config)) for m in wanted}
        ex_key = cell_key(data.hash, image_ids[:n_ex], mhash, name, options, "examples", {})
        t0 = time.perf_counter()
        found = {m: cache.get(k) for m, k in keys.items()}
        found = {m: c for m, c in found.items() if c is not None}
        ex_arrays = cache.get_arrays(ex_key)
        timer.add("io", time.perf_counter() - t0)
        for m in wanted:
            if m in found:
                self.cells.append(for_json(found[m]))
                self.cached += 1
        missing = [m for m in wanted if m not in found]
        if not missing and ex_arrays is not None:
            ex["heatmaps"][name] = ex_arrays["heatmaps"]
            return
        # With every cell cached, only the example heatmaps are missing: explain those images only.
        todo = keep if missing else keep[:n_ex]
        result = run_explainer(name, options, missing, model, model_name, data, todo, config, self.device,
                               timer, n_ex, disc_ids, self.log, self.progress)
        self.calls += result["calls"]
        if result["examples"] is not None:
            ex["heatmaps"][name] = result["examples"]
            t0 = time.perf_counter()
            cache.put_arrays(ex_key, heatmaps=result["examples"])
            timer.add("io", time.perf_counter() - t0)
        for acc in result["accumulators"]:
            cell = finish_cell(acc, base, image_ids, data.parts)
            t0 = time.perf_counter()
            if cell["error"] is None:
                cache.put(keys[acc.spec.name], cell)
            else:
                self.errors.append({"variant": data.variant, "model": model_name, "explainer": name,
                                    "metric": acc.spec.name, "error": cell["error"]})
            timer.add("io", time.perf_counter() - t0)
            self.cells.append(for_json(cell))
            self.computed += 1

    def finish(self, command: Optional[Sequence[str]], imagenet: bool) -> RunSummary:
        """Write the report and ``run.json``; the summary."""
        from an8flower.baselines import explainer_class
        from an8flower.eval.train import software_versions

        config, timer, device = self.config, self.timer, self.device
        order = {m: i for i, m in enumerate(self.metrics)}
        expl_order = {e: i for i, e in enumerate(self.explainers)}
        cells = self.cells
        cells.sort(key=lambda c: (c["dataset"], c["variant"], c["model"], expl_order.get(c["explainer"], 1 << 30),
                                  order.get(c["metric"], 1 << 30)))
        t0 = time.perf_counter()
        metric_info = {m: {"label": METRICS[m].label, "higher_is_better": METRICS[m].higher_is_better,
                           "kind": METRICS[m].kind, "options": metric_options(m, config)} for m in self.metrics}
        title = "an8flower leaderboard" + (" (--quick)" if config.quick else "")
        report = write_report(config.out, cells, metric_info, self.group_meta, self.examples, title=title,
                              plots=config.plots)
        timer.add("io", time.perf_counter() - t0)
        wall = time.perf_counter() - self.start
        record = {
            "command": list(command) if command is not None else list(sys.argv),
            "config": config.to_dict(),
            "versions": software_versions(),
            "platform": {"machine": platform.machine(), "system": platform.system(), "processor": platform.processor(),
                         "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
                         "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
            "seeds": {"dataset": config.seed, "model": config.seed, "explainers": config.seed},
            "datasets": self.datasets_rec,
            "models": self.models_rec,
            "explainers": {e: {"options": explainer_options(e, self.model_names[0], config,
                                                            "ilsvrc12" if imagenet else "an8flower"),
                               "requires_fit": e != ORACLE and bool(explainer_class(e).requires_fit)}
                           for e in self.explainers},
            "metrics": metric_info,
            "cells": {"computed": self.computed, "cached": self.cached, "errors": len(self.errors)},
            "errors": self.errors,
            "timings": {**timer.to_dict(), "wall_seconds": round(wall, 3)},
            "files": report["files"] + ["run.json"],
        }
        atomic_write(os.path.join(config.out, "run.json"), json.dumps(_jsonable(record), indent=1, allow_nan=False) + "\n")
        return RunSummary(config.out, cells, report["markdown"], record, self.computed, self.cached, self.calls)


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
