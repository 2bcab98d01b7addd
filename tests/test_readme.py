"""The README's Python example runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- readme-example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


@pytest.mark.slow
def test_the_run_leaderboard_example_runs(tmp_path, monkeypatch, capsys) -> None:
    from an8flower.baselines import base as registry

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    try:
        exec(compile(example("run_leaderboard"), "README.md", "exec"), scope)
    finally:
        registry._REGISTRY.pop("brightness", None)
    summary = scope["summary"]
    cells = {(c["explainer"], c["metric"]) for c in summary.cells}
    assert ("brightness", "pixel_auc") in cells and ("oracle", "iou_auc") in cells
    assert os.path.isfile(tmp_path / "my-results" / "leaderboard.md")
    assert "| brightness |" in capsys.readouterr().out
