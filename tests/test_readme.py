"""The README's code runs as written, its quickstart puts the CPU note first, and its citation is
what `an8flower cite` prints."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from docblocks import blocks, problems

README = Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- readme-example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


@pytest.mark.slow
def test_the_run_leaderboard_example_runs(tmp_path, monkeypatch, capsys) -> None:
    from an8flower.baselines import registry

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


def test_every_other_block_runs_on_a_documentation_page() -> None:
    """The README's other blocks are verbatim blocks of docs/getting-started.md, whose blocks
    tests/test_docs.py runs."""
    marked = [
        b for b in blocks(README.read_text(encoding="utf-8")) if b.kind not in ("skip", "example")
    ]
    assert [(b.kind, b.arg) for b in marked] == [("same", "docs/getting-started.md")] * 2
    assert not problems(README, README.parent)


def test_the_cpu_build_comes_before_the_install_command() -> None:
    text = README.read_text(encoding="utf-8")
    cpu = text.index("--index-url https://download.pytorch.org/whl/cpu")
    assert cpu < text.index("pip install . && an8flower leaderboard --quick")
    assert cpu < text.index('pip install -e ".[test]" && python -m pytest -q')


def test_the_quickstart_is_two_commands() -> None:
    (quick,) = [
        b for b in blocks(README.read_text(encoding="utf-8")) if "leaderboard --quick" in b.text
    ]
    lines = [line.split("#")[0].strip() for line in quick.text.splitlines() if line.strip()]
    assert lines == [
        "pip install . && an8flower leaderboard --quick",
        'pip install -e ".[test]" && python -m pytest -q',
    ]


def test_the_citation_is_what_cite_prints() -> None:
    from an8flower.cite import paper_bibtex

    (bib,) = [b for b in blocks(README.read_text(encoding="utf-8")) if b.language == "bibtex"]
    assert bib.text == paper_bibtex()


def test_the_readme_fits_on_a_few_screens() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220
    # Prose lines stay readable (code, tables and markers aside).
    prose, fenced = [], False
    for n, line in enumerate(lines, 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and not line.startswith(("|", "<!--")):
            prose.append((n, line))
    long = [n for n, line in prose if len(line) > 100]
    assert not long, long
