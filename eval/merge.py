"""``an8flower leaderboard merge``: the N finished shards of one run combined into a complete results folder.

:func:`merge_shards` checks that the folders are the N distinct shards (:mod:`an8flower.eval.shards`)
of one run (same fingerprint: configuration, package version and code, torch version; same groups:
dataset, model and scored images; same cells), reads every cell's accumulators with the checks of
:func:`~an8flower.eval.shards.read_record` (the record holds the cell its file name says), refuses
shares that overlap, merges them exactly as rank 0 merges those of a ``torchrun`` run, and writes a
complete results folder: its cache holds the merged cells (a later run there reuses them) and its
report is the single run's. Shard files are data, never code: JSON and ``.npz`` read with
:func:`~an8flower.eval.cache.read_npz` (headers checked against the manifest's bounded example count
and image size before anything is inflated).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from an8flower.errors import UsageError
from an8flower.eval.cache import CellCache, canonical, group_part, read_npz
from an8flower.eval.config import RunConfig
from an8flower.eval.runner import BoardRun
from an8flower.eval.scoring import finish_cell, for_json, merge_accumulators
from an8flower.eval.shards import SHARD_FORMAT, accumulator_from_json, read_record

__all__ = ["merge_shards"]


def _read_manifest(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "shard.json")
    if not os.path.isfile(path):
        hint = " (an unfinished shard: rerun it)" if os.path.isdir(os.path.join(folder, "shard")) else ""
        raise UsageError(f"{folder}: not a finished leaderboard shard, {path} is missing{hint}")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable shard manifest ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SHARD_FORMAT:
        raise UsageError(f"{path}: not an {SHARD_FORMAT} manifest")
    for key in ("shard", "fingerprint", "config", "groups", "cells", "explainers", "metrics"):
        if key not in doc:
            raise UsageError(f"{path}: no {key!r}")
    return doc


def _inside(folder: str, name: str) -> str:
    """``folder/name`` for a plain file name from a manifest (no separators, no '..')."""
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
        raise UsageError(f"{folder}: shard manifest names a file outside its folder: {name!r}")
    return os.path.join(folder, name)


#: Largest example count and image side a shard manifest may give.
_MAX_EXAMPLES, _MAX_SIDE = 10_000, 4096


def _check_group(group: Any, where: str) -> None:
    """:class:`UsageError` naming ``where`` unless a manifest's group has bounded ``n_ex`` and ``size``."""
    if not isinstance(group, dict):
        raise UsageError(f"{where}: not a group record")
    for field, top in (("n_ex", _MAX_EXAMPLES), ("size", _MAX_SIDE)):
        v = group.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
            raise UsageError(f"{where}: {field!r} must be an integer from 0 to {top}, got {v!r:.40}")


def _read_arrays(path: str, shapes: dict[str, Any]) -> dict[str, np.ndarray]:
    """:func:`~an8flower.eval.cache.read_npz` with its failures as :class:`UsageError` naming ``path``."""
    try:
        return read_npz(path, shapes)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise UsageError(f"shard file {path}: {exc}") from None


def _check_disjoint(accs: Sequence[Any], paths: Sequence[str]) -> None:
    """:class:`UsageError` naming both files when two shares of a cell scored the same image."""
    owner: dict[int, str] = {}
    for acc, path in zip(accs, paths, strict=True):
        for p in acc.positions:
            if owner.setdefault(p, path) != path:
                raise UsageError(f"shard files {owner[p]} and {path} both scored image position {p}: "
                                 "their shares overlap (not the shards of one run)")


def merge_shards(folders: Sequence[str], out: str, *, command: Sequence[str] | None = None,
                 progress: bool | None = None, log: Callable[[str], None] | None = None) -> Any:
    """Combine the N finished shards of one run into a complete results folder ``out``.

    Returns:
        The :class:`~an8flower.eval.runner.RunSummary` of the merged run.

    Raises:
        UsageError: a folder that is not a finished shard, shards of different runs (configuration,
        version, code, N, groups or cells), a missing or repeated shard, a damaged shard file;
        the message names the folder or file.
    """
    if not folders:
        raise UsageError("merge: give the shard folders")
    manifests = [(os.fspath(f), _read_manifest(os.fspath(f))) for f in folders]
    first_dir, first = manifests[0]
    n = int(first["shard"][1])
    for folder, m in manifests:
        if int(m["shard"][1]) != n:
            raise UsageError(f"{folder}: shard {m['shard'][0]}/{m['shard'][1]} is not one of {n} shards like {first_dir}")
        if m["fingerprint"] != first["fingerprint"]:
            raise UsageError(f"{folder}: a shard of another run than {first_dir} (its configuration, an8flower or "
                             "torch version, or code differs); merge only the shards of one run")
        if canonical([g["config"] for g in m["groups"]]) != canonical([g["config"] for g in first["groups"]]):
            raise UsageError(f"{folder}: its datasets, models or scored images differ from {first_dir}'s (shards that "
                             "trained their own model? give every shard the same --weights)")
        if sorted(m["cells"]) != sorted(first["cells"]):
            raise UsageError(f"{folder}: holds other cells than {first_dir}")
    indices = sorted(int(m["shard"][0]) for _, m in manifests)
    if indices != list(range(1, n + 1)):
        missing = sorted(set(range(1, n + 1)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise UsageError(f"merge: shards of a {n}-way run: " + "; ".join(
            ([f"missing {', '.join(map(str, missing))}"] if missing else []) +
            ([f"repeated {', '.join(map(str, repeated))}"] if repeated else [])))
    here = os.path.abspath(out)
    if any(os.path.abspath(f) == here for f, _ in manifests):
        raise UsageError(f"--out {out}: merge into a new folder, not into a shard")

    for g, group in enumerate(first["groups"]):
        _check_group(group, f"{os.path.join(first_dir, 'shard.json')}: group {g}")
    config = RunConfig(**{**first["config"], "out": out})
    model_names = list(dict.fromkeys(g["meta_key"][2] for g in first["groups"]))
    run = BoardRun(config, dict.fromkeys(model_names), progress, log, datasets_given=True)
    run.explainers, run.metrics = list(first["explainers"]), list(first["metrics"])
    run.datasets_rec, run.models_rec = list(first.get("datasets", [])), list(first.get("models", []))
    cache = CellCache(out)
    for g, group in enumerate(first["groups"]):
        key = tuple(group["meta_key"])
        run.group_meta[key] = dict(group["meta"])
        n_ex, size = group["n_ex"], group["size"]
        z = _read_arrays(_inside(os.path.join(first_dir, "shard"), f"group-{g}.npz"),
                         {"images": (n_ex, size, size, range(1, 4)), "masks": (n_ex, size, size)})
        run.examples[key] = {"images": z["images"], "masks": z["masks"], "heatmaps": {}}
        run.group_configs[key] = {"_config": group["config"], "image_ids": group["image_ids"], "n_ex": group["n_ex"],
                                  "size": group["size"]}
        for name, ex_key in group["examples"].items():
            rows = []
            for folder, _ in manifests:
                k = range(n_ex + 1)
                side = frozenset({1, size})  # a share without examples stores (0, 1, 1)
                z = _read_arrays(_inside(os.path.join(folder, "shard"), f"{ex_key}.examples.npz"),
                                 {"positions": (k,), "heatmaps": (k, side, side), "n_ex": ()})
                if len(z["positions"]) != len(z["heatmaps"]) or (len(z["heatmaps"]) and z["heatmaps"].shape[1:] != (size, size)):
                    raise UsageError(f"{folder}: {ex_key}.examples.npz holds {len(z['positions'])} positions for "
                                     f"heatmaps of shape {z['heatmaps'].shape}")
                rows += list(zip(z["positions"].tolist(), z["heatmaps"], strict=True))
            rows.sort(key=lambda r: r[0])
            if rows and len(rows) == group["n_ex"]:
                heatmaps = np.stack([h for _, h in rows]).astype(np.float16)
                run.examples[key]["heatmaps"][name] = heatmaps
                cache.put_arrays(ex_key, heatmaps=heatmaps)
    groups_by_part = {group_part(g["config"]): g for g in first["groups"]}
    for cell_key_ in first["cells"]:
        paths = [_inside(os.path.join(folder, "shard"), f"{cell_key_}.json") for folder, _ in manifests]
        records = [read_record(path, cell_key_) for path in paths]
        body = records[0]
        accs = [accumulator_from_json(r["accumulator"], path) for r, path in zip(records, paths, strict=True)]
        _check_disjoint(accs, paths)
        merged = merge_accumulators(accs)
        group = groups_by_part.get(group_part(body["config"]))
        if group is None:
            raise UsageError(f"{first_dir}: cell {cell_key_} belongs to no group of the shard")
        cell = finish_cell(merged, body["base"], group["image_ids"], group["parts"])
        if cell["error"] is None:
            cache.put(cell_key_, body["config"], cell)
        else:
            run.errors.append({"variant": cell["variant"], "model": cell["model"], "explainer": cell["explainer"],
                               "metric": cell["metric"], "error": cell["error"]})
        run.cells.append(for_json(cell))
        run.computed += 1
    return run.finish(command, imagenet=bool(config.imagenet))
