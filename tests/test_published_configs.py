"""The published leaderboard's configurations (``--config published`` and ``published-gpu``, shipped in
an8flower/configs/) load and name only explainers and metrics that exist, with every board adapter
beside ours; the published results (docs/leaderboard/) hold no machine path."""

from __future__ import annotations

from pathlib import Path

import pytest

from an8flower.baselines import explainer_class, list_explainers
from an8flower.baselines.reference import ORACLE
from an8flower.eval.config import load_config
from an8flower.eval.scoring import METRICS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["published", "published-gpu"])
def test_published_config_names_real_explainers_and_metrics(name: str) -> None:
    pytest.importorskip("captum")
    from an8flower.baselines.adapters import BOARD_ADAPTERS

    config = load_config(name)
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
    cpu, gpu = load_config("published"), load_config("published-gpu")
    assert cpu.explainers == gpu.explainers and cpu.metrics == gpu.metrics and cpu.train == gpu.train
    assert gpu.models == ["small-cnn", "resnet18", "vit-tiny"] and gpu.per_class == 1000 and gpu.model_seeds == 3
    assert gpu.max_images == 300 and gpu.model_metric_images == 64
    assert gpu.explainer_options["rise"] == {"n_masks": 4000}
    assert cpu.per_class < gpu.per_class and cpu.max_images < gpu.max_images
    # the ViT: scored on fewer images on the CPU (the listed cut), trained with its own recipe on both
    assert cpu.models == ["small-cnn", "vit-tiny"] and gpu.max_images_for("vit-tiny") == gpu.max_images
    assert cpu.max_images_for("vit-tiny") < cpu.max_images_for("small-cnn") == cpu.max_images
    assert cpu.model_metric_images_for("vit-tiny") < cpu.model_metric_images
    assert cpu.train_for("vit-tiny") == gpu.train_for("vit-tiny") == {} and cpu.train_for("small-cnn") == cpu.train


def test_the_published_config_loads_the_shipped_checkpoints_of_every_model_and_variant(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    config = load_config("published")
    assert set(config.weights) == {f"{v}:{m}" for v in config.variants for m in config.models}
    for path in config.weights.values():
        assert Path(path).is_file() and Path(path).parent == ROOT / "docs" / "leaderboard" / "models"


def test_a_published_name_is_the_packaged_file_and_its_out_is_taken_from_the_working_directory(tmp_path,
                                                                                             monkeypatch) -> None:
    import importlib.resources

    from an8flower.eval.config import PUBLISHED_CONFIGS, resolve_config_path

    packaged = importlib.resources.files("an8flower.configs")
    for name, file in PUBLISHED_CONFIGS.items():
        path, _ = resolve_config_path(name)
        assert Path(path).read_bytes() == packaged.joinpath(file).read_bytes()
    monkeypatch.chdir(tmp_path)
    assert load_config("published").out == str(tmp_path / "an8flower-results-full")
    assert load_config("published-gpu").out == str(tmp_path / "an8flower-results-gpu")
    # a copy given by its path keeps the file-relative rule
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "copy.toml").write_bytes(packaged.joinpath("published.toml").read_bytes())
    assert load_config(tmp_path / "sub" / "copy.toml").out == str(tmp_path / "sub" / "an8flower-results-full")
    # one copy only: no other file in the repository holds the published configuration
    tops = [t for t in ROOT.iterdir() if t.is_dir() and not t.name.startswith(".") and not t.name.startswith("an8flower-")]
    copies = [p for t in tops for p in t.rglob("*.toml")
              if p.read_bytes() == packaged.joinpath("published.toml").read_bytes()]
    assert [p.relative_to(ROOT).as_posix() for p in copies] == ["an8flower/configs/published.toml"]


def test_the_published_run_record_holds_no_machine_path() -> None:
    import json

    text = (ROOT / "docs" / "leaderboard" / "run.json").read_text()
    record = json.loads(text)
    assert record["config"]["out"] == "."
    assert record["command"][:4] == ["an8flower", "leaderboard", "--config", "published"]
    for absolute in ("/work/", "/home/", "/tmp/", "/Users/", "C:\\"):
        assert absolute not in text
