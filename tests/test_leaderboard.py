"""The leaderboard runner, its cache, its reports and the ``train``/``leaderboard`` commands."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from an8flower.baselines import Explainer, registry
from an8flower.cli import main
from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig, load_config, quick_config
from an8flower.eval.models import build_model, model_hash
from an8flower.eval.report import RESULT_COLUMNS, leaderboard_markdown, leaderboard_tables
from an8flower.eval.runner import PreparedData, TensorSplit, run_leaderboard, training_config
from an8flower.eval.stats import mean_ci
from an8flower.eval.train import model_card, save_checkpoint

COLOURS = torch.tensor([[230, 25, 25], [25, 200, 25], [25, 50, 230]], dtype=torch.uint8)


# ------------------------------------------------------------------------- a hand-built task


def squares(n: int = 9, size: int = 32) -> PreparedData:
    """Coloured 8x8 squares (class = colour) at known places on a grey noisy background."""
    g = torch.Generator().manual_seed(0)
    images = (100 + torch.randint(0, 40, (n, 3, size, size), generator=g)).to(torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    labels = torch.arange(n) % 3
    for i in range(n):
        y, x = 3 * i % (size - 8), 5 * i % (size - 8)
        images[i, :, y : y + 8, x : x + 8] = COLOURS[labels[i]].view(3, 1, 1)
        masks[i, y : y + 8, x : x + 8] = True
    test = TensorSplit(images, labels, masks, masks.to(torch.uint8), ids=range(100, 100 + n))
    return PreparedData("toy", "squares", "test", test.sha256(), ["red", "green", "blue"], ["background", "square"],
                        ["square"], None, None, test, size)


class ColourDetector(nn.Module):
    """logit_c = sum over pixels of relu(<w_c, x> - b): fires only on pixels of colour c.

    On the squares task the input gradient of the true class is non-zero exactly on the square,
    with the same magnitude everywhere, so a gradient map equals the mask.
    """

    def __init__(self) -> None:
        super().__init__()
        w = COLOURS.float() / 255.0 - 0.45
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(w.view(3, 3, 1, 1))
            self.conv.bias.copy_(-(w * (COLOURS.float() / 255.0)).sum(1) + 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).sum(dim=(2, 3))


@pytest.fixture
def custom_explainers():
    """Register test explainers (a counter, one that raises, one returning NaN); remove them after."""
    calls = {"n": 0}

    class Counting(Explainer):
        def explain(self, model, images, targets):
            calls["n"] += 1
            return images.mean(1)

    class Failing(Explainer):
        def explain(self, model, images, targets):
            raise RuntimeError("boom on purpose")

    class NaNs(Explainer):
        def explain(self, model, images, targets):
            out = images.mean(1).clone()
            out[-1, 0, 0] = float("nan")
            return out

    names = {"test_counting": Counting, "test_failing": Failing, "test_nan": NaNs}
    for name, cls in names.items():
        registry.register_explainer(name)(cls)
    yield calls
    for name in names:
        registry._REGISTRY.pop(name, None)


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------- runner


def test_oracle_is_the_ceiling_and_random_is_below_a_real_explainer(tmp_path) -> None:
    data = squares()
    config = RunConfig(out=str(tmp_path / "r"), explainers=["oracle", "gradient", "random", "centre"],
                       metrics=["iou_auc", "pointing_game", "part_attribution"], batch_size=4, plots=False)
    summary = run_leaderboard(config, datasets=[data], models={"detector": ColourDetector()}, progress=False)
    cells = {(c["explainer"], c["metric"]): c for c in summary.cells}
    assert summary.record["models"][0]["accuracy"]["test"] == 1.0
    # The mask as heatmap, and a gradient map equal to the mask: IoU 1 at every threshold.
    assert cells["oracle", "iou_auc"]["value"] == 1.0 and cells["oracle", "iou_auc"]["n"] == 9
    assert cells["gradient", "iou_auc"]["value"] == pytest.approx(1.0)
    assert cells["oracle", "pointing_game"]["value"] == 1.0
    for ref in ("random", "centre"):
        assert cells[ref, "iou_auc"]["value"] < 0.3
        assert cells[ref, "iou_auc"]["value"] < cells["gradient", "iou_auc"]["value"]
    # part_attribution's per-image score is the share on the discriminative part: 1 for the oracle.
    assert cells["oracle", "part_attribution"]["value"] == 1.0
    assert cells["oracle", "part_attribution"]["extra"]["share"] == [0.0, 1.0]
    # IoU curve of the oracle, kept for the plot: 1 at every threshold of the default grid.
    assert cells["oracle", "iou_auc"]["extra"]["curve"] == [1.0] * 19
    table = json.loads((tmp_path / "r" / "leaderboard.json").read_text())["tables"][0]
    assert table["rows"][0]["explainer"] == "oracle"
    assert table["best"]["iou_auc"] == ["gradient"]  # the oracle is never the column's best


def test_only_correctly_classified_images_count_unless_all_images(tmp_path) -> None:
    data = squares()
    wrong = ColourDetector()
    with torch.no_grad():  # swap the red and green detectors: only the blue squares are classified right
        wrong.conv.weight[[0, 1]] = wrong.conv.weight[[1, 0]].clone()
        wrong.conv.bias[[0, 1]] = wrong.conv.bias[[1, 0]].clone()
    base = dict(explainers=["oracle"], metrics=["iou_auc"], plots=False)
    s = run_leaderboard(RunConfig(out=str(tmp_path / "a"), **base), datasets=[data], models={"m": wrong}, progress=False)
    assert s.cells[0]["n"] == 3 and s.cells[0]["image_ids"] == [102, 105, 108]
    assert s.record["models"][0]["accuracy"]["test"] == pytest.approx(1 / 3, abs=1e-6)
    s = run_leaderboard(RunConfig(out=str(tmp_path / "b"), all_images=True, max_images=4, **base),
                        datasets=[data], models={"m": wrong}, progress=False)
    assert s.cells[0]["n"] == 4 and s.cells[0]["image_ids"] == [100, 101, 102, 103]


def test_resume_skips_cached_cells_and_extends_with_new_ones(tmp_path, custom_explainers) -> None:
    data, out = squares(), str(tmp_path / "r")
    config = RunConfig(out=out, explainers=["oracle", "test_counting"], metrics=["iou_auc"], batch_size=4, plots=False)
    first = run_leaderboard(config, datasets=[data], models={"m": ColourDetector()}, progress=False)
    assert custom_explainers["n"] == 3 and first.computed == 2 and first.cached == 0  # 9 images, batches of 4
    csv_first = (tmp_path / "r" / "results.csv").read_bytes()
    again = run_leaderboard(config, datasets=[data], models={"m": ColourDetector()}, progress=False)
    assert custom_explainers["n"] == 3 and again.computed == 0 and again.cached == 2
    assert (tmp_path / "r" / "results.csv").read_bytes() == csv_first
    config.metrics = ["iou_auc", "pointing_game"]
    extended = run_leaderboard(config, datasets=[data], models={"m": ColourDetector()}, progress=False)
    assert custom_explainers["n"] == 6 and extended.computed == 2 and extended.cached == 2
    # Another model (other weights) is another key: nothing is reused.
    other = ColourDetector()
    with torch.no_grad():
        other.conv.bias += 1e-3
    fresh = run_leaderboard(config, datasets=[data], models={"m": other}, progress=False)
    assert fresh.cached == 0 and custom_explainers["n"] == 9


def test_per_model_limits_score_one_model_on_fewer_images_and_key_its_cells(tmp_path) -> None:
    data, out = squares(), str(tmp_path / "r")
    config = RunConfig(out=out, models=["a", "b"], explainers=["oracle", "gradient"], metrics=["iou_auc", "deletion_auc"],
                       max_images=6, model_metric_images=4, per_model={"b": {"max_images": 3, "model_metric_images": 2}},
                       batch_size=4, plots=False)
    models = {"a": ColourDetector(), "b": ColourDetector()}
    summary = run_leaderboard(config, datasets=[data], models=models, progress=False)
    n = {(c["model"], c["explainer"], c["metric"]): c["n"] for c in summary.cells}
    assert n["a", "gradient", "iou_auc"] == 6 and n["a", "gradient", "deletion_auc"] == 4
    assert n["b", "gradient", "iou_auc"] == 3 and n["b", "gradient", "deletion_auc"] == 2
    # b's limits changed: b's cells are recomputed, a's come from the cache
    config.per_model = {"b": {"max_images": 4}}
    again = run_leaderboard(config, datasets=[data], models=models, progress=False)
    assert again.cached == 4 and again.computed == 4
    assert {(c["model"], c["metric"]): c["n"] for c in again.cells}[("b", "deletion_auc")] == 4


def test_per_model_settings_are_checked_and_an_unused_entry_is_said(tmp_path) -> None:
    for table, match in (({"b": {"max_image": 3}}, r"per_model.b.*'max_image' is unknown"),
                         ({"b": {"max_images": 0}}, r"per_model.b.max_images must be a positive integer"),
                         ({"b": {"train": {"epoch": 3}}}, r"per_model.b.train must be a table of train settings")):
        with pytest.raises(UsageError, match=match):
            RunConfig(out=str(tmp_path), per_model=table)
    said: list[str] = []
    config = RunConfig(out=str(tmp_path / "r"), explainers=["oracle"], metrics=["iou_auc"], plots=False,
                       per_model={"b": {"max_images": 3}}, weights={"single-6c:c": "c.pt"})
    run_leaderboard(config, datasets=[squares()], models={"a": ColourDetector()}, progress=False, log=said.append)
    assert any("per_model entry 'b' names no model of this run (a): unused" in m for m in said)
    assert any("weights entry 'single-6c:c' names no model" in m for m in said)


def test_a_failing_explainer_is_recorded_and_the_run_goes_on(tmp_path, custom_explainers) -> None:
    data, out = squares(), tmp_path / "r"
    config = RunConfig(out=str(out), explainers=["test_failing", "gradient", "test_nan"],
                       metrics=["iou_auc", "pointing_game"], batch_size=4, plots=False)
    summary = run_leaderboard(config, datasets=[data], models={"m": ColourDetector()}, progress=False)
    rows = {(r["explainer"], r["metric"]): r for r in _csv(out / "results.csv")}
    for metric in ("iou_auc", "pointing_game"):
        assert rows["test_failing", metric]["value"] == "" and rows["test_failing", metric]["n"] == "0"
        assert rows["test_nan", metric]["value"] == "" and rows["test_nan", metric]["n"] == "0"
        assert float(rows["gradient", metric]["value"]) == pytest.approx(1.0)
    errors = {(e["explainer"], e["metric"]): e["error"] for e in summary.record["errors"]}
    assert errors["test_failing", "iou_auc"] == "RuntimeError: boom on purpose"
    assert "NaN or inf" in errors["test_nan", "pointing_game"] and "image 103" in errors["test_nan", "pointing_game"]
    board = json.loads((out / "leaderboard.json").read_text())["tables"][0]
    assert {e["explainer"] for e in board["errors"]} == {"test_failing", "test_nan"}
    md = (out / "leaderboard.md").read_text()
    assert "boom on purpose" in md and "| test_failing | error [1] | error [1] |" in md
    run = json.loads((out / "run.json").read_text())
    assert run["cells"] == {"computed": 6, "cached": 0, "from_earlier_runs": 0, "errors": 4, "damaged_cache_files": 0}
    # Failures are not cached: a rerun tries them again, the good cells come from the cache.
    rerun = run_leaderboard(config, datasets=[data], models={"m": ColourDetector()}, progress=False)
    assert rerun.cached == 2 and rerun.computed == 4


def test_an8flower_run_writes_the_documented_files(tmp_path) -> None:
    out = tmp_path / "res"
    ckpt = tmp_path / "m.pt"
    model = build_model("small-cnn", 6, seed=0)
    save_checkpoint(ckpt, model, model_card("small-cnn", 6, (3, 64, 64), {"name": "none"}, {}, seed=0))
    config = RunConfig(out=str(out), variants=["single-6c"], size=64, per_class=3, all_images=True,
                       weights={"small-cnn": str(ckpt)}, explainers=["oracle", "gradcam", "random"],
                       metrics=["iou_auc", "pixel_average_precision", "part_attribution", "deletion_auc"],
                       model_metric_images=2, metric_options={"deletion_auc": {"steps": 4}}, examples=2)
    summary = run_leaderboard(config, progress=False)
    files = sorted(os.listdir(out))
    for name in ("results.csv", "per_image.csv.gz", "leaderboard.md", "leaderboard.json", "run.json",
                 "iou_curves_an8flower_single-6c_small-cnn_test.png",
                 "examples_an8flower_single-6c_small-cnn_test.png",
                 "part_attribution_an8flower_single-6c_small-cnn_test.png"):
        assert name in files
    with open(out / "results.csv", newline="") as fh:
        assert next(csv.reader(fh)) == list(RESULT_COLUMNS)
    rows = _csv(out / "results.csv")
    parts = ["background", "clutter", "stem", "leaves", "petals", "centre"]
    expected_metrics = ["iou_auc", "pixel_average_precision"] + [f"part_share:{p}" for p in parts] + ["deletion_auc"]
    for expl in ("oracle", "gradcam", "random"):
        got = [r["metric"] for r in rows if r["explainer"] == expl]
        assert got == expected_metrics
    for r in rows:
        assert (r["dataset"], r["variant"], r["model"], r["split"], r["seed"]) == ("an8flower", "single-6c", "small-cnn", "test", "0")
    n = {(r["explainer"], r["metric"]): int(r["n"]) for r in rows}
    assert n["oracle", "iou_auc"] == 6 and n["oracle", "deletion_auc"] == 2 and n["oracle", "pixel_average_precision"] == 6
    oracle_parts = {r["metric"]: float(r["value"]) for r in rows if r["explainer"] == "oracle" and r["metric"].startswith("part")}
    assert oracle_parts["part_share:centre"] == 1.0 and oracle_parts["part_share:petals"] == 0.0
    assert float(next(r for r in rows if r["explainer"] == "oracle" and r["metric"] == "pixel_average_precision")["value"]) == 1.0
    # value is the mean of the per-image scores written to per_image.csv.gz
    with gzip.open(out / "per_image.csv.gz", "rt", newline="") as fh:
        per = [r for r in csv.DictReader(fh) if r["explainer"] == "gradcam" and r["metric"] == "iou_auc"]
    assert len(per) == 6  # a constant heatmap (random weights) has an undefined IoU: empty score, not counted
    defined = [float(r["score"]) for r in per if r["score"] != ""]
    assert n["gradcam", "iou_auc"] == len(defined) >= 1
    value = float(next(r for r in rows if r["explainer"] == "gradcam" and r["metric"] == "iou_auc")["value"])
    assert value == pytest.approx(np.mean(defined), abs=1e-6)
    run = json.loads((out / "run.json").read_text())
    assert run["models"][0]["hash"] == model_hash(model)
    assert run["datasets"][0]["sizes"] == {"test": 6} and run["datasets"][0]["spec_sha256"]
    assert set(run["timings"]["seconds"]) >= {"data", "train", "explainers", "metrics", "io"}
    assert run["timings"]["explainers"]["gradcam"]["images"] == 6
    assert run["explainers"]["gradcam"]["options"] == {"layer": "features.relu4"}
    assert run["versions"]["an8flower"] and run["config"]["size"] == 64
    md = summary.markdown
    assert "| *oracle* | 1.000 ± 0.000 |" in md and "deletion ↓ (n=2)" in md


def test_markdown_ci_and_best_per_column_from_a_synthetic_table() -> None:
    def cell(expl, metric, scores):
        return {"dataset": "d", "variant": "v", "model": "m", "split": "test", "seed": 0, "explainer": expl,
                "metric": metric, "value": float(np.mean(scores)), "n": len(scores), "scores": scores, "error": None}

    cells = [cell("oracle", "iou_auc", [1.0, 1.0]), cell("a", "iou_auc", [0.2, 0.4]), cell("b", "iou_auc", [0.5, 0.5]),
             cell("a", "deletion_auc", [0.1, 0.3]), cell("b", "deletion_auc", [0.3, 0.3]), cell("random", "iou_auc", [0.0, 0.1]),
             {**cell("c", "iou_auc", [0.0]), "value": math.nan, "n": 0, "scores": None, "error": "ValueError: bad"}]
    info = {"iou_auc": {"label": "IoU-AUC"}, "deletion_auc": {"label": "deletion", "higher_is_better": False}}
    tables = leaderboard_tables(cells, info)
    assert [r["explainer"] for r in tables[0]["rows"]] == ["oracle", "b", "a", "c", "random"]
    assert tables[0]["best"] == {"iou_auc": ["b"], "deletion_auc": ["a"]}
    md = leaderboard_markdown(tables, info)
    # mean 0.3, s = 0.1414, t(0.975, 1) = 12.706: half-width 12.706 * 0.1414 / sqrt(2) = 1.271
    assert "| a | 0.300 ± 1.271 | **0.200** ± 1.271 |" in md
    assert "| b | **0.500** ± 0.000 | 0.300 ± 0.000 |" in md
    assert "| c | error [1] | – |" in md and "1. `c`: ValueError: bad" in md
    mean, half, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([1.0])[1]) and mean_ci([])[2] == 0


# ------------------------------------------------------------------------------- ILSVRC12


def _fake_imagenet(root) -> list[str]:
    """LOC-style ILSVRC12: val/<wnid>/ JPEGs, LOC_synset_mapping.txt, LOC_val_solution.csv."""
    wnids = ["n01000001", "n02000002", "n03000003"]
    rows = []
    for n in range(1, 7):
        wnid = wnids[n % 3]
        os.makedirs(root / "val" / wnid, exist_ok=True)
        rgb = np.random.default_rng(n).integers(0, 256, (60, 80, 3), dtype=np.uint8)
        stem = f"ILSVRC2012_val_{n:08d}"
        Image.fromarray(rgb).save(root / "val" / wnid / f"{stem}.JPEG", quality=95)
        rows.append(f"{stem},{wnid} 20 10 59 49 \n")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} thing {i}\n" for i, w in enumerate(wnids)))
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows))
    return wnids


def test_imagenet_mode_scores_pointing_games_on_boxes(tmp_path) -> None:
    _fake_imagenet(tmp_path / "inet")
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("small-cnn", 3, seed=0), model_card("small-cnn", 3, (3, 64, 64), {}, {}, seed=0))
    config = RunConfig(out=str(tmp_path / "r"), imagenet=str(tmp_path / "inet"), variants=[], size=64, all_images=True,
                       weights={"small-cnn": str(ckpt)}, explainers=["oracle", "centre"], plots=False)
    summary = run_leaderboard(config, progress=False)
    got = {(c["explainer"], c["metric"]): c for c in summary.cells}
    assert set(got) == {(e, m) for e in ("oracle", "centre") for m in ("pointing_game", "energy_pointing_game")}
    assert got["oracle", "pointing_game"]["value"] == 1.0 and got["oracle", "pointing_game"]["n"] == 6
    assert got["centre", "pointing_game"]["value"] == 1.0  # every box covers the crop's centre
    assert 0 < got["centre", "energy_pointing_game"]["value"] < 1
    assert summary.cells[0]["dataset"] == "ilsvrc12" and summary.cells[0]["variant"] == ""


# -------------------------------------------------------------------------- config and CLI


def test_config_file_and_its_errors(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('out = "res"\nvariants = ["double-12c"]\nsize = 80\n[explainer_options.rise]\nn_masks = 64\n'
                    '[train]\nepochs = 3\n[weights]\nsmall-cnn = "m.pt"\n')
    config = load_config(path)
    assert config.out == str(tmp_path / "res") and config.size == 80 and config.variants == ["double-12c"]
    assert config.explainer_options == {"rise": {"n_masks": 64}} and config.weights == {"small-cnn": str(tmp_path / "m.pt")}
    assert training_config(config, "small-cnn").epochs == 3 and training_config(config, "small-cnn").hflip
    path.write_text("sise = 80\n")
    with pytest.raises(UsageError, match=r"run.toml: unknown key 'sise'"):
        load_config(path)
    path.write_text("size = -1\n")
    with pytest.raises(UsageError, match=r"run.toml: size must be a positive integer"):
        load_config(path)
    path.write_text("[train]\nepoch = 3\n")
    with pytest.raises(UsageError, match=r"run.toml: unknown train setting 'epoch'"):
        load_config(path)
    path.write_text("size = \n")
    with pytest.raises(UsageError, match=r"run.toml is not valid TOML"):
        load_config(path)
    with pytest.raises(UsageError, match="config file not found"):
        load_config(tmp_path / "none.toml")
    assert quick_config().quick and quick_config().size == 64


def test_unknown_names_are_rejected_before_anything_runs(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    assert main(["leaderboard", "--out", str(out), "--explainer", "nope", "--quiet"]) == 2
    assert "unknown explainer 'nope'" in capsys.readouterr().err
    assert main(["leaderboard", "--out", str(out), "--metric", "nope", "--quiet"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert main(["leaderboard", "--out", str(out), "--model", "alexnet", "--quiet"]) == 2
    assert "unknown model 'alexnet'" in capsys.readouterr().err
    assert main(["leaderboard", "--imagenet", str(tmp_path), "--quiet"]) == 2
    assert "--imagenet needs --weights" in capsys.readouterr().err
    assert not out.exists()
    assert main(["leaderboard", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "oracle" in listed and "iou_auc" in listed and "randomisation" in listed


def test_cli_leaderboard_prints_the_table(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("small-cnn", 6, seed=0), model_card("small-cnn", 6, (3, 64, 64), {}, {}, seed=0))
    code = main(["leaderboard", "--out", str(tmp_path / "r"), "--variant", "single-6c", "--size", "64", "--per-class", "3",
                 "--weights", str(ckpt), "--explainer", "oracle", "--explainer", "occlusion", "--metric", "pointing_game",
                 "--option", "occlusion.window=32", "--option", "occlusion.stride=32", "--all-images", "--no-plots", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("# an8flower leaderboard") and "| *oracle* | 1.000 ± 0.000 |" in out
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["command"][:2] == ["an8flower", "leaderboard"] or run["command"]
    assert run["explainers"]["occlusion"]["options"] == {"window": 32, "stride": 32}
    assert not any(n.endswith(".png") for n in os.listdir(tmp_path / "r"))


def test_cli_train_writes_a_checkpoint_with_its_card(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--variant", "single-6c", "--size", "64", "--per-class", "5", "--epochs", "1",
                 "--out", str(ckpt)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"] == str(ckpt) and report["epochs"] == 1
    from an8flower.eval.models import load_checkpoint

    model, card = load_checkpoint(ckpt, name="small-cnn")
    assert card["dataset"]["variant"] == "single-6c" and card["dataset"]["sizes"] == {"train": 18, "val": 6, "test": 6}
    assert card["input_size"] == [3, 64, 64] and set(card["accuracy"]) == {"train", "val", "test"}
    assert main(["train", "--variant", "single-6c", "--model", "alexnet", "--out", str(ckpt)]) == 2
    assert "unknown model 'alexnet'" in capsys.readouterr().err


def test_cli_model_list_matches_the_models(capsys) -> None:
    from an8flower.defaults import MODEL_NAMES
    from an8flower.eval.models import list_models

    assert list(MODEL_NAMES) == list_models()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "classifier: lenet, resnet18, resnet50, small-cnn, vgg16" in text
    assert "--per-class N" in text and "PER_CLASS" not in text and "Default sizes, and why they differ" in text


def test_train_logs_one_line_per_epoch_and_warns_when_accuracy_is_low(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--variant", "single-6c", "--size", "64", "--per-class", "5", "--epochs", "2",
                 "--patience", "5", "--out", str(ckpt)]) == 0
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal: no bar, one line per epoch
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: loss ") and "val " in lines[0]
    assert "warning: test accuracy" in err and "below 90%" in err


def test_absurd_counts_are_refused_before_anything_is_written(tmp_path) -> None:
    from an8flower.eval.data import check_memory

    with pytest.raises(UsageError, match="per_class 1000000000 is above the limit of 100,000"):
        RunConfig(per_class=1_000_000_000)
    out = tmp_path / "never"
    config = RunConfig(out=str(out), variants=["double-12c"], per_class=90_000, size=512)
    with pytest.raises(UsageError, match=r"double-12c: per_class 90000 at 512 px needs about 1,318.4 GiB"):
        run_leaderboard(config, progress=False)
    assert not out.exists()
    # 12 classes x 500 per class x 112^2 px x 5 bytes, all splits for training
    assert check_memory("double-12c", 12, RunConfig(per_class=500, size=112), memory=1 << 40) == 12 * 500 * 112 * 112 * 5
    assert check_memory("double-12c", 12, RunConfig(per_class=500, size=112), need_train=False,
                        memory=1 << 40) == 12 * 100 * 112 * 112 * 5


def test_per_class_table_gives_each_variant_its_own_count(tmp_path) -> None:
    from an8flower.eval.data import prepare_an8flower

    config = RunConfig(variants=["single-6c", "double-12c"], per_class={"single-6c": 5}, size=64)
    assert config.per_class_for("single-6c") == 5 and config.per_class_for("double-12c") == 500
    data = prepare_an8flower("single-6c", config, need_train=False)
    assert len(data.test) == 6 * 1 and data.info["per_class"] == 5  # 5 per class -> 3/1/1
    with pytest.raises(UsageError, match=r"per_class\.double-12c must be a positive integer"):
        RunConfig(per_class={"double-12c": 0})
    assert quick_config().per_class == {"single-6c": 200, "double-12c": 100}
