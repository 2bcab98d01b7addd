"""The paper's experiments reproduced: ``an8flower reproduce --out DIR`` writes ``DIR/reproduction.md``.

Oramas, Wang and Tuytelaars (ICLR 2019) evaluate VEBI on an8Flower by the IoU of binarised
heatmaps with the ground-truth masks over a range of thresholds, against upsampled activations,
deconvnet, guided backprop and Grad-CAM, and ablate its stride fix. This module runs that protocol
**on the leaderboard runner** (:func:`an8flower.eval.runner.run_leaderboard`): the ablations are
rows of the same board, named explainer variants (``vebi[k=1]``, see
:func:`an8flower.baselines.spec.split_explainer_name`), so every row is cached, resumable and
meta-evaluated like any other. Then, on the classifiers the run trained:

1. **The main table** (:data:`EXPLAINERS` x :data:`METRICS`), per variant and model: IoU-AUC, the
   IoU curve at a few thresholds, pointing game, energy pointing game and pixel AUC, VEBI's
   ablations as rows (:data:`VEBI_ROWS`): stride fix off; the released code's layer set (every
   layer output, convolutions included: ``layers="released"``) against our default (rectified
   and pooled outputs); k = 1, 3, 5; mu = 5 (the paper's an8Flower value) and 10; lasso on
   ground-truth or predicted labels.
2. **Feature removal** (:mod:`an8flower.eval.feature_removal`): per class, VEBI's relevant
   channels zeroed, against as many random channels of the same layers and as many of the class's
   most active channels; drops of the class's accuracy and probability, mean and 95% CI over
   classes.
3. **The stride-fix artefact** (:mod:`an8flower.eval.spectral`): the share of each heatmap's
   spectral energy at the stride frequencies, with and without the fix, for VEBI and deconvnet.
   Only models with strided convolutions have the artefact (the fix changes nothing else):
   ResNet18 (total convolution stride 16), not the small CNN (stride-1 convolutions, max-pooling).
4. **Interpretation sheets** (:func:`an8flower.eval.interpret.interpretation_sheet`) for the first
   ``sheets`` classes.
5. With ``--mnist ROOT``: LeNet trained on a local MNIST (IDX files), VEBI fitted (mu = 10),
   sheets, and the mask-free metrics (deletion and insertion from black, the MNIST background,
   in 28 steps of 28 pixels, RISE's convention of H pixels per step; the randomisation test).
   With ``--imagenet ROOT --imagenet-weights FILE``: the pointing games on the ILSVRC12 validation boxes,
   VEBI fitted on ``imagenet_train_per_class`` training images per class. Nothing is downloaded.

Defaults follow the paper at 112 px: both variants, 1,000 images per class (700 / 100 / 200),
300 scored test images per group, the small CNN (this package's stand-in for the paper's
VGG-type networks: the model trained from scratch on a CPU in minutes) and ResNet18 (strided
convolutions: the stride-fix table). Every cut from these defaults is listed in the note, and
every part's wall time is recorded. ``--tiny`` is the test preset (seconds).

Outputs in ``DIR``: ``reproduction.md``, ``reproduction.json`` (every number), the figures it
shows in ``reproduction_files/``, and the leaderboard folders ``board/`` (and ``mnist/``,
``imagenet/``) with their cache, models, ``leaderboard.md`` and ``run.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from an8flower.errors import UsageError
from an8flower.eval.config import TRAIN_DEFAULTS

__all__ = [
    "check_paths",
    "PAPER_BASELINES",
    "VEBI_ROWS",
    "EXPLAINERS",
    "METRICS",
    "IOU_POINTS",
    "ReproSettings",
    "TINY",
    "run_reproduction",
    "reproduction_markdown",
]

#: The baselines the paper compares VEBI with.
PAPER_BASELINES: tuple[str, ...] = ("upsampled_activation", "deconvnet", "guided_backprop", "gradcam")
#: VEBI and its ablations, as rows of the board: row name -> what it changes.
VEBI_ROWS: dict[str, str] = {
    "vebi": "VEBI: mu = 5, k = 3, stride fix, rectified and pooled layer outputs, ground-truth labels",
    "vebi[stride_fix=false]": "without the stride fix",
    "vebi[layers=released]": "the released code's layers: every layer output, convolutions included",
    "vebi[k=1]": "k = 1 feature per explanation",
    "vebi[k=5]": "k = 5 features per explanation",
    "vebi[mu=10]": "mu = 10 (the code's default, used off an8Flower)",
    "vebi[labels=predicted]": "the lasso fitted on predicted labels",
}
#: The rows of the main table, in order: the ceiling, VEBI and its ablations, the baselines, chance.
EXPLAINERS: tuple[str, ...] = ("oracle",) + tuple(VEBI_ROWS) + PAPER_BASELINES + ("random", "centre")
#: The columns of the main table (IoU-AUC is the paper's measure).
METRICS: tuple[str, ...] = ("iou_auc", "pointing_game", "energy_pointing_game", "pixel_auc")
#: Thresholds at which the main table shows the IoU curve.
IOU_POINTS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
#: The mask-free metrics scored on MNIST.
MNIST_METRICS: tuple[str, ...] = ("deletion_auc", "insertion_auc", "randomisation")
FILES = "reproduction_files"


@dataclass
class ReproSettings:
    """What ``an8flower reproduce`` runs. The defaults are the paper's protocol at 112 px.

    Attributes:
        out: the output folder. variants, models: an8Flower variants and classifiers.
        size: image side. per_class: images per class rendered (split 70/10/20). max_images:
            scored test images per (variant, model). seed: dataset, model and explainer seed.
        model_seeds: classifiers per model (seeds ``seed, seed + 1, ...``; the board's ranks across
            seeds; feature removal, stride table and sheets use the first).
        train: :class:`~an8flower.eval.config.TrainConfig` fields of the classifiers.
        batch_size: images per explainer call. draws: random draws in feature removal.
        sheets: classes with interpretation sheets per (variant, model). top_n: training images
            averaged per feature in a sheet. spectral_images: test images of the stride table.
        mnist, mnist_train, mnist_test: a local MNIST root; its first training images (the last
            10% of them as validation) and test images used.
        imagenet, imagenet_weights, imagenet_model, imagenet_train_per_class, imagenet_images: an
            ILSVRC12 root, the local weights of ``imagenet_model``, training images per class for
            VEBI's fit, scored validation images.
        explainer_options: per explainer, options for every board (and VEBI's extra fits),
            as the leaderboard's ``explainer_options``; VEBI's ablation rows add theirs on top.
        device: ``cpu``, ``cuda``, ... (None: CUDA when available). plots: the board's PNGs.
        tiny: the test preset (recorded).
    """

    out: str = "an8flower-reproduction"
    variants: list[str] = field(default_factory=lambda: ["single-6c", "double-12c"])
    models: list[str] = field(default_factory=lambda: ["small-cnn", "resnet18"])
    size: int = 112
    per_class: int = 1000
    max_images: int = 300
    seed: int = 0
    model_seeds: int = 1
    train: dict[str, Any] = field(default_factory=lambda: {**TRAIN_DEFAULTS, "epochs": 40})
    batch_size: int = 32
    draws: int = 5
    sheets: int = 3
    top_n: int = 10
    spectral_images: int = 64
    mnist: str | None = None
    mnist_train: int = 6000
    mnist_test: int = 1000
    imagenet: str | None = None
    imagenet_weights: str | None = None
    imagenet_model: str = "vgg16"
    imagenet_train_per_class: int = 5
    imagenet_images: int = 300
    explainer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str | None = None
    plots: bool = True
    tiny: bool = False

    def __post_init__(self) -> None:
        for name in ("size", "per_class", "max_images", "model_seeds", "batch_size", "draws", "top_n",
                     "spectral_images", "mnist_train", "mnist_test", "imagenet_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("sheets", "imagenet_train_per_class", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a non-negative integer, got {v!r}")
        if bool(self.imagenet) != bool(self.imagenet_weights):
            raise UsageError("--imagenet ROOT and --imagenet-weights FILE go together (local pretrained weights; "
                             "nothing is downloaded)")
        if not self.variants or not self.models:
            raise UsageError("reproduce needs at least one variant and one model")

    def board_config(self):
        """The :class:`~an8flower.eval.config.RunConfig` of the main board (``<out>/board``)."""
        from an8flower.eval.config import RunConfig

        return RunConfig(out=os.path.join(self.out, "board"), variants=list(self.variants), models=list(self.models),
                         explainers=list(EXPLAINERS), metrics=list(METRICS), size=self.size, per_class=self.per_class,
                         explainer_options={k: dict(v) for k, v in self.explainer_options.items()},
                         seed=self.seed, model_seeds=self.model_seeds, max_images=self.max_images,
                         batch_size=self.batch_size, device=self.device, train=dict(self.train), plots=self.plots)


#: The ``--tiny`` preset: one variant at 64 px, 10 images per class, 2 epochs; seconds on a CPU. With
#: ``--imagenet`` it also scores every validation image, correctly classified or not (the tests'
#: weights are untrained), at the ``size`` given instead of 224. VEBI's lasso stops at a relative
#: duality gap of 1e-3 (instead of 1e-6): fits on a handful of images can take thousands of
#: iterations to reach 1e-6.
TINY: dict[str, Any] = {
    "variants": ["single-6c"], "size": 64, "per_class": 10, "max_images": 6, "batch_size": 16, "draws": 2,
    "sheets": 1, "top_n": 2, "spectral_images": 4, "mnist_train": 200, "mnist_test": 40, "imagenet_images": 6,
    "imagenet_train_per_class": 1, "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "patience": 2},
    "explainer_options": {"vebi": {"lasso_tol": 1e-3}},
}


# ------------------------------------------------------------------------------------- run


class _Parts:
    """Wall time per part of the reproduction."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.seconds: dict[str, float] = {}
        self.log = log

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Log ``name`` and add the wall time of the ``with`` body to ``seconds[name]``."""
        self.log(f"reproduce: {name} ...")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _loader(split: Any, batch_size: int) -> Any:
    from torch.utils.data import DataLoader

    from an8flower.eval.train import collate_images_labels

    return DataLoader(split, batch_size=batch_size, shuffle=False, collate_fn=collate_images_labels)


def _trained_model(summary: Any, variant: str, model_name: str, seed: int, device: Any) -> tuple[Any, dict]:
    """The classifier the board in ``summary`` trained (its ``run.json`` names it relative to the folder)."""
    from an8flower.eval.models import load_checkpoint

    for m in summary.record["models"]:
        if m["variant"] == variant and m["model"] == model_name and m.get("seed", seed) == seed:
            model, card = load_checkpoint(os.path.join(summary.out, m["source"]), name=model_name)
            return model.to(device).eval(), m
    raise UsageError(f"the board has no trained {model_name} for {variant or 'this dataset'}")  # pragma: no cover


def _fit_vebi(model: Any, data: Any, config: Any, model_name: str, settings: ReproSettings, progress: bool | None) -> Any:
    """VEBI with the board's ``vebi`` options on this dataset, fitted on its training split."""
    from an8flower.baselines import VEBI
    from an8flower.eval.scoring import explainer_options

    vebi = VEBI(**explainer_options("vebi", model_name, config, data.dataset), top_n=settings.top_n,
                batch_size=settings.batch_size)
    return vebi.fit(model, _loader(data.train, settings.batch_size), progress=progress)


def _scored_indices(model: Any, split: Any, n: int, batch_size: int) -> Any:
    """The first ``n`` correctly classified images of ``split`` (the runner's choice), as an index tensor."""
    from an8flower.eval.train import predict

    pred, labels = predict(model, split, batch_size=max(64, batch_size))
    return (pred == labels).nonzero().flatten()[:n]


def _stride_table(model: Any, vebi: Any, data: Any, settings: ReproSettings, files: str, slug: str) -> dict[str, Any]:
    """The stride-fix rows of one model: shares with and without the fix, for VEBI and deconvnet."""
    import numpy as np
    import torch

    from an8flower.baselines import build_explainer
    from an8flower.eval.spectral import chance_share, conv_stride, stride_energy_share
    from an8flower.eval.stats import mean_ci

    device = next(model.parameters()).device
    stride = conv_stride(model, data.test.float_images(slice(0, 1)).to(device))
    out: dict[str, Any] = {"stride": stride, "rows": {}, "tol": 1}
    if stride == 1:
        out["reason"] = "no strided convolution: the stride fix changes nothing (max-pooling back-propagates through its switches)"
        return out
    idx = _scored_indices(model, data.test, settings.spectral_images, settings.batch_size)
    size = data.test.images.shape[-2:]
    out.update(n_images=int(idx.numel()), chance=chance_share(int(size[0]), int(size[1]), stride))
    maps: dict[str, dict[bool, list[Any]]] = {}
    fixed = vebi.stride_fix
    try:
        for start in range(0, int(idx.numel()), settings.batch_size):
            sl = idx[start : start + settings.batch_size]
            images, targets = data.test.float_images(sl).to(device), data.test.labels[sl].to(device)
            for fix in (True, False):
                vebi.stride_fix = fix
                for name, expl in (("vebi", vebi), ("deconvnet", build_explainer("deconvnet", stride_fix=fix))):
                    maps.setdefault(name, {}).setdefault(fix, []).append(expl(model, images, targets).detach().cpu())
    finally:
        vebi.stride_fix = fixed
    example: dict[str, Any] = {}
    for name, by_fix in maps.items():
        with_fix, without = torch.cat(by_fix[True]), torch.cat(by_fix[False])
        s_with, s_without = stride_energy_share(with_fix, stride).numpy(), stride_energy_share(without, stride).numpy()
        row: dict[str, Any] = {}
        for key, v in (("with_fix", s_with), ("without_fix", s_without), ("difference", s_without - s_with)):
            m, h, n = mean_ci(v)
            row[key] = [m, h]
        row["n"] = int(np.isfinite(s_without - s_with).sum())
        out["rows"][name] = row
        example[f"{name}, no fix"] = without[:3].numpy()
        example[f"{name}, stride fix"] = with_fix[:3].numpy()
    if idx.numel():
        name = f"stride_fix_{slug}.png"
        images = data.test.images[idx[:3]].permute(0, 2, 3, 1).numpy()
        _plot_maps(os.path.join(files, name), images, example)
        out["figure"] = name
    return out


def _plot_maps(path: str, images: Any, maps: Mapping[str, Any]) -> None:
    """A grid: one row per image, its picture then each named map (jet, min-max scaled, no overlay)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from an8flower.eval.figures import save_figure

    names = list(maps)
    k = images.shape[0]
    fig, axes = plt.subplots(k, 1 + len(names), figsize=(1.5 * (1 + len(names)), 1.55 * k + 0.3), dpi=90, squeeze=False)
    for i in range(k):
        for j in range(1 + len(names)):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.imshow(images[i])
            else:
                h = np.asarray(maps[names[j - 1]][i], dtype=np.float32)
                lo, hi = float(h.min()), float(h.max())
                ax.imshow((h - lo) / (hi - lo) if hi > lo else np.zeros_like(h), cmap="jet", vmin=0, vmax=1)
            if i == 0:
                ax.set_title("image" if j == 0 else names[j - 1], fontsize=7)
    fig.tight_layout(pad=0.2)
    save_figure(fig, path)


def _sheets(model: Any, vebi: Any, data: Any, settings: ReproSettings, files: str, slug: str,
            progress: bool | None) -> list[dict[str, Any]]:
    """Interpretation sheets of the first ``settings.sheets`` classes (only their features are visualised)."""
    from an8flower.atomic import atomic_write
    from an8flower.baselines import VEBI
    from an8flower.eval.interpret import interpretation_sheet, png_bytes

    classes = list(range(min(settings.sheets, vebi.num_classes)))
    if not classes:
        return []
    keep = vebi.weights_.clone()
    keep[:, [c for c in range(vebi.num_classes) if c not in classes]] = 0
    sub = VEBI(mu=vebi.mu, k=vebi.k, labels=vebi.labels, stride_fix=vebi.stride_fix, top_n=vebi.top_n,
               batch_size=vebi.batch_size).set_weights(vebi.layers_, vebi.layer_sizes_, keep)
    per_class = sub.interpret(model, _loader(data.train, settings.batch_size), progress=progress)
    out = []
    for c in classes:
        name = f"sheet_{slug}_class{c:02d}.png"
        title = f"class {c} ({data.classes[c]})" if c < len(data.classes) else f"class {c}"
        atomic_write(os.path.join(files, name), png_bytes(interpretation_sheet(title, per_class[c])))
        out.append({"class": c, "name": data.classes[c] if c < len(data.classes) else str(c), "figure": name,
                    "features": [{"name": f.name, "weight": f.weight} for f in per_class[c]]})
    return out


def _curve_points(cells: Sequence[Mapping[str, Any]]) -> dict[tuple, dict[str, list[float | None]]]:
    """Per (variant, model, seed) and explainer, the mean IoU at :data:`IOU_POINTS` (nearest grid threshold)."""
    out: dict[tuple, dict[str, list[float | None]]] = {}
    for c in cells:
        extra = c.get("extra") or {}
        if c["metric"] != "iou_auc" or c.get("error") or not extra.get("curve"):
            continue
        thr = extra["thresholds"]
        pick = [min(range(len(thr)), key=lambda i: abs(thr[i] - t)) for t in IOU_POINTS]
        out.setdefault((c["variant"], c["model"], c["seed"]), {})[c["explainer"]] = [extra["curve"][i] for i in pick]
    return out


def _board_summary(out_dir: str, summary: Any) -> dict[str, Any]:
    with open(os.path.join(out_dir, "leaderboard.json"), encoding="utf-8") as fh:
        board = json.load(fh)
    curves = _curve_points(summary.cells)
    for t in board["tables"]:
        t["iou_points"] = curves.get((t["variant"], t["model"], t["seed"]), {})
    return {"folder": os.path.basename(out_dir), "tables": board["tables"], "metrics": board["metrics"],
            "model_seeds": board.get("model_seeds", []), "timings": summary.record["timings"],
            "models": summary.record["models"], "errors": summary.record["errors"]}


def _copy_figures(board_dir: str, files: str, tables: Sequence[Mapping[str, Any]], seed: int) -> dict[str, str]:
    """Copy the board's IoU-curve PNGs of model seed ``seed`` into ``files``; ``variant:model`` -> file name."""
    from an8flower.eval.markdown import slug

    copied = {}
    for t in tables:
        name = f"iou_curves_{slug(t['dataset'], t['variant'], t['model'], t['split'])}.png"
        if t["seed"] == seed and os.path.isfile(os.path.join(board_dir, name)):
            shutil.copyfile(os.path.join(board_dir, name), os.path.join(files, name))
            copied[f"{t['variant']}:{t['model']}"] = name
    return copied


def _mnist_data(settings: ReproSettings, progress: bool | None) -> Any:
    """MNIST as a PreparedData: the first ``mnist_train`` training images (last 10% as validation), test images."""
    import torch

    from an8flower.datasets.mnist import MNIST
    from an8flower.eval.data import PreparedData, materialise

    assert settings.mnist is not None  # called only when --mnist is given
    train_ds, test_ds = MNIST(settings.mnist, "train"), MNIST(settings.mnist, "test")
    n_train, n_test = min(settings.mnist_train, len(train_ds)), min(settings.mnist_test, len(test_ds))
    n_val = max(1, n_train // 10)
    train = materialise(torch.utils.data.Subset(train_ds, range(n_train - n_val)), 0, "MNIST train", progress)
    val = materialise(torch.utils.data.Subset(train_ds, range(n_train - n_val, n_train)), 0, "MNIST val", progress)
    test = materialise(torch.utils.data.Subset(test_ds, range(n_test)), 0, "MNIST test", progress)
    d = hashlib.sha256()
    for name, split in (("train", train), ("val", val), ("test", test)):
        d.update(name.encode() + split.sha256().encode())
    return PreparedData(dataset="mnist", variant="", source=os.fspath(settings.mnist), hash=d.hexdigest(),
                        classes=list(MNIST.classes), parts=[], discriminative=[], train=train, val=val, test=test,
                        size=28, info={"train_images": len(train), "val_images": len(val), "test_images": len(test)})


def _mnist_part(settings: ReproSettings, files: str, progress: bool | None, log: Callable[[str], None]) -> dict[str, Any]:
    from an8flower.eval.config import RunConfig
    from an8flower.eval.runner import run_leaderboard

    data = _mnist_data(settings, progress)
    out_dir = os.path.join(settings.out, "mnist")
    config = RunConfig(out=out_dir, variants=["mnist"], models=["lenet"], size=28, seed=settings.seed,
                       explainers=["vebi"] + list(PAPER_BASELINES) + ["random", "centre"], metrics=list(MNIST_METRICS),
                       explainer_options={k: dict(v) for k, v in settings.explainer_options.items()},
                       metric_options={m: {"baseline": "zeros", "steps": 28} for m in ("deletion_auc", "insertion_auc")},
                       max_images=settings.max_images, model_metric_images=settings.max_images,
                       batch_size=settings.batch_size, device=settings.device, plots=False,
                       train={**settings.train, "hflip": False})
    summary = run_leaderboard(config, datasets=[data], progress=progress, log=log)
    board = _board_summary(out_dir, summary)
    model, info = _trained_model(summary, "", "lenet", settings.seed, _torch_device(config))
    vebi = _fit_vebi(model, data, config, "lenet", settings, progress)
    return {"board": board, "accuracy": info["accuracy"], "images": data.info,
            "sheets": _sheets(model, vebi, data, settings, files, "mnist_lenet", progress),
            "relevant_per_class": vebi.fit_info_.get("relevant_per_class")}


def _imagenet_part(settings: ReproSettings, progress: bool | None, log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    from an8flower.datasets.imagenet import ILSVRC12
    from an8flower.eval.config import RunConfig
    from an8flower.eval.data import imagenet_transforms, materialise, prepare_imagenet
    from an8flower.eval.runner import IMAGENET_METRICS, run_leaderboard

    assert settings.imagenet is not None  # called only when --imagenet is given
    out_dir = os.path.join(settings.out, "imagenet")
    size = 224 if not settings.tiny else settings.size
    config = RunConfig(out=out_dir, imagenet=settings.imagenet, variants=[], models=[settings.imagenet_model],
                       weights={settings.imagenet_model: settings.imagenet_weights}, size=size, seed=settings.seed,
                       explainers=list(EXPLAINERS[:2]) + list(PAPER_BASELINES) + ["random", "centre"],
                       metrics=list(IMAGENET_METRICS), max_images=settings.imagenet_images, batch_size=settings.batch_size,
                       explainer_options={k: dict(v) for k, v in settings.explainer_options.items()},
                       device=settings.device, plots=False, all_images=settings.tiny)  # tiny: tests' untrained weights
    data = prepare_imagenet(config, progress)
    note = None
    if settings.imagenet_train_per_class:
        transform, mask_transform = imagenet_transforms(size)
        try:
            train_ds = ILSVRC12(settings.imagenet, "train", transform=transform, mask_transform=mask_transform,
                                num_classes=None)
        except Exception as exc:  # noqa: BLE001 - no training folder: VEBI's row records the error
            note = f"no ILSVRC12 training images for VEBI's fit ({type(exc).__name__}: {exc})"
        else:
            seen: dict[int, int] = {}
            pick = []
            for i, y in enumerate(train_ds.targets):  # the first images of each class, in the loader's order
                if seen.get(y, 0) < settings.imagenet_train_per_class:
                    seen[y] = seen.get(y, 0) + 1
                    pick.append(i)
            train = materialise(torch.utils.data.Subset(train_ds, pick), 0, "ILSVRC12 train", progress)
            train.masks = None  # VEBI needs images and labels only
            data = dataclasses.replace(data, train=train, hash=hashlib.sha256((data.hash + train.sha256()).encode()).hexdigest())
    summary = run_leaderboard(config, datasets=[data], progress=progress, log=log)
    return {"board": _board_summary(out_dir, summary), "note": note, "model": settings.imagenet_model}


def _torch_device(config: Any) -> Any:
    from an8flower.eval.train import resolve_device

    return resolve_device(config.device)


def check_paths(settings: ReproSettings) -> None:
    """Refuse, before anything runs, an ``out`` that is a file and data paths that do not exist (naming the flag)."""
    if os.path.exists(settings.out) and not os.path.isdir(settings.out):
        raise UsageError(f"--out {settings.out}: exists and is not a folder (reproduce writes a folder: "
                         "reproduction.md, reproduction_files/, board/)")
    for flag, path in (("--mnist", settings.mnist), ("--imagenet", settings.imagenet)):
        if path is not None and not os.path.isdir(path):
            raise UsageError(f"{flag} {path}: no such folder")
    if settings.imagenet_weights is not None and not os.path.isfile(settings.imagenet_weights):
        raise UsageError(f"--imagenet-weights {settings.imagenet_weights}: no such file")


def run_reproduction(settings: ReproSettings, command: Sequence[str] | None = None, progress: bool | None = None,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the reproduction ``settings`` describe; write ``reproduction.md``/``.json`` and figures; return the result.

    Returns:
        The content of ``reproduction.json``: settings, cuts, per-part wall times, the board's
        tables (with IoU curve points and meta-evaluation), per (variant, model) the feature
        removal, stride-fix and sheet results, and the MNIST / ImageNet parts when run.

    Raises:
        UsageError: bad settings or unreadable data (before anything is trained where possible).
    """
    from an8flower.atomic import atomic_write
    from an8flower.eval.data import prepare_an8flower
    from an8flower.eval.feature_removal import feature_removal, relevant_channels
    from an8flower.eval.markdown import slug
    from an8flower.eval.runner import run_leaderboard

    check_paths(settings)
    if log is None:
        def log(msg: str) -> None:
            if progress is not False:
                print(msg, file=sys.stderr, flush=True)
    start = time.perf_counter()
    parts = _Parts(log)
    files = os.path.join(settings.out, FILES)
    os.makedirs(files, exist_ok=True)
    config = settings.board_config()
    device = _torch_device(config)
    with parts.timed("data"):
        datasets = [prepare_an8flower(v, config, True, progress) for v in settings.variants]
    with parts.timed("board"):
        summary = run_leaderboard(config, datasets=datasets, command=command, progress=progress, log=log)
    board = _board_summary(config.out, summary)
    figures = _copy_figures(config.out, files, board["tables"], settings.seed)
    groups = []
    for data in datasets:
        for model_name in settings.models:
            model, info = _trained_model(summary, data.variant, model_name, settings.seed, device)
            stem = slug(data.variant, model_name)
            with parts.timed("vebi fit"):
                vebi = _fit_vebi(model, data, config, model_name, settings, progress)
            sizes = dict(zip(vebi.layers_, vebi.layer_sizes_, strict=True))
            with parts.timed("feature removal"):
                removal = feature_removal(
                    model, relevant_channels(vebi), data.test, sizes, train=data.train, draws=settings.draws,
                    seed=settings.seed, batch_size=max(64, settings.batch_size), progress=progress)
            with parts.timed("stride fix"):
                stride = _stride_table(model, vebi, data, settings, files, stem)
            with parts.timed("sheets"):
                sheets = _sheets(model, vebi, data, settings, files, stem, progress)
            groups.append({"variant": data.variant, "model": model_name, "seed": settings.seed,
                           "accuracy": info["accuracy"], "train_images": len(data.train), "test_images": len(data.test),
                           "vebi": {"layers": len(vebi.layers_), "features": vebi.fit_info_.get("n_features"),
                                    "relevant_per_class": vebi.fit_info_.get("relevant_per_class")},
                           "removal": removal, "stride": stride, "sheets": sheets,
                           "iou_figure": figures.get(f"{data.variant}:{model_name}")})
    result: dict[str, Any] = {
        "command": list(command) if command is not None else list(sys.argv),
        "settings": dataclasses.asdict(settings), "cuts": cuts(settings), "board": board, "groups": groups,
        "mnist": None, "imagenet": None,
    }
    if settings.mnist:
        with parts.timed("mnist"):
            result["mnist"] = _mnist_part(settings, files, progress, log)
    if settings.imagenet:
        with parts.timed("imagenet"):
            result["imagenet"] = _imagenet_part(settings, progress, log)
    t0 = time.perf_counter()
    result["timings"] = {**{k: round(v, 3) for k, v in parts.seconds.items()}, "total": round(time.perf_counter() - start, 3)}
    md = reproduction_markdown(result)
    atomic_write(os.path.join(settings.out, "reproduction.md"), md)
    result["timings"]["report"] = round(time.perf_counter() - t0, 3)
    atomic_write(os.path.join(settings.out, "reproduction.json"), json.dumps(_jsonable(result), indent=1) + "\n")
    return result


def cuts(settings: ReproSettings) -> list[str]:
    """What ``settings`` cut from the paper's protocol (the defaults), one line each."""
    default = ReproSettings()
    out = []
    for name, what in (("size", "image side (px)"), ("per_class", "images per class"),
                       ("max_images", "scored test images per variant and model"), ("draws", "random draws in feature removal"),
                       ("spectral_images", "test images of the stride-fix table"), ("top_n", "training images per sheet feature")):
        v, d = getattr(settings, name), getattr(default, name)
        if v != d:
            out.append(f"{what}: {v} instead of {d}")
    for name, what in (("variants", "variants"), ("models", "models")):
        v, d = getattr(settings, name), getattr(default, name)
        if list(v) != list(d):
            out.append(f"{what}: {', '.join(v)} instead of {', '.join(d)}")
    for name, opts in settings.explainer_options.items():
        out.append(f"{name} options: " + ", ".join(f"{k} = {v}" for k, v in opts.items()))
    for key, d in default.train.items():
        v = settings.train.get(key)
        if v != d:
            out.append(f"training {key}: {v if v is not None else 'the TrainConfig default'} instead of {d}")
    return out


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float):
        return round(obj, 6) if math.isfinite(obj) else None
    return obj


# -------------------------------------------------------------------------------- markdown


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _pm(pair: Sequence[Any] | None, digits: int = 3) -> str:
    if not pair or pair[0] is None or (isinstance(pair[0], float) and not math.isfinite(pair[0])):
        return "n/a"
    half = pair[1] if len(pair) > 1 else None
    return _f(pair[0], digits) + ("" if half is None or not math.isfinite(half) else f" ± {_f(half, digits)}")


def _main_table(t: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    from an8flower.eval.metaeval import flag_suffix, hidden_metrics

    shown = [m for m in t["metrics"] if m not in hidden_metrics(t)]
    rows = {r["explainer"]: r for r in t["rows"]}
    order = [e for e in EXPLAINERS if e in rows] + [e for e in rows if e not in EXPLAINERS]
    head = ["row", "what"]
    for m in shown:
        info = metrics.get(m, {})
        head.append(f"{info.get('label', m)} {'↑' if info.get('higher_is_better', True) else '↓'}{flag_suffix(t, m)}")
        if m == "iou_auc":
            head += [f"IoU@{p:g}" for p in IOU_POINTS]
    lines = ["| " + " | ".join(head) + " |", "|:--|:--|" + "|".join(["--:"] * (len(head) - 2)) + "|"]
    what = {**VEBI_ROWS, "oracle": "the mask itself (ceiling)", "random": "uniform noise (chance)",
            "centre": "a centred Gaussian (chance)", "upsampled_activation": "paper baseline",
            "deconvnet": "paper baseline", "guided_backprop": "paper baseline", "gradcam": "paper baseline"}
    for e in order:
        r = rows[e]
        cells = [f"`{e}`", what.get(e, "")]
        for m in shown:
            s = r["scores"].get(m) or {}
            if s.get("error"):
                cells.append("error")
            else:
                best = e in t["best"].get(m, []) and not flag_suffix(t, m)
                text = _pm([s.get("mean"), s.get("ci95")])
                cells.append(f"**{text}**" if best and text != "n/a" else text)
            if m == "iou_auc":
                cells += [_f(v) for v in t.get("iou_points", {}).get(e, [None] * len(IOU_POINTS))]
        lines.append("| " + " | ".join(cells) + " |")
    same = [e for e in VEBI_ROWS if e != "vebi" and e in rows and "vebi" in rows
            and all(rows[e]["scores"].get(m) == rows["vebi"]["scores"].get(m) for m in t["metrics"])]
    if same:
        lines += ["", ", ".join(f"`{e}`" for e in same) + " score as `vebi` in every column here, to 6 digits: the "
                  "change leaves VEBI's maps as they are on this model (as when there is no strided convolution for "
                  "the stride fix to act on, no class with more than k relevant features, or predicted training "
                  "labels equal to the ground truth)."]
    errors = [f"`{x['explainer']}`: {x['error']}" for x in t.get("errors", [])]
    if errors:
        lines += ["", "Errors: " + "; ".join(errors)]
    return lines + [""]


def _flag_lines(t: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    from an8flower.eval.metaeval import metaeval_markdown

    return metaeval_markdown(t, metrics)


def _removal_table(g: Mapping[str, Any]) -> list[str]:
    rem = g["removal"]
    s = rem["summary"]
    if not s:
        return ["No class has relevant features: nothing to remove.", ""]
    names = {"relevant": "VEBI's relevant channels of the class",
             "random": f"as many random channels of the same layers (mean of {rem['draws']} draws)",
             "most_active": "as many of the class's most active channels, same layers"}
    lines = ["| channels zeroed | per class | class accuracy drop | class probability drop | other classes' accuracy drop |",
             "|:--|--:|--:|--:|--:|"]
    for cond, entry in s.items():
        lines.append(f"| {names[cond]} | {entry['channels']:.1f} | {_pm(entry['accuracy_drop'])} | "
                     f"{_pm(entry['probability_drop'])} | {_pm(entry['others_drop'])} |")
    overlap = [r["overlap"] for r in rem["classes"] if "overlap" in r]
    intact = [r["intact"]["accuracy"] for r in rem["classes"]]
    lines += ["", f"Mean and 95% CI over {s['relevant']['n_classes']} classes, on all {rem['n_test']} test images; "
              f"intact class accuracy {_f(sum(intact) / len(intact))}"
              + (f"; {100 * sum(overlap) / len(overlap):.0f}% of the most active channels are relevant ones" if overlap else "")
              + (f"; classes without relevant features (left out): {rem['skipped']}" if rem["skipped"] else "") + ".", ""]
    return lines


def _stride_rows(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| variant | model | conv stride s | explainer | share with the fix | share without | without - with | chance | images |",
             "|:--|:--|--:|:--|--:|--:|--:|--:|--:|"]
    for g in groups:
        st = g["stride"]
        if not st["rows"]:
            lines.append(f"| {g['variant']} | {g['model']} | {st['stride']} | – | n/a | n/a | n/a | n/a | – |")
            continue
        for name, row in st["rows"].items():
            lines.append(f"| {g['variant']} | {g['model']} | {st['stride']} | {name} | {_pm(row['with_fix'])} | "
                         f"{_pm(row['without_fix'])} | {_pm(row['difference'])} | {_f(st['chance'])} | {row['n']} |")
    return lines + [""]


def reproduction_markdown(result: Mapping[str, Any]) -> str:
    """``reproduction.md`` from a :func:`run_reproduction` result (a pure function of it)."""
    st, board = result["settings"], result["board"]
    metrics = board["metrics"]
    lines = ["# Reproduction of Oramas et al. (ICLR 2019) on an8Flower", "",
             "*Visual Explanation by Interpretation: Improving Visual Feedback Capabilities of Deep Neural Networks* "
             "(arXiv:1712.06302): VEBI against the baselines the paper compares with, its ablations, feature "
             "removal, the stride-fix artefact and interpretation sheets, run by `an8flower reproduce` on the "
             "leaderboard runner.", "",
             "Command: `" + " ".join(result["command"]) + "`", "",
             f"Settings: variants {', '.join(st['variants'])}; models {', '.join(st['models'])}; {st['size']} px; "
             f"{st['per_class']} images per class (70/10/20 split); at most {st['max_images']} correctly classified test "
             f"images scored per variant and model; seed {st['seed']}"
             + (f"; {st['model_seeds']} model seeds" if st["model_seeds"] > 1 else "") + ".", ""]
    if result["cuts"]:
        lines += ["**Cut from the paper's protocol** (the command's defaults) for this run:", ""]
        lines += [f"* {c}" for c in result["cuts"]] + [""]
    else:
        lines += ["Nothing was cut: the command's defaults (the paper's protocol at 112 px).", ""]
    acc = {(m["variant"], m["model"], m.get("seed")): m["accuracy"] for m in board["models"]}
    # 1. main table
    lines += ["## 1. VEBI against the paper's baselines, with its ablations", "",
              "IoU of the binarised heatmap with the ground-truth mask, thresholds 0.05 ... 0.95 of the min-max "
              "normalised map, and its area (IoU-AUC, the paper's measure); the curve at five thresholds; pointing "
              "game, energy pointing game and pixel AUC for context. Mean ± 95% CI over the scored images; the best "
              "non-oracle row of each column in bold. VEBI's rows are named variants of the `vebi` explainer "
              "(`vebi[k=1]` = VEBI with k = 1).", ""]
    for t in board["tables"]:
        if t["seed"] != st["seed"]:
            continue
        a = acc.get((t["variant"], t["model"], t["seed"]), {})
        n = (t.get("meta") or {}).get("n_images")
        lines += [f"### `{t['variant']}` · `{t['model']}`", "",
                  f"Test accuracy {_f(100 * next(iter(a.values()), float('nan')), 1)}%; {n} images scored.", ""]
        lines += _main_table(t, metrics)
        lines += _flag_lines(t, metrics)
        g = next((g for g in result["groups"] if g["variant"] == t["variant"] and g["model"] == t["model"]), None)
        if g and g.get("iou_figure"):
            lines += [f"![IoU against threshold, {t['variant']}, {t['model']}]({FILES}/{g['iou_figure']})", ""]
    if board.get("model_seeds"):
        from an8flower.eval.metaeval import seed_markdown

        lines += [line.replace("## ", "### ", 1) if line.startswith("## ") else line
                  for line in seed_markdown(board["model_seeds"], metrics)]
    # 2. feature removal
    lines += ["## 2. Feature removal: does VEBI find features the model needs?", "",
              "For each class, its relevant channels (VEBI's lasso, mu as in the board's `vebi` row) are zeroed at "
              "their layers, and the class's accuracy (ties fractional: a blind network scores chance) and mean "
              "probability on its test images are compared with the intact model; the controls zero as many random "
              "channels of the same layers, or the class's most active channels there (largest mean energy on its "
              "training images). A drop well above the random control says the interpretation found channels the "
              "model relies on.", ""]
    for g in result["groups"]:
        lines += [f"### `{g['variant']}` · `{g['model']}`", "",
                  f"VEBI on {g['vebi']['layers']} layers ({g['vebi']['features']} features); relevant features per "
                  f"class {g['vebi']['relevant_per_class']}.", ""]
        lines += _removal_table(g)
    # 3. stride fix
    lines += ["## 3. The stride-fix artefact on trained models", "",
              "Share of each heatmap's spectral energy (|FFT|², DC left out) at the stride frequencies k·H/s, "
              "k = 1 ... s - 1, ±1 bin, on either axis; s is the product of the strides of the network's strided "
              "convolutions, the only layers the fix changes. `chance` is what white noise gets: where it is high "
              "the bands cover most of the spectrum and the share says little (s = 16: 0.64 at 112 px, 0.91 at 64 px). "
              "Mean ± 95% CI over the first correctly classified test images.", ""]
    lines += _stride_rows(result["groups"])
    for g in result["groups"]:
        if g["stride"].get("reason"):
            lines.append(f"* `{g['model']}` on `{g['variant']}`: {g['stride']['reason']}.")
    lines.append("")
    for g in result["groups"]:
        if g["stride"].get("figure"):
            lines += [f"![stride fix, {g['variant']}, {g['model']}]({FILES}/{g['stride']['figure']})", ""]
    # 4. sheets
    lines += ["## 4. Interpretation sheets", "",
              "Each relevant feature of a class (largest lasso weight first): its average visualisation over the "
              f"{st['top_n']} training images that activate it most (colour, then as a heatmap).", ""]
    for g in result["groups"]:
        for sh in g["sheets"]:
            lines += [f"![{g['variant']} {g['model']} class {sh['class']}]({FILES}/{sh['figure']})", ""]
    # 5. other datasets
    for key, title in (("mnist", "MNIST (LeNet, mask-free metrics)"), ("imagenet", "ILSVRC12 validation boxes")):
        part = result.get(key)
        if not part:
            continue
        lines += [f"## {title}", ""]
        if part.get("note"):
            lines += [part["note"] + ".", ""]
        for t in part["board"]["tables"]:
            lines += _main_table(t, part["board"]["metrics"]) + _flag_lines(t, part["board"]["metrics"])
        for sh in part.get("sheets", []):
            lines += [f"![MNIST class {sh['class']}]({FILES}/{sh['figure']})", ""]
    # 6. flags and time
    lines += ["## Flagged metrics", ""]
    flagged = []
    for src, b in (("an8Flower", board), ("MNIST", (result.get("mnist") or {}).get("board")),
                   ("ILSVRC12", (result.get("imagenet") or {}).get("board"))):
        if not b:
            continue
        for t in b.get("tables", []):
            for m, e in ((t.get("metaeval") or {}).get("metrics") or {}).items():
                if e.get("flag"):
                    where = " · ".join(x for x in (t["variant"], t["model"], f"seed {t['seed']}") if x)
                    flagged.append(f"* {src} {where}: `{b['metrics'].get(m, {}).get('label', m)}` ({e['flag']}): {e['reason']}.")
    lines += (flagged or ["None: every column separates the oracle from random and ranks the explainers stably."]) + [""]
    timings = result.get("timings", {})
    total = timings.get("total") or sum(v for k, v in timings.items() if k != "total") or 1.0
    lines += ["## Wall time", "", "| part | seconds | share |", "|:--|--:|--:|"]
    for k, v in timings.items():
        if k != "total":
            lines.append(f"| {k} | {v:.1f} | {100 * v / total:.0f}% |")
    lines.append(f"| total | {total:.1f} | |")
    bt = board.get("timings", {}).get("seconds", {})
    if bt:
        lines += ["", "Inside the board: " + ", ".join(f"{k} {v:.1f} s" for k, v in bt.items() if v) + "."]
    return "\n".join(lines).rstrip() + "\n"
