"""Every table the leaderboard writes must be a table for a real GitHub-flavoured Markdown parser."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt
from test_leaderboard import ColourDetector, squares

from an8flower.baselines import Explainer, registry
from an8flower.eval.config import RunConfig
from an8flower.eval.runner import METRICS, run_leaderboard


def parsed_tables(text: str) -> list[dict]:
    """Tables as markdown-it-py (GFM tables enabled) parses them: header cells, and cells per body row."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables, current, row, section = [], None, None, None
    for tok in tokens:
        if tok.type == "table_open":
            current = {"header": [], "rows": []}
        elif tok.type in ("thead_open", "tbody_open"):
            section = tok.type[:5]
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline" and row is not None:
            row.append(tok.content)
        elif tok.type == "tr_close":
            (current["header"].extend(row) if section == "thead" else current["rows"].append(row))
            row = None
        elif tok.type == "table_close":
            tables.append(current)
            current = None
    return tables


def source_tables(text: str) -> list[list[str]]:
    """Blocks of consecutive lines starting with '|' in the source."""
    blocks, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    return blocks


def test_parser_check_catches_an_unescaped_pipe() -> None:
    broken = "| explainer | IoU@|M| ↑ |\n|:--|--:|\n| x | 0.5 |\n"
    assert parsed_tables(broken) == []  # more header cells than alignment cells: not a table at all


@pytest.fixture
def piped_error():
    class Piped(Explainer):
        def explain(self, model, images, targets):
            raise RuntimeError("shape a|b does not fit")

    registry.register_explainer("test_piped")(Piped)
    yield
    registry._REGISTRY.pop("test_piped", None)


def test_every_generated_table_parses_with_its_cell_counts(tmp_path, piped_error) -> None:
    config = RunConfig(out=str(tmp_path / "r"), explainers=["oracle", "gradient", "input_x_gradient", "random", "test_piped"],
                       metrics=[m for m, s in METRICS.items() if s.kind in ("mask", "set", "parts")], plots=False)
    run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    text = (tmp_path / "r" / "leaderboard.md").read_text()
    blocks = source_tables(text)
    tables = parsed_tables(text)
    assert len(blocks) >= 3 and len(tables) == len(blocks)  # the main table, the meta-evaluation, the part table
    assert "| metric | oracle vs random |" in text and "| IoU@\\|M\\| |" in text  # meta-evaluation rows escaped too
    for table, block in zip(tables, blocks, strict=True):
        assert len(block) == 2 + len(table["rows"])
        for row in table["rows"]:
            assert len(row) == len(table["header"])
    main = tables[1]  # after the summary (issue 20: the summary comes first)
    assert tables[0]["header"][:3] == ["#", "explainer", "overall rank [95%]"]
    assert main["header"][0] == "explainer" and any(h.startswith("IoU@|M| ↑") for h in main["header"])
    # relevance mass accuracy gives the energy pointing game's numbers: shown once, with a note
    assert len(main["header"]) == 1 + len(config.metrics) - 1 and not any(h.startswith("rel. mass") for h in main["header"])
    assert "coincide" in text
    assert "shape a\\|b does not fit" in text and "1. `test_piped`: RuntimeError: shape a\\|b does not fit" in text
    assert "How to read the tables" in text and "**IoU@\\|M\\|** (`iou_top_mask`)" in text


def test_duplicate_methods_are_noted_with_their_agreement(tmp_path) -> None:
    pytest.importorskip("captum")
    config = RunConfig(out=str(tmp_path / "r"), explainers=["gradient", "captum:Saliency", "input_x_gradient"],
                       metrics=["iou_auc", "pointing_game", "pixel_auc"], plots=False)
    run_leaderboard(config, datasets=[squares()], models={"m": ColourDetector()}, progress=False)
    text = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "* `gradient` and `captum:Saliency` agree to 1e-6 on 27 values" in text
    import json

    table = json.loads((tmp_path / "r" / "leaderboard.json").read_text())["tables"][0]
    assert table["duplicates"][0]["a"] == "gradient" and table["duplicates"][0]["max_abs_diff"] <= 1e-6
