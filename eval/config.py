"""The configuration of a leaderboard run: defaults, the ``--quick`` preset and TOML files.

A run is described by a :class:`RunConfig`. The CLI builds one from a TOML file (``--config``)
and its flags (flags win over the file). A config file holds the same keys as the dataclass, at
top level, plus three tables::

    out = "an8flower-results"
    variants = ["single-6c", "double-12c"]
    models = ["small-cnn"]
    explainers = ["gradient", "gradcam", "vebi"]      # default: every registered explainer
    metrics = ["iou_auc", "pointing_game"]            # default: every metric
    size = 112
    per_class = 300
    seed = 0

    [explainer_options.rise]                          # keyword options of build_explainer
    n_masks = 500

    [metric_options.deletion_auc]                     # keyword options of the metric function
    steps = 20

    [model_options."timm:deit_tiny_patch16_224"]      # options of a model's builder
    depth = 6

    [train]                                           # fields of an8flower.eval.train.TrainConfig
    epochs = 30

    [data]                                            # optional: a generated folder per variant
    single-6c = "datasets/single-6c"

    [weights]                                         # optional: a checkpoint per model
    small-cnn = "ckpt/small-cnn-single-6c.pt"

Unknown keys raise :class:`~an8flower.errors.UsageError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from an8flower.errors import UsageError

__all__ = ["RunConfig", "quick_config", "load_config", "QUICK", "TRAIN_DEFAULTS"]

#: Samples per class of a variant a ``per_class`` table leaves out.
DEFAULT_PER_CLASS = 500
#: Largest ``per_class`` a run accepts (the generator's bound); memory is checked too, see
#: :func:`an8flower.eval.data.check_memory`.
MAX_PER_CLASS = 100_000

#: The training recipe of every model the package trains (``an8flower train``, the leaderboard,
#: ``--quick``) unless a run overrides it: the defaults of :class:`~an8flower.eval.train.TrainConfig`.
#: Tuned on the small CNN at 64 px (the seed-0 datasets): test accuracy 96.7% / 98.1% (single-6c /
#: double-12c) at 150 per class (the --quick size) and 98.9% / 98.8% at 300 per class; the former
#: recipe (lr 5e-3, batch 32) gave 85% on single-6c at 100 per class. Below 150 per class
#: single-6c's 70 training images per class are too few (85% at 100 per class).
TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 30, "batch_size": 64, "lr": 1e-2, "patience": 8, "stop_at": 1.0}


@dataclass
class RunConfig:
    """Everything that decides a leaderboard run's results (and where they go).

    Attributes:
        out: the results folder.
        variants: an8Flower variants (built-in names or spec files) to score.
        data: per variant, a folder written by ``an8flower generate`` to use instead of rendering
            the dataset in memory.
        imagenet: an ILSVRC12 root: score on its validation boxes instead of an8Flower.
        models: classifier names (see :func:`an8flower.eval.models.resolve_model`: ``small-cnn``,
            ``vit-tiny``, ``timm:<name>``, ``torchvision:<name>``, with options ``NAME[KEY=VALUE]``).
        model_options: per model name, options of its builder (``{"timm:deit_tiny_patch16_224":
            {"depth": 6}}``); folded into ``models`` as canonical names ``NAME[KEY=VALUE,...]``, the
            names the tables, cache and model cards show.
        weights: per model name, a local checkpoint to load instead of training one (an8Flower:
            trained per variant when absent; ILSVRC12: required).
        explainers: explainer names (``oracle`` is the mask itself); ``None``: all registered,
            with ``oracle``.
        explainer_options: per explainer, keyword options of ``build_explainer``.
        metrics: metric names (see :data:`an8flower.eval.runner.METRICS`); ``None``: all.
        metric_options: per metric, keyword options of the metric function.
        size: image side in pixels of the rendered datasets (and of the model's input).
        per_class: samples per class of a rendered dataset (split 70/10/20 as ``generate`` does);
            one number for every variant, or a table ``{variant: number}`` (variants it leaves out
            get 500): ``--quick`` renders more of ``single-6c``, whose class lives in one small part,
            than of ``double-12c``.
        seed: the dataset seed, the model seed and the explainers' seed.
        model_seeds: train this many classifiers per variant and model, with initialisation and
            shuffling seeds ``seed, seed + 1, ...`` (the dataset and explainers keep ``seed``),
            and score the board for each; the report adds ranks and their spread across seeds.
            Each model seed is its own group (its ``seed`` in the tables and ``results.csv``).
        split: the split that is scored.
        max_images: score at most this many (correctly classified) images per dataset; ``None``:
            all.
        model_metric_images: model-based metrics (deletion, insertion, randomisation) are scored
            on the first this many scored images only (they cost tens of forward passes each).
        all_images: score every image, not only the correctly classified ones.
        batch_size: images per explainer call.
        workers: data-loading worker processes.
        device: ``"cpu"``, ``"cuda"``, ...; ``None``: CUDA when available.
        amp: run the explainers that allow it (``amp_safe``: RISE, whose map averages many forward passes)
            under autocast (float16 on CUDA, bfloat16 on a CPU); metrics stay float32/float64. Off
            by default; part of every cell's key.
        train: fields of :class:`an8flower.eval.train.TrainConfig` for models trained by the run.
        examples: images shown in the example-heatmap grid.
        plots: write the PNG plots.
        quick: this is the ``--quick`` preset (recorded in ``run.json``).
    """

    out: str = "an8flower-results"
    variants: list[str] = field(default_factory=lambda: ["single-6c", "double-12c"])
    data: dict[str, str] = field(default_factory=dict)
    imagenet: Optional[str] = None
    models: list[str] = field(default_factory=lambda: ["small-cnn"])
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    explainers: Optional[list[str]] = None
    explainer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: Optional[list[str]] = None
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    size: int = 112
    per_class: int | dict[str, int] = 500
    seed: int = 0
    model_seeds: int = 1
    split: str = "test"
    max_images: Optional[int] = 300
    model_metric_images: int = 64
    all_images: bool = False
    batch_size: int = 32
    workers: int = 0
    device: Optional[str] = None
    amp: bool = False
    train: dict[str, Any] = field(default_factory=dict)
    examples: int = 4
    plots: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        self.validate()
        if self.model_options:
            from an8flower.eval.models import fold_model_options

            self.models = fold_model_options(self.models, self.model_options)

    def validate(self, source: str = "config") -> None:
        """Raise :class:`UsageError` naming the field (and ``source``) for an out-of-range value."""
        for name in ("batch_size", "size", "model_seeds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{source}: {name} must be a positive integer, got {v!r}")
        counts = self.per_class.items() if isinstance(self.per_class, dict) else [("", self.per_class)]
        for variant, v in counts:
            field_name = f"per_class.{variant}" if variant else "per_class"
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{source}: {field_name} must be a positive integer, got {v!r}")
            if v > MAX_PER_CLASS:
                raise UsageError(f"{source}: {field_name} {v} is above the limit of {MAX_PER_CLASS:,} samples per class")
        if self.size > 512:
            raise UsageError(f"{source}: size {self.size} is above 512 pixels, the renderer's largest image")
        for name in ("model_metric_images", "examples", "workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"{source}: {name} must be a non-negative integer, got {v!r}")
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise UsageError(f"{source}: max_images must be a positive integer, got {self.max_images!r}")
        if self.split not in ("train", "val", "test"):
            raise UsageError(f"{source}: split must be train, val or test, got {self.split!r}")
        for name in ("variants", "models"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise UsageError(f"{source}: {name} must be a list of names, got {v!r}")
        if not self.models:
            raise UsageError(f"{source}: models is empty")
        if not self.variants and not self.imagenet:
            raise UsageError(f"{source}: variants is empty and no ImageNet root is given")
        for name in ("explainers", "metrics"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v)):
                raise UsageError(f"{source}: {name} must be a non-empty list of names, got {v!r}")
        for name in ("explainer_options", "metric_options", "model_options"):
            v = getattr(self, name)
            if not isinstance(v, dict) or not all(isinstance(o, dict) for o in v.values()):
                raise UsageError(f"{source}: {name} must map names to tables of options, got {v!r}")
        from an8flower.eval.train import TrainConfig

        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise UsageError(f"{source}: unknown train setting {unknown[0]!r}; settings: {', '.join(sorted(known))}")

    def per_class_for(self, variant: str) -> int:
        """Samples per class of ``variant`` (``per_class``, or its entry in a ``per_class`` table)."""
        if isinstance(self.per_class, dict):
            return int(self.per_class.get(variant, DEFAULT_PER_CLASS))
        return int(self.per_class)

    def train_config(self):
        """The :class:`~an8flower.eval.train.TrainConfig` of the models this run trains."""
        from an8flower.eval.train import TrainConfig

        settings = {"seed": self.seed, "hflip": True, "workers": self.workers, **self.train}
        return TrainConfig(**settings)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)


#: The ``--quick`` preset: a small an8Flower at 64 px, cheap explainer options, subsets.
#: Chosen so that the whole job (render, train both variants, every explainer and metric) runs in
#: under 2 minutes on a 2-core CPU (measured: 1 min 36 s wall on an idle 2-core AMD EPYC, test
#: accuracy 96.2% on ``single-6c`` and 98.3% on ``double-12c``; ``benchmarks/bench_leaderboard.py``
#: times it); every value is recorded in ``run.json``.
QUICK: dict[str, Any] = {
    "out": "an8flower-results",
    "variants": ["single-6c", "double-12c"],
    "size": 64,
    "per_class": {"single-6c": 200, "double-12c": 100},
    "max_images": 40,
    "model_metric_images": 6,
    "batch_size": 48,
    "examples": 4,
    "train": {},
    "explainer_options": {
        "integrated_gradients": {"steps": 16},
        "smoothgrad": {"n_samples": 8},
        "occlusion": {"window": 12, "stride": 8},
        "rise": {"n_masks": 128},
    },
    "metric_options": {"deletion_auc": {"steps": 16}, "insertion_auc": {"steps": 16}},
}


def quick_config(**overrides: Any) -> RunConfig:
    """The ``--quick`` preset (:data:`QUICK`) with ``overrides`` applied."""
    settings = {**QUICK, **overrides, "quick": True}
    return RunConfig(**settings)


def _read_toml(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(path: str | os.PathLike[str], base: Optional[RunConfig] = None, **overrides: Any) -> RunConfig:
    """Read a TOML run configuration (see the module docstring) over ``base``; apply ``overrides``.

    Relative paths in ``data``, ``weights``, ``imagenet`` and ``out`` are taken relative to the
    config file's folder.

    Raises:
        UsageError: missing or unreadable file, invalid TOML, an unknown key, or a bad value; the
        message names the file.
    """
    path = os.fspath(path)
    raw = _read_toml(path)
    names = {f.name for f in dataclasses.fields(RunConfig)} - {"quick"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UsageError(f"config file {path}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(names))}")
    here = os.path.dirname(os.path.abspath(path))

    def rel(p: Any) -> Any:
        return os.path.join(here, p) if isinstance(p, str) and not os.path.isabs(p) else p

    if "out" in raw:
        raw["out"] = rel(raw["out"])
    if "imagenet" in raw:
        raw["imagenet"] = rel(raw["imagenet"])
    for key in ("data", "weights"):
        if key in raw:
            if not isinstance(raw[key], dict):
                raise UsageError(f"config file {path}: {key} must be a table of paths")
            raw[key] = {k: rel(v) for k, v in raw[key].items()}
    settings = base.to_dict() if base is not None else {}
    settings.update(raw)
    settings.update(overrides)
    try:
        config = RunConfig(**{k: v for k, v in settings.items() if k != "quick"}, quick=settings.get("quick", False))
    except UsageError as exc:
        raise UsageError(f"config file {path}: {str(exc).removeprefix('config: ')}") from None
    except TypeError as exc:
        raise UsageError(f"config file {path}: {exc}") from None
    return config
