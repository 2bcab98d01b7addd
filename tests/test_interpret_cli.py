"""The ``interpret`` and ``explain`` commands and their drawing helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from an8flower.baselines import VEBI
from an8flower.cli import main
from an8flower.eval.interpret import colourise, heatmap_overlay
from an8flower.eval.models import build_model
from an8flower.eval.train import model_card, save_checkpoint
from an8flower.render import render
from an8flower.spec import load_spec

SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small CNN (random weights) whose model card names single-6c rendered at 64 px, 5 per class."""
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "m.pt"
    card = model_card("small-cnn", 6, (3, SIZE, SIZE),
                      {"name": "an8flower", "variant": "single-6c", "source": "rendered in memory", "seed": 3,
                       "per_class": 5}, {}, seed=0, classes=list(load_spec("single-6c").classes))
    save_checkpoint(path, build_model("small-cnn", 6, seed=0), card)
    return path


@pytest.fixture(scope="module")
def interpreted(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("interp") / "vebi"
    code = main(["interpret", "--weights", str(checkpoint), "--out", str(out), "--top-n", "2", "--quiet"])
    assert code == 0
    return out


def test_colourise_and_overlay_hand_values() -> None:
    rgb = colourise(np.array([[0.0, 2.0], [1.0, 1.0]]))
    from matplotlib import colormaps

    jet = colormaps["jet"]
    expected_hi = np.round(np.array(jet(1.0)[:3]) * 255).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert (rgb[0, 1] == expected_hi).all()
    assert (rgb[0, 0] == np.round(np.array(jet(0.0)[:3]) * 255)).all()
    assert (colourise(np.full((2, 2), 7.0)) == rgb[0, 0]).all()  # constant map -> the colour of 0
    image = np.full((2, 2, 3), 100, np.uint8)
    mixed = heatmap_overlay(image, np.array([[0.0, 2.0], [1.0, 1.0]]), alpha=0.5)
    assert (mixed[0, 1] == np.floor(0.5 * 100 + 0.5 * expected_hi.astype(float) + 0.5)).all()  # the maximum
    assert (mixed[0, 0] == 100).all()  # the minimum keeps the image
    mid = np.round(np.array(jet(0.5)[:3]) * 255)  # colour of 0.5 (bin 128 of 256 ~ 0.502)
    a = 0.5 * np.sqrt(0.5)  # the weight at the middle value
    assert np.abs(mixed[1, 0] - ((1 - a) * 100 + a * mid)).max() <= 2


def test_interpret_writes_state_json_and_one_sheet_per_class(interpreted) -> None:
    files = sorted(p.name for p in interpreted.iterdir())
    classes = load_spec("single-6c").classes
    assert "vebi.npz" in files and "interpretation.json" in files
    sheets = [f for f in files if f.startswith("class_")]
    assert len(sheets) == len(classes) and sheets[0].startswith("class_00_")
    summary = json.loads((interpreted / "interpretation.json").read_text())
    state = VEBI().load(interpreted / "vebi.npz")
    assert summary["options"]["mu"] == 5.0 and summary["dataset"]["variant"] == "single-6c"
    # The card says 5 per class rendered with seed 3: the split sizes follow from generate's rule.
    assert summary["dataset"]["train_images"] == summary["fit_info"]["n_train"]
    for entry in summary["classes"]:
        got = [(f["name"], pytest.approx(f["weight"], rel=1e-6)) for f in entry["features"]]
        assert got == [(f.name, f.weight) for f in state.relevant_features(entry["class"])]
        assert all(f["n_images"] <= 2 for f in entry["features"])
    with Image.open(interpreted / sheets[0]) as img:
        assert img.mode == "RGB" and img.size[0] >= 200


def test_explain_writes_a_figure_for_vebi_and_a_baseline(checkpoint, interpreted, tmp_path, capsys) -> None:
    sample = render(load_spec("single-6c"), 0, 3, size=80)  # another size: explain resizes to 64
    img = tmp_path / "flower.png"
    Image.fromarray(sample.image).save(img)
    out = tmp_path / "vebi.png"
    assert main(["explain", str(img), "--weights", str(checkpoint), "--vebi", str(interpreted / "vebi.npz"),
                 "--out", str(out), "--target", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == 2 and report["explainer"] == "vebi" and len(report["features"]) <= 3
    with Image.open(out) as fig:
        assert fig.mode == "RGB"
        width_vebi = fig.size[0]
    out2 = tmp_path / "gradcam.png"
    assert main(["explain", str(img), "--weights", str(checkpoint), "--explainer", "gradcam", "--out", str(out2)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["features"] == [] and report["target"] == report["predicted"]
    with Image.open(out2) as fig:
        assert fig.size[0] <= width_vebi  # image + heatmap only


def test_explain_and_interpret_errors_name_the_problem(checkpoint, tmp_path, capsys) -> None:
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    cases = [
        (["explain", str(img), "--weights", str(checkpoint), "--out", str(tmp_path / "o.png")], "needs --vebi"),
        (["explain", str(tmp_path / "nope.png"), "--weights", str(checkpoint), "--explainer", "gradient",
          "--out", str(tmp_path / "o.png")], "image file not found"),
        (["explain", str(img), "--weights", str(checkpoint), "--explainer", "gradient", "--out", str(tmp_path / "o.jpg")],
         "ending in .png"),
        (["explain", str(img), "--weights", str(checkpoint), "--explainer", "gradient", "--target", "6",
          "--out", str(tmp_path / "o.png")], "--target 6 is out of range"),
        (["explain", str(img), "--weights", str(tmp_path / "missing.pt"), "--explainer", "gradient",
          "--out", str(tmp_path / "o.png")], "weights file not found"),
        (["interpret", "--weights", str(checkpoint), "--out", str(tmp_path / "i"), "--data", str(tmp_path / "none")],
         "--data: no such folder"),
        (["interpret", "--weights", str(checkpoint), "--out", str(tmp_path / "i"), "--top-n", "0"], "--top-n must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "i").exists()


def test_explain_refuses_a_decompression_bomb_naming_it(checkpoint, tmp_path, capsys) -> None:
    from test_integrity import png_claiming

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20_000, 20_000))  # 400 Mpx claimed in a few bytes
    code = main(["explain", str(bomb), "--weights", str(checkpoint), "--explainer", "gradient",
                 "--out", str(tmp_path / "e.png")])
    err = capsys.readouterr().err
    assert code == 2 and str(bomb) in err and not (tmp_path / "e.png").exists()
