"""Leakage between a checkpoint's training data and the scored images; boards from shipped checkpoints."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil

import pytest
import torch

from an8flower.cli import main
from an8flower.errors import UsageError
from an8flower.eval.config import RunConfig, load_config
from an8flower.eval.leakage import check_leakage, overlap_count
from an8flower.eval.models import build_model
from an8flower.eval.runner import run_leaderboard
from an8flower.eval.train import model_card, save_checkpoint


def test_overlap_count_follows_the_index_plan() -> None:
    # single-6c, per-class 100: 70/10/20 per class, so the test split is indices [6 * 80, 6 * 100).
    test = range(480, 600)
    # per-class 200: train 140 + val 20 per class, indices [0, 6 * 160): every test image of the 100 board
    assert overlap_count(6, 200, test) == 120
    assert overlap_count(6, 100, test) == 0
    # per-class 120: train 84 + val 12 (ratios rounded half up) -> [0, 576): 96 of the 120 test indices
    assert overlap_count(6, 120, test) == 576 - 480


def _card(variant: str = "single-6c", seed: int = 0, per_class=200) -> dict:
    return model_card("small-cnn", 6, (3, 64, 64), {"name": "an8flower", "variant": variant, "seed": seed,
                                                     "per_class": per_class}, {}, seed=0)


def test_check_leakage_cases() -> None:
    ids = list(range(480, 484))
    with pytest.raises(UsageError, match="4 of the 4 scored images were in the training or validation split of m.pt"):
        check_leakage(_card(), "single-6c", 0, 6, ids, "m.pt")
    note = check_leakage(_card(), "single-6c", 0, 6, ids, "m.pt", allow_overlap=True)
    assert note.endswith("scored anyway (--allow-overlap)") and "per-class 200" in note
    assert check_leakage(_card(per_class=100), "single-6c", 0, 6, ids, "m.pt") is None  # the same plan
    assert check_leakage(_card(seed=1), "single-6c", 0, 6, ids, "m.pt") is None  # other renders
    assert check_leakage(_card(variant="double-12c"), "single-6c", 0, 6, ids, "m.pt") is None
    assert "has no model card" in check_leakage(None, "single-6c", 0, 6, ids, "m.pt")
    # untrusted values only mean the check cannot be made
    for bad in ("200", 10**12, True, None):
        assert "cannot be checked" in check_leakage(_card(per_class=bad), "single-6c", 0, 6, ids, "m.pt")


def _board(tmp_path, weights: str, **kw) -> RunConfig:
    return RunConfig(out=str(tmp_path / "res"), variants=["single-6c"], size=64, per_class=100, all_images=True,
                     max_images=4, weights={"small-cnn": weights}, explainers=["oracle", "gradient"],
                     metrics=["iou_auc"], plots=False, **kw)


def test_runner_refuses_a_checkpoint_trained_on_the_scored_images(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("small-cnn", 6, seed=0), _card(per_class=200))
    with pytest.raises(UsageError, match="4 of the 4 scored images .* per-class 200"):
        run_leaderboard(_board(tmp_path, str(ckpt)), progress=False)
    code = main(["leaderboard", "--variant", "single-6c", "--size", "64", "--per-class", "100", "--all-images",
                 "--max-images", "4", "--weights", str(ckpt), "--explainer", "gradient", "--metric", "iou_auc",
                 "--no-plots", "--quiet", "--out", str(tmp_path / "cli")])
    assert code == 2 and "--allow-overlap" in capsys.readouterr().err
    summary = run_leaderboard(_board(tmp_path, str(ckpt)), progress=False, allow_overlap=True)
    for name in ("leaderboard.md", "leaderboard.html"):
        text = (tmp_path / "res" / name).read_text()
        assert "4 of the 4 scored images were in the training or validation split" in text
        assert "scored anyway (--allow-overlap)" in text
    assert "--allow-overlap" in summary.record["models"][0]["leakage"]


def test_card_less_checkpoint_gets_a_warning(tmp_path) -> None:
    ckpt = tmp_path / "plain.pt"
    torch.save(build_model("small-cnn", 6, seed=0).state_dict(), ckpt)
    messages: list[str] = []
    run_leaderboard(_board(tmp_path, str(ckpt)), progress=False, log=messages.append)
    assert any("plain.pt has no model card: leakage" in m and m.startswith("warning:") for m in messages)
    assert "**Leakage:**" in (tmp_path / "res" / "leaderboard.md").read_text()


def _per_image(folder) -> dict[tuple, float]:
    with gzip.open(folder / "per_image.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(io.StringIO(fh.read())))
    return {(r["explainer"], r["metric"], r["image"]): float(r["score"]) for r in rows if r["score"]}


def test_a_board_config_loads_shipped_checkpoints_and_reproduces_the_scores(tmp_path) -> None:
    """Train -> publish the checkpoint beside the board -> score; a config naming it rescores to 1e-5."""
    common = dict(variants=["single-6c"], size=64, per_class=5, all_images=True, train={"epochs": 1},
                  explainers=["oracle", "gradient", "gradcam"], metrics=["iou_auc", "pointing_game", "pixel_auc"],
                  plots=False)
    first = run_leaderboard(RunConfig(out=str(tmp_path / "trained"), **common), progress=False)
    trained = tmp_path / "trained" / first.record["models"][0]["source"]  # relative to the results folder
    board = tmp_path / "board"
    (board / "models").mkdir(parents=True)
    shutil.copy(trained, board / "models" / "single-6c-small-cnn.pt")
    (board / "leaderboard.toml").write_text('[weights]\n"single-6c:small-cnn" = "models/single-6c-small-cnn.pt"\n')
    config = load_config(board / "leaderboard.toml", RunConfig(out=str(tmp_path / "rescored"), **common))
    assert config.weights == {"single-6c:small-cnn": str(board / "models" / "single-6c-small-cnn.pt")}
    second = run_leaderboard(config, progress=False)
    model = second.record["models"][0]
    assert model["trained"] is False and model["hash"] == first.record["models"][0]["hash"]
    assert "leakage" not in model  # the card names the same variant, seed and per-class: no overlap
    a, b = _per_image(tmp_path / "trained"), _per_image(tmp_path / "rescored")
    assert a.keys() == b.keys() and len(a) >= 3 * 3
    assert max(abs(a[k] - b[k]) for k in a) <= 1e-5
    assert json.loads((tmp_path / "rescored" / "run.json").read_text())["cells"]["computed"] == len(second.cells)
