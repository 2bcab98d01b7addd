"""Render-only throughput: images per second of :func:`an8flower.render.render`, one process.

For each variant and image side (112 and 224 px), one benchmark round renders ``BATCH``
consecutive sample indices (all classes, every kind of background) in the current process; the
rate is ``BATCH / (mean round time)`` (wall clock). The CPU time of the process is measured too
(``time.process_time``): on a shared machine wall time also counts the time other processes hold
the core, so ``images per CPU-second`` is the per-core figure. The issue's target is >= 1,000
images/s per core at 224 px.
Run::

    python -m pytest benchmarks/bench_render.py --benchmark-only -p no:cacheprovider -s
"""

from __future__ import annotations

import time

import pytest

from an8flower.render import render
from an8flower.spec import load_spec

BATCH = 200


@pytest.mark.parametrize("size", [112, 224])
@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_render_throughput(benchmark, variant: str, size: int) -> None:
    spec = load_spec(variant)
    start = [0]
    cpu = [0.0]

    def batch() -> None:
        first = start[0]
        t0 = time.process_time()
        for i in range(first, first + BATCH):
            render(spec, 0, i, size)
        cpu[0] += time.process_time() - t0
        start[0] = first + BATCH

    batch()  # warm-up: template caches, OpenCV
    cpu[0] = 0.0
    rounds = 10
    benchmark.pedantic(batch, rounds=rounds, iterations=1)
    rate = BATCH / benchmark.stats.stats.mean
    cpu_rate = BATCH * rounds / cpu[0]
    benchmark.extra_info["images_per_s"] = round(rate, 1)
    benchmark.extra_info["images_per_cpu_s"] = round(cpu_rate, 1)
    print(f"\n{variant} {size}px: {rate:,.0f} images/s wall, {cpu_rate:,.0f} images per CPU-second")
