"""The tutorials (Jupytext scripts under docs/tutorials/) run at a toy size and say what they
claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"


def run(name: str, folder: Path) -> str:
    env = dict(
        os.environ,
        AN8FLOWER_TUTORIAL_TINY="1",
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
        PYTHONDONTWRITEBYTECODE="1",
    )
    result = subprocess.run(
        [sys.executable, str(TUTORIALS / name)], cwd=folder, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


def test_there_are_three_tutorials_and_each_is_a_percent_script() -> None:
    scripts = sorted(TUTORIALS.glob("[0-9][0-9]-*.py"))
    assert [p.name for p in scripts] == [
        "01-variants.py",
        "02-your-own-images.py",
        "03-your-own-explainer.py",
    ]
    for script in scripts:
        text = script.read_text(encoding="utf-8")
        assert text.startswith("# %% [markdown]\n# # "), script.name  # a title cell first
        assert 'os.environ.get("AN8FLOWER_TUTORIAL_TINY") == "1"' in text


def test_variants_tutorial(tmp_path: Path) -> None:
    out = run("01-variants.py", tmp_path)
    # 10 per class: 7 / 1 / 2 per class over the splits, so 24 test images of 12 classes;
    # the custom variant has 3 classes.
    assert "\n24 torch.Size([3, 64, 64])" in out
    assert "single-3c 3 ('centre-red', 'centre-green', 'centre-blue')" in out
    assert "refused: spec field 'classes': duplicate class names" in out
    assert "train images per class: [7 7 7]" in out
    assert (tmp_path / "sample.png").stat().st_size > 0
    assert (tmp_path / "data" / "s3" / "dataset.json").is_file()


def test_your_own_images_tutorial(tmp_path: Path) -> None:
    out = run("02-your-own-images.py", tmp_path)
    assert "60 images written" in out and "40 training images, 20 test images" in out
    assert "oracle             pointing 1.000   pixel AUC 1.000" in out
    assert (tmp_path / "my-board" / "results.csv").is_file()


def test_your_own_explainer_tutorial(tmp_path: Path) -> None:
    out = run("03-your-own-explainer.py", tmp_path)
    assert out.startswith("True\ntorch.Size([2, 64, 64]) torch.float32\n")
    assert "| saturation |" in out and "| saturation[blur=5] |" in out
    assert "computed 0 cached 35" in out  # 7 explainers x 5 metrics, all from the cache
