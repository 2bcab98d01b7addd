"""The published leaderboard's configurations (eval/leaderboard.toml, eval/leaderboard-gpu.toml) load
and name only explainers and metrics that exist, with every board adapter beside ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from an8flower.baselines import explainer_class, list_explainers
from an8flower.eval.config import load_config
from an8flower.baselines.reference import ORACLE
from an8flower.eval.scoring import METRICS

EVAL = Path(__file__).resolve().parent.parent / "eval"


@pytest.mark.parametrize("name", ["leaderboard.toml", "leaderboard-gpu.toml"])
def test_published_config_names_real_explainers_and_metrics(name: str) -> None:
    pytest.importorskip("captum")
    from an8flower.baselines.adapters import BOARD_ADAPTERS

    config = load_config(EVAL / name)
    assert config.size == 112 and set(config.variants) == {"single-6c", "double-12c"}
    assert set(list_explainers()) <= set(config.explainers)  # all of ours
    assert set(BOARD_ADAPTERS) <= set(config.explainers)  # and every recommended adapter
    for explainer in config.explainers:
        assert explainer == ORACLE or explainer_class(explainer) is not None
    assert set(config.metrics) >= {m for m in METRICS if not m.startswith("quantus:")}
    assert all(m in METRICS for m in config.metrics)
    for explainer in config.explainer_options:
        assert explainer in config.explainers, f"{name}: options for {explainer}, which the board does not run"


def test_the_gpu_config_is_the_cpu_one_without_the_cuts() -> None:
    cpu, gpu = load_config(EVAL / "leaderboard.toml"), load_config(EVAL / "leaderboard-gpu.toml")
    assert cpu.explainers == gpu.explainers and cpu.metrics == gpu.metrics and cpu.train == gpu.train
    assert gpu.models == ["small-cnn", "resnet18"] and gpu.per_class == 1000 and gpu.model_seeds == 3
    assert gpu.max_images == 300 and gpu.model_metric_images == 64
    assert gpu.explainer_options["rise"] == {"n_masks": 4000}
    assert cpu.per_class < gpu.per_class and cpu.max_images < gpu.max_images
