"""``quantus:<Metric>`` columns: equal to a direct Quantus call on our batches, wired into the board."""

from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from test_leaderboard import ColourDetector, squares

from an8flower.baselines import build_explainer
from an8flower.cli import main
from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig
from an8flower.eval.models import build_model
from an8flower.eval.quantus_metrics import SUPPORTED, UNSUPPORTED, list_quantus_metrics, metric_spec, quantus_scores
from an8flower.eval.runner import METRICS, run_leaderboard

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def batch():
    data = squares(n=6)
    model = ColourDetector().eval()
    x = data.test.float_images(torch.arange(6))
    t, masks = data.test.labels[:6], data.test.masks[:6]
    explainer = build_explainer("input_x_gradient")
    return model, x, t, masks, explainer, explainer(model, x, t)


def direct(name: str, model, x, t, masks, heatmaps, explainer=None, seed=0, **options) -> np.ndarray:
    """Quantus's own call on the same arrays, under the same seeds."""
    def explain_func(model, inputs, targets, **kwargs):
        return explainer(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()[:, None]

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        np.random.seed(seed)
        metric = getattr(quantus, name)(disable_warnings=True, display_progressbar=False, **options)
        scores = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=heatmaps.numpy()[:, None],
                        s_batch=masks.numpy()[:, None].astype(np.float32), channel_first=True,
                        explain_func=explain_func if explainer else None, device="cpu", batch_size=x.shape[0])
    return np.asarray(scores, dtype=np.float64)


@pytest.mark.parametrize("name", ["PointingGame", "AUC", "TopKIntersection", "RelevanceRankAccuracy", "Sparseness",
                                  "Complexity"])
def test_heatmap_metrics_equal_a_direct_call(batch, name) -> None:
    model, x, t, masks, explainer, h = batch
    options = {"k": 20} if name == "TopKIntersection" else {}
    ours = quantus_scores(f"quantus:{name}", options, model, x, t, h, masks, explainer)
    assert ours.dtype == torch.float64 and ours.shape == (6,)
    np.testing.assert_array_equal(ours.numpy(), direct(name, model, x, t, masks, h, **options))


def test_model_metrics_equal_a_direct_call_under_the_same_seed(batch) -> None:
    model, x, t, masks, explainer, h = batch
    opts = {"return_aggregate": False, "nr_runs": 10, "subset_size": 32}
    ours = quantus_scores("quantus:FaithfulnessCorrelation", opts, model, x, t, h, masks, explainer, seed=4)
    np.testing.assert_allclose(ours.numpy(), direct("FaithfulnessCorrelation", model, x, t, masks, h, seed=4, **opts))
    again = quantus_scores("quantus:FaithfulnessCorrelation", opts, model, x, t, h, masks, explainer, seed=4)
    assert torch.equal(ours, again)
    sens = quantus_scores("quantus:MaxSensitivity", {"nr_samples": 3}, model, x, t, h, masks, explainer, seed=1)
    np.testing.assert_allclose(sens.numpy(), direct("MaxSensitivity", model, x, t, masks, h, explainer, seed=1,
                                                    nr_samples=3))


def test_nan_and_booleans(batch) -> None:
    model, x, t, masks, explainer, h = batch
    h = h.clone()
    h[2] = 0.0  # Quantus's max-normalisation of an all-zero map divides by zero
    complexity = quantus_scores("quantus:Complexity", {}, model, x, t, h, masks, explainer)
    assert math.isnan(complexity[2]) and torch.isfinite(complexity[[0, 1, 3, 4, 5]]).all()
    pointing = quantus_scores("quantus:PointingGame", {}, model, x, t, h, masks, explainer)
    assert set(pointing.tolist()) <= {0.0, 1.0}


def test_specs_and_names() -> None:
    spec = METRICS["quantus:PointingGame"]
    assert spec.kind == "quantus" and spec.higher_is_better and spec.label == "Q PointingGame"
    assert METRICS["quantus:Infidelity"].kind == "quantus_model" and not METRICS["quantus:Infidelity"].higher_is_better
    assert METRICS["quantus:PixelFlipping"].defaults == {"features_in_step": 64, "return_auc_per_sample": True}
    assert "quantus:AUC" in METRICS and "quantus:AUC" not in list(METRICS)  # resolved, not listed by default
    assert set(list_quantus_metrics()) == {f"quantus:{n}" for n in SUPPORTED}
    assert not set(SUPPORTED) & set(UNSUPPORTED)
    with pytest.raises(UsageError, match="quantus:Focus is not supported: needs 2 x 2 mosaics"):
        metric_spec("quantus:Focus")
    with pytest.raises(UsageError, match="unknown Quantus metric 'quantus:Pointing'"):
        "quantus:Pointing" in METRICS  # noqa: B015 - the membership test raises


def test_missing_quantus_is_a_usage_error_naming_the_extra(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "quantus", None)
    with pytest.raises(UsageError, match=r'pip install "an8flower\[quantus\]"'):
        metric_spec("quantus:AUC")
    assert list_quantus_metrics() == []
    out = tmp_path / "r"
    assert main(["leaderboard", "--out", str(out), "--metric", "quantus:AUC", "--quiet"]) == 2
    assert 'an8flower[quantus]' in capsys.readouterr().err and not out.exists()


def test_board_with_quantus_columns_and_an_adapter_that_fails_on_one_model(tmp_path) -> None:
    """Quantus's PointingGame and AUC beside ours on the same heatmaps; Captum's LRP fails on the
    small CNN (no rule for its Normalize module) and is recorded as that model's cell error.
    (Quantus refuses batches whose heatmaps are all negative: such a cell is an error too.)"""
    data = squares()
    torch.manual_seed(0)
    models = {"detector": ColourDetector(), "cnn": build_model("small-cnn", 3)}
    config = RunConfig(out=str(tmp_path / "r"),
                       explainers=["oracle", "gradient", "captum:LRP", "zennit:EpsilonPlusFlat"],
                       metrics=["pointing_game", "pixel_auc", "quantus:PointingGame", "quantus:AUC",
                                "quantus:Sparseness"],
                       batch_size=4, plots=False, all_images=True)
    summary = run_leaderboard(config, datasets=[data], models=models, progress=False)
    cells = {(c["model"], c["explainer"], c["metric"]): c for c in summary.cells}
    for model in models:
        for e in ("oracle", "gradient"):
            ours, theirs = cells[model, e, "pixel_auc"], cells[model, e, "quantus:AUC"]
            assert theirs["error"] is None and theirs["n"] == 9
            assert theirs["value"] == pytest.approx(ours["value"], abs=1e-6), (model, e)  # same formula
        assert cells[model, "oracle", "quantus:PointingGame"]["value"] == 1.0
    lrp = {m: cells[m, "captum:LRP", "pointing_game"] for m in models}
    assert lrp["detector"]["error"] is None and lrp["detector"]["n"] == 9
    assert "Normalize" in lrp["cnn"]["error"] and lrp["cnn"]["n"] == 0
    errors = {(e["model"], e["explainer"], e["metric"]): e["error"] for e in summary.record["errors"]}
    assert {k for k in errors if k[1] == "captum:LRP"} == {("cnn", "captum:LRP", m) for m in config.metrics}
    assert all(k[1] == "captum:LRP" or "Quantus" in v or "Attributions" in v for k, v in errors.items())
    md = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "Q PointingGame" in md and "Q AUC" in md and "zennit:EpsilonPlusFlat" in md
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["metrics"]["quantus:Sparseness"]["kind"] == "quantus"
    rerun = run_leaderboard(config, datasets=[data], models=models, progress=False)  # cached, errors retried
    assert rerun.cached == summary.computed - len(errors) and rerun.computed == len(errors)


def test_cli_routes_quantus_options_and_rejects_unknown_names(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert main(["leaderboard", "--out", str(out), "--metric", "quantus:Focus", "--quiet"]) == 2
    assert "needs 2 x 2 mosaics" in capsys.readouterr().err
    assert main(["leaderboard", "--out", str(out), "--explainer", "captum:Salience", "--quiet"]) == 2
    assert "has no attribution class 'Salience'" in capsys.readouterr().err
    assert main(["leaderboard", "--out", str(out), "--explainer", "gradient", "--explainer-option",
                 "captum:Nope.x=1", "--quiet"]) == 2
    assert "has no attribution class 'Nope'" in capsys.readouterr().err
    assert not out.exists()
