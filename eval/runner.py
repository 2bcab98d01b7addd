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
   keyed by the SHA-256 of the cell's complete configuration (:mod:`an8flower.eval.cache`: data,
   scored images, model weights, explainer options and code, metric options, seed, batch size,
   device, versions). A later run with the same key reads the cell instead of computing it, so an
   interrupted run resumes and an extended run (another explainer, metric, variant) computes only
   what is new; ``fresh=True`` (``--fresh``) recomputes. Every cell read is validated (schema and
   checksum): a damaged one is recomputed with a warning naming its file. Failed cells are not
   cached: a rerun tries them again. The report covers the requested cells plus, for the same
   groups, the other explainers and metrics earlier runs cached in the folder, so a narrower
   rerun does not shrink it; plots of an earlier report that are not rewritten are removed;
4. records an explainer that raises, or returns NaN/inf, as an error in all its cells (``value``
   NaN, ``n`` 0, the message in ``leaderboard.json`` and ``leaderboard.md``) and goes on; a metric
   that raises fails only its own cell.

Each requested explainer name is resolved once, when the run starts, into an
:class:`~an8flower.baselines.spec.ExplainerSpec` (its class, options, code identity): the run then
takes the spec only. Every explainer and metric option is checked against its constructor or
function before any data is read or any model trained. Reference rows (``oracle``: the mask itself
as heatmap, the ceiling of every mask metric; ``random`` and ``centre``: chance) are explainers
like the others (:mod:`an8flower.baselines.reference`).

Outputs (see :mod:`an8flower.eval.report`): ``results.csv``, ``per_image.csv.gz``,
``leaderboard.md``, ``leaderboard.json``, PNG plots and ``run.json`` (the
command, configuration, versions, seeds, dataset and model hashes, accuracies, errors, and the
wall time split into data, training, explainers, metrics and I/O).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from an8flower.atomic import atomic_write
from an8flower.baselines.spec import ExplainerSpec, resolve_explainers
from an8flower.errors import UsageError
from an8flower.eval.cache import (
    CellCache,
    canonical,
    cell_config,
    cell_key,
    distribution_version,
    group_part,
    model_code_identity,
)
from an8flower.eval.config import RunConfig, TrainConfig
from an8flower.eval.data import (
    PreparedData,
    TensorSplit,
    check_memory,
    materialise,
    prepare_an8flower,
    prepare_imagenet,
)
from an8flower.eval.distributed import SINGLE, World, explainer_state, load_explainer_state, my_batches, setup
from an8flower.eval.report import write_report
from an8flower.eval.results_folder import portable_record
from an8flower.eval.scoring import (
    DEFAULT_METRICS,
    IMAGENET_METRICS,
    METRICS,
    Accumulator,
    MetricSpec,
    Timer,
    build_and_fit,
    check_metric_options,
    error_text,
    explainer_options,
    finish_cell,
    for_json,
    merge_accumulators,
    metric_options,
    new_accumulators,
    run_explainer,
)
from an8flower.eval.shards import ShardStore
from an8flower.eval.train import recipe_config, resolve_device

__all__ = [
    "MetricSpec",
    "METRICS",
    "DEFAULT_METRICS",
    "IMAGENET_METRICS",
    "TensorSplit",
    "PreparedData",
    "RunSummary",
    "training_config",
    "run_leaderboard",
    "prepare_an8flower",
    "prepare_imagenet",
    "materialise",
    "cell_key",
]


# ---------------------------------------------------------------------------------- models


def run_device(config: RunConfig) -> torch.device:
    """The device a run uses: :func:`~an8flower.eval.train.resolve_device` of ``config.device``."""
    return resolve_device(config.device)


def _weights_for(config: RunConfig, variant: str, model_name: str) -> str | None:
    for key in (f"{variant}:{model_name}", model_name):
        if key in config.weights:
            return config.weights[key]
    return None


def training_config(config: RunConfig, model_name: str) -> TrainConfig:
    """The :class:`~an8flower.eval.train.TrainConfig` a run trains ``model_name`` with: its family's
    recipe under the run's seed, workers and flips, then the run's ``[train]`` table (or the model's
    own, ``per_model.<name>.train``)."""
    return recipe_config(model_name, config.train_for(model_name), seed=config.seed, hflip=True, workers=config.workers)


def _obtain_model(config: RunConfig, data: PreparedData, model_name: str, device: torch.device, timer: Timer,
                  progress: bool | None, log: Callable[[str], None], seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """Load the model from ``config.weights`` or train it with initialisation ``seed`` (cached under ``<out>/models``)."""
    from an8flower.eval.models import build_model, load_checkpoint, model_hash, read_checkpoint, resolve_model
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
    tconf = training_config(config, model_name)
    if seed != config.seed:  # model seed seed + i shuffles with the training seed + i
        tconf = dataclasses.replace(tconf, seed=tconf.seed + seed - config.seed)
    recipe = canonical({"model": model_name, "spec": resolve_model(model_name).identity(), "data": data.hash,
                        "train": tconf.__dict__, "code": _training_code_sha256()})
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)
    path = os.path.join(config.out, "models", f"{data.variant}_{stem}_{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.pt")
    if os.path.isfile(path):
        t0 = time.perf_counter()
        try:
            model, card = load_checkpoint(path, name=model_name)
            if int(card["num_classes"]) != k:
                raise UsageError(f"weights file {path} has {card['num_classes']} classes, not {k}")
        except UsageError as exc:  # a damaged cell of the model cache: discarded and recomputed, said
            log(f"{data.variant} / {model_name}: damaged trained model discarded and retrained ({exc})")
            os.unlink(path)
        else:
            timer.add("io", time.perf_counter() - t0)
            log(f"{data.variant} / {model_name}: reusing the trained model {path}")
            return model.to(device).eval(), {"source": path, "card": card, "trained": False, "reused": True}
    log(f"{data.variant} / {model_name}: training on {len(data.train)} images ({data.size} px)")
    t0 = time.perf_counter()
    model = build_model(model_name, k, seed=seed)
    result = train(model, data.train, data.val, tconf, device=device, progress=progress)
    test_acc = evaluate(result.model, data.test, batch_size=128)
    timer.add("train", time.perf_counter() - t0)
    card = model_card(
        model_name, k, (int(data.test.images.shape[1]), data.size, data.size),
        {"name": data.dataset, "variant": data.variant, "hash": data.hash, "source": data.source, **data.info},
        {"train": result.train_accuracy, "val": result.val_accuracy, config.split: test_acc},
        seed=seed, config=tconf, history=result.history, classes=data.classes,
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


def _resolve(config: RunConfig) -> tuple[list[ExplainerSpec], list[str]]:
    """The run's explainer specs and metric names, every option checked: before any work.

    Raises:
        UsageError: an unknown explainer or metric, or an option (of a requested one, or in the
            run's option tables) that its constructor or function does not take or of the wrong
            type, naming the option and its owner.
    """
    specs = resolve_explainers(config.explainers, config.explainer_options)
    default = IMAGENET_METRICS if config.imagenet else DEFAULT_METRICS
    metrics = list(dict.fromkeys(config.metrics)) if config.metrics is not None else list(default)
    for name in metrics:
        if name not in METRICS:
            raise UsageError(f"unknown metric {name!r}; metrics: {', '.join(METRICS)}")
    for name in config.metric_options:
        if name not in METRICS:
            raise UsageError(f"metric_options: unknown metric {name!r}")
    for name in dict.fromkeys(metrics + list(config.metric_options)):
        check_metric_options(name, config)
    return specs, metrics


def run_leaderboard(
    config: RunConfig,
    *,
    datasets: Sequence[PreparedData] | None = None,
    models: dict[str, nn.Module] | None = None,
    command: Sequence[str] | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    fresh: bool = False,
    shard: tuple[int, int] | None = None,
    world: World | None = None,
    allow_overlap: bool = False,
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
        fresh: recompute every requested cell instead of reading it from the cache (the results
            are written to the cache again; trained models in ``<out>/models`` are reused, being
            keyed by their full recipe).
        shard: ``(I, N)``: compute only shard I of N (1-based) of every cell, for schedulers without
            ``torch.distributed``, and write it uncombined to ``config.out`` for
            :func:`an8flower.eval.merge.merge_shards` (no report is written).
        world: the processes of the run (default: :func:`an8flower.eval.distributed.setup`, which
            reads ``torchrun``'s environment); see :mod:`an8flower.eval.distributed`.
        allow_overlap: score images a loaded checkpoint's model card says it was trained or
            validated on (:func:`an8flower.eval.leakage.check_leakage`; refused otherwise), and say
            so in every report.

    Returns:
        A :class:`RunSummary`. The report covers the requested cells and, for the same groups,
        the cells of other explainers and metrics that earlier runs cached in ``config.out``.

    Raises:
        UsageError: unknown explainer, metric or model names, unreadable weights or data (before
        any explainer runs).
    """
    owned = world is None
    world = world if world is not None else setup(config.device, shard)
    run = BoardRun(config, models, progress, log, fresh, datasets_given=datasets is not None, world=world,
                   allow_overlap=allow_overlap)
    sources: list[Any] = list(datasets) if datasets is not None else ([None] if config.imagenet else list(config.variants))
    for source in sources:
        data = run.prepare(source)
        for model_name in run.model_names:
            for seed in run.model_seeds:
                run.score_group(data, model_name, seed)
    if world.shard:
        return run.finish_shard(command)
    summary = run.finish(command, imagenet=bool(run.datasets_rec) and all(d["dataset"] == "ilsvrc12" for d in run.datasets_rec))
    if owned:
        # every rank waits for rank 0's report, then all leave the process group together: a rank
        # that exits while another still holds its connections makes gloo abort that one (SIGABRT)
        world.barrier("the report")
        world.close()
    return summary


class BoardRun:
    """The state of one leaderboard run: cache, timer, the cells gathered so far and the run record."""

    def __init__(self, config: RunConfig, models: dict[str, nn.Module] | None, progress: bool | None,
                 log: Callable[[str], None] | None, fresh: bool = False, datasets_given: bool = False,
                 world: World = SINGLE, allow_overlap: bool = False) -> None:
        from an8flower.eval.models import resolve_model

        self.start = time.perf_counter()
        self.world = world
        if not world.is_main:  # only rank 0 talks and shows bars
            progress, log = False, (lambda msg: None)
        self.config, self.progress = config, progress
        if log is None:
            def log(msg: str) -> None:
                if progress is not False:
                    print(msg, file=sys.stderr, flush=True)
        self.log = log
        self.specs, self.metrics = _resolve(config)
        self.explainers = [spec.row for spec in self.specs]
        self.given = dict(models or {})
        self.model_names = list(dict.fromkeys(list(config.models) if models is None else list(self.given)))
        for name in self.model_names:
            if name not in self.given:
                resolve_model(name)
            if config.model_seeds > 1 and (name in self.given or any(k.split(":")[-1] == name for k in config.weights)):
                raise UsageError(f"model_seeds = {config.model_seeds} needs models the run trains; {name} is given")
        for table, keys in (("per_model", config.per_model), ("weights", config.weights)):
            for key in keys:
                names = {n for m in self.model_names for n in (m, m.split("[", 1)[0])}
                if key not in names and key.partition(":")[2] not in names:
                    self.log(f"warning: the {table} entry {key!r} names no model of this run "
                             f"({', '.join(self.model_names)}): unused")
        self.model_seeds = [config.seed + i for i in range(config.model_seeds)]
        self.any_fit = any(spec.needs_fit for spec in self.specs)
        if not config.imagenet and not datasets_given:
            from an8flower.spec import load_spec

            for variant in config.variants:
                if variant not in config.data:
                    needs_train = self.any_fit or any(m not in self.given and _weights_for(config, variant, m) is None
                                                      for m in self.model_names)
                    check_memory(variant, load_spec(variant).num_classes, config, needs_train)
        if world.is_main:
            os.makedirs(config.out, exist_ok=True)
        world.barrier("the results folder")
        self.device = run_device(config)
        if world.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", world.local_rank)
        self.cache = CellCache(config.out, warn=self.log)
        self.shards = ShardStore(config.out, world) if world.shard and world.is_main else None
        self._scored_split: TensorSplit | None = None  # the group's scored images on the device (_scored)
        self._scored_key: tuple[int, tuple[int, ...]] | None = None
        self.shard_cells: list[str] = []
        self.fresh = fresh
        self.group_configs: dict[tuple, dict[str, Any]] = {}
        self.timer = Timer()
        self.cells: list[dict[str, Any]] = []
        self.group_meta: dict[tuple, dict[str, Any]] = {}
        self.examples: dict[tuple, dict[str, Any]] = {}
        self.datasets_rec: list[dict[str, Any]] = []
        self.models_rec: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.computed = self.cached = self.calls = 0
        self.allow_overlap = allow_overlap

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

    def score_group(self, data: PreparedData, model_name: str, model_seed: int | None = None) -> None:
        """Every explainer x metric cell of one (dataset, model, model seed) group: from the cache or computed.

        ``model_seed`` (default ``config.seed``) seeds a model the run trains; it is the group's
        ``seed`` in the tables (the dataset and explainers keep ``config.seed``).
        """
        from tqdm.auto import tqdm

        from an8flower.eval.models import model_hash
        from an8flower.eval.train import accuracy_warning, predict

        config, device, world = self.config, self.device, self.world
        seed = config.seed if model_seed is None else model_seed
        if model_name in self.given:
            model = self.given[model_name].to(device).eval()
            minfo: dict[str, Any] = {"source": "given", "card": {}, "trained": False}
        else:
            # Rank 0 trains a missing model (and saves it under <out>/models); the others then load it.
            if world.rank == 0 or world.shard:
                model, minfo = _obtain_model(config, data, model_name, device, self.timer, self.progress, self.log,
                                             seed)
            world.barrier(f"the {model_name} model")
            if world.rank != 0 and not world.shard:
                model, minfo = _obtain_model(config, data, model_name, device, self.timer, False, lambda m: None, seed)
        mhash = model_hash(model)
        if world.broadcast(mhash, "the model hash") != mhash:
            raise RuntimeError(f"{world.label()}: the {model_name} model differs from rank 0's")
        mkey = {"hash": mhash, "code": model_code_identity(model)}
        t0 = time.perf_counter()
        test = data.test
        decided = None
        if world.rank == 0 or world.shard:
            pred, labels = predict(model, test, batch_size=max(64, config.batch_size))
            accuracy = float((pred == labels).float().mean())
            keep = torch.arange(len(test)) if config.all_images else (pred == labels).nonzero().flatten()
            limit = config.max_images_for(model_name)
            if limit is not None:
                keep = keep[:limit]
            decided = (accuracy, keep.tolist(), pred[keep].tolist())
        accuracy, kept, predicted = world.broadcast(decided, "the scored images")
        keep = torch.tensor(kept, dtype=torch.long)
        self.timer.add("metrics", time.perf_counter() - t0)
        image_ids = [test.ids[i] for i in keep.tolist()]
        self.models_rec.append({"variant": data.variant, "model": model_name, "seed": seed, "hash": mhash,
                                "accuracy": {config.split: round(accuracy, 6)},
                                **{k: v for k, v in minfo.items() if k != "card"},
                                "card_accuracy": minfo["card"].get("accuracy")})
        self.log(f"{data.variant or data.dataset} / {model_name}: {config.split} accuracy {100 * accuracy:.1f}%, "
                 f"scoring {len(keep)} images on {device}")
        warning = accuracy_warning(accuracy, config.split)
        if warning:
            self.log(f"warning: {data.variant or data.dataset} / {model_name}: {warning}")
        leakage = None
        if model_name not in self.given and data.dataset == "an8flower" and data.seed is not None:
            from an8flower.eval.leakage import check_leakage

            leakage = check_leakage(minfo["card"], data.variant, data.seed,
                                    len(data.classes), image_ids, minfo["source"], self.allow_overlap)
            if leakage:
                self.log(f"warning: {data.variant} / {model_name}: {leakage}")
                self.models_rec[-1]["leakage"] = leakage
        group = (data.dataset, data.variant, model_name, config.split, seed)
        self.group_meta[group] = {"accuracy": accuracy, "n_images": len(keep), "all_images": config.all_images,
                                  "image_size": data.size, "discriminative": data.discriminative,
                                  "warning": warning, "leakage": leakage}
        if len(keep) == 0:
            self.log(f"{data.variant} / {model_name}: no image to score")
            return
        n_ex = min(config.examples, len(keep))
        ex = {"images": test.images[keep[:n_ex]].permute(0, 2, 3, 1).numpy(),
              "masks": test.masks[keep[:n_ex]].numpy() if test.masks is not None else np.zeros((n_ex, data.size, data.size), bool),
              "labels": [data.classes[i] for i in test.labels[keep[:n_ex]].tolist()],
              "predictions": [data.classes[i] for i in predicted[:n_ex]], "heatmaps": {}}
        self.examples[group] = ex
        self.group_configs[group] = {"_config": self._cell_config(data, image_ids, mkey),
                                     "image_ids": image_ids, "n_ex": n_ex, "size": data.size,
                                     "parts": list(data.parts), "examples": {}}
        disc_ids = [data.parts.index(p) for p in data.discriminative]
        counterfactual = self._reliance(data, model, mkey, keep, image_ids, group)
        base_meta = {"dataset": data.dataset, "variant": data.variant, "model": model_name, "split": config.split,
                     "seed": seed}
        bar = tqdm(total=len(self.explainers), desc=f"{data.variant or data.dataset}/{model_name}", unit="explainer",
                   disable=None if self.progress is None else not self.progress)
        before = (self.cached, self.computed)
        for spec in self.specs:
            bar.set_postfix_str(spec.row)
            self._score_explainer(spec, data, model, model_name, mkey, keep, image_ids, n_ex, ex, disc_ids, base_meta,
                                  counterfactual)
            bar.update(1)
        bar.close()
        self.log(f"{data.variant or data.dataset} / {model_name}: {self.cached - before[0]} cells from the cache, "
                 f"{self.computed - before[1]} computed")
        self._scored_split = self._scored_key = None
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def _score_explainer(self, spec: ExplainerSpec, data: PreparedData, model: nn.Module, model_name: str,
                         mkey: dict[str, Any],
                         keep: torch.Tensor, image_ids: list[int], n_ex: int, ex: dict[str, Any], disc_ids: list[int],
                         base_meta: dict[str, Any], counterfactual: dict[str, torch.Tensor] | None = None) -> None:
        """The cells of one explainer in one group: read the cached ones, compute the missing ones.

        Rank 0 reads the cache and tells the others what is missing; every rank explains its batches
        (:func:`~an8flower.eval.distributed.my_batches`); rank 0 merges their accumulators and writes
        the complete cells. A shard stores its accumulators uncombined instead.
        """
        config, cache, timer, world = self.config, self.cache, self.timer, self.world
        name = spec.row
        options = explainer_options(spec, model_name, config, data.dataset)
        base = {**base_meta, "explainer": name, "options": options}
        wanted = [m for m in self.metrics if not (METRICS[m].kind == "parts" and data.test.parts is None)
                  and not (METRICS[m].kind in ("counterfactual", "contrast") and counterfactual is None)]
        # The accumulators that score the cells are the ones their keys are taken from.
        accs = dict(zip(wanted, new_accumulators(wanted, config, len(keep), model_name), strict=True))
        configs = {m: self._cell_config(data, image_ids, mkey, spec, options, acc) for m, acc in accs.items()}
        keys = {m: cell_key(c) for m, c in configs.items()}
        ex_key = cell_key({**self._cell_config(data, image_ids[:n_ex], mkey, spec, options),
                           "metric": {"name": "examples"}})
        decision = None
        if world.is_main:
            t0 = time.perf_counter()
            if self.shards is not None:
                found = {m: True for m, k in keys.items() if not self.fresh and self.shards.has(k)}
                ex_arrays: dict[str, Any] | None = None if self.fresh or not self.shards.has(ex_key) else {}
            else:
                found = {} if self.fresh else {m: cache.get(k) for m, k in keys.items()}
                found = {m: c for m, c in found.items() if c is not None}
                ex_arrays = None if self.fresh else cache.get_arrays(ex_key, {"heatmaps": (n_ex, data.size, data.size)})
                for m in wanted:
                    if m in found:
                        self.cells.append(for_json(found[m]))
                        self.cached += 1
                if ex_arrays is not None:
                    ex["heatmaps"][name] = ex_arrays["heatmaps"]
            timer.add("io", time.perf_counter() - t0)
            decision = ([m for m in wanted if m not in found], ex_arrays is None)
        missing, need_examples = world.broadcast(decision, "the cache lookup")
        if self.shards is not None:
            group = tuple(base_meta[k] for k in ("dataset", "variant", "model", "split", "seed"))
            self.group_configs[group]["examples"][name] = ex_key
            self.shard_cells.extend(keys[m] for m in wanted)
        if not missing and not need_examples:
            return
        # With every cell cached, only the example heatmaps are missing: explain those images only.
        todo = keep if missing else keep[:n_ex]
        scored = self._scored(data, todo)
        todo_accs = [accs[m] for m in missing]
        explainer, error = self._fitted_explainer(spec, options, model, data)
        if error is not None:
            self.log(f"  {name}: failed to build/fit: {error}")
            for acc in todo_accs:
                acc.error = error
            result: dict[str, Any] = {"examples": [], "calls": 0}
        else:
            result = run_explainer(explainer, name, todo_accs, model, data, scored,
                                   my_batches(len(todo), config.batch_size, world), config, self.device, timer,
                                   n_ex, disc_ids, self.log, counterfactual, amp=self._amp(spec))
        shares = world.gather((todo_accs, result["examples"], result["calls"]), f"the scores of {name}")
        if shares is None:  # not rank 0: rank 0 writes
            return
        if self.shards is not None:
            self.shards.put_explainer(keys, configs, base, todo_accs, ex_key, result["examples"], n_ex)
            self.calls += result["calls"]
            self.computed += len(todo_accs)
            return
        merged = [merge_accumulators([share[0][i] for share in shares]) for i in range(len(todo_accs))]
        examples = sorted((p, h) for share in shares for p, h in share[1])
        self.calls += sum(share[2] for share in shares)
        if examples and len(examples) == n_ex and (not merged or any(a.error is None for a in merged)):
            heatmaps = np.stack([h for _, h in examples])
            ex["heatmaps"][name] = heatmaps
            t0 = time.perf_counter()
            cache.put_arrays(ex_key, heatmaps=heatmaps)
            timer.add("io", time.perf_counter() - t0)
        for acc in merged:
            cell = finish_cell(acc, base, image_ids, data.parts)
            t0 = time.perf_counter()
            if cell["error"] is None:
                cache.put(keys[acc.spec.name], configs[acc.spec.name], cell)
            else:
                self.errors.append({"variant": data.variant, "model": model_name, "explainer": name,
                                    "metric": acc.spec.name, "error": cell["error"]})
            timer.add("io", time.perf_counter() - t0)
            self.cells.append(for_json(cell))
            self.computed += 1

    def _scored(self, data: PreparedData, keep: torch.Tensor) -> TensorSplit:
        """The scored images ``keep`` of ``data.test`` on the run's device, made once per group."""
        key = (id(data.test), tuple(keep.tolist()))
        if self._scored_split is None or self._scored_key != key:
            device = self.device if self.device.type != "cpu" else None
            self._scored_split, self._scored_key = data.test.select(keep, device), key
        return self._scored_split

    def _fitted_explainer(self, spec: ExplainerSpec, options: dict[str, Any], model: nn.Module,
                          data: PreparedData) -> tuple[Any, str | None]:
        """The explainer, built and (rank 0 only) fitted; its fitted state broadcast to the other ranks.

        Returns ``(explainer, None)``, or ``(None, error text)`` when building or fitting failed.
        """
        world = self.world
        explainer, error, state = None, None, None
        if world.rank == 0 or world.shard:
            try:
                explainer = build_and_fit(spec, options, model, data, self.config, self.timer, self.progress)
                state = explainer_state(explainer) if world.distributed else None
            except Exception as exc:  # noqa: BLE001 - any failure of an explainer is recorded, the run goes on
                error = error_text(exc)
        error, state = world.broadcast((error, state), f"the fitted {spec.row}")
        if error is None and explainer is None:
            try:
                explainer = load_explainer_state(spec.build(options), state)
            except Exception as exc:  # noqa: BLE001
                error = error_text(exc)
        return explainer, error

    def _cell_config(self, data: PreparedData, image_ids: Sequence[int], model: dict[str, Any],
                     spec: ExplainerSpec | None = None, options: dict[str, Any] | None = None,
                     acc: Accumulator | None = None) -> dict[str, Any]:
        """The complete configuration of a cell (:func:`an8flower.eval.cache.cell_config`).

        ``model``: ``{"hash", "code"}``; the explainer part is ``spec.key(options)``, the metric part
        ``acc.key()`` (the accumulator that scores the cell); without them, the group's part alone.
        """
        config = self.config
        return cell_config(dataset=data.hash, split=config.split, image_ids=image_ids, model=model,
                           explainer={} if spec is None else spec.key(options or {}),
                           metric={} if acc is None else acc.key(), seed=config.seed, batch_size=config.batch_size,
                           device=self.device.type, amp=spec is not None and self._amp(spec))

    def _amp(self, spec: ExplainerSpec) -> bool:
        """Whether ``spec``'s explainer runs under mixed precision: the one decision both its
        scoring and its cells' keys take."""
        return bool(self.config.amp) and spec.amp_safe

    def _cached_extras(self) -> int:
        """Add the cached cells of this run's groups for explainer/metric pairs this run did not ask for.

        So that a narrower rerun (fewer explainers or metrics) reports everything the folder holds
        for this configuration. Where several cached cells share a group, explainer and metric (an
        explainer rerun with other options), the latest one is shown. Returns how many were added.
        """
        groups = {group_part(c["_config"]): key for key, c in self.group_configs.items()}
        have = {(c["dataset"], c["variant"], c["model"], c["explainer"], c["metric"]) for c in self.cells}
        extra: dict[tuple, dict[str, Any]] = {}
        for cell in self.cache.cells():
            cfg = cell["_config"]
            if group_part(cfg) not in groups or not _known_metric(cfg.get("metric", {}).get("name")):
                continue
            ident = (cell["dataset"], cell["variant"], cell["model"], cell["explainer"], cell["metric"])
            if ident in have:
                continue
            if ident not in extra or cell["_written"] > extra[ident]["_written"]:
                extra[ident] = cell
        for cell in extra.values():
            self.cells.append(for_json(cell))
            group = groups[group_part(cell["_config"])]
            info, ex = self.group_configs[group], self.examples.get(group)
            if ex is None or cell["explainer"] in ex["heatmaps"]:
                continue
            ids = info["image_ids"][: info["n_ex"]]
            ex_config = {**cell["_config"], "images": cell_config(
                dataset="", split="", image_ids=ids, model={}, explainer={}, metric={}, seed=0, batch_size=1,
                device="")["images"], "n_images": len(ids), "metric": {"name": "examples"}}
            arrays = self.cache.get_arrays(cell_key(ex_config), {"heatmaps": (len(ids), info["size"], info["size"])})
            if arrays is not None:
                ex["heatmaps"][cell["explainer"]] = arrays["heatmaps"]
        return len(extra)

    def _reliance(self, data: PreparedData, model: nn.Module, mkey: dict[str, Any], keep: torch.Tensor,
                  image_ids: list[int],
                  group: tuple) -> dict[str, torch.Tensor] | None:
        """Model reliance on the scored images (:mod:`an8flower.eval.reliance`), cached like a cell.

        Only for an8Flower data with its spec, seed and part maps (ILSVRC12 and user data: None).
        Its summary goes to the group's report (``reliance.csv``, the table and plot); the return
        value holds the inputs of the model-aware metrics, one row per kept image. Rank 0 measures
        it (or reads it from the cache) and broadcasts it to the other ranks.
        """
        from an8flower.eval.reliance import Reliance, measure_reliance
        from an8flower.layout import code_sha256

        if data.spec is None or data.seed is None or data.test.parts is None:
            return None
        t0 = time.perf_counter()
        arrays = None
        if self.world.rank == 0 or self.world.shard:
            key = cell_key({**self._cell_config(data, image_ids, mkey),
                            "metric": {"name": "reliance", "renderer": code_sha256()}})
            shapes = Reliance.array_shapes(len(image_ids), len(data.spec.parts), data.spec.num_classes,
                                           *data.test.images.shape[-2:])
            arrays = None if self.fresh else self.cache.get_arrays(key, shapes, finite=False)
            if arrays is not None:
                try:
                    Reliance.from_arrays(arrays)
                except Exception as exc:  # noqa: BLE001 - a damaged file is recomputed
                    self.cache._damaged(self.cache.path(key, "npz"), f"not a reliance record: {exc}")
                    arrays = None
            if arrays is None:
                test = data.test
                rel = measure_reliance(model, data.spec, data.seed, image_ids, labels=test.labels[keep].tolist(),
                                       reference=test.images[keep], batch_size=max(64, self.config.batch_size),
                                       workers=max(1, self.config.workers), progress=self.progress)
                arrays = rel.to_arrays()
                if not self.world.shard:
                    self.cache.put_arrays(key, **arrays)
        arrays = self.world.broadcast(arrays, "the model's reliance")
        rel = Reliance.from_arrays(arrays)
        self.timer.add("metrics", time.perf_counter() - t0, metric="reliance")
        self.group_meta[group]["reliance"] = rel.summary()
        return {"changed": torch.from_numpy(rel.changed), "reliance": torch.from_numpy(rel.per_image()),
                "runner_up": torch.from_numpy(rel.runner_up)}

    def finish_shard(self, command: Sequence[str] | None) -> RunSummary:
        """Write the shard's manifest (``shard.json``): what ``an8flower leaderboard merge`` needs."""
        from an8flower.eval.shards import fingerprint

        config, world = self.config, self.world
        groups = []
        for key, info in self.group_configs.items():
            ex = self.examples[key]
            groups.append({"meta_key": list(key), "meta": self.group_meta[key], "config": info["_config"],
                           "image_ids": info["image_ids"], "n_ex": info["n_ex"], "size": info["size"],
                           "parts": info["parts"], "examples": info["examples"],
                           "images": ex["images"], "masks": ex["masks"]})
        manifest = {"shard": [world.rank + 1, world.size], "fingerprint": fingerprint(config.to_dict(), world.size),
                    "config": config.to_dict(), "explainers": self.explainers, "metrics": self.metrics,
                    "datasets": self.datasets_rec, "models": self.models_rec, "cells": sorted(set(self.shard_cells)),
                    "command": list(command) if command is not None else list(sys.argv)}
        assert self.shards is not None  # a shard run (world.shard) always has its store
        self.shards.finish(_jsonable(manifest), groups)
        self.log(f"{config.out}: shard {world.rank + 1}/{world.size} done ({self.computed} cells computed); merge the "
                 f"{world.size} shard folders with `an8flower leaderboard merge DIR... --out OUT`")
        return RunSummary(config.out, [], "", _jsonable(manifest), self.computed, self.cached, self.calls)

    def finish(self, command: Sequence[str] | None, imagenet: bool) -> RunSummary:
        """Write the report and ``run.json``; the summary (an empty one on ranks other than 0).

        Cells of earlier runs (:meth:`_cached_extras`) may belong to explainers this run did not
        resolve (a user's explainer an earlier run imported): ``run.json`` records them with the options their
        cells hold, without resolving their names.
        """
        from an8flower.eval.train import software_versions

        config, timer, device = self.config, self.timer, self.device
        if not self.world.is_main:
            return RunSummary(config.out, [], "", {"rank": self.world.rank, "world_size": self.world.size},
                              self.computed, self.cached, self.calls)
        t0 = time.perf_counter()
        added = self._cached_extras()
        timer.add("io", time.perf_counter() - t0)
        if added:
            self.log(f"the report also shows {added} cells of other explainers or metrics cached in {config.out} "
                     "for this configuration (use another --out for a report of this run alone)")
        metrics = self.metrics + [m for m in METRICS if m not in self.metrics and any(c["metric"] == m for c in self.cells)]
        explainers = self.explainers + sorted({c["explainer"] for c in self.cells} - set(self.explainers))
        order = {m: i for i, m in enumerate(metrics)}
        expl_order = {e: i for i, e in enumerate(explainers)}
        cells = self.cells
        cells.sort(key=lambda c: (c["dataset"], c["variant"], c["model"], expl_order.get(c["explainer"], 1 << 30),
                                  order.get(c["metric"], 1 << 30)))
        t0 = time.perf_counter()
        metric_info = {m: {"label": METRICS[m].label, "higher_is_better": METRICS[m].higher_is_better,
                           "kind": METRICS[m].kind, "options": metric_options(m, config),
                           "description": METRICS[m].description} for m in metrics}
        title = "an8flower leaderboard" + (" (--quick)" if config.quick else "")
        previous = _previous_files(config.out)
        report = write_report(config.out, cells, metric_info, self.group_meta, self.examples, title=title,
                              plots=config.plots)
        _remove_stale(config.out, previous, set(report["files"]))
        timer.add("io", time.perf_counter() - t0)
        wall = time.perf_counter() - self.start
        record = {
            "command": list(command) if command is not None else list(sys.argv),
            "config": config.to_dict(),
            "versions": {**software_versions(), **{lib: distribution_version(lib) for lib in
                                                    ("captum", "zennit", "grad-cam", "quantus", "numpy")}},
            "platform": {"machine": platform.machine(), "system": platform.system(), "processor": platform.processor(),
                         "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
                         "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
            "seeds": {"dataset": config.seed, "model": config.seed, "explainers": config.seed,
                      **({"models": self.model_seeds} if len(self.model_seeds) > 1 else {})},
            "datasets": self.datasets_rec,
            "models": self.models_rec,
            "explainers": self._explainer_record(explainers, imagenet),
            "metrics": metric_info,
            "processes": {"world_size": self.world.size, "backend": _backend(self.world)},
            "cells": {"computed": self.computed, "cached": self.cached, "from_earlier_runs": added,
                      "errors": len(self.errors), "damaged_cache_files": len(self.cache.damaged)},
            "errors": self.errors,
            "timings": {**timer.to_dict(), "wall_seconds": round(wall, 3)},
            "files": report["files"] + ["run.json"],
        }
        record = portable_record(record, config.out)
        atomic_write(os.path.join(config.out, "run.json"), json.dumps(_jsonable(record), indent=1, allow_nan=False) + "\n")
        return RunSummary(config.out, cells, report["markdown"], record, self.computed, self.cached, self.calls)


    def _explainer_record(self, rows: Sequence[str], imagenet: bool) -> dict[str, dict[str, Any]]:
        """``run.json``'s ``explainers``: per row, its options and kind; rows of earlier runs' cells
        (not resolved by this run) with the options their cells hold."""
        specs = {spec.row: spec for spec in self.specs}
        earlier = {c["explainer"]: c["options"] for c in self.cells if c["explainer"] not in specs}
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            spec = specs.get(row)
            if spec is None:
                out[row] = {"options": earlier.get(row, {}), "from_earlier_run": True}
            else:
                out[row] = {"options": explainer_options(spec, self.model_names[0], self.config,
                                                         "ilsvrc12" if imagenet else "an8flower"),
                            "requires_fit": spec.needs_fit, "reference": spec.reference}
        return out


def _known_metric(name: Any) -> bool:
    """Whether ``name`` is a metric this installation scores (a cached ``quantus:`` cell of an
    installation with Quantus is not one where Quantus is missing)."""
    try:
        return isinstance(name, str) and name in METRICS
    except UsageError:
        return False


def _backend(world: World) -> str | None:
    if not world.distributed:
        return None
    import torch.distributed as dist

    return str(dist.get_backend())


#: File names of the plots a report writes (see :func:`an8flower.eval.report.write_report`).
_PLOT_PREFIXES: tuple[str, ...] = ("iou_curves_", "part_attribution_", "examples_", "reliance_")


def _previous_files(out: str) -> list[str]:
    """The plot files the previous run in ``out`` wrote, from its ``run.json`` (none if unreadable)."""
    try:
        with open(os.path.join(out, "run.json"), encoding="utf-8") as fh:
            files = json.load(fh).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str) and os.path.basename(f) == f and f.endswith(".png")
            and f.startswith(_PLOT_PREFIXES)]


def _remove_stale(out: str, previous: Sequence[str], written: set[str]) -> None:
    """Remove the plots of the previous report that this report did not rewrite."""
    for name in previous:
        if name not in written:
            try:
                os.unlink(os.path.join(out, name))
            except FileNotFoundError:
                pass


@functools.cache
def _training_code_sha256() -> str:
    """SHA-256 of the training and model-building code: part of a trained model's cache name."""
    from an8flower.eval import models, train

    digest = hashlib.sha256()
    for module in (models, train):
        with open(module.__file__, "rb") as fh:
            digest.update(fh.read())
    return digest.hexdigest()


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
