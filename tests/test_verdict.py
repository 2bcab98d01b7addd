"""The board's verdict: family ranks, overall rank and its interval, sanity gate, marks, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_leaderboard import ColourDetector, squares

from an8flower.baselines import Explainer, registry
from an8flower.eval.config import RunConfig
from an8flower.eval.html import leaderboard_html
from an8flower.eval.metaeval import annotate_tables, bootstrap_means
from an8flower.eval.report import leaderboard_markdown, leaderboard_tables, write_report
from an8flower.eval.runner import run_leaderboard
from an8flower.eval.verdict import (
    annotate_verdicts,
    excluded_metrics,
    rank_rows,
    summary_markdown,
)

INFO = {
    "iou_auc": {"label": "IoU-AUC", "higher_is_better": True, "kind": "mask"},
    "pointing_game": {"label": "pointing", "higher_is_better": True, "kind": "mask"},
    "deletion_auc": {"label": "deletion", "higher_is_better": False, "kind": "model"},
    "insertion_auc": {"label": "insertion", "higher_is_better": True, "kind": "model"},
    "randomisation": {"label": "randomisation", "higher_is_better": False, "kind": "explainer"},
    "contrastivity": {"label": "contrast", "higher_is_better": True, "kind": "contrast"},
}

#: Per metric, each row's score on every image (constant: the bootstrap interval is the point).
MEANS = {
    "iou_auc": {"oracle": 1.0, "a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "centre": 0.2, "random": 0.1},
    "pointing_game": {"oracle": 1.0, "b": 0.9, "a": 0.8, "c": 0.7, "d": 0.6, "centre": 0.3, "random": 0.1},
    "deletion_auc": {"oracle": 0.05, "d": 0.1, "c": 0.2, "b": 0.3, "a": 0.4, "random": 0.5, "centre": 0.6},
    "randomisation": {"oracle": 1.0, "a": 0.1, "b": 0.2, "c": 0.3, "d": 0.9, "random": 1.0, "centre": 1.0},
}


def cells_from(means, n: int = 12, noise: float = 0.0, accuracy_seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(accuracy_seed)
    out = []
    for metric, rows in means.items():
        for name, v in rows.items():
            s = np.full(n, v) + noise * rng.normal(size=n)
            out.append({"dataset": "toy", "variant": "v", "model": "net", "split": "test", "seed": 0,
                        "explainer": name, "metric": metric, "options": {}, "error": None,
                        "value": float(np.nanmean(s)) if np.isfinite(s).any() else None, "n": int(np.isfinite(s).sum()),
                        "scores": [None if not np.isfinite(x) else float(x) for x in s],
                        "image_ids": list(range(n)), "extra": {}})
    return out


def tables_for(cells, accuracy: float = 1.0) -> list[dict]:
    key = ("toy", "v", "net", "test", 0)
    tables = leaderboard_tables(cells, INFO, {key: {"accuracy": accuracy}})
    annotate_tables(tables, cells, INFO)
    annotate_verdicts(tables, cells, INFO)
    return tables


def test_overall_rank_is_the_mean_of_family_ranks_and_the_gate_orders_the_rows() -> None:
    t = tables_for(cells_from(MEANS))[0]
    v = t["verdict"]
    assert v["meaningful"] and v["families"] == {"localisation": ["iou_auc", "pointing_game"],
                                                  "faithfulness": ["deletion_auc"], "sanity": ["randomisation"]}
    rows = {r["explainer"]: r for r in v["rows"]}
    # localisation: mean of the two columns' ranks; faithfulness: deletion's (lower is better);
    # sanity: randomisation's (random and centre tie at 5.5); overall: mean of the three families.
    expected = {"a": (1.5, 4, 1), "b": (1.5, 3, 2), "c": (3, 2, 3), "d": (4, 1, 4), "centre": (5, 6, 5.5),
                "random": (6, 5, 5.5)}
    for name, fams in expected.items():
        assert [rows[name]["families"][f] for f in ("localisation", "faithfulness", "sanity")] == list(fams)
        assert rows[name]["rank"] == pytest.approx(sum(fams) / 3, abs=1e-6)
        assert rows[name]["rank_ci"] == [pytest.approx(rows[name]["rank"], abs=1e-6)] * 2  # constant scores
    assert "oracle" not in rows
    # d ranks 3.0, better than c, but its randomisation (0.9) fails the gate: after every passing row.
    assert [r["explainer"] for r in v["rows"]] == ["a", "b", "c", "d", "centre", "random"]
    assert [r["position"] for r in v["rows"]] == [1, 2, 3, 4, 5, 6]
    assert {n: rows[n]["sanity"] for n in rows} == {"a": "passes", "b": "passes", "c": "passes", "d": "fails",
                                                    "centre": "fails", "random": "fails"}
    assert rows["d"]["marks"] == ["fails sanity"] and rows["a"]["marks"] == []
    # the full table is sorted by the verdict too, oracle first
    assert [r["explainer"] for r in t["rows"]] == ["oracle", "a", "b", "c", "d", "centre", "random"]


def test_an_explainer_that_errored_on_every_cell_is_not_ranked() -> None:
    """An attention explainer on a CNN: every cell an error; the others' ranks do not change."""
    cells = cells_from(MEANS)
    for metric in MEANS:
        cells.append({"dataset": "toy", "variant": "v", "model": "net", "split": "test", "seed": 0,
                      "explainer": "vit_rollout", "metric": metric, "options": {},
                      "error": "UsageError: no attention modules", "value": None, "n": 0, "scores": None,
                      "image_ids": None, "extra": {}})
    v = tables_for(cells)[0]["verdict"]
    before = {r["explainer"]: r["rank"] for r in tables_for(cells_from(MEANS))[0]["verdict"]["rows"]}
    assert [r["explainer"] for r in v["rows"]] == ["a", "b", "c", "d", "centre", "random", "vit_rollout"]
    last = v["rows"][-1]
    assert last["rank"] is None and last["position"] is None and last["marks"] == ["not applicable"]
    assert {r["explainer"]: r["rank"] for r in v["rows"][:-1]} == before


def test_interval_uses_the_meta_evaluation_resamples() -> None:
    cells = cells_from(MEANS, n=15, noise=0.05, accuracy_seed=3)
    t = tables_for(cells)[0]
    names = [r["explainer"] for r in t["rows"] if r["explainer"] != "oracle"]
    got = rank_rows(cells, names, ["iou_auc"], INFO, n_boot=200, seed=0)
    # one column: the overall rank on resample b is the rank of the resampled means
    x = np.array([[c["scores"] for c in cells if c["metric"] == "iou_auc" and c["explainer"] == n][0] for n in names])
    boot = bootstrap_means(x, 200, 0)
    from scipy.stats import rankdata

    ranks = rankdata(-boot, axis=1)
    np.testing.assert_allclose(got["rank_ci"][:, 0], np.percentile(ranks, 2.5, axis=0))
    np.testing.assert_allclose(got["rank_ci"][:, 1], np.percentile(ranks, 97.5, axis=0))
    v = t["verdict"]["rows"]
    assert all(r["rank_ci"][0] <= r["rank"] <= r["rank_ci"][1] for r in v)


def test_flagged_and_unfamilied_columns_are_not_counted() -> None:
    means = dict(MEANS)
    # insertion constant over every explainer and image: the meta-evaluation flags it; if it counted,
    # the faithfulness ranks would change (every row ties at 3.5 there).
    means["insertion_auc"] = {n: 0.5 for n in MEANS["iou_auc"]}
    t = tables_for(cells_from(means))[0]
    assert t["metaeval"]["metrics"]["insertion_auc"]["flag"] == "constant"
    assert excluded_metrics(t)["insertion_auc"].startswith("flagged")
    assert t["verdict"]["families"]["faithfulness"] == ["deletion_auc"]
    assert {r["explainer"]: r["families"]["faithfulness"] for r in t["verdict"]["rows"]}["d"] == 1.0


def test_not_meaningful_board_gets_no_ranking_but_keeps_its_marks() -> None:
    t = tables_for(cells_from(MEANS), accuracy=0.25)[0]
    v = t["verdict"]
    assert not v["meaningful"] and "25.0%" in v["reason"]
    assert all(r["rank"] is None and r["position"] is None for r in v["rows"])
    assert {r["explainer"]: r["marks"] for r in v["rows"]}["d"] == ["fails sanity"]
    md = "\n".join(summary_markdown([t]))
    assert "**Not meaningful**: test accuracy 25.0% is below 90%" in md and "| 1 |" not in md
    full = leaderboard_markdown([t], INFO)
    meta_rows = [line for line in full.splitlines() if line.startswith("| IoU-AUC |")]
    assert meta_rows and all("not meaningful" in line for line in meta_rows)
    assert full.count("**Not meaningful**: test accuracy 25.0%") == 2  # the summary and the table
    page = leaderboard_html([t], INFO)
    assert page.count("<b>Not meaningful</b>: test accuracy 25.0%") == 2 and 'sortable summary' not in page


def test_class_blind_is_marked_when_contrastivity_is_undefined_on_every_image() -> None:
    means = dict(MEANS)
    means["contrastivity"] = {"oracle": 1.0, "a": 0.6, "b": 0.5, "c": float("nan"), "d": 0.2,
                              "random": float("nan"), "centre": float("nan")}
    t = tables_for(cells_from(means))[0]
    marks = {r["explainer"]: r["marks"] for r in t["verdict"]["rows"]}
    assert marks["c"] == ["class-blind"] and marks["a"] == []
    assert marks["random"] == ["fails sanity", "class-blind"]
    md = leaderboard_markdown([t], INFO)
    assert "| c (class-blind) |" in md and "| *random* (fails sanity, class-blind) |" in md


def test_summary_comes_first_and_the_report_is_deterministic(tmp_path) -> None:
    cells = cells_from(MEANS, noise=0.05)
    key = ("toy", "v", "net", "test", 0)
    a = write_report(tmp_path / "a", cells, INFO, {key: {"accuracy": 1.0}}, plots=False)
    write_report(tmp_path / "b", cells, INFO, {key: {"accuracy": 1.0}}, plots=False)
    for name in ("leaderboard.md", "leaderboard.json", "leaderboard.html"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    md = a["markdown"]
    assert md.index("## Summary") < md.index("### toy `v`") < md.index("How to read") < md.index("\n## toy `v`")
    assert "| 1 | a |" in md
    doc = json.loads((tmp_path / "a" / "leaderboard.json").read_text())
    assert doc["tables"][0]["verdict"]["rows"][0]["explainer"] == "a"


class ColourRange(Explainer):
    """A user's explainer that ignores the model: the per-pixel range of the colour channels."""

    def explain(self, model, images, targets):
        return images.amax(1) - images.amin(1)


@pytest.fixture
def colour_range():
    registry.register_explainer("test_colour_range")(ColourRange)
    yield "test_colour_range"
    registry._REGISTRY.pop("test_colour_range", None)


def test_maps_that_ignore_the_model_fail_the_sanity_gate(tmp_path, colour_range) -> None:
    torch.manual_seed(0)
    config = RunConfig(out=str(tmp_path / "r"), explainers=["oracle", "gradient", colour_range, "centre", "random"],
                       metrics=["iou_auc", "randomisation", "part_attribution"], batch_size=9, plots=False,
                       model_metric_images=9)
    summary = run_leaderboard(config, datasets=[squares()], models={"detector": ColourDetector()}, progress=False)
    table = json.loads((tmp_path / "r" / "leaderboard.json").read_text())["tables"][0]
    rows = {r["explainer"]: r for r in table["verdict"]["rows"]}
    for name in (colour_range, "centre", "random"):
        assert rows[name]["sanity"] == "fails", rows[name]
    assert rows["gradient"]["sanity"] == "passes"
    # the colour range follows the squares well, yet it is ranked after gradient
    order = [r["explainer"] for r in table["verdict"]["rows"]]
    assert order[0] == "gradient" and set(order[1:]) == {colour_range, "centre", "random"}
    # marked in the summary, the full table and the part table
    assert f"| {colour_range} (fails sanity) |" in summary.markdown
    assert summary.markdown.count(f"| {colour_range} (fails sanity) |") == 2
    assert f"| {colour_range} | " in summary.markdown and "| fails sanity |" in summary.markdown
