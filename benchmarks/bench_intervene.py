"""Counterfactual renders against plain renders, and the reliance measurement's time per image.

* ``test_intervention_vs_render``: per variant at 112 and 224 px, rounds alternate plain
  ``render(spec, 0, i, size)`` with one kind of intervention of the same indices (``label``: painted
  as the next class; ``recolour``: the petals white; ``remove``: the petals left out), one process.
  The figure is the ratio of CPU time, plain over intervened, summed over the rounds (the
  issue's target: >= 0.8, an intervention costs no more than a render).
* ``test_reliance_time_per_image``: :func:`an8flower.eval.reliance.measure_reliance` of the
  untrained small CNN on 48 ``double-12c`` images at 64 px (the leaderboard's ``--quick`` size),
  one render process: CPU seconds per image, with the renders per image and their share of the
  time (the rest: the model's forward passes).

Run::

    python -m pytest benchmarks/bench_intervene.py --benchmark-only -p no:cacheprovider -s
"""

from __future__ import annotations

import time

import pytest

from an8flower.intervene import intervene
from an8flower.render import render
from an8flower.spec import load_spec

BATCH, ROUNDS = 60, 6


def _kwargs(kind: str, spec, i: int) -> dict:
    if kind == "label":
        return {"label": (i + 1) % spec.num_classes}
    if kind == "recolour":
        return {"recolour": {"petals": "white"}}
    return {"remove": ["petals"]}


@pytest.mark.parametrize("kind", ["label", "recolour", "remove"])
@pytest.mark.parametrize("size", [112, 224])
@pytest.mark.parametrize("variant", ["single-6c", "double-12c"])
def test_intervention_vs_render(benchmark, variant: str, size: int, kind: str) -> None:
    spec = load_spec(variant)
    cpu = {"render": 0.0, "intervene": 0.0}
    start = [0]

    def one_round() -> None:
        first = start[0]
        idx = range(first, first + BATCH)
        t0 = time.process_time()
        for i in idx:
            render(spec, 0, i, size)
        t1 = time.process_time()
        for i in idx:
            intervene(spec, 0, i, size, **_kwargs(kind, spec, i))
        t2 = time.process_time()
        cpu["render"] += t1 - t0
        cpu["intervene"] += t2 - t1
        start[0] = first + BATCH

    one_round()  # warm-up
    cpu.update(render=0.0, intervene=0.0)
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    n = BATCH * ROUNDS
    ratio = cpu["render"] / cpu["intervene"]
    benchmark.extra_info.update(renders_per_cpu_s=round(n / cpu["render"], 1),
                                interventions_per_cpu_s=round(n / cpu["intervene"], 1), ratio=round(ratio, 3))
    print(f"\n{variant} {size}px {kind}: {n / cpu['intervene']:,.0f} interventions vs {n / cpu['render']:,.0f} "
          f"renders per CPU-second: ratio {ratio:.3f} (target >= 0.8)")


def test_reliance_time_per_image(benchmark) -> None:
    import torch

    from an8flower.eval import reliance as R
    from an8flower.eval.models import build_model

    spec = load_spec("double-12c")
    model = build_model("small-cnn", spec.num_classes, seed=0).eval()
    torch.set_num_threads(1)
    n = 48
    stats = {"cpu": 0.0, "render": 0.0, "rounds": 0}
    many = R.intervene_many

    def timed_many(*args, **kwargs):
        t = time.process_time()
        try:
            return many(*args, **kwargs)
        finally:
            stats["render"] += time.process_time() - t

    def one_round() -> None:
        t = time.process_time()
        R.measure_reliance(model, spec, 0, range(n), size=64, workers=1, progress=False)
        stats["cpu"] += time.process_time() - t
        stats["rounds"] += 1

    R.intervene_many = timed_many
    try:
        one_round()  # warm-up
        stats.update(cpu=0.0, render=0.0, rounds=0)
        benchmark.pedantic(one_round, rounds=3, iterations=1)
    finally:
        R.intervene_many = many
    per_image = stats["cpu"] / (stats["rounds"] * n)
    renders = 1 + (spec.num_classes - 1) + 2 * len(spec.parts) - 1
    benchmark.extra_info.update(cpu_s_per_image=round(per_image, 5), renders_per_image=renders,
                                render_share=round(stats["render"] / stats["cpu"], 3))
    print(f"\nreliance, double-12c 64 px, small CNN, 1 thread: {1000 * per_image:.1f} ms CPU per image "
          f"({renders} renders per image; rendering {100 * stats['render'] / stats['cpu']:.0f}% of the time)")
