"""The documentation site builds strictly, its catalogues match the registries, and every code block
of its pages runs (or says why it does not)."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from docblocks import RUNNABLE, blocks, problems

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
#: Hand-written pages (tutorials are scripts, run by tests/test_tutorials.py; the reproduction
#: reports are written by `an8flower reproduce` and hold no code).
PAGES = sorted(p for p in DOCS.rglob("*.md") if "leaderboard" not in p.relative_to(DOCS).parts[:1])
#: Pages whose blocks train models or run boards: about a minute each on a busy 2-core machine.
SLOW_PAGES = {"board.md", "scaling.md", "reproducing.md", "dataset.md"}


def _env() -> dict[str, str]:
    env = dict(
        os.environ, PYTHONDONTWRITEBYTECODE="1", NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1"
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("jupytext")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(REPO / "mkdocs.yml"),
            "-d",
            str(out),
        ],
        cwd=out,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


def test_the_site_builds_with_every_page_of_the_nav(site: Path) -> None:
    for page in (
        "getting-started",
        "dataset",
        "loaders",
        "explainers",
        "metrics",
        "board",
        "interventions",
        "reproducing",
        "scaling",
        "benchmarks",
        "changelog",
        "api/dataset",
        "api/eval",
        "data-cards/mnist",
        "tutorials/01-variants",
        "tutorials/02-your-own-images",
        "tutorials/03-your-own-explainer",
    ):
        assert (site / page / "index.html").is_file(), page
    # The tutorial scripts are in the site for download, the hooks file is not.
    assert (site / "tutorials" / "01-variants.py").is_file()
    assert not (site / "hooks.py").exists()


def test_the_explainer_catalogue_is_the_registry(site: Path) -> None:
    from an8flower.baselines import explainer_class, list_explainers

    text = _text(site / "explainers" / "index.html")
    for name in list_explainers():
        cls = explainer_class(name)
        assert f"{cls.__module__}.{cls.__qualname__}" in text, name
    assert "<!-- catalogue" not in (site / "explainers" / "index.html").read_text(encoding="utf-8")


def test_the_adapter_catalogue_lists_what_is_installed(site: Path) -> None:
    from an8flower.baselines.adapters.catalogue import catalogue

    text = _text(site / "explainers" / "index.html")
    for lib in catalogue():
        for name in lib["methods"]:
            assert name in text
        for name in lib["excluded"]:
            assert name in text


def test_the_metric_table_and_the_formulas_come_from_the_code(site: Path) -> None:
    from an8flower.eval.metrics import iou_auc
    from an8flower.eval.scoring import METRICS

    text = _text(site / "metrics" / "index.html")
    for spec in METRICS.values():
        assert spec.name in text and spec.label in text
    # iou_auc's docstring, its reST role turned into a code span.
    first = " ".join(iou_auc.__doc__.split("\n\n")[0].split()).replace(
        ":func:`iou_curve`", "iou_curve"
    )
    assert first.replace("``", "") in " ".join(text.split())
    assert ":func:" not in text


def test_every_block_runs_or_says_why_not() -> None:
    found = [
        p
        for page in [REPO / "README.md", REPO / "CONTRIBUTING.md", *PAGES]
        for p in problems(page, REPO)
    ]
    assert not found, "\n".join(found)


def _runnable(page: Path) -> bool:
    return any(
        b.kind in (None, "script") and b.language in RUNNABLE
        for b in blocks(page.read_text(encoding="utf-8"))
    )


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(
            p, id=str(p.relative_to(DOCS)), marks=[pytest.mark.slow] if p.name in SLOW_PAGES else []
        )
        for p in PAGES
        if _runnable(p)
    ],
)
def test_the_blocks_of_a_page_run(page: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("docblocks.py")), str(page)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def test_worker_pool_examples_are_scripts_with_a_main_guard() -> None:
    """Worker processes are spawned: code that starts them runs as a script with the guard."""
    pooled = [
        b
        for page in [REPO / "README.md", *PAGES]
        for b in blocks(page.read_text(encoding="utf-8"))
        if b.language == "python" and b.kind != "skip" and "intervene_many(" in b.text
    ]
    assert pooled, "the intervene_many example is gone"
    for b in pooled:
        assert b.kind == "script" and 'if __name__ == "__main__":' in b.text, b.line


def _hooks():
    pytest.importorskip("mkdocs")
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pages_other_runs_write_join_the_navigation_when_they_exist(tmp_path: Path) -> None:
    hooks = _hooks()
    nav = [{"Home": "index.md"}, {"The leaderboard": "board.md"}, {"Benchmarks": "benchmarks.md"}]
    config = {"docs_dir": str(tmp_path), "nav": list(nav)}
    hooks._optional_pages(config)
    assert config["nav"] == nav  # neither page exists: nothing added
    assert "in the repository" in hooks.published_board(config)
    (tmp_path / "leaderboard").mkdir()
    for name in ("report.md", "index.md"):
        (tmp_path / "leaderboard" / name).write_text("# x\n")
    (tmp_path / "security.md").write_text("# Security\n")
    hooks._optional_pages(config)
    assert config["nav"] == [
        nav[0],
        nav[1],
        {"The published board": ["leaderboard/index.md", "leaderboard/report.md"]},
        {"Security": "security.md"},
        nav[2],
    ]
    assert "(leaderboard/index.md)" in hooks.published_board(config)
