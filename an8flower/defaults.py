"""Every default the command line shows and the logic uses, in one light module.

The parsers (:mod:`an8flower.cli`) and the functions they call both import these names, so a
default is written once and ``an8flower --help`` cannot drift from what a call does. This module
imports only the standard library: building the parser imports nothing heavy.

Two sizes of an8Flower appear, on purpose:

* a **dataset folder** (``an8flower generate``) holds :data:`DATASET_PER_CLASS` images per class
  (700 train / 100 val / 200 test) at the spec's size (224 px), the scale of the original release;
* a **board** (``an8flower train``, ``an8flower leaderboard``) renders :data:`BOARD_PER_CLASS`
  images per class (350 / 50 / 100) at :data:`BOARD_SIZE` px, the input size of the paper's
  an8Flower networks, in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DATASET_PER_CLASS", "DEFAULT_PER_CLASS", "MAX_PER_CLASS", "BOARD_PER_CLASS", "BOARD_SIZE",
    "DEFAULT_SEED", "DEFAULT_MODEL", "MODEL_NAMES", "RESULTS_DIR", "EXPORT_SHARD_SIZE", "SHOW_PER_CLASS", "SHOW_THUMB",
    "TRAIN_DEFAULTS", "INTERPRET_DEFAULTS", "MAX_DEFAULT_THREADS", "default_threads",
]

#: Images per class of a dataset folder written by ``an8flower generate`` (700 / 100 / 200).
DATASET_PER_CLASS = 1000
#: The name the dataset modules have always used for :data:`DATASET_PER_CLASS`.
DEFAULT_PER_CLASS = DATASET_PER_CLASS
#: Largest images per class anywhere (generate and the board): 100 times the original release.
MAX_PER_CLASS = 100_000
#: Images per class a board (``train``, ``leaderboard``) renders in memory (350 / 50 / 100).
BOARD_PER_CLASS = 500
#: Image side in pixels a board renders (the paper's an8Flower input size).
BOARD_SIZE = 112
#: The dataset, model and explainer seed when none is given.
DEFAULT_SEED = 0
#: The classifier a board trains and explains when none is named.
DEFAULT_MODEL = "small-cnn"
#: The package's own classifier names, as ``--help`` lists them without importing torch; the
#: registry that builds them is :data:`an8flower.eval.models.MODELS` (a test keeps the two equal).
MODEL_NAMES: tuple[str, ...] = ("lenet", "resnet18", "resnet50", "small-cnn", "vgg16")
#: The leaderboard's results folder when ``--out`` is not given.
RESULTS_DIR = "an8flower-results"
#: Rows per shard of ``an8flower export``.
EXPORT_SHARD_SIZE = 1000
#: Samples per class and thumbnail side of ``an8flower show``.
SHOW_PER_CLASS = 4
SHOW_THUMB = 112

#: The training recipe of every model the package trains (``an8flower train``, the leaderboard,
#: ``--quick``) unless a run overrides it: the defaults of :class:`~an8flower.eval.train.TrainConfig`.
#: Tuned on the small CNN at 64 px (the seed-0 datasets): test accuracy 96.7% / 98.1% (single-6c /
#: double-12c) at 150 per class (the --quick size) and 98.9% / 98.8% at 300 per class; the former
#: recipe (lr 5e-3, batch 32) gave 85% on single-6c at 100 per class. Below 150 per class
#: single-6c's 70 training images per class are too few (85% at 100 per class).
TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 30, "batch_size": 64, "lr": 1e-2, "patience": 8, "stop_at": 1.0}

#: ``an8flower interpret`` / ``explain``: VEBI's L1 radius (the paper's an8Flower value), features
#: per explanation, training images averaged per feature, features drawn per class sheet, images per
#: forward pass; and the explainer ``explain`` runs (VEBI, which needs ``--vebi``).
INTERPRET_DEFAULTS: dict[str, Any] = {"mu": 5.0, "k": 3, "top_n": 10, "max_features": 8, "batch_size": 64,
                                      "explainer": "vebi"}

#: Upper bound of :func:`default_threads`.
MAX_DEFAULT_THREADS = 4


def default_threads(environ: Mapping[str, str] | None = None, cpus: int | None = None) -> int | None:
    """The intra-op thread count torch gets when ``--threads`` is not given.

    ``None`` when ``OMP_NUM_THREADS`` is set (the user chose; torch honours it). Otherwise
    ``max(1, min(cpus // 2, 4))`` with ``cpus`` the CPUs this process may run on: half of them,
    because on a machine with simultaneous multithreading two logical CPUs share a core (so this is
    about the physical core count), and at most 4, because the small convolutions of a board gain
    little beyond that while a machine shared with other jobs loses much. Measured: on a busy 2-core
    machine torch's default of 2 threads ran ``leaderboard --quick`` about 4x slower than 1 thread.

    Args:
        environ: the environment (default ``os.environ``). cpus: usable CPUs (default: the process's
            CPU affinity, else ``os.cpu_count()``).
    """
    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS"):
        return None
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not on Linux
            cpus = os.cpu_count() or 1
    return max(1, min(cpus // 2, MAX_DEFAULT_THREADS))
