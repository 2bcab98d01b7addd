"""The board's verdict: one overall ranking per table, gated by a sanity check, with its marks.

Pure functions over a leaderboard table (:func:`an8flower.eval.report.leaderboard_tables`, with the
meta-evaluation of :func:`an8flower.eval.metaeval.annotate_tables`) and the cells' per-image scores.
Per (dataset, variant, model, split, seed) table:

**Families.** The columns are grouped by what they test (:data:`FAMILIES`):

* *localisation* (against the ground-truth mask): IoU-AUC, IoU@|M|, pointing game, energy pointing
  game, relevance mass and rank accuracy, top-5% intersection, pixel AUC;
* *model-aware* (against what the model was measured to rely on): counterfactual mass, reliance
  rank correlation, contrastivity;
* *faithfulness* (the model's output as pixels are removed or added): deletion, insertion;
* *sanity* (Adebayo et al. 2018, "Sanity checks for saliency maps", NeurIPS): randomisation.

Left out of every family: set-level columns (PxAP: no per-image scores to resample), Quantus
columns (they re-measure built-in columns with another library, so they would count twice), the
part table, and any column the meta-evaluation flags or hides as coinciding with another
(:func:`excluded_metrics` says which and why).

**Ranks.** The candidates are the table's rows except the ``oracle`` (the mask is the ceiling, not
an explainer); ``random`` and ``centre`` are candidates, so a reader sees where chance ranks. On
each counted metric every candidate gets a rank, 1 = best in the metric's direction, ties
averaged, an undefined mean (NaN) last (tied with the other undefined ones). The *family rank* is
the mean of the ranks over the family's counted metrics, the *overall rank* the mean of the
family ranks over the families with a counted metric::

    r_m(e)      = rank of mean_m(e) among the candidates
    R_f(e)      = (1 / |M_f|) sum_{m in M_f} r_m(e)
    overall(e)  = (1 / |F|)   sum_{f in F}   R_f(e)

**Interval.** The 95% interval of the overall rank is the 2.5 / 97.5 percentiles of
``overall(e)`` recomputed on the bootstrap resamples of the images that the meta-evaluation draws
(:func:`an8flower.eval.metaeval.bootstrap_means` with the table's ``n_boot`` and ``seed``: the same
indices; every explainer on the same resampled images of a metric).

**Sanity gate.** An explainer *passes* when the upper end of the 95% bootstrap interval of its mean
randomisation similarity (Spearman correlation between its maps for the trained and for the
re-initialised model) is below :data:`SANITY_THRESHOLD`: its maps are shown, on these images, to
change when the model's weights do. Otherwise it *fails sanity*: its maps do not demonstrably
depend on the model (a map of the image alone, ``centre`` and ``random`` score 1) and it is
ranked after every explainer that passes, whatever its other scores. An explainer whose
randomisation score is undefined on every image is *sanity untested* (ranked with the passing
ones, marked); without a randomisation column the gate is not applied.

**Class-blind.** An explainer whose maps for the target and for the runner-up class are equal on
every image cannot explain a decision between two classes. Contrastivity
(:func:`an8flower.eval.metrics.contrastivity`) is undefined (NaN) exactly when the two maps'
positive parts are equal or no pixel tells the classes apart; an explainer is marked
*class-blind* when its contrastivity is NaN on every image where some other candidate's is
defined. This is a mark, not a sanity failure: upsampled activations depend on the model.

**Not meaningful.** When the model's accuracy on the scored split is below
:data:`ACCURACY_THRESHOLD` (the threshold of :func:`an8flower.eval.train.accuracy_warning`), the
table is *not meaningful*: explanations of a model that has not learned the task say little, and
the table gets no ranking (the marks are still computed).

Everything is a deterministic function of the cells: the same cache gives the same bytes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "FAMILIES",
    "SANITY_THRESHOLD",
    "ACCURACY_THRESHOLD",
    "ORACLE_ROW",
    "family_of",
    "excluded_metrics",
    "rank_rows",
    "table_verdict",
    "annotate_verdicts",
    "row_marks",
    "order_rows",
    "aggregation_lines",
    "summary_markdown",
]

#: The families of columns the overall ranking averages over, in order, with their metrics.
FAMILIES: dict[str, tuple[str, ...]] = {
    "localisation": ("iou_auc", "iou_top_mask", "pointing_game", "energy_pointing_game", "relevance_mass_accuracy",
                     "relevance_rank_accuracy", "top_k_intersection", "pixel_auc"),
    "model-aware": ("counterfactual_mass", "reliance_rank_correlation", "contrastivity"),
    "faithfulness": ("deletion_auc", "insertion_auc"),
    "sanity": ("randomisation",),
}
#: The sanity gate: the upper end of the 95% interval of the mean randomisation similarity
#: (Spearman, trained vs re-initialised model) must be below this. 0.5: at most a moderate rank
#: correlation between the maps of the trained and of the random model; a map computed from the
#: image alone scores 1.
SANITY_THRESHOLD = 0.5
#: Below this accuracy on the scored split a table is "not meaningful" (as in ``accuracy_warning``).
ACCURACY_THRESHOLD = 0.9
#: The reference row that is the ceiling, not a candidate.
ORACLE_ROW = "oracle"
_SANITY_METRIC = "randomisation"
_CONTRAST_METRIC = "contrastivity"


def family_of(metric: str) -> str | None:
    """The family of ``metric`` (:data:`FAMILIES`), or None when no family counts it."""
    for family, metrics in FAMILIES.items():
        if metric in metrics:
            return family
    return None


def excluded_metrics(table: Mapping[str, Any]) -> dict[str, str]:
    """The table's metrics that the ranking does not count, each with the reason (table order)."""
    meta = table.get("metaeval") or {}
    hidden = set(meta.get("hidden", []))
    out = {}
    for m in table["metrics"]:
        flag = ((meta.get("metrics") or {}).get(m) or {}).get("flag")
        if family_of(m) is None:
            out[m] = "in no family"
        elif m in hidden:
            out[m] = "coincides with an earlier column"
        elif flag:
            out[m] = f"flagged by the meta-evaluation ({flag})"
    return out


def _rank(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Ranks along the last axis (1 = best, ties averaged, NaN last and tied)."""
    from scipy.stats import rankdata

    key = np.where(np.isfinite(values), -values if higher_is_better else values, np.inf)
    return rankdata(key, method="average", axis=-1)


def _percentiles(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(x, 2.5, axis=0), np.nanpercentile(x, 97.5, axis=0)


def _matrix(cells: Sequence[Mapping[str, Any]], metric: str, names: Sequence[str]) -> np.ndarray:
    """The per-image scores (E, N) of ``metric`` for the candidates ``names``, aligned by image id
    (:func:`an8flower.eval.metaeval.score_matrix`); NaN rows for a candidate without scores."""
    from an8flower.eval.metaeval import score_matrix

    have, _, x = score_matrix([c for c in cells if c["metric"] == metric])
    rows = {n: i for i, n in enumerate(have)}
    full = np.full((len(names), x.shape[1]), np.nan)
    for j, n in enumerate(names):
        if n in rows:
            full[j] = x[rows[n]]
    return full


def _metric_scores(cells: Sequence[Mapping[str, Any]], metric: str, names: Sequence[str], n_boot: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-data means (E,) and bootstrap means (B, E) of ``metric`` for the candidates ``names``
    (the meta-evaluation's resamples: :func:`an8flower.eval.metaeval.bootstrap_means`)."""
    from an8flower.eval.stats import bootstrap_means

    full = _matrix(cells, metric, names)
    if full.shape[1] == 0:
        return np.full(len(names), np.nan), np.full((n_boot, len(names)), np.nan)
    finite = np.isfinite(full)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(finite.any(1), np.where(finite, full, 0.0).sum(1) / np.maximum(finite.sum(1), 1), np.nan)
    return means, bootstrap_means(full, n_boot, seed)


def rank_rows(cells: Sequence[Mapping[str, Any]], names: Sequence[str], metrics: Sequence[str],
              metric_info: Mapping[str, Mapping[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Family ranks and the overall rank (with its bootstrap interval) of the candidates ``names``.

    Args:
        cells: the group's cells (per-image ``scores`` and ``image_ids``).
        names: the candidates, E of them. metrics: the metrics to count (each in a family).
        metric_info: per metric ``higher_is_better``. n_boot, seed: the meta-evaluation's bootstrap.

    Returns:
        ``{"families": {family: [metric, ...]}, "family_rank": (E, F) float array (NaN where a
        family counts no metric), "rank": (E,), "rank_ci": (E, 2)}`` (see the module docstring).
    """
    by_family: dict[str, list[str]] = {}
    for m in metrics:
        by_family.setdefault(str(family_of(m)), []).append(m)
    families = {f: by_family[f] for f in FAMILIES if f in by_family}
    e = len(names)
    fam_full = np.full((e, len(families)), np.nan)
    fam_boot = np.full((n_boot, e, len(families)), np.nan)
    for k, fam in enumerate(families.values()):
        full_ranks, boot_ranks = [], []
        for m in fam:
            hib = bool(metric_info.get(m, {}).get("higher_is_better", True))
            means, boot = _metric_scores(cells, m, names, n_boot, seed)
            full_ranks.append(_rank(means, hib))
            boot_ranks.append(_rank(boot, hib))
        fam_full[:, k] = np.mean(full_ranks, axis=0)
        fam_boot[:, :, k] = np.mean(boot_ranks, axis=0)
    if families:
        overall, overall_boot = fam_full.mean(1), fam_boot.mean(2)
        lo, hi = _percentiles(overall_boot)
    else:
        overall, lo, hi = np.full(e, np.nan), np.full(e, np.nan), np.full(e, np.nan)
    return {"families": families, "family_rank": fam_full, "rank": overall, "rank_ci": np.stack([lo, hi], 1)}


def _sanity(cells: Sequence[Mapping[str, Any]], names: Sequence[str], n_boot: int, seed: int,
            threshold: float) -> list[dict[str, Any]]:
    """Per candidate: ``{"sanity": "passes" | "fails" | "untested", "randomisation", "randomisation_ci"}``."""
    means, boot = _metric_scores(cells, _SANITY_METRIC, names, n_boot, seed)
    lo, hi = _percentiles(boot)
    out: list[dict[str, Any]] = []
    for j in range(len(names)):
        if not math.isfinite(means[j]):
            out.append({"sanity": "untested", "randomisation": None, "randomisation_ci": None})
            continue
        status = "passes" if bool(hi[j] < threshold) else "fails"
        out.append({"sanity": status, "randomisation": _num(means[j]), "randomisation_ci": [_num(lo[j]), _num(hi[j])]})
    return out


def _class_blind(cells: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[bool]:
    """Per candidate: contrastivity NaN on every image where another candidate's is defined."""
    if not any(c["metric"] == _CONTRAST_METRIC and c.get("scores") for c in cells):
        return [False] * len(names)
    finite = np.isfinite(_matrix(cells, _CONTRAST_METRIC, names))
    out = []
    for j in range(len(names)):
        has_cell = any(c["metric"] == _CONTRAST_METRIC and c["explainer"] == names[j] and c.get("scores")
                       and not c.get("error") for c in cells)
        others = np.delete(finite, j, axis=0).any(0)
        out.append(has_cell and bool(others.any()) and not bool((finite[j] & others).any()))
    return out


def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 6)


def table_verdict(table: Mapping[str, Any], cells: Sequence[Mapping[str, Any]],
                  metric_info: Mapping[str, Mapping[str, Any]], sanity_threshold: float = SANITY_THRESHOLD,
                  accuracy_threshold: float = ACCURACY_THRESHOLD) -> dict[str, Any]:
    """The verdict of one table (see the module docstring).

    Args:
        table: a leaderboard table with its ``metaeval`` (for the flags, hidden columns, ``n_boot``
            and ``seed``) and ``meta["accuracy"]``.
        cells: the cells of the table's group.
        metric_info: per metric ``higher_is_better``.
        sanity_threshold, accuracy_threshold: the gates.

    Returns:
        ``{"meaningful", "reason", "accuracy_threshold", "sanity_threshold", "n_boot", "seed",
        "families": {family: [metric, ...]}, "excluded": {metric: reason}, "rows": [...]}``; each row
        ``{"explainer", "position" (1, 2, ... in the final order; None when not meaningful), "rank",
        "rank_ci", "families": {family: mean rank}, "sanity", "randomisation", "randomisation_ci",
        "class_blind", "marks"}``, rows in the final order (see :func:`order_rows`).
    """
    meta = table.get("metaeval") or {}
    n_boot, seed = int(meta.get("n_boot", 200)), int(meta.get("seed", 0))
    from an8flower.eval.stats import N_BOOT

    n_boot = n_boot if n_boot > 0 else N_BOOT
    names = [r["explainer"] for r in table["rows"] if r["explainer"] != ORACLE_ROW]
    excluded = excluded_metrics(table)
    counted = [m for m in table["metrics"] if m not in excluded]
    accuracy: Any = (table.get("meta") or {}).get("accuracy")
    meaningful = accuracy is None or (math.isfinite(float(accuracy)) and float(accuracy) >= accuracy_threshold)
    reason = None if meaningful else (
        f"{table.get('split', 'test')} accuracy {100 * float(accuracy):.1f}% is below {100 * accuracy_threshold:.0f}%: "
        "the model has not learned the task, so no ranking is given")
    # An explainer with no score in any counted column did not run on this model (every cell an
    # error, e.g. an attention explainer on a CNN): it is not ranked, and listed last.
    scored = {c["explainer"] for c in cells if c["metric"] in counted and _has_score(c)}
    inapplicable = [n for n in names if n not in scored]
    names = [n for n in names if n in scored]
    ranked = rank_rows(cells, names, counted, metric_info, n_boot, seed)
    sanity = _sanity(cells, names, n_boot, seed, sanity_threshold) if any(
        c["metric"] == _SANITY_METRIC for c in cells) else [{"sanity": None, "randomisation": None,
                                                             "randomisation_ci": None}] * len(names)
    blind = _class_blind(cells, names)
    rows = []
    for j, name in enumerate(names):
        row = {"explainer": name, "position": None,
               "rank": _num(ranked["rank"][j]) if meaningful else None,
               "rank_ci": [_num(v) for v in ranked["rank_ci"][j]] if meaningful else None,
               "families": {f: _num(ranked["family_rank"][j, k]) if meaningful else None
                            for k, f in enumerate(ranked["families"])},
               **sanity[j], "class_blind": blind[j]}
        row["marks"] = row_marks(row)
        rows.append(row)
    if meaningful:
        rows = order_rows(rows)
        for i, row in enumerate(rows, 1):
            row["position"] = i
    rows += [{"explainer": name, "position": None, "rank": None, "rank_ci": None,
              "families": {f: None for f in ranked["families"]}, "sanity": None, "randomisation": None,
              "randomisation_ci": None, "class_blind": False, "marks": [NOT_APPLICABLE]} for name in inapplicable]
    return {"meaningful": meaningful, "reason": reason, "accuracy_threshold": accuracy_threshold,
            "sanity_threshold": sanity_threshold, "n_boot": n_boot, "seed": seed,
            "families": ranked["families"], "excluded": excluded, "rows": rows}


def _has_score(cell: Mapping[str, Any]) -> bool:
    """Whether a cell holds at least one defined per-image score (an error cell holds none)."""
    if cell.get("error"):
        return False
    return any(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in cell.get("scores") or [])


#: The summary's mark of an explainer with no score (:func:`table_verdict`).
NOT_APPLICABLE = "not applicable"


def table_marks(row: Mapping[str, Any]) -> list[str]:
    """The marks a full table shows after an explainer's name: its summary marks but
    :data:`NOT_APPLICABLE` (its cells already say ``error [k]``)."""
    return [m for m in row["marks"] if m != NOT_APPLICABLE]


def row_marks(row: Mapping[str, Any]) -> list[str]:
    """The marks of a verdict row: ``"fails sanity"``, ``"sanity untested"``, ``"class-blind"``."""
    marks = []
    if row.get("sanity") == "fails":
        marks.append("fails sanity")
    elif row.get("sanity") == "untested":
        marks.append("sanity untested")
    if row.get("class_blind"):
        marks.append("class-blind")
    return marks


def order_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Verdict rows in ranking order: explainers that do not fail sanity first, each part by
    overall rank (undefined last), then by name."""
    def key(r: dict[str, Any]) -> tuple:
        rank = r.get("rank")
        return (r.get("sanity") == "fails", math.inf if rank is None else rank, r["explainer"])

    return sorted(rows, key=key)


def annotate_verdicts(tables: Sequence[dict[str, Any]], cells: Sequence[Mapping[str, Any]],
                      metric_info: Mapping[str, Mapping[str, Any]]) -> None:
    """Add ``table["verdict"]`` (:func:`table_verdict`) to each table and sort its rows by it:
    ``oracle`` first, then the verdict's order (rows it does not rank keep their place after)."""
    keys = ("dataset", "variant", "model", "split", "seed")
    by_group: dict[tuple, list[Mapping[str, Any]]] = {}
    for c in cells:
        by_group.setdefault(tuple(c[k] for k in keys), []).append(c)
    for t in tables:
        t["verdict"] = table_verdict(t, by_group.get(tuple(t[k] for k in keys), []), metric_info)
        if t["verdict"]["meaningful"]:
            pos = {r["explainer"]: i for i, r in enumerate(t["verdict"]["rows"])}
            t["rows"] = sorted(t["rows"], key=lambda r: (r["explainer"] != ORACLE_ROW,
                                                         pos.get(r["explainer"], len(pos))))


def aggregation_lines(sanity_threshold: float = SANITY_THRESHOLD,
                      accuracy_threshold: float = ACCURACY_THRESHOLD) -> list[str]:
    """How the summary is computed, as a Markdown list (for the legend and the HTML page)."""
    fams = "; ".join(f"*{f}*: " + ", ".join(f"`{m}`" for m in ms) for f, ms in FAMILIES.items())
    return [
        f"* **Families**: {fams}. Set-level, Quantus, coinciding and flagged columns are not counted.",
        "* **Rank**: on each counted column every explainer except the oracle gets a rank (1 = best, ties "
        "averaged, undefined last); a family's rank is the mean over its columns, the **overall rank** the mean "
        "over the families. Lower is better.",
        "* **Interval**: 2.5 and 97.5 percentiles of the overall rank over the meta-evaluation's bootstrap "
        "resamples of the images (same seed, same resamples).",
        f"* **fails sanity** (Adebayo et al. 2018): the 95% interval of the mean randomisation similarity does not "
        f"lie below {sanity_threshold:g}: the maps do not demonstrably change with the model's weights. Ranked after "
        "every explainer that passes.",
        "* **class-blind**: the map for the runner-up class equals the map for the target on every image "
        "(contrastivity undefined throughout): it cannot explain a decision between two classes.",
        f"* **not meaningful**: the model's accuracy on the scored split is below {100 * accuracy_threshold:.0f}%; "
        "the table gets no ranking.",
        "* **not applicable**: the explainer has no score in any counted column (every cell an error, e.g. an "
        "attention explainer on a CNN); it is listed last, unranked, and the others' ranks are as without it.",
    ]


def _fmt_rank(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def summary_markdown(tables: Sequence[Mapping[str, Any]], md_cell: Any = str) -> list[str]:
    """The summary section: per table, explainer, overall rank [95% interval], one rank per family, marks.

    Args:
        tables: tables with their ``verdict``.
        md_cell: escapes a table cell's text (:func:`an8flower.eval.report.md_cell`).
    """
    with_verdict = [t for t in tables if t.get("verdict")]
    if not with_verdict:
        return []
    lines = ["## Summary", "", "Overall rank per table (lower is better; how it is computed is in the legend below).",
             ""]
    for t in with_verdict:
        v = t["verdict"]
        head = f"### {t['dataset']}" + (f" `{t['variant']}`" if t["variant"] else "")
        lines += [head + f" · `{t['model']}` · {t['split']} split" + (f" · seed {t['seed']}" if t.get("seed") else ""),
                  ""]
        if not v["meaningful"]:
            lines += [f"**Not meaningful**: {v['reason']}.", ""]
            continue
        fams = list(v["families"])
        if not fams:
            lines += ["No counted column (each is flagged, hidden or in no family): no ranking.", ""]
        columns = ["#", "explainer", "overall rank [95%]"] + fams + ["marks"]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join(["--:", ":--", "--:"] + ["--:"] * len(fams) + [":--"]) + "|")
        for r in v["rows"]:
            ci = r["rank_ci"] or [None, None]
            rank = _fmt_rank(r["rank"]) + ("" if ci[0] is None else f" [{ci[0]:.1f}, {ci[1]:.1f}]")
            cells = ["" if r["position"] is None else str(r["position"]), md_cell(r["explainer"]), rank]
            cells += [_fmt_rank(r["families"].get(f)) for f in fams] + [md_cell(", ".join(r["marks"]))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if v["excluded"]:
            lines += ["Not counted: " + "; ".join(f"`{md_cell(m)}` ({why})" for m, why in v["excluded"].items()) + ".",
                      ""]
    return lines
