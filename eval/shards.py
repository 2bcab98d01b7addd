"""Shards of a leaderboard run (``--shard I/N``) and their merge (``an8flower leaderboard merge``).

For schedulers without ``torch.distributed`` (SLURM arrays, batch queues, several machines sharing
nothing but a file system), ``an8flower leaderboard ... --shard I/N --out DIR_I`` computes the share
of rank ``I - 1`` of ``N`` (:func:`an8flower.eval.distributed.my_batches`: the same batches a
``torchrun`` run of N processes gives that rank) of every cell, and writes it uncombined to
``DIR_I``::

    DIR_I/shard.json                   what the shard is: I, N, the run's fingerprint, its groups
    DIR_I/shard/<key>.json             one cell's accumulator for this share (JSON, checksummed)
    DIR_I/shard/<key>.examples.npz     the share's example heatmaps, with their positions
    DIR_I/shard/group-<g>.npz          the group's example images and masks (for the plots)

``an8flower leaderboard merge DIR_1 ... DIR_N --out OUT`` (:func:`an8flower.eval.merge.merge_shards`) checks that the
shards are the N distinct shares of one run (same fingerprint: configuration, package version and
code, torch version; same groups: dataset, model and scored images; same cells), merges every
cell's accumulators exactly as rank 0 merges those of a ``torchrun`` run, and writes a complete
results folder to ``OUT``: its cache holds the merged cells (a later run there reuses them) and its
report is the single run's. Shard files are data, never code: JSON and ``allow_pickle=False`` npz,
validated on reading.

Train the model once (``an8flower train``) and give every shard the checkpoint with ``--weights``:
shards that train their own model on different machines may get different weights, which the merge
refuses (the model hash is part of each group).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from an8flower.atomic import atomic_write
from an8flower.errors import UsageError
from an8flower.eval.cache import canonical, cell_key, package_code_sha256

__all__ = ["SHARD_FORMAT", "ShardStore", "accumulator_to_json", "accumulator_from_json", "fingerprint", "read_record"]

SHARD_FORMAT = "an8flower-shard/1"
#: Run settings that do not change a number and may differ between shards.
_FREE_SETTINGS = ("out", "plots", "examples", "workers", "quick")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(config_dict: dict[str, Any], n_shards: int) -> str:
    """SHA-256 of what every shard of one run must share: its settings, N and the code's versions."""
    import torch

    from an8flower import __version__

    settings = {k: v for k, v in config_dict.items() if k not in _FREE_SETTINGS}
    return _sha(canonical({"settings": settings, "shards": n_shards, "an8flower": __version__,
                           "code": package_code_sha256(), "torch": str(torch.__version__).split("+")[0]}))


def _floats(values: Sequence[Any] | None) -> list[float | None] | None:
    if values is None:
        return None
    return [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]


def accumulator_to_json(acc: Any) -> dict[str, Any]:
    """A :class:`~an8flower.eval.scoring.Accumulator` as plain JSON values (NaN as null)."""
    share = np.concatenate(acc.share) if acc.share else None
    norm = np.concatenate(acc.normalised) if acc.normalised else None
    return {
        "metric": acc.spec.name, "options": acc.options, "limit": acc.limit,
        "positions": [int(p) for p in acc.positions], "scores": _floats(acc.scores),
        "curve_sum": None if acc.curve_sum is None else [float(v) for v in acc.curve_sum],
        "curve_n": None if acc.curve_n is None else [int(v) for v in acc.curve_n],
        "share": None if share is None else [_floats(r) for r in share],
        "normalised": None if norm is None else [_floats(r) for r in norm],
        "pxap_counts": None if acc.pxap_counts is None else [int(v) for v in acc.pxap_counts],
        "seconds": float(acc.seconds), "error": acc.error,
    }


def accumulator_from_json(doc: Any, path: str) -> Any:
    """The accumulator :func:`accumulator_to_json` wrote; :class:`UsageError` naming ``path`` if malformed."""
    from an8flower.eval.scoring import METRICS, Accumulator

    def bad(why: str) -> UsageError:
        return UsageError(f"shard file {path}: {why}")

    if not isinstance(doc, dict) or doc.get("metric") not in METRICS:
        raise bad("not an accumulator of a known metric")
    acc = Accumulator(METRICS[doc["metric"]], dict(doc.get("options") or {}), doc.get("limit"))
    positions = doc.get("positions")
    if not isinstance(positions, list) or not all(isinstance(p, int) and p >= 0 for p in positions):
        raise bad("'positions' is not a list of image positions")
    acc.positions = list(positions)
    n = len(positions)

    def rows(key: str, width: int | None = None) -> np.ndarray | None:
        value = doc.get(key)
        if value is None:
            return None
        arr = np.array([[math.nan if v is None else v for v in r] for r in value], dtype=np.float64)
        if arr.shape[0] != n or (width is not None and arr.shape[1] != width):
            raise bad(f"'{key}' does not match the positions")
        return arr

    scores = doc.get("scores")
    if scores:
        if len(scores) != n:
            raise bad("'scores' and 'positions' differ in length")
        acc.scores = [math.nan if v is None else float(v) for v in scores]
    share, norm = rows("share"), rows("normalised")
    if share is not None:
        acc.share, acc.normalised = [share], [norm if norm is not None else np.full_like(share, math.nan)]
    for key in ("curve_sum", "curve_n", "pxap_counts"):
        value = doc.get(key)
        if value is not None:
            arr = np.asarray(value, dtype=np.int64 if key != "curve_sum" else np.float64)
            if arr.ndim != 1:
                raise bad(f"'{key}' is not a vector")
            setattr(acc, key, arr)
    acc.seconds = float(doc.get("seconds") or 0.0)
    error = doc.get("error")
    acc.error = error if isinstance(error, str) else None
    return acc


class ShardStore:
    """The uncombined results of one shard in ``<out>/shard``."""

    def __init__(self, out: str, world: Any) -> None:
        self.out, self.world = out, world
        self.folder = os.path.join(out, "shard")
        os.makedirs(self.folder, exist_ok=True)

    def _path(self, key: str, ext: str) -> str:
        return os.path.join(self.folder, f"{key}.{ext}")

    def has(self, key: str) -> bool:
        """Whether the shard holds a complete, valid record for ``key`` (a cell, or examples)."""
        if os.path.isfile(self._path(key, "examples.npz")):
            return True
        try:
            read_record(self._path(key, "json"), key)
            return True
        except (OSError, UsageError):
            return False

    def put_explainer(self, keys: dict[str, str], configs: dict[str, dict[str, Any]], base: dict[str, Any],
                      accs: Sequence[Any], ex_key: str, examples: Sequence[tuple[int, np.ndarray]], n_ex: int) -> None:
        """Store one explainer's accumulators (one file per cell) and its example heatmaps."""
        import io

        for acc in accs:
            key = keys[acc.spec.name]
            body = {"key": key, "config": configs[acc.spec.name], "base": base, "accumulator": accumulator_to_json(acc)}
            text = canonical(body)
            atomic_write(self._path(key, "json"), json.dumps({"format": SHARD_FORMAT, "body": body,
                                                              "sha256": _sha(text)}, allow_nan=False))
        positions = np.array([p for p, _ in examples], dtype=np.int64)
        heatmaps = (np.stack([h for _, h in examples]) if examples else np.zeros((0, 1, 1), np.float16))
        buf = io.BytesIO()
        np.savez_compressed(buf, positions=positions, heatmaps=heatmaps, n_ex=np.array(n_ex))
        atomic_write(self._path(ex_key, "examples.npz"), buf.getvalue())

    def finish(self, manifest: dict[str, Any], groups: Sequence[dict[str, Any]]) -> None:
        """Write each group's example images and, last, ``shard.json`` (which marks the shard complete)."""
        import io

        for g, group in enumerate(groups):
            buf = io.BytesIO()
            np.savez_compressed(buf, images=group.pop("images"), masks=group.pop("masks"))
            atomic_write(os.path.join(self.folder, f"group-{g}.npz"), buf.getvalue())
        atomic_write(os.path.join(self.out, "shard.json"),
                     json.dumps({"format": SHARD_FORMAT, **manifest, "groups": list(groups)}, indent=1,
                                allow_nan=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_record(path: str, key: str) -> dict[str, Any]:
    """The shard's record of cell ``key``, checked; :class:`UsageError` naming ``path`` otherwise.

    Checked: the JSON (deep nesting included), the format, the checksum, and that the record is the
    one of cell ``key`` (the key in the record, the key of the configuration in it, and the metric
    of its accumulator), so a cell file copied over another's name is refused, not merged.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"shard file {path}: unreadable ({exc})") from None
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"shard file {path}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != SHARD_FORMAT or not isinstance(doc.get("body"), dict):
        raise UsageError(f"shard file {path}: not an {SHARD_FORMAT} record")
    body = doc["body"]
    if doc.get("sha256") != _sha(canonical(body)):
        raise UsageError(f"shard file {path}: its checksum does not match its content")
    config, acc = body.get("config"), body.get("accumulator")
    if (body.get("key") != key or not isinstance(config, dict) or cell_key(config) != key
            or not isinstance(acc, dict) or not isinstance(config.get("metric"), dict)
            or acc.get("metric") != config["metric"].get("name")):
        raise UsageError(f"shard file {path}: holds another cell than {key} (the key its name says)")
    return body
