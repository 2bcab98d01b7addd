"""The leaderboard's results folder: claimed with a marker file, never a user's own folder.

``an8flower leaderboard --out DIR`` writes ``results.csv``, ``leaderboard.md``, ``run.json``,
plots, ``cache/`` and ``models/`` into DIR and resumes from what an earlier run left there. So
that it never replaces a user's own files of those names, a run first *claims* DIR
(:func:`claim_results_folder`):

* DIR does not exist: it is created with the marker file :data:`MARKER`;
* DIR is empty, holds the marker, or holds the ``run.json`` of an earlier an8flower run (written
  before the marker existed): the marker is written (again) and the run goes on;
* anything else (a non-empty folder an8flower did not write) is refused, naming DIR, unless
  ``overwrite``; a file is always refused.

``run.json`` names the files of the folder relative to it (:func:`portable_record`), so a results
folder can be moved, published or compared across machines.

:func:`results_folder` wraps a run: when the run fails and DIR was created by it and holds nothing
but the marker (and empty folders), DIR is removed, so a failed run leaves no empty folder behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from an8flower.atomic import atomic_write_bytes
from an8flower.errors import UsageError

__all__ = ["MARKER", "MARKER_TEXT", "claim_results_folder", "is_results_folder", "results_folder", "removed_on_failure", "portable_record"]

#: The marker file of a results folder (hidden; its content is :data:`MARKER_TEXT`).
MARKER = ".an8flower-results"
#: What the marker holds: a format tag, one line of JSON.
MARKER_TEXT = json.dumps({"format": "an8flower-results/1"}) + "\n"


def _earlier_run(folder: str) -> bool:
    """``folder/run.json`` is the record of an an8flower run (``command``, ``config`` and ``cells`` keys)."""
    try:
        with open(os.path.join(folder, "run.json"), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"command", "config", "cells"} <= set(record)


def is_results_folder(folder: str | os.PathLike[str]) -> bool:
    """``folder`` is a folder an8flower's leaderboard wrote: it holds the marker or an earlier run's ``run.json``."""
    folder = os.fspath(folder)
    return os.path.isfile(os.path.join(folder, MARKER)) or _earlier_run(folder)


def claim_results_folder(out: str | os.PathLike[str], overwrite: bool = False) -> bool:
    """Make ``out`` a results folder (see the module docstring); True when this call created it.

    Raises:
        UsageError: ``out`` is a file, or a non-empty folder that is not a results folder (and not
            ``overwrite``); the message names it and says how to go on.
    """
    out = os.fspath(out)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a folder")
    created = not os.path.exists(out)
    if created:
        os.makedirs(out, exist_ok=True)
    elif os.listdir(out) and not is_results_folder(out) and not overwrite:
        raise UsageError(f"--out {out}: folder is not empty and is not an an8flower results folder (no {MARKER}); "
                         "give a new or empty folder, or --overwrite to write the results into it anyway")
    atomic_write_bytes(os.path.join(out, MARKER), MARKER_TEXT.encode())
    return created


def _holds_no_file(folder: str) -> bool:
    """Nothing in ``folder`` but empty folders and the marker."""
    for here, _, files in os.walk(folder):
        if any(not (here == folder and name == MARKER) for name in files):
            return False
    return True


@contextmanager
def removed_on_failure(out: str | os.PathLike[str]) -> Iterator[str]:
    """Run the body; if it raises, remove ``out`` when the body created it and wrote no file into it.

    A folder that existed before is never removed; one holding a file (a trained model a rerun
    resumes from, say) is kept.
    """
    out = os.fspath(out)
    existed = os.path.lexists(out)
    try:
        yield out
    except BaseException:
        if not existed and os.path.isdir(out) and not os.path.islink(out) and _holds_no_file(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


@contextmanager
def results_folder(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[str]:
    """Claim ``out`` for a run (:func:`claim_results_folder`); remove it again if the run fails before writing.

    Yields the folder. When the body raises and ``out`` did not exist before and holds nothing but
    the marker and empty folders, ``out`` is removed before the exception goes on.
    """
    with removed_on_failure(out):
        claim_results_folder(out, overwrite)
        yield os.fspath(out)


def portable_record(record: dict[str, Any], out: str | os.PathLike[str]) -> dict[str, Any]:
    """``record`` (a ``run.json``) with its paths inside ``out`` relative to ``out``; a new dict.

    ``config.out`` becomes ``"."`` and each model's ``source`` and each ``config.weights`` file
    inside ``out`` (the checkpoints the run trained or the ones kept with it, ``models/...``)
    becomes relative; paths outside ``out`` (a user's ``--weights``)
    are kept as given. Readers join them with the folder: ``os.path.join(out, source)`` gives the
    file either way.
    """
    out = os.path.abspath(os.fspath(out))

    def inside(path: Any) -> Any:
        if not isinstance(path, str):
            return path
        full = os.path.abspath(path)
        return os.path.relpath(full, out) if os.path.commonpath([full, out]) == out else path

    result = dict(record)
    if isinstance(record.get("config"), dict):
        result["config"] = {**record["config"], "out": "."}
        if isinstance(record["config"].get("weights"), dict):
            result["config"]["weights"] = {k: inside(v) for k, v in record["config"]["weights"].items()}
    if isinstance(record.get("models"), list):
        result["models"] = [{**m, "source": inside(m.get("source"))} if isinstance(m, dict) and "source" in m else m
                            for m in record["models"]]
    return result
