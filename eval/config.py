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

    [train]                                           # fields of an8flower.eval.config.TrainConfig
    epochs = 30

    [data]                                            # optional: a generated folder per variant
    single-6c = "datasets/single-6c"

    [weights]                                         # optional: a checkpoint per model
    small-cnn = "ckpt/small-cnn-single-6c.pt"         # (or per variant: "single-6c:small-cnn" = ...)

    [per_model.vit-tiny]                              # optional: one model's own limits and recipe
    max_images = 40
    model_metric_images = 10
    train = {}                                        # replaces [train] for this model

Unknown keys raise :class:`~an8flower.errors.UsageError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from an8flower.defaults import (
    BOARD_PER_CLASS,
    BOARD_SIZE,
    DEFAULT_MODEL,
    DEFAULT_SEED,
    MAX_PER_CLASS,
    RESULTS_DIR,
    TRAIN_DEFAULTS,
)
from an8flower.errors import UsageError

__all__ = [
    "RunConfig", "ConfigFieldError", "quick_config", "load_config", "build_run_config", "resolve_config_path",
    "parse_value", "parse_model_options", "parse_pairs", "PUBLISHED_CONFIGS", "QUICK", "TRAIN_DEFAULTS", "TrainConfig", "MAX_MODEL_SEEDS",
]

#: Largest ``model_seeds`` a run accepts: each seed trains and scores one more classifier per
#: variant and model.
MAX_MODEL_SEEDS = 100

#: Names ``--config`` accepts for the configurations shipped in the package (``an8flower/configs``).
PUBLISHED_CONFIGS: dict[str, str] = {"published": "published.toml", "published-gpu": "published-gpu.toml"}


class ConfigFieldError(UsageError):
    """A bad value of one :class:`RunConfig` field; ``field`` names it (``per_class.single-6c``, ...)."""

    def __init__(self, source: str, field: str, detail: str, text: str | None = None) -> None:
        super().__init__(f"{source}: {text or f'{field} {detail}'}")
        self.field = field
        self.detail = detail


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`.

    Args:
        epochs: maximum number of passes over the training set.
        batch_size: images per optimisation step.
        lr: peak learning rate (AdamW; warm-up over 10% of the steps, then cosine decay to 0).
        weight_decay: AdamW's decoupled weight decay.
        patience: stop after this many epochs without a better validation accuracy.
        stop_at: stop as soon as validation accuracy reaches this value (``None``: never).
        hflip: flip each training image horizontally with probability 1/2.
        translate: shift each training image by up to this fraction of its side (uniform, per
            image and axis; edge pixels repeated), 0 = off.
        scale: zoom each training image by a factor drawn uniformly in ``[1 - scale, 1 + scale]``
            about its centre, 0 = off. Shifts and zooms are one batched ``affine_grid`` /
            ``grid_sample`` (bilinear) per batch; they keep an8Flower's labels (classes are
            colours of parts), so no colour augmentation is offered.
        label_smoothing: cross-entropy label smoothing (Szegedy et al. 2016).
        seed: seeds the shuffling and the flips (the initialisation is seeded by the caller).
        workers: ``DataLoader`` worker processes.
        amp: use float16 autocast and gradient scaling when the model is on CUDA (ignored on CPU).
    """

    epochs: int = TRAIN_DEFAULTS["epochs"]
    batch_size: int = TRAIN_DEFAULTS["batch_size"]
    lr: float = TRAIN_DEFAULTS["lr"]
    weight_decay: float = 1e-4
    patience: int = TRAIN_DEFAULTS["patience"]
    stop_at: float | None = TRAIN_DEFAULTS["stop_at"]
    hflip: bool = False
    translate: float = 0.0
    scale: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    workers: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.workers < 0:
            raise UsageError(f"workers must be >= 0, got {self.workers}")
        if not self.lr > 0:
            raise UsageError(f"lr must be positive, got {self.lr}")
        if self.patience < 1:
            raise UsageError(f"patience must be >= 1, got {self.patience}")
        for name in ("translate", "scale", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"{name} must be in [0, 1), got {getattr(self, name)}")


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
        train: fields of :class:`TrainConfig` for models trained by the run.
        per_model: per model name (as in ``models``), settings that replace the run's for that
            model only: ``max_images``, ``model_metric_images`` (a costly model scored on fewer
            images) and ``train`` (its whole ``[train]`` table: ``{}`` trains it with its family's
            recipe alone). Every image limit is read through :meth:`max_images_for` and
            :meth:`model_metric_images_for`, so the cells' cache keys follow it. An entry (or a
            ``weights`` entry) for a model the run does not score is unused, with a warning.
        examples: images shown in the example-heatmap grid.
        plots: write the PNG plots.
        quick: this is the ``--quick`` preset (recorded in ``run.json``).
    """

    out: str = RESULTS_DIR
    variants: list[str] = field(default_factory=lambda: ["single-6c", "double-12c"])
    data: dict[str, str] = field(default_factory=dict)
    imagenet: str | None = None
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    explainers: list[str] | None = None
    explainer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: list[str] | None = None
    metric_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    size: int = BOARD_SIZE
    per_class: int | dict[str, int] = BOARD_PER_CLASS
    seed: int = DEFAULT_SEED
    model_seeds: int = 1
    split: str = "test"
    max_images: int | None = 300
    model_metric_images: int = 64
    all_images: bool = False
    batch_size: int = 32
    workers: int = 0
    device: str | None = None
    amp: bool = False
    train: dict[str, Any] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples: int = 4
    plots: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        self.validate()
        if self.model_options:
            from an8flower.eval.models import fold_model_options

            self.models = fold_model_options(self.models, self.model_options)

    def validate(self, source: str = "config") -> None:
        """Raise :class:`ConfigFieldError` naming the field (and ``source``) for an out-of-range value."""
        from an8flower.spec import MAX_SIZE

        def bad(name: str, detail: str, text: str | None = None) -> ConfigFieldError:
            return ConfigFieldError(source, name, detail, text)

        for name in ("batch_size", "size", "model_seeds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, f"must be a positive integer, got {v!r}")
        if self.model_seeds > MAX_MODEL_SEEDS:
            raise bad("model_seeds", f"{self.model_seeds} is above the limit of {MAX_MODEL_SEEDS} classifiers per "
                      "variant and model")
        counts = self.per_class.items() if isinstance(self.per_class, dict) else [("", self.per_class)]
        for variant, v in counts:
            field_name = f"per_class.{variant}" if variant else "per_class"
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(field_name, f"must be a positive integer, got {v!r}")
            if v > MAX_PER_CLASS:
                raise bad(field_name, f"{v} is above the limit of {MAX_PER_CLASS:,} samples per class")
        if self.size > MAX_SIZE:
            raise bad("size", f"{self.size} is above {MAX_SIZE} pixels, the renderer's largest image")
        for name in ("model_metric_images", "examples", "workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(name, f"must be a non-negative integer, got {v!r}")
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise bad("max_images", f"must be a positive integer, got {self.max_images!r}")
        if self.split not in ("train", "val", "test"):
            raise bad("split", f"must be train, val or test, got {self.split!r}")
        for name in ("variants", "models"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                raise bad(name, f"must be a list of names, got {v!r}")
        if not self.models:
            raise bad("models", "is empty")
        if not self.variants and not self.imagenet:
            raise bad("variants", "is empty and no ImageNet root is given")
        for name in ("explainers", "metrics"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v)):
                raise bad(name, f"must be a non-empty list of names, got {v!r}")
        for name in ("explainer_options", "metric_options", "model_options"):
            v = getattr(self, name)
            if not isinstance(v, dict) or not all(isinstance(o, dict) for o in v.values()):
                raise bad(name, f"must map names to tables of options, got {v!r}")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.train) - known)
        if unknown:
            settings = ", ".join(sorted(known))
            raise bad("train", f"setting {unknown[0]!r} is unknown; settings: {settings}",
                      f"unknown train setting {unknown[0]!r}; settings: {settings}")
        self._validate_per_model(bad, known)

    def _validate_per_model(self, bad: Any, train_keys: set[str]) -> None:
        if not isinstance(self.per_model, dict) or not all(isinstance(v, dict) for v in self.per_model.values()):
            raise bad("per_model", f"must map model names to tables, got {self.per_model!r}")
        allowed = {"max_images", "model_metric_images", "train"}
        for model, table in self.per_model.items():
            unknown = sorted(set(table) - allowed)
            if unknown:
                raise bad(f"per_model.{model}", f"setting {unknown[0]!r} is unknown; settings: {', '.join(sorted(allowed))}")
            for name in ("max_images", "model_metric_images"):
                v = table.get(name, 1)
                if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "max_images" else 0):
                    raise bad(f"per_model.{model}.{name}", f"must be a {'positive' if name == 'max_images' else 'non-negative'} "
                              f"integer, got {v!r}")
            train = table.get("train", {})
            if not isinstance(train, dict) or set(train) - train_keys:
                raise bad(f"per_model.{model}.train", f"must be a table of train settings ({', '.join(sorted(train_keys))}), "
                          f"got {train!r}")

    def _model_setting(self, model: str, name: str) -> Any:
        for key in (model, model.split("[", 1)[0]):
            if name in self.per_model.get(key, {}):
                return self.per_model[key][name]
        return getattr(self, name)

    def max_images_for(self, model: str) -> int | None:
        """Images scored per dataset for ``model``: its ``per_model`` entry, else ``max_images``."""
        return self._model_setting(model, "max_images")

    def model_metric_images_for(self, model: str) -> int:
        """Images of the model-based metrics for ``model``: its ``per_model`` entry, else ``model_metric_images``."""
        return int(self._model_setting(model, "model_metric_images"))

    def train_for(self, model: str) -> dict[str, Any]:
        """The ``[train]`` settings for ``model``: its ``per_model`` table (whole), else ``train``."""
        return dict(self._model_setting(model, "train"))

    def per_class_for(self, variant: str) -> int:
        """Samples per class of ``variant`` (``per_class``, or its entry in a ``per_class`` table)."""
        if isinstance(self.per_class, dict):
            return int(self.per_class.get(variant, BOARD_PER_CLASS))
        return int(self.per_class)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)


#: The ``--quick`` preset: a small an8Flower at 64 px, cheap explainer options, subsets.
#: Chosen so that the whole job (render, train both variants, every explainer and metric) runs in
#: about 3 minutes on a 2-core CPU (measured 2026-12-06: 2 min 50 s wall on an idle 2-core AMD EPYC,
#: load average 0.2, one torch thread (the ``--threads`` default there), test accuracy 95.8% on
#: ``single-6c`` and 99.2% on ``double-12c``; ``benchmarks/bench_leaderboard.py`` times it); every
#: value is recorded in ``run.json``.
QUICK: dict[str, Any] = {
    "out": RESULTS_DIR,
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


def resolve_config_path(name: str | os.PathLike[str]) -> tuple[str, str | None]:
    """The file ``--config NAME`` means, and the folder its relative paths are taken from.

    A name of :data:`PUBLISHED_CONFIGS` (``published``, ``published-gpu``) is the copy shipped in
    the package (``an8flower/configs``), so it works from an installed wheel; its relative paths
    (``out``) are taken from the working directory, never the installation. Anything else is a
    file path whose relative paths are taken from its own folder (``None``).
    """
    text = os.fspath(name)
    if text in PUBLISHED_CONFIGS:
        from importlib.resources import files

        return str(files("an8flower.configs").joinpath(PUBLISHED_CONFIGS[text])), os.getcwd()
    return text, None


def _read_toml(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        names = ", ".join(PUBLISHED_CONFIGS)
        raise UsageError(f"config file not found: {path} (the packaged configurations are named {names})") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None


def _file_settings(path: str, relative_to: str | None) -> dict[str, Any]:
    """The keys of a TOML run configuration, checked against :class:`RunConfig`, paths resolved."""
    raw = _read_toml(path)
    names = {f.name for f in dataclasses.fields(RunConfig)} - {"quick"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise UsageError(f"config file {path}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(names))}")
    here = relative_to or os.path.dirname(os.path.abspath(path))

    def rel(p: Any) -> Any:
        return os.path.join(here, p) if isinstance(p, str) and not os.path.isabs(p) else p

    for key in ("out", "imagenet"):
        if key in raw:
            raw[key] = rel(raw[key])
    for key in ("data", "weights"):
        if key in raw:
            if not isinstance(raw[key], dict):
                raise UsageError(f"config file {path}: {key} must be a table of paths")
            raw[key] = {k: rel(v) for k, v in raw[key].items()}
    return raw


def load_config(path: str | os.PathLike[str], base: RunConfig | None = None, **overrides: Any) -> RunConfig:
    """Read a TOML run configuration (see the module docstring) over ``base``; apply ``overrides``.

    ``path`` may also be a name of :data:`PUBLISHED_CONFIGS` (see :func:`resolve_config_path`).
    Relative paths in ``data``, ``weights``, ``imagenet`` and ``out`` are taken relative to the
    config file's folder.

    Raises:
        UsageError: missing or unreadable file, invalid TOML, an unknown key, or a bad value; the
        message names the file.
    """
    file, relative_to = resolve_config_path(path)
    settings = base.to_dict() if base is not None else {}
    return _build({"defaults": settings, f"config file {file}": _file_settings(file, relative_to),
                   "arguments": overrides})


#: The command-line flag of each :class:`RunConfig` field whose flag is not ``--field-name``.
FLAGS: dict[str, str] = {"variants": "--variant", "models": "--model", "explainers": "--explainer",
                         "metrics": "--metric", "explainer_options": "--option", "metric_options": "--option",
                         "train": "--epochs"}


def build_run_config(config: str | None = None, *, quick: bool = False, flags: Mapping[str, Any] | None = None,
                     data: Sequence[str] = (), weights: Sequence[str] = (), options: Sequence[str] = (),
                     metric_names: Sequence[str] = ()) -> RunConfig:
    """The :class:`RunConfig` of a ``leaderboard`` command line, built once from its layers.

    Layers, each over the one before: the defaults (or the ``--quick`` preset :data:`QUICK`); the
    config file ``config`` (a path or a :data:`PUBLISHED_CONFIGS` name); ``flags`` (RunConfig fields
    given on the command line; ``train`` is merged key by key); then the ``--data [VARIANT=]DIR``
    and ``--weights [MODEL=]FILE`` pairs (a bare path goes to the only variant or model) and the
    ``--option NAME.KEY=VALUE`` items (a NAME in ``metric_names`` sets a metric option, any other an
    explainer option; VALUE is parsed as JSON when it can be, see :func:`parse_value`). A key a
    later layer sets replaces the earlier value whole (a file's ``[explainer_options]`` replaces the
    preset's table); ``train`` flags and ``--option`` items are merged key by key.

    Raises:
        UsageError: a bad value, naming the flag or the config file it came from; a ``--data``
        folder that does not exist; ``imagenet`` without ``weights``.
    """
    flags = dict(flags or {})
    layers: dict[str, dict[str, Any]] = {"defaults": {**QUICK, "quick": True} if quick else {}}
    if config is not None:
        file, relative_to = resolve_config_path(config)
        layers[f"config file {file}"] = _file_settings(file, relative_to)
    merged: dict[str, Any] = {}
    for layer in layers.values():
        merged.update(layer)
    if "train" in flags:
        flags["train"] = {**merged.get("train", {}), **flags["train"]}
    merged.update(flags)
    variants: list[str] = merged.get("variants") or RunConfig().variants
    models = merged.get("models", [DEFAULT_MODEL])
    added: dict[str, Any] = {}
    if data:
        added["data"] = {**merged.get("data", {}), **parse_pairs(data, "--data", variants[0] if len(variants) == 1 else None)}
    if weights:
        added["weights"] = {**merged.get("weights", {}),
                            **parse_pairs(weights, "--weights", models[0] if len(models) == 1 else None)}
    if options:
        tables = {key: {k: dict(v) for k, v in merged.get(key, {}).items()} for key in ("explainer_options", "metric_options")}
        for item in options:
            target, sep, value = item.partition("=")
            name, dot, key = target.rpartition(".")
            if not sep or not dot or not name or not key:
                raise UsageError(f"--option {item!r}: expected EXPLAINER.KEY=VALUE")
            table = tables["metric_options" if name in metric_names else "explainer_options"]
            table.setdefault(name, {})[key] = parse_value(value)
        added.update(tables)
    layers["arguments"] = {**flags, **added}
    run = _build(layers)
    if run.imagenet and not run.weights:
        raise UsageError("--imagenet needs --weights FILE (local pretrained weights; nothing is downloaded)")
    for key, folder in run.data.items():
        if not os.path.isdir(folder):
            raise UsageError(f"--data {key}={folder}: no such folder")
    return run


def _build(layers: Mapping[str, Mapping[str, Any]]) -> RunConfig:
    """``RunConfig`` from layered settings (later wins); a bad value names the layer that gave it.

    A layer named ``arguments`` names the flag (:data:`FLAGS`); any other layer its own name.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, layer in layers.items():
        merged.update(layer)
        origin.update(dict.fromkeys(layer, source))
    try:
        return RunConfig(**merged)
    except ConfigFieldError as exc:
        key = exc.field.split(".", 1)[0]
        source = origin.get(key, "config")
        if source == "arguments":
            flag = FLAGS.get(key, "--" + key.replace("_", "-"))
            raise UsageError(f"{flag}: {exc.field} {exc.detail}" if "." in exc.field else f"{flag} {exc.detail}") from None
        raise UsageError(str(exc).replace("config:", f"{source}:", 1)) from None
    except TypeError as exc:
        raise UsageError(f"{list(layers)[-1]}: {exc}") from None


def parse_value(text: str) -> Any:
    """An option value from the command line: JSON when it parses (``3``, ``true``, ``[1, 2]``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_model_options(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``--model-option MODEL.KEY=VALUE`` items as ``{MODEL: {KEY: VALUE}}`` (VALUE by :func:`parse_value`).

    ``MODEL`` may itself hold dots and colons (``timm:deit_tiny_patch16_224.depth=6``): the key is
    what follows the last dot before ``=``.

    Raises:
        UsageError: an item that is not ``MODEL.KEY=VALUE``, naming it.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        target, sep, value = item.partition("=")
        name, dot, key = target.rpartition(".")
        if not sep or not dot or not name or not key:
            raise UsageError(f"--model-option {item!r}: expected MODEL.KEY=VALUE")
        out.setdefault(name, {})[key] = parse_value(value)
    return out


def parse_pairs(values: Sequence[str], flag: str, default_key: str | None) -> dict[str, str]:
    """``NAME=PATH`` items of ``flag``; a bare path (or one that exists as given) goes to ``default_key``.

    Raises:
        UsageError: a bare path and no ``default_key`` (several variants or models to choose from).
    """
    out: dict[str, str] = {}
    for v in values:
        key, sep, rest = v.partition("=")
        if sep and key and not os.path.exists(v):
            out[key] = rest
        elif default_key is not None:
            out[default_key] = v
        else:
            raise UsageError(f"{flag} {v!r}: expected NAME=PATH")
    return out
