"""The leaderboard cache: keys from a cell's complete configuration, validated reads, the report union."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import zipfile

import pytest
import torch
from test_leaderboard import ColourDetector, squares

from an8flower.baselines import ExplainerSpec, complete_options, explainer_code_identity, registry
from an8flower.eval.cache import CellCache, cell_key, validate_cell
from an8flower.eval.config import RunConfig
from an8flower.eval.runner import BoardRun, run_leaderboard
from an8flower.eval.scoring import explainer_options, new_accumulators

#: RunConfig fields that enter a cell's key directly.
DIRECT = {"seed", "split", "batch_size", "device", "model_metric_images", "explainer_options", "metric_options", "amp"}
#: Fields that enter it through a hash the key holds: the dataset's (variants, data, imagenet, size,
#: per_class), the model's (models, weights, train, model_seeds; model_options are folded into the models'
#: names), the scored image ids (max_images, all_images), or that decide which cells exist (explainers, metrics);
#: per_model through all three (a model's image ids, its accumulators' image count, its training).
DERIVED = {"variants", "data", "imagenet", "size", "per_class", "models", "model_options", "weights", "train",
           "model_seeds", "max_images", "all_images", "explainers", "metrics", "per_model"}
#: Fields that change no number.
NO_KEY = {"out", "examples", "plots", "quick", "workers"}


def _key(config: RunConfig, explainer: str = "rise", metric: str = "deletion_auc", ids=(1, 2, 3),
         dataset: str = "d" * 64, model: str = "m" * 64) -> str:
    run = BoardRun(config, {"m": ColourDetector()}, False, lambda msg: None)
    data = squares()
    data.hash = dataset
    spec = ExplainerSpec.resolve(explainer, config.explainer_options)
    options = explainer_options(spec, "m", config, "an8flower")
    [acc] = new_accumulators([metric], config, len(ids))
    return cell_key(run._cell_config(data, list(ids), {"hash": model, "code": {}}, spec, options, acc))


def test_every_run_setting_is_classified() -> None:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert fields == DIRECT | DERIVED | NO_KEY, "classify the new RunConfig field in tests/test_cache.py"
    assert not (DIRECT & DERIVED) and not (DIRECT & NO_KEY) and not (DERIVED & NO_KEY)


@pytest.mark.parametrize("field, value", [
    ("seed", 1), ("split", "val"), ("batch_size", 7), ("device", "meta"), ("model_metric_images", 2),
    ("explainer_options", {"rise": {"n_masks": 10}}), ("metric_options", {"deletion_auc": {"steps": 5}}),
    ("amp", True),
])
def test_each_direct_setting_changes_the_key(tmp_path, field: str, value) -> None:
    base = RunConfig(out=str(tmp_path))
    changed = RunConfig(**{**base.to_dict(), field: value})
    assert _key(changed) != _key(base)


@pytest.mark.parametrize("field, value", [("out", "elsewhere"), ("examples", 9), ("plots", False), ("workers", 3)])
def test_settings_that_change_no_number_keep_the_key(tmp_path, field: str, value) -> None:
    base = RunConfig(out=str(tmp_path))
    if field == "out":  # the run creates its folder: keep it under tmp_path
        value = str(tmp_path / value)
    assert _key(RunConfig(**{**base.to_dict(), field: value})) == _key(base)


def test_derived_inputs_change_the_key(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path))
    base = _key(config)
    assert _key(config, dataset="e" * 64) != base
    assert _key(config, model="n" * 64) != base
    assert _key(config, ids=(1, 2, 4)) != base
    assert _key(config, explainer="gradient") != base
    assert _key(config, metric="insertion_auc") != base
    # model_metric_images limits model-based metrics only: a mask metric keeps its key.
    fewer = RunConfig(out=str(tmp_path), model_metric_images=2)
    assert _key(fewer, metric="iou_auc") == _key(config, metric="iou_auc")
    assert _key(fewer, metric="deletion_auc") != _key(config, metric="deletion_auc")


def test_options_at_their_default_value_keep_the_key(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path))
    spelt = RunConfig(out=str(tmp_path), explainer_options={"rise": {"n_masks": 4000}},
                      metric_options={"deletion_auc": {"steps": 100}})
    assert _key(spelt) == _key(config)

    def metric(heatmaps, masks, k=5, chunk=3):
        return None

    assert complete_options(metric, {"k": 5}, skip=2) == complete_options(metric, {}, skip=2) == {"k": 5, "chunk": 3}
    assert complete_options(metric, {"k": 6}, skip=2) == {"k": 6, "chunk": 3}


def test_a_user_explainer_is_keyed_by_its_source(tmp_path) -> None:
    source = tmp_path / "my_method.py"
    template = ("from an8flower.baselines import Explainer\n"
                "class Mine(Explainer):\n"
                "    def explain(self, model, images, targets):\n"
                "        return images.mean(1) * {scale}\n")

    def load(scale: float):
        source.write_text(template.format(scale=scale))
        spec = importlib.util.spec_from_file_location("my_method_for_cache_test", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.Mine

    first, second = explainer_code_identity(load(1.0)), explainer_code_identity(load(2.0))
    assert first["source_sha256"] != second["source_sha256"]
    assert explainer_code_identity(load(1.0)) == first
    builtin = explainer_code_identity(registry.explainer_class("gradient"))
    assert builtin["class"] == "an8flower.baselines.gradient.Gradient" and len(builtin["source_sha256"]) == 64


def test_a_changed_user_explainer_is_recomputed(tmp_path) -> None:
    source = tmp_path / "user_scaled.py"
    template = ("from an8flower.baselines import Explainer, register_explainer\n"
                "@register_explainer('test_user_scaled')\n"
                "class Scaled(Explainer):\n"
                "    def explain(self, model, images, targets):\n"
                "        return images.mean(1) * {scale}\n")

    def install(scale: float) -> None:
        registry._REGISTRY.pop("test_user_scaled", None)
        source.write_text(template.format(scale=scale))
        spec = importlib.util.spec_from_file_location("user_scaled", source)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))

    config = RunConfig(out=str(tmp_path / "r"), explainers=["test_user_scaled"], metrics=["pointing_game"],
                       plots=False)

    def run():
        return run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)

    try:
        install(1.0)
        assert run().computed == 1
        assert run().cached == 1
        install(-1.0)  # same name and options, other code: its old cells are not reused
        changed = run()
        assert changed.cached == 0 and changed.computed == 1
    finally:
        registry._REGISTRY.pop("test_user_scaled", None)


def _cell_files(out) -> list[str]:
    root = os.path.join(out, "cache")
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".json"))


@pytest.mark.parametrize("damage", ["[]", "null", "only-key", "truncated", "edited-value", "old-format", "bad-schema"])
def test_a_damaged_cell_is_recomputed_with_a_warning_naming_it(tmp_path, damage: str) -> None:
    out = str(tmp_path / "r")
    config = RunConfig(out=out, explainers=["gradient"], metrics=["iou_auc"], batch_size=4, plots=False)
    first = run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    (path,) = _cell_files(out)
    doc = json.loads(open(path).read())
    text = {
        "[]": "[]",
        "null": "null",
        "only-key": json.dumps({"key": doc["key"]}),
        "truncated": open(path).read()[:40],
        "edited-value": json.dumps({**doc, "cell": {**doc["cell"], "value": 0.123}}),
        "old-format": json.dumps({**doc, "format": 1}),
        "bad-schema": json.dumps({**doc, "cell": {**doc["cell"], "n": "nine"}}),
    }[damage]
    with open(path, "w") as fh:
        fh.write(text)
    messages: list[str] = []
    again = run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False,
                            log=messages.append)
    assert again.computed == 1 and again.cached == 0
    assert any(f"damaged cache file {path}" in m and "recomputed" in m for m in messages)
    assert again.cells[0]["value"] == first.cells[0]["value"]
    assert again.record["cells"]["damaged_cache_files"] == 1
    assert json.loads(open(path).read())["cell"]["value"] == first.cells[0]["value"]  # rewritten whole


def test_a_truncated_example_file_is_recomputed(tmp_path) -> None:
    out = str(tmp_path / "r")
    config = RunConfig(out=out, explainers=["gradient"], metrics=["iou_auc"], batch_size=4, examples=2)
    run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    (npz,) = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(out, "cache")) for f in fs if f.endswith(".npz")]
    data = open(npz, "rb").read()
    with open(npz, "wb") as fh:
        fh.write(data[: len(data) // 2])
    messages: list[str] = []
    run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False, log=messages.append)
    assert any(f"damaged cache file {npz}" in m for m in messages)
    with zipfile.ZipFile(npz) as z:  # rewritten whole
        assert z.namelist() == ["heatmaps.npy"]


def test_validate_cell_rejects_what_json_allows() -> None:
    good = {"dataset": "toy", "variant": "v", "model": "m", "explainer": "e", "metric": "iou_auc", "split": "test",
            "seed": 0, "options": {}, "metric_options": {}, "n": 2, "extra": {}, "value": 0.5, "error": None,
            "scores": [0.4, 0.6, None], "image_ids": [1, 2, 3]}
    assert validate_cell(good) is None
    assert "not an object" in validate_cell([])
    assert "no 'metric'" in validate_cell({k: v for k, v in good.items() if k != "metric"})
    assert "differ in length" in validate_cell({**good, "image_ids": [1, 2]})
    assert "finite scores" in validate_cell({**good, "n": 3})
    assert "'seed' is a bool" in validate_cell({**good, "seed": True})


def test_fresh_recomputes_every_requested_cell(tmp_path) -> None:
    config = RunConfig(out=str(tmp_path / "r"), explainers=["gradient"], metrics=["iou_auc", "pointing_game"],
                       plots=False)
    run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    assert run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False).cached == 2
    fresh = run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False, fresh=True)
    assert fresh.cached == 0 and fresh.computed == 2


def test_a_narrower_rerun_reports_everything_cached_for_this_configuration(tmp_path) -> None:
    out = tmp_path / "r"
    wide = RunConfig(out=str(out), explainers=["oracle", "gradient", "random"], metrics=["iou_auc", "pointing_game"])
    run_leaderboard(wide, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    wide_csv = (out / "results.csv").read_text()
    narrow = RunConfig(out=str(out), explainers=["gradient"], metrics=["pointing_game"])
    messages: list[str] = []
    summary = run_leaderboard(narrow, datasets=[squares()], models={"m": ColourDetector()}, progress=False,
                              log=messages.append)
    assert summary.computed == 0 and summary.cached == 1
    assert summary.record["cells"]["from_earlier_runs"] == 5
    assert any("also shows 5 cells" in m for m in messages)
    assert sorted((out / "results.csv").read_text().splitlines()) == sorted(wide_csv.splitlines())
    assert "| *oracle* |" in (out / "leaderboard.md").read_text()
    # Another setting (more images) is another configuration: the cached cells of the first do not join.
    other = RunConfig(out=str(out), explainers=["gradient"], metrics=["pointing_game"], max_images=4)
    summary = run_leaderboard(other, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    assert summary.record["cells"]["from_earlier_runs"] == 0
    assert [(c["explainer"], c["metric"]) for c in summary.cells] == [("gradient", "pointing_game")]


def test_plots_of_a_group_no_longer_reported_are_removed(tmp_path) -> None:
    out = tmp_path / "r"
    a = squares()
    b = squares()
    b.variant, b.hash = "squares-b", "b" * 64
    config = RunConfig(out=str(out), explainers=["gradient"], metrics=["iou_auc"], examples=2)
    run_leaderboard(config, datasets=[a, b], models={"m": ColourDetector()}, progress=False)
    assert (out / "examples_toy_squares-b_m_test.png").is_file()
    run_leaderboard(config, datasets=[a], models={"m": ColourDetector()}, progress=False)
    assert not (out / "examples_toy_squares-b_m_test.png").exists()
    assert (out / "examples_toy_squares_m_test.png").is_file()
    files = json.loads((out / "run.json").read_text())["files"]
    assert "examples_toy_squares_m_test.png" in files and "examples_toy_squares-b_m_test.png" not in files


def test_cache_put_refuses_an_invalid_cell(tmp_path) -> None:
    cache = CellCache(str(tmp_path))
    with pytest.raises(ValueError, match="not a valid cell"):
        cache.put("a" * 64, {}, {"dataset": "x"})
    assert sys.modules["an8flower.eval.cache"].CACHE_FORMAT == 2
    assert torch.__version__  # the key records torch's version (see cell_config)


def test_adapter_and_quantus_cells_are_keyed_by_library_version(tmp_path) -> None:
    pytest.importorskip("captum")
    from an8flower.baselines import explainer_class

    identity = explainer_code_identity(explainer_class("captum:Saliency"))
    import captum

    assert identity["library"] == {"library": "captum", "version": captum.__version__, "method": "Saliency"}
    pytest.importorskip("quantus")
    config = RunConfig(out=str(tmp_path), metrics=["quantus:PointingGame"])
    run = BoardRun(config, {"m": ColourDetector()}, False, lambda msg: None)
    [acc] = new_accumulators(["quantus:PointingGame"], config, 2)
    cfg = run._cell_config(squares(), [1, 2], {"hash": "m" * 64}, ExplainerSpec.resolve("gradient"), {}, acc)
    assert cfg["metric"]["library"] == __import__("importlib.metadata").metadata.version("quantus")
