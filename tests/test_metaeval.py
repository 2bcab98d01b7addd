"""Meta-evaluation of the metrics: known answers on synthetic scores, and its place in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from an8flower.eval.metaeval import (
    TAU_MIN,
    annotate_tables,
    coinciding_metrics,
    metric_metaeval,
    rank_stability,
    seed_stability,
)
from an8flower.eval.report import leaderboard_markdown, leaderboard_tables, write_report
from an8flower.eval.stats import bootstrap_means, kendall_tau_b

INFO = {"m": {"label": "M", "higher_is_better": True, "kind": "mask"}}


def cells_from(scores: dict[str, np.ndarray], metric: str = "m", seed: int = 0, variant: str = "v") -> list[dict]:
    """Runner-like cells: one per explainer with per-image scores over images 0..N-1."""
    out = []
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        out.append({"dataset": "toy", "variant": variant, "model": "net", "split": "test", "seed": seed,
                    "explainer": name, "metric": metric, "options": {}, "error": None,
                    "value": float(np.nanmean(s)), "n": int(np.isfinite(s).sum()),
                    "scores": s.tolist(), "image_ids": list(range(len(s))), "extra": {}})
    return out


def test_kendall_tau_b_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 7).astype(float), rng.integers(0, 4, 7).astype(float)
        ref = stats.kendalltau(a, b).statistic
        got = kendall_tau_b(a, b)
        assert (np.isnan(ref) and np.isnan(got)) or got == pytest.approx(ref)
    rows = rng.normal(size=(5, 6))
    np.testing.assert_allclose(kendall_tau_b(rows, rows[::-1]), [stats.kendalltau(r, s).statistic for r, s in zip(rows, rows[::-1], strict=True)])
    assert np.isnan(kendall_tau_b(np.ones(4), np.arange(4.0)))  # one ranking all ties: undefined


def test_bootstrap_means_are_paired_and_seeded() -> None:
    x = np.array([[1.0, 2.0, 3.0, np.nan], [2.0, 3.0, 4.0, np.nan]])
    boot = bootstrap_means(x, n_boot=40, seed=3)
    np.testing.assert_allclose(boot[:, 1] - boot[:, 0], 1.0)  # the same images for both rows; NaN ignored
    np.testing.assert_array_equal(boot, bootstrap_means(x, n_boot=40, seed=3))


def test_identical_explainers_are_unstable_and_separated_ones_are_not() -> None:
    rng = np.random.default_rng(1)
    n = 200
    same = {f"e{i}": rng.normal(0.5, 0.2, n) for i in range(6)}
    res = metric_metaeval(cells_from(same))
    # Identical means: tau between two resamples is 1/3 in expectation (rho = 1/2), pairs ~5% significant.
    assert res["tau"] == pytest.approx(1 / 3, abs=0.15) and res["tau"] < TAU_MIN
    assert res["significant_pairs"] <= 0.2
    assert res["flag"] in ("unstable", "no spread")
    apart = {f"e{i}": rng.normal(0.1 * i, 0.05, n) for i in range(6)}
    res = metric_metaeval(cells_from(apart))
    assert res["tau"] == pytest.approx(1.0) and res["tau_ci"] == [1.0, 1.0]
    assert res["significant_pairs"] == 1.0 and res["pairs"] == 15 and res["flag"] is None


def test_rank_stability_counts_significant_pairs() -> None:
    wobble = 0.001 * np.where(np.arange(100) % 2, 1.0, -1.0)  # the third row: above the second half the time
    boot = np.stack([np.linspace(0, 1, 100), np.linspace(0, 1, 100) + 5, np.linspace(0, 1, 100) + 5 + wobble], 1)
    out = rank_stability(boot.mean(0), boot)
    sig = out["significant"]
    assert sig[0, 1] and sig[0, 2] and not sig[1, 2] and out["significant_pairs"] == pytest.approx(2 / 3)


def test_a_metric_with_the_same_value_for_every_explainer_is_flagged() -> None:
    rng = np.random.default_rng(2)
    per_image = rng.uniform(size=50)
    res = metric_metaeval(cells_from({"oracle": per_image, "a": per_image, "b": per_image, "random": per_image}))
    assert res["flag"] == "constant" and "same score" in res["reason"]
    res = metric_metaeval(cells_from({"a": np.full(30, 0.9), "b": np.full(30, 0.9)}))
    assert res["flag"] == "constant" and "(0.9)" in res["reason"]


def test_no_range_when_the_mask_does_not_beat_a_random_map() -> None:
    rng = np.random.default_rng(3)
    n = 64
    scores = {"oracle": 0.96 + rng.normal(0, 0.02, n), "random": 0.95 + rng.normal(0, 0.1, n),
              "a": 0.97 + rng.normal(0, 0.02, n), "b": 0.90 + rng.normal(0, 0.02, n)}
    res = metric_metaeval(cells_from(scores))
    assert res["flag"] == "no range"
    assert res["range"] == pytest.approx(np.mean(scores["oracle"]) - np.mean(scores["random"]), abs=1e-6)
    # Lower is better: the range is random - oracle, positive when the oracle is better.
    res = metric_metaeval(cells_from({"oracle": np.full(n, 0.1) + rng.normal(0, 0.01, n), "random": np.full(n, 0.6),
                                      "a": np.full(n, 0.2), "b": np.full(n, 0.4)}), higher_is_better=False)
    assert res["range"] == pytest.approx(0.5, abs=0.01) and res["flag"] is None
    # The randomisation test: the mask is no ceiling there, so no range is computed.
    res = metric_metaeval(cells_from({"oracle": np.ones(n), "random": np.ones(n), "a": np.linspace(0, 1, n),
                                      "b": np.linspace(0, 1, n) + 1}), kind="explainer")
    assert res["range"] is None and res["flag"] is None


def test_a_metric_undefined_for_random_is_not_flagged_for_it() -> None:
    """Contrastivity is NaN for class-insensitive maps (random, centre): the range and the
    comparison with random do not apply, instead of flagging the column with a NaN range."""
    rng = np.random.default_rng(4)
    n = 64
    scores = {"oracle": np.ones(n), "random": np.full(n, np.nan), "centre": np.full(n, np.nan),
              "a": 0.8 + rng.normal(0, 0.02, n), "b": 0.3 + rng.normal(0, 0.02, n), "c": 0.5 + rng.normal(0, 0.02, n)}
    res = metric_metaeval(cells_from(scores))
    assert res["range"] is None and res["flag"] is None and res["tau"] > 0.9
    # with a defined random row that no explainer beats, the comparison still flags
    same = 0.5 + rng.normal(0, 0.1, n)
    scores.update(random=same, a=same + 0.2, b=same + 0.01 * rng.normal(0, 1, n), c=same - 0.01 * rng.normal(0, 1, n))
    assert metric_metaeval(cells_from(scores))["flag"] is None  # a beats random
    scores.update(a=same.copy())
    assert metric_metaeval(cells_from(scores))["flag"] is not None  # none differs from random (or unstable)


def test_coinciding_metrics_are_found_and_shown_once(tmp_path) -> None:
    rng = np.random.default_rng(4)
    a, b, c = rng.uniform(size=(3, 40))
    cells = (cells_from({"oracle": np.ones(40), "x": a, "random": b}, metric="energy_pointing_game")
             + cells_from({"oracle": np.ones(40), "x": a, "random": b}, metric="relevance_mass_accuracy")
             + cells_from({"oracle": np.ones(40), "x": c, "random": b}, metric="iou_auc"))
    order = ["iou_auc", "energy_pointing_game", "relevance_mass_accuracy"]
    assert coinciding_metrics(cells, order) == [["energy_pointing_game", "relevance_mass_accuracy"]]
    info = {"iou_auc": {"label": "IoU-AUC"}, "energy_pointing_game": {"label": "energy PG"},
            "relevance_mass_accuracy": {"label": "rel. mass"}}
    report = write_report(tmp_path, cells, info, plots=False)
    md = report["markdown"]
    head = next(line for line in md.splitlines() if line.startswith("| explainer"))
    assert "energy PG" in head and "rel. mass" not in head
    assert "`energy PG` and `rel. mass` coincide on this data" in md and "positive part inside the mask" in md
    doc = json.loads((tmp_path / "leaderboard.json").read_text())
    meta = doc["tables"][0]["metaeval"]
    assert meta["hidden"] == ["relevance_mass_accuracy"] and "relevance_mass_accuracy" in doc["tables"][0]["rows"][0]["scores"]


def test_a_flagged_column_is_marked_not_bolded_and_explained() -> None:
    rng = np.random.default_rng(5)
    n = 40
    good = {"oracle": np.ones(n), "a": 0.8 + rng.normal(0, 0.02, n), "b": 0.5 + rng.normal(0, 0.02, n),
            "random": rng.uniform(0, 0.2, n)}
    flat = {e: np.full(n, 0.95) for e in good}
    info = {"good": {"label": "good", "higher_is_better": True}, "flat": {"label": "flat", "higher_is_better": True}}
    cells = cells_from(good, "good") + cells_from(flat, "flat")
    tables = leaderboard_tables(cells, info)
    annotate_tables(tables, cells, info)
    md = leaderboard_markdown(tables, info)
    head = next(line for line in md.splitlines() if line.startswith("| explainer"))
    assert "flat ↑ [flag 1]" in head and "good ↑ |" in head
    row_a = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert "**0.79" in row_a and "**0.950" not in md  # the flagged column has no best
    assert "1. `flat` (constant): every explainer gets the same score on every image (0.95)." in md
    assert "| good | +" in md and "**flagged**: constant" in md


def _seed_tables(orders: list[list[str]]) -> list[dict]:
    cells = []
    for seed, order in enumerate(orders):
        cells += cells_from({e: np.full(5, float(len(order) - i)) for i, e in enumerate(order)}, seed=seed)
    return leaderboard_tables(cells, INFO)


def test_seed_stability_ranks_and_tau_between_seeds() -> None:
    same = seed_stability(_seed_tables([["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"]]), INFO)
    assert len(same) == 1 and same[0]["seeds"] == [0, 1, 2]
    m = same[0]["metrics"]["m"]
    assert m["mean"] == {"a": 1.0, "b": 2.0, "c": 3.0} and m["sd"]["b"] == 0.0 and m["tau"] == 1.0
    flipped = seed_stability(_seed_tables([["a", "b", "c"], ["c", "b", "a"]]), INFO)[0]["metrics"]["m"]
    assert flipped["tau"] == -1.0 and flipped["mean"]["a"] == 2.0 and flipped["sd"]["a"] == pytest.approx(np.sqrt(2))
    md = leaderboard_markdown(_seed_tables([["a", "b", "c"], ["c", "b", "a"]]), INFO)
    assert "## Across model seeds: toy `v` · `net` · test split" in md and "| *tau between seeds* | -1.00 |" in md
    assert seed_stability(_seed_tables([["a", "b"]]), INFO) == []  # one seed: nothing to compare
