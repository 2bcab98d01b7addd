"""The leaderboard's per-cell cache: keys derived from a cell's complete configuration, validated files.

A *cell* is the score of one explainer under one metric on the scored images of one (dataset,
model) group. Its **key** is the SHA-256 of its configuration (:func:`cell_config`), which holds
every setting that can change one of its numbers:

* the data: the dataset hash, the scored split and the ids of the scored images (which follow
  from ``max_images``, ``all_images`` and the model's predictions);
* the model: the SHA-256 of its weights and the identity of its class's code
  (:func:`model_code_identity`);
* the explainer (:meth:`an8flower.baselines.spec.ExplainerSpec.key`): its name, its options
  completed with the defaults of its constructor, and the identity of its code
  (:func:`an8flower.baselines.spec.explainer_code_identity`);
* the metric (:meth:`an8flower.eval.scoring.Accumulator.key`, from the accumulator that scores the
  cell): its name, its options completed with the metric function's defaults, the number of images
  it scores (model-based metrics: ``model_metric_images``) and the identity of its code
  (:func:`metric_code_identity`);
* the run: the seed (explainer noise, randomisation draws), the batch size (explainers that draw
  noise per call, and floating-point summation order), the device type, mixed precision (for the
  explainers that use it), and the versions of an8flower and torch.

**Code identity** is the SHA-256 of the source of the modules the code imports, its *import
closure* (:mod:`an8flower.code_identity`): within this package, and within the user's own folder or
package for user code; libraries outside (Captum, Zennit, pytorch-grad-cam, Quantus) count by their
version. A change to the command line, the report or an explainer a cell does not use re-keys
nothing; a change to a module the cell's explainer, metric or model imports re-keys its cells.

Settings that change no number (``out``, ``plots``, ``examples``, ``workers``, ``quick``) are not
in the key. ``tests/test_cache.py`` enumerates the fields of
:class:`~an8flower.eval.config.RunConfig` and checks each one is classified.

**Files.** ``<out>/cache/<key[:2]>/<key>.json`` holds ``{"format", "key", "config", "cell",
"sha256", "written"}``: ``sha256`` is the SHA-256 of the canonical JSON of ``cell``. A read checks
the JSON, the format, the key, the checksum and the cell's schema; a file that fails any check
(truncated, edited, ``[]``, ``null``) is reported with a warning naming it and recomputed, never
used. The checksum detects damage and edits made without recomputing it; it is not a signature.
Example heatmaps (``<key>.npz``, for the plots) are read with ``allow_pickle=False`` and checked
for their array names, shapes, dtype and finiteness the same way.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import json
import math
import os
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, cast

import numpy as np

from an8flower.atomic import atomic_write
from an8flower.code_identity import code_identity, in_library

__all__ = [
    "CACHE_FORMAT",
    "canonical",
    "package_code_sha256",
    "distribution_version",
    "metric_code_identity",
    "model_code_identity",
    "cell_config",
    "cell_key",
    "CellCache",
    "validate_cell",
    "read_npz",
    "NPZ_TEXT_BYTES",
]

#: Version of the cell-file layout and of the key's configuration schema.
CACHE_FORMAT = 2

#: Source folders (relative to the installed ``an8flower`` package and its mapped subpackages) whose
#: code decides the numbers of a built-in explainer or metric.
_NUMERIC_PACKAGES: tuple[str, ...] = ("an8flower.baselines", "an8flower.eval.metrics")
_NUMERIC_MODULES: tuple[str, ...] = ("an8flower.eval.scoring", "an8flower.eval.models")

#: Keys every cell holds (see :func:`validate_cell`).
_CELL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "dataset": str, "variant": str, "model": str, "explainer": str, "metric": str, "split": str, "seed": int,
    "options": dict, "metric_options": dict, "n": int, "extra": dict,
}


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces; values JSON cannot hold are written with ``str``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.cache
def package_code_sha256() -> str:
    """SHA-256 over the source of the package code that computes heatmaps and scores.

    Every ``.py`` file of :data:`_NUMERIC_PACKAGES` (recursively) and the modules of
    :data:`_NUMERIC_MODULES`, in sorted order of their module names, as ``name NUL bytes NUL``.
    A development checkout that changes an explainer, a backward rule or a metric therefore gets
    new keys; an installed release keeps its keys.
    """
    import importlib

    files: dict[str, bytes] = {}
    for name in _NUMERIC_PACKAGES:
        package = importlib.import_module(name)
        for folder in package.__path__:
            for dirpath, _dirs, names in os.walk(folder):
                for fname in names:
                    if fname.endswith(".py"):
                        path = os.path.join(dirpath, fname)
                        rel = os.path.relpath(path, folder).replace(os.sep, "/")
                        with open(path, "rb") as fh:
                            files[f"{name}/{rel}"] = fh.read()
    for name in _NUMERIC_MODULES:
        source = importlib.import_module(name).__file__
        assert source is not None, name  # the numeric modules are plain .py files
        with open(source, "rb") as fh:
            files[name] = fh.read()
    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + files[key] + b"\0")
    return digest.hexdigest()


@functools.cache
def distribution_version(name: str) -> str | None:
    """The installed version of a distribution (None if absent): recorded in keys and ``run.json``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


#: The board's module that turns a metric's per-batch values into a cell (accumulation, means,
#: curves): part of every metric's code identity.
_SCORING_MODULE = "an8flower.eval.scoring"


@functools.cache
def metric_code_identity(function: Callable[..., Any] | None) -> dict[str, Any]:
    """What identifies the code of a metric in a cache key (computed once per process).

    The import closure of the function that computes it (:func:`an8flower.code_identity.code_identity`;
    a Quantus metric, whose function is None: of :mod:`an8flower.eval.quantus_metrics`), with the
    source of :mod:`an8flower.eval.scoring`, which accumulates every metric, hashed alongside.
    """
    import importlib

    root = function if function is not None else importlib.import_module("an8flower.eval.quantus_metrics")
    identity = code_identity(root, also=(_SCORING_MODULE,))
    return {"function": getattr(root, "__qualname__", getattr(root, "__name__", "")), **identity}


def model_code_identity(model: Any) -> dict[str, Any]:
    """What identifies the code of a model's class in a cache key (its weights are keyed by hash).

    A class of this package or of the user's code: :func:`an8flower.code_identity.code_identity`;
    a class of an installed library (torchvision, timm): the library's name and version.
    """
    cls = type(model)
    identity: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    if path is not None and in_library(path):
        top = cls.__module__.partition(".")[0]
        dists = importlib.metadata.packages_distributions().get(top, [top])
        identity["library"] = {d: distribution_version(d) for d in dists}
        return identity
    return {**identity, **code_identity(cls)}


def cell_config(*, dataset: str, split: str, image_ids: Sequence[int], model: dict[str, Any],
                explainer: dict[str, Any], metric: dict[str, Any], seed: int, batch_size: int, device: str,
                amp: bool = False) -> dict[str, Any]:
    """The complete configuration of a cell (see the module docstring), JSON-ready.

    Args:
        dataset: the dataset hash. split: the scored split. image_ids: the scored images' ids.
        model: ``{"hash" (of the weights), "code" (:func:`model_code_identity`)}``.
        explainer: :meth:`an8flower.baselines.spec.ExplainerSpec.key` (``{}`` for a record of
            the group, such as the model's reliance).
        metric: :meth:`an8flower.eval.scoring.Accumulator.key` (or ``{"name": ...}`` for the
            group's other records: example heatmaps, reliance).
        seed, batch_size: the run's. device: the device type (``"cpu"``, ``"cuda"``). amp: whether
            the explainer ran under mixed precision (only explainers that allow it do).
    """
    import torch

    from an8flower import __version__

    return {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "split": split,
        "images": _sha256_text(canonical([int(i) for i in image_ids])),
        "n_images": len(image_ids),
        "model": model,
        "explainer": explainer,
        "metric": metric,
        "run": {"seed": int(seed), "batch_size": int(batch_size), "device": str(device), "amp": bool(amp)},
        "versions": {"an8flower": __version__, "torch": str(torch.__version__).split("+")[0]},
    }


def cell_key(config: dict[str, Any]) -> str:
    """The cache key of a cell: the hex SHA-256 of the canonical JSON of its :func:`cell_config`."""
    return _sha256_text(canonical(config))


def group_part(config: dict[str, Any]) -> str:
    """The part of a cell configuration shared by every cell of its group (all but explainer and metric)."""
    return canonical({k: v for k, v in config.items() if k not in ("explainer", "metric")})


def validate_cell(cell: Any) -> str | None:
    """None if ``cell`` has the schema of a cell, else the reason it has not."""
    if not isinstance(cell, dict):
        return f"the cell is a {type(cell).__name__}, not an object"
    for name, kind in _CELL_FIELDS.items():
        if name not in cell:
            return f"no {name!r}"
        if not isinstance(cell[name], kind) or isinstance(cell[name], bool):
            return f"{name!r} is a {type(cell[name]).__name__}"
    if cell["n"] < 0:
        return "negative 'n'"
    if cell.get("error") is not None and not isinstance(cell["error"], str):
        return "'error' is not a string"
    value = cell.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "'value' is not a number"
    scores, ids = cell.get("scores"), cell.get("image_ids")
    if scores is not None:
        if not isinstance(scores, list) or not all(s is None or (isinstance(s, (int, float)) and not isinstance(s, bool))
                                                   for s in scores):
            return "'scores' is not a list of numbers"
        if not isinstance(ids, list) or len(ids) != len(scores):
            return "'scores' and 'image_ids' differ in length"
        finite = [float(s) for s in scores if s is not None and math.isfinite(s)]
        if cell["n"] != len(finite):
            return "'n' is not the number of finite scores"
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        return "'image_ids' is not a list of integers"
    return None


#: Largest item of an array :func:`read_npz` accepts without an explicit budget (complex128; a
#: string scalar's budget is :data:`NPZ_TEXT_BYTES`).
_MAX_ITEMSIZE = 16
#: Bytes allowed for the zero-dimensional (text) arrays of an ``.npz``.
NPZ_TEXT_BYTES = 1 << 20


#: A shape for :func:`read_npz`: each dimension a length, or a ``range`` or set of allowed lengths.
Shape = tuple["int | range | frozenset[int]", ...]


def read_npz(path: str, shapes: dict[str, Shape]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` that must hold exactly ``shapes`` (name -> shape), read within bounds.

    A dimension of a shape is a length, or a ``range`` or set of allowed lengths. Each member's ``.npy``
    header is read first; the member is inflated only if its name, shape and dtype (no objects) are
    expected and its data fit the budget its shape allows (``prod(shape) * 16`` bytes,
    :data:`NPZ_TEXT_BYTES` for a 0-d text array). At most that
    many bytes are inflated: a small file whose header claims a huge shape, or whose stream inflates
    past its header, is refused without allocating. Never unpickles.

    Raises:
        ValueError: the reason (unexpected or missing array, shape, dtype, size, trailing data).
        OSError, zipfile.BadZipFile, EOFError: an unreadable or truncated file.
    """
    from numpy.lib import format as npy

    found: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name not in shapes or name in found:
                raise ValueError(f"unexpected member {info.filename!r}")
            want = tuple(shapes[name])
            with zf.open(info) as fh:
                version = npy.read_magic(fh)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"array {name!r}: .npy format {version} is not supported")
                reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, fortran, dtype = reader(fh)
                if dtype.hasobject:
                    raise ValueError(f"array {name!r} holds Python objects")
                if len(shape) != len(want) or not all(d == w if isinstance(w, int) else d in w for d, w in zip(shape, want, strict=True)):
                    expected = tuple(w if isinstance(w, int) else f"{min(w)}..{max(w)}" if w else "none" for w in want)
                    raise ValueError(f"array {name!r} has shape {tuple(shape)}, expected {expected}")
                nbytes = math.prod(shape) * dtype.itemsize
                budget = NPZ_TEXT_BYTES if not shape and dtype.kind in "SU" else math.prod(shape) * _MAX_ITEMSIZE
                if nbytes > budget:
                    raise ValueError(f"array {name!r} of dtype {dtype} is larger than its shape allows")
                data = fh.read(nbytes)
                if len(data) != nbytes:
                    raise ValueError(f"array {name!r} is truncated")
                if fh.read(1):
                    raise ValueError(f"array {name!r} has trailing data")
            order: Literal["F", "C"] = "F" if fortran else "C"
            found[name] = np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy()
    missing = sorted(set(shapes) - set(found))
    if missing:
        raise ValueError(f"no array {missing[0]!r}")
    return found


class CellCache:
    """Cells as JSON files ``<out>/cache/<key[:2]>/<key>.json``; example heatmaps as ``.npz``.

    Args:
        root: the results folder (the cache is its ``cache`` sub-folder).
        warn: where the one-line warnings about damaged files go (default :func:`warnings.warn`).
    """

    def __init__(self, root: str, warn: Callable[[str], None] | None = None) -> None:
        self.root = os.path.join(root, "cache")
        self.warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
        self.damaged: list[str] = []

    def path(self, key: str, ext: str) -> str:
        return os.path.join(self.root, key[:2], f"{key}.{ext}")

    def _damaged(self, path: str, reason: str) -> None:
        self.damaged.append(path)
        self.warn(f"damaged cache file {path} ({reason}): recomputed")

    def get(self, key: str) -> dict[str, Any] | None:
        """The cell stored under ``key``, or None (absent, or damaged: then a warning names the file)."""
        path = self.path(key, "json")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self._damaged(path, f"unreadable: {exc}")
            return None
        return self._parse(path, text, key)

    def _parse(self, path: str, text: str, key: str | None) -> dict[str, Any] | None:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            self._damaged(path, f"not valid JSON: {exc}")
            return None
        except RecursionError:
            self._damaged(path, "JSON nested too deeply")
            return None
        if not isinstance(doc, dict):
            self._damaged(path, f"holds a {type(doc).__name__}, not a cell file")
            return None
        if doc.get("format") != CACHE_FORMAT:
            self._damaged(path, f"cache format {doc.get('format')!r}, expected {CACHE_FORMAT}")
            return None
        if key is not None and doc.get("key") != key:
            self._damaged(path, "its key differs from its file name")
            return None
        cell = doc.get("cell")
        try:
            checksum_ok = doc.get("sha256") == _sha256_text(canonical(cell))
            config_ok = isinstance(doc.get("config"), dict) and cell_key(doc["config"]) == doc.get("key")
        except RecursionError:
            self._damaged(path, "JSON nested too deeply")
            return None
        if not checksum_ok:
            self._damaged(path, "its checksum does not match its content")
            return None
        if not config_ok:
            self._damaged(path, "its configuration does not match its key")
            return None
        reason = validate_cell(cell)
        if reason is not None:
            self._damaged(path, reason)
            return None
        assert isinstance(cell, dict)  # validate_cell returns None only for a dict
        return {**cell, "_config": doc["config"], "_written": doc.get("written", 0.0)}

    def put(self, key: str, config: dict[str, Any], cell: dict[str, Any]) -> None:
        """Store ``cell`` (validated first) under ``key`` with its configuration and checksum, atomically."""
        cell = {k: v for k, v in cell.items() if not k.startswith("_")}
        reason = validate_cell(json.loads(json.dumps(cell, allow_nan=True)))
        if reason is not None:
            raise ValueError(f"not a valid cell ({reason})")
        doc = {"format": CACHE_FORMAT, "key": key, "config": config, "cell": cell,
               "sha256": _sha256_text(canonical(cell)), "written": time.time()}
        atomic_write(self.path(key, "json"), json.dumps(doc, allow_nan=True))

    def cells(self) -> Iterator[dict[str, Any]]:
        """Every valid cell in the cache (damaged files are skipped with a warning)."""
        if not os.path.isdir(self.root):
            return
        for sub in sorted(os.listdir(self.root)):
            folder = os.path.join(self.root, sub)
            if len(sub) != 2 or not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if not name.endswith(".json") or name.startswith("."):
                    continue
                path = os.path.join(folder, name)
                try:
                    with open(path, encoding="utf-8") as fh:
                        text = fh.read()
                except (OSError, UnicodeDecodeError) as exc:
                    self._damaged(path, f"unreadable: {exc}")
                    continue
                cell = self._parse(path, text, name[: -len(".json")])
                if cell is not None:
                    yield cell

    def get_arrays(self, key: str, shapes: dict[str, Shape], finite: bool = True) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None (absent or damaged).

        The file must hold exactly the arrays ``shapes`` names, with exactly those shapes; it is read
        with :func:`read_npz`, so a file whose headers claim more is refused before anything is
        inflated. ``finite``: the arrays must also be floating point and finite.
        """
        path = self.path(key, "npz")
        if not os.path.isfile(path):
            return None
        try:
            arrays = read_npz(path, shapes)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
            self._damaged(path, f"unreadable: {exc}")
            return None
        for name, a in arrays.items():
            if finite and (not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all()):
                self._damaged(path, f"array {name!r} is not finite floating point")
                return None
        return arrays

    def put_arrays(self, key: str, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        # Typed as Any: mypy would match ``**arrays`` against savez_compressed's ``allow_pickle: bool`` too.
        np.savez_compressed(buf, **cast("dict[str, Any]", arrays))
        atomic_write(self.path(key, "npz"), buf.getvalue())
