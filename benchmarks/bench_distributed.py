"""The leaderboard over 2 processes (torchrun, gloo) against 1 process, on the same small board.

Both runs score the same cells (the board of ``tests/test_distributed.py``: 24 images, 3
explainers, 5 metrics, on a checkpoint trained once); the 2-process run pays for the process group,
the collectives and a second Python+torch start-up. On a 2-core CPU it cannot be faster: the
ratio is its overhead. Runs alternate (1, 2, 1, 2) and the best of each is kept. Run::

    python -m pytest benchmarks/bench_distributed.py --benchmark-only -p no:cacheprovider -s
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_distributed import BOARD, _an8flower, _checkpoint  # noqa: E402

ROUNDS = 2


def test_two_processes_against_one(benchmark) -> None:
    work = tempfile.mkdtemp(prefix="an8flower-bench-dist-")
    try:
        first = os.path.join(work, "train")
        done = _an8flower(*BOARD, "--out", first)
        assert done.returncode == 0, done.stderr[-2000:]
        weights = ["--weights", _checkpoint(Path(first))]
        best = {1: float("inf"), 2: float("inf")}
        for r in range(ROUNDS):
            for n in (1, 2):
                out = os.path.join(work, f"run-{n}-{r}")
                t0 = time.perf_counter()
                done = _an8flower(*BOARD, *weights, "--out", out, processes=n)
                best[n] = min(best[n], time.perf_counter() - t0)
                assert done.returncode == 0, done.stderr[-2000:]
        benchmark.extra_info.update({"one_process_s": best[1], "two_processes_s": best[2]})
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
        print(f"\nboard wall time, best of {ROUNDS}: 1 process {best[1]:.1f} s, 2 processes (torchrun, gloo) "
              f"{best[2]:.1f} s; throughput ratio 2/1 = {best[1] / best[2]:.2f} on {os.cpu_count()} cores")
    finally:
        shutil.rmtree(work, ignore_errors=True)
