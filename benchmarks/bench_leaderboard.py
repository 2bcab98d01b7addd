"""Leaderboard cost: time per image and explainer, and the share spent in explainers, metrics and I/O.

Two ways to run it:

* ``python -m pytest benchmarks/bench_leaderboard.py --benchmark-only -p no:cacheprovider -s``
  runs one leaderboard over every explainer and metric (``single-6c``, 64 px, 32 test images,
  ``small-cnn`` with random weights so that no training is timed, the ``--quick`` explainer
  options) on the CPU (and again on CUDA when a GPU is present), and prints the per-explainer
  table and the time split read back from its ``run.json``;
* ``python -m pytest benchmarks/bench_leaderboard.py -k quick --benchmark-only -p no:cacheprovider -s``
  times the quickstart's main job, ``an8flower leaderboard --quick`` in a fresh folder, as a user
  runs it (a subprocess: start-up, rendering, training both variants, every explainer and metric,
  the report), and prints its wall time, the split and both test accuracies (the README quotes it;
  the target is under 2 minutes on 2 idle cores);
* ``python benchmarks/bench_leaderboard.py RUN_JSON`` prints the same table for any finished run,
  e.g. the published ``docs/leaderboard/run.json`` (the full leaderboard).

Timings are wall-clock (``time.perf_counter``) as the runner records them: ``explainers`` is the
time inside explainer calls, ``metrics`` the scoring (deletion/insertion forward passes and the
randomisation test's extra explainer calls included), ``io`` the cache, checkpoint and report
writes, ``data`` rendering or reading images, ``train``/``fit`` training the model and fitting VEBI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import torch


def summarise(record: dict[str, Any]) -> str:
    """A text table of a ``run.json``: seconds per image per explainer, and the time split."""
    t = record["timings"]
    lines = [f"{'explainer':<22}{'images':>8}{'s/image':>11}{'fit s':>8}"]
    per = sorted(t["explainers"].items(), key=lambda kv: -(kv[1].get("seconds_per_image") or 0))
    for name, v in per:
        spi = v.get("seconds_per_image")
        lines.append(f"{name:<22}{v['images']:>8}{spi if spi is not None else float('nan'):>11.4f}{v.get('fit_seconds', 0):>8.2f}")
    secs = t["seconds"]
    total = sum(secs.values())
    lines.append("")
    lines.append("time split: " + ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in secs.items() if total))
    lines.append(f"wall: {t['wall_seconds']:.1f} s on {record['platform']['device']} "
                 f"({record['platform']['cpu_count']} CPUs, {record['platform']['torch_threads']} torch threads)")
    metrics = sorted(t["metrics"].items(), key=lambda kv: -kv[1])
    lines.append("metrics: " + ", ".join(f"{k} {v:.1f} s" for k, v in metrics))
    return "\n".join(lines)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_leaderboard_all_explainers(benchmark, tmp_path, device) -> None:
    from an8flower.eval.config import QUICK, RunConfig
    from an8flower.eval.models import build_model
    from an8flower.eval.runner import run_leaderboard
    from an8flower.eval.train import model_card, save_checkpoint

    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, build_model("small-cnn", 6, seed=0), model_card("small-cnn", 6, (3, 64, 64), {}, {}, seed=0))
    records = []

    def run() -> None:
        out = tmp_path / f"run{len(records)}"
        config = RunConfig(out=str(out), variants=["single-6c"], size=64, per_class=30, all_images=True,
                           max_images=32, model_metric_images=16, batch_size=32, device=device,
                           weights={"small-cnn": str(ckpt)}, explainer_options=QUICK["explainer_options"],
                           metric_options=QUICK["metric_options"], plots=True)
        records.append(run_leaderboard(config, progress=False).record)

    benchmark.pedantic(run, rounds=1, iterations=1)
    record = records[-1]
    benchmark.extra_info["seconds"] = record["timings"]["seconds"]
    benchmark.extra_info["seconds_per_image"] = {k: v["seconds_per_image"] for k, v in record["timings"]["explainers"].items()}
    print(f"\n[{device}]\n" + summarise(record))


def test_quick_preset(benchmark, tmp_path) -> None:
    out = tmp_path / "quick"
    walls = []

    def run() -> None:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "an8flower", "leaderboard", "--quick", "--quiet", "--out", str(out)],
                              capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - t0)
        assert done.returncode == 0, done.stderr[-2000:]

    benchmark.pedantic(run, rounds=1, iterations=1)
    record = json.loads((out / "run.json").read_text())
    accuracy = {f"{m['variant']}": m["accuracy"]["test"] for m in record["models"]}
    benchmark.extra_info["wall_seconds"] = walls[-1]
    benchmark.extra_info["accuracy"] = accuracy
    print(f"\n[--quick] wall {walls[-1]:.1f} s (target < 120 s on 2 idle cores); test accuracy "
          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in accuracy.items()) + "\n" + summarise(record))


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isfile(sys.argv[1]):
        sys.exit("usage: python benchmarks/bench_leaderboard.py RUN_JSON")
    with open(sys.argv[1], encoding="utf-8") as fh:
        print(summarise(json.load(fh)))
