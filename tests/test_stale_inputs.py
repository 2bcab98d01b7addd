"""A folder run is keyed by the bytes it reads; cells of explainers a run does not know never break it."""

from __future__ import annotations

import json
import shutil

import pytest
from test_leaderboard import ColourDetector, squares

from an8flower.baselines import Explainer, registry
from an8flower.cli import main
from an8flower.errors import DatasetFormatError
from an8flower.eval.config import RunConfig
from an8flower.eval.models import build_model
from an8flower.eval.runner import run_leaderboard
from an8flower.eval.train import model_card, save_checkpoint
from an8flower.generate import generate


@pytest.fixture
def folder_run(tmp_path):
    """A generated single-6c folder (64 px, 3 per class), another one of seed 1, and a model checkpoint."""
    for name, seed in (("data", 0), ("other", 1)):
        generate("single-6c", tmp_path / name, size=64, per_class=3, seed=seed, workers=1, progress=False)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, build_model("small-cnn", 6, seed=0), model_card("small-cnn", 6, (3, 64, 64), {}, {}, seed=0))
    return tmp_path, ckpt


def test_replacing_the_pngs_of_a_folder_is_refused_not_served_from_the_cache(folder_run, capsys) -> None:
    root, ckpt = folder_run
    config = RunConfig(out=str(root / "r"), variants=["single-6c"], data={"single-6c": str(root / "data")},
                       weights={"small-cnn": str(ckpt)}, explainers=["centre"], metrics=["pointing_game"],
                       all_images=True, plots=False)
    first = run_leaderboard(config, progress=False)
    assert first.computed == 1
    assert run_leaderboard(config, progress=False).cached == 1
    replaced = sorted((root / "other" / "images" / "test").rglob("*.png"))
    assert len(replaced) == 6
    for png in replaced:  # the same file names, other pixels; the manifest is left alone
        shutil.copyfile(png, root / "data" / png.relative_to(root / "other"))
    with pytest.raises(DatasetFormatError, match=r"000012\.png: SHA-256 differs from the manifest's image_sha256"):
        run_leaderboard(config, progress=False)
    code = main(["leaderboard", "--out", str(root / "r"), "--variant", "single-6c", "--data", str(root / "data"),
                 "--weights", str(ckpt), "--explainer", "centre", "--metric", "pointing_game", "--all-images",
                 "--no-plots", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "000012.png: SHA-256 differs from the manifest" in err and len(err.strip().splitlines()) == 1


class _Gone(Explainer):
    def explain(self, model, images, targets):
        return images.mean(1)


def test_cached_cells_of_an_explainer_this_run_does_not_know_never_break_it(tmp_path) -> None:
    """The README's --import example into the default folder, then a plain run there (issue 22)."""
    out = tmp_path / "r"
    registry.register_explainer("test_gone_mine")(_Gone)
    try:
        with_mine = RunConfig(out=str(out), explainers=["test_gone_mine", "centre"], metrics=["pointing_game"],
                              plots=False)
        run_leaderboard(with_mine, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    finally:
        registry._REGISTRY.pop("test_gone_mine", None)
    plain = RunConfig(out=str(out), explainers=["centre"], metrics=["pointing_game"], plots=False)
    summary = run_leaderboard(plain, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    assert summary.cached == 1 and summary.computed == 0
    assert {c["explainer"] for c in summary.cells} == {"centre", "test_gone_mine"}  # the folder's cells stay shown
    record = json.loads((out / "run.json").read_text())["explainers"]
    assert record["test_gone_mine"] == {"options": {}, "from_earlier_run": True}
    assert record["centre"]["reference"] is True and record["centre"]["requires_fit"] is False
    assert "test_gone_mine" in summary.markdown
