"""Meta-evaluation of the leaderboard's metrics: can a column tell a good explanation from chance here?

A leaderboard column is only worth reading if, on this data and this many images, its metric
separates a perfect explanation from a random one and orders the explainers the same way on
another draw of the images. Everything here works on the per-image scores the runner keeps (one
vector per explainer and metric in a group, aligned by image id), with a seeded bootstrap over
the images (:data:`N_BOOT` resamples, each explainer evaluated on the same resampled images:
paired). Per metric and group:

* **range**: ``s * (mean_oracle - mean_random)``, ``s = +1`` when higher is better and ``-1``
  otherwise, so a positive range means the mask itself beats a random map; with its bootstrap
  standard error ``se_range`` (the standard deviation of the resampled difference). Not computed
  for ``kind = "explainer"`` metrics (the randomisation test), where the mask is no ceiling: it
  does not depend on the model, so it fails that test by construction.
* **tau**: Kendall's tau-b between the explainers' rankings (by mean score) on two independent
  resamples, over :data:`N_BOOT` / 2 pairs of resamples: mean and 2.5 / 97.5 percentiles. The
  reference rows (``oracle``, ``random``, ``centre``) are left out. Reference values: explainers
  whose means are far apart give 1; explainers with *identical* means give 1/3 in expectation,
  not 0 (two resamples share the original images, so their means correlate with rho = 1/2 and
  E[tau] = (2 / pi) arcsin(1/2) = 1/3, for normal errors). A pair of resamples on which one
  ranking is all ties counts as tau = 0.
* **significant pairs**: the share of explainer pairs (references left out) whose paired
  bootstrap 95% interval of the difference of means (2.5 / 97.5 percentiles) excludes 0.

A column is **flagged** (and the first reason given) when

1. ``constant``: every explainer gets the same score on every image (within :data:`EQUAL_TOL`);
2. ``no range``: the range is not positive or is less than :data:`RANGE_SNR` standard errors
   (``range < RANGE_SNR * se_range``): the mask does not clearly beat a random map (not applied
   where ``oracle`` or ``random`` is undefined on every image, as ``random`` is for contrastivity:
   the range is then n/a);
3. ``unstable``: the mean tau is below :data:`TAU_MIN`;
4. ``no spread``: no two explainers differ significantly, or none differs significantly from
   ``random`` (when there is a ``random`` row with values).

**Coinciding metrics**: two metrics whose per-image scores agree within :data:`EQUAL_TOL` for
every explainer and image of a group (same undefined entries too) are one metric shown twice; the
report shows the first and names the others in a note (:data:`KNOWN_COINCIDENCES` says when and
why they coincide where the package knows).

**Across model seeds** (:func:`seed_stability`): for groups that differ only in the model seed
(``an8flower leaderboard --model-seeds N``), each explainer's rank per metric (1 = best among the
non-reference rows, ties averaged), its mean and standard deviation over the seeds, and the mean
Kendall tau-b between the rankings of every pair of seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

from an8flower.eval.markdown import md_cell, md_row, md_rule
from an8flower.eval.stats import N_BOOT, bootstrap_means, kendall_tau_b, percentile_interval

__all__ = [
    "RANGE_SNR",
    "TAU_MIN",
    "EQUAL_TOL",
    "REFERENCES",
    "KNOWN_COINCIDENCES",
    "score_matrix",
    "rank_stability",
    "metric_metaeval",
    "coinciding_metrics",
    "group_metaeval",
    "annotate_tables",
    "hidden_metrics",
    "flag_suffix",
    "metaeval_markdown",
    "seed_stability",
    "seed_markdown",
]

#: A column whose oracle-to-random range is under this many standard errors is flagged.
RANGE_SNR = 5.0
#: A column whose mean tau between resamples is below this is flagged (identical explainers: 1/3).
TAU_MIN = 0.6
#: Scores within this are equal (constant columns, coinciding metrics).
EQUAL_TOL = 1e-9
#: Rows that are references, not explainers (left out of tau and of the significant pairs).
REFERENCES: tuple[str, ...] = ("oracle", "random", "centre")
#: Metric pairs that coincide by definition in this package, and why.
KNOWN_COINCIDENCES: dict[frozenset, str] = {
    frozenset({"energy_pointing_game", "relevance_mass_accuracy"}): (
        "both are the share of the heatmap's positive part inside the mask, "
        "sum_M max(h, 0) / sum max(h, 0), for every heatmap; for non-negative maps that is also "
        "Arras et al.'s plain relevance mass"
    ),
}


# ------------------------------------------------------------------------------------ maths


def score_matrix(cells: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[int], np.ndarray]:
    """Per-image scores of one metric's cells as a matrix aligned by image id.

    Args:
        cells: cells of one group and metric with ``scores`` and ``image_ids`` (failed cells and
            cells without per-image scores are skipped).

    Returns:
        ``(explainers, image_ids, X)``, X float64 (E, N) with NaN where an explainer has no score
        for an image (the image ids are the union, in first-seen order).
    """
    rows = [c for c in cells if not c.get("error") and c.get("scores") and c.get("image_ids") is not None]
    ids: dict[int, int] = {}
    for c in rows:
        for i in c["image_ids"]:
            ids.setdefault(int(i), len(ids))
    x = np.full((len(rows), len(ids)), np.nan)
    for r, c in enumerate(rows):
        cols = [ids[int(i)] for i in c["image_ids"]]
        x[r, cols] = [math.nan if s is None else float(s) for s in c["scores"][: len(cols)]]
    return [c["explainer"] for c in rows], list(ids), x


def rank_stability(means: np.ndarray, boot: np.ndarray) -> dict[str, Any]:
    """Tau between resamples and significant pairs for explainers with full-data ``means`` (E,).

    Args:
        means: (E,) the explainers' means on all images.
        boot: (B, E) their means on B paired resamples (:func:`bootstrap_means`), B even.

    Returns:
        ``{"tau": mean, "tau_ci": [2.5%, 97.5%], "significant_pairs": share, "pairs": n_pairs,
        "significant": (E, E) bool}`` (NaN/None where undefined: fewer than two explainers).
    """
    e = boot.shape[1]
    if e < 2:
        return {"tau": math.nan, "tau_ci": [math.nan, math.nan], "significant_pairs": math.nan, "pairs": 0,
                "significant": np.zeros((e, e), bool)}
    half = boot.shape[0] // 2
    taus = np.nan_to_num(kendall_tau_b(boot[0:2 * half:2], boot[1:2 * half:2]), nan=0.0)
    lo, hi = percentile_interval(boot[:, :, None] - boot[:, None, :])  # (E, E)
    sig = (lo > 0) | (hi < 0)
    iu = np.triu_indices(e, 1)
    return {
        "tau": float(taus.mean()) if taus.size else math.nan,
        "tau_ci": [float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))] if taus.size else [math.nan, math.nan],
        "significant_pairs": float(sig[iu].mean()),
        "pairs": int(len(iu[0])),
        "significant": sig,
    }


def metric_metaeval(cells: Sequence[Mapping[str, Any]], higher_is_better: bool = True, kind: str = "mask",
                    n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """The meta-evaluation of one metric in one group (see the module docstring).

    Args:
        cells: that metric's cells in the group (per-image ``scores`` and ``image_ids``).
        higher_is_better: the metric's direction. kind: its kind (``"explainer"``: no range).
        n_boot, seed: the bootstrap.

    Returns:
        ``{"n_images", "range", "se_range", "tau", "tau_ci", "significant_pairs", "pairs",
        "flag": None or one of "constant", "no range", "unstable", "no spread", "reason"}``;
        ``{"n_images": 0, "flag": None, "reason": "no per-image scores"}`` for set-level metrics or
        groups with fewer than 2 images.
    """
    names, _, x = score_matrix(cells)
    out: dict[str, Any] = {"n_images": int(x.shape[1]), "range": None, "se_range": None, "tau": None,
                           "tau_ci": None, "significant_pairs": None, "pairs": 0, "flag": None, "reason": None}
    if x.shape[1] < 2 or x.shape[0] < 2:
        out["reason"] = "no per-image scores" if x.shape[1] == 0 else "too few images or rows"
        return out
    sign = 1.0 if higher_is_better else -1.0
    boot = bootstrap_means(x, n_boot, seed)
    with np.errstate(invalid="ignore"):
        means = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in x])
    cand = [i for i, n in enumerate(names) if n not in REFERENCES]
    stab = rank_stability(means[cand], boot[:, cand])
    out.update(tau=_num(stab["tau"]), tau_ci=[_num(v) for v in stab["tau_ci"]],
               significant_pairs=_num(stab["significant_pairs"]), pairs=stab["pairs"])
    flags: list[tuple[str, str]] = []
    finite = np.isfinite(x)
    constant = bool((finite == finite[:1]).all()) and (not finite.any() or float(np.nanmax(np.abs(x - x[:1]))) <= EQUAL_TOL)
    if constant:
        v = x[0][finite[0]]
        flat = v.size > 0 and float(v.max() - v.min()) <= EQUAL_TOL
        flags.append(("constant", "every explainer gets the same score on every image" + (f" ({v[0]:.3g})" if flat else "")))
    # random's row is undefined for class-insensitive metrics (contrastivity): no range, no comparison
    has_random = "random" in names and bool(np.isfinite(means[names.index("random")]))
    if "oracle" in names and has_random and kind != "explainer" and np.isfinite(means[names.index("oracle")]):
        o, r = names.index("oracle"), names.index("random")
        rng = sign * (means[o] - means[r])
        se = float(np.nanstd(sign * (boot[:, o] - boot[:, r]), ddof=1))
        out.update(range=_num(rng), se_range=_num(se))
        if not constant and not (rng > 0 and rng >= RANGE_SNR * se):
            flags.append(("no range", f"the oracle-to-random range ({rng:+.3f}) is less than {RANGE_SNR:g} standard "
                          f"errors of its estimate ({RANGE_SNR:g} x {se:.3f}): the column does not separate the mask "
                          "itself from a random map on these images"))
    if not constant and len(cand) >= 2 and not (stab["tau"] >= TAU_MIN):
        tau = stab["tau"]
        flags.append(("unstable", "the explainers' ranking is unstable: Kendall's tau between bootstrap resamples "
                      + (f"{tau:.2f} < {TAU_MIN:g}" if math.isfinite(tau) else "is undefined (tied means)")))
    if not constant and len(cand) >= 2:
        if stab["significant_pairs"] == 0:
            flags.append(("no spread", "no two explainers differ significantly (paired bootstrap, 95%)"))
        elif has_random:
            r = names.index("random")
            lo, hi = percentile_interval(boot[:, cand] - boot[:, [r]])
            if not ((lo > 0) | (hi < 0)).any():
                flags.append(("no spread", "no explainer differs significantly from random (paired bootstrap, 95%)"))
    if flags:
        out["flag"], out["reason"] = flags[0]
    return out


def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 6)


def coinciding_metrics(cells: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[list[str]]:
    """Groups of metrics whose per-image scores agree within :data:`EQUAL_TOL` for every explainer and image.

    Args:
        cells: the cells of one group. metrics: candidate metric names, in table order.

    Returns:
        Lists of two or more metric names (table order), each a set of coinciding metrics. Metrics
        without per-image scores never coincide, nor do metrics scored for fewer than two
        explainers or taking a single value throughout (saturated scores prove nothing).
    """
    vectors: dict[str, dict[str, tuple[tuple[int, ...], np.ndarray]]] = {}
    for c in cells:
        if c.get("error") or not c.get("scores") or c.get("image_ids") is None or c["metric"] not in metrics:
            continue
        scores = np.array([math.nan if s is None else float(s) for s in c["scores"]])
        vectors.setdefault(c["metric"], {})[c["explainer"]] = (tuple(int(i) for i in c["image_ids"]), scores)

    def same(a: str, b: str) -> bool:
        va, vb = vectors[a], vectors[b]
        if set(va) != set(vb) or len(va) < 2:
            return False
        pooled = np.concatenate([s for _, s in va.values()])
        if np.unique(pooled[np.isfinite(pooled)]).size < 2:  # saturated scores prove nothing
            return False
        for e, (ids, s) in va.items():
            ids_b, t = vb[e]
            if ids != ids_b or not np.array_equal(np.isfinite(s), np.isfinite(t)):
                return False
            f = np.isfinite(s)
            if f.any() and float(np.abs(s[f] - t[f]).max()) > EQUAL_TOL:
                return False
        return True

    groups: list[list[str]] = []
    placed: set[str] = set()
    present = [m for m in metrics if m in vectors]
    for i, a in enumerate(present):
        if a in placed:
            continue
        group = [a] + [b for b in present[i + 1 :] if b not in placed and same(a, b)]
        if len(group) > 1:
            groups.append(group)
            placed.update(group)
    return groups


def group_metaeval(cells: Sequence[Mapping[str, Any]], metrics: Sequence[str],
                   metric_info: Mapping[str, Mapping[str, Any]], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Meta-evaluation of one group (one leaderboard table).

    Returns:
        ``{"metrics": {metric: metric_metaeval(...)}, "coincide": [[a, b, ...], ...], "hidden":
        [b, ...] (coinciding metrics after the first), "n_boot", "seed"}``.
    """
    coincide = coinciding_metrics(cells, metrics)
    hidden = [m for g in coincide for m in g[1:]]
    per = {}
    for m in metrics:
        info = metric_info.get(m, {})
        per[m] = metric_metaeval([c for c in cells if c["metric"] == m], bool(info.get("higher_is_better", True)),
                                 str(info.get("kind", "mask")), n_boot, seed)
    return {"metrics": per, "coincide": coincide, "hidden": hidden, "n_boot": n_boot, "seed": seed}


def annotate_tables(tables: Sequence[dict[str, Any]], cells: Sequence[Mapping[str, Any]],
                    metric_info: Mapping[str, Mapping[str, Any]], n_boot: int = N_BOOT, seed: int = 0) -> None:
    """Add ``table["metaeval"]`` (:func:`group_metaeval`) to each leaderboard table, from the cells."""
    keys = ("dataset", "variant", "model", "split", "seed")
    by_group: dict[tuple, list[Mapping[str, Any]]] = {}
    for c in cells:
        by_group.setdefault(tuple(c[k] for k in keys), []).append(c)
    for t in tables:
        group = by_group.get(tuple(t[k] for k in keys), [])
        t["metaeval"] = group_metaeval(group, t["metrics"], metric_info, n_boot, seed)


# ---------------------------------------------------------------------------------- report


def hidden_metrics(table: Mapping[str, Any]) -> list[str]:
    """Metrics of a table not shown as columns (they coincide with an earlier column)."""
    return list((table.get("metaeval") or {}).get("hidden", []))


def _flag_notes(table: Mapping[str, Any]) -> list[str]:
    meta = table.get("metaeval") or {}
    return [m for m in table["metrics"] if m not in meta.get("hidden", []) and (meta.get("metrics", {}).get(m) or {}).get("flag")]


def flag_suffix(table: Mapping[str, Any], metric: str) -> str:
    """`` [flag N]`` for a flagged column of ``table`` (N its note under the table), else ``""``."""
    flagged = _flag_notes(table)
    return f" [flag {flagged.index(metric) + 1}]" if metric in flagged else ""


def metaeval_markdown(table: Mapping[str, Any], metric_info: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines under a leaderboard table: flagged columns with their reasons, coinciding metrics, the meta table."""
    meta = table.get("metaeval")
    if not meta:
        return []
    label = {m: metric_info.get(m, {}).get("label", m) for m in table["metrics"]}
    lines: list[str] = []
    flagged = _flag_notes(table)
    if flagged:
        lines += ["Flagged columns (they cannot rank explainers on these images; read them with care):", ""]
        lines += [f"{i}. `{label[m]}` ({meta['metrics'][m]['flag']}): {meta['metrics'][m]['reason']}."
                  for i, m in enumerate(flagged, 1)]
        lines.append("")
    for group in meta.get("coincide", []):
        names = " and ".join(f"`{label[m]}`" for m in group)
        why = KNOWN_COINCIDENCES.get(frozenset(group))
        lines.append(f"{names} coincide on this data (every explainer and image, within {EQUAL_TOL:g})"
                     + (f": {why}" if why else "") + f"; shown once, as `{label[group[0]]}`.")
        lines.append("")
    rows = [m for m in table["metrics"] if m not in meta.get("hidden", [])]
    if not any(meta["metrics"][m].get("tau") is not None for m in rows):
        return lines
    lines += [f"Meta-evaluation ({meta['n_boot']} paired bootstrap resamples of the images; tau and pairs over the "
              "explainers, references left out):", "",
              "| metric | oracle vs random | tau between resamples | significant pairs | verdict |",
              "|:--|--:|--:|--:|:--|"]
    for m in rows:
        e = meta["metrics"][m]
        rng = "n/a" if e.get("range") is None else f"{e['range']:+.3f} ± {2 * (e.get('se_range') or 0):.3f}"
        tau = "n/a" if e.get("tau") is None else f"{e['tau']:.2f} [{e['tau_ci'][0]:.2f}, {e['tau_ci'][1]:.2f}]"
        sig = "n/a" if e.get("significant_pairs") is None else f"{100 * e['significant_pairs']:.0f}% of {e['pairs']}"
        verdict = f"**flagged**: {e['flag']}" if e.get("flag") else ("n/a" if e.get("tau") is None and e.get("range") is None else "ok")
        if (table.get("verdict") or {}).get("meaningful") is False:
            verdict = "not meaningful (model accuracy)" + ("" if verdict in ("ok", "n/a") else f"; {verdict}")
        lines.append(md_row([md_cell(label[m]), rng, tau, sig, md_cell(verdict)]))
    lines.append("")
    return lines


def _ranks(values: Sequence[float | None], higher_is_better: bool) -> np.ndarray:
    """Ranks 1 = best, ties averaged; undefined values rank last together."""
    from scipy.stats import rankdata

    v = np.array([np.nan if x is None else float(x) for x in values])
    key = np.where(np.isfinite(v), -v if higher_is_better else v, np.inf)
    return rankdata(key, method="average")


def seed_stability(tables: Sequence[Mapping[str, Any]], metric_info: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ranks across model seeds for every (dataset, variant, model, split) with two or more seed tables.

    Returns:
        One ``{"dataset", "variant", "model", "split", "seeds": [...], "explainers": [...],
        "metrics": {metric: {"ranks": {explainer: [rank per seed]}, "mean": {e: m}, "sd": {e: s},
        "tau": mean Kendall tau-b between seeds}}}`` per such group; explainers are the
        non-reference rows present in every seed's table.
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for t in tables:
        groups.setdefault((t["dataset"], t["variant"], t["model"], t["split"]), []).append(t)
    out = []
    for (dataset, variant, model, split), ts in groups.items():
        if len(ts) < 2:
            continue
        ts = sorted(ts, key=lambda t: t["seed"])
        names = [r["explainer"] for r in ts[0]["rows"] if r["explainer"] not in REFERENCES]
        names = [n for n in names if all(any(r["explainer"] == n for r in t["rows"]) for t in ts)]
        metrics = [m for m in ts[0]["metrics"] if all(m in t["metrics"] for t in ts)]
        entry: dict[str, Any] = {"dataset": dataset, "variant": variant, "model": model, "split": split,
                                 "seeds": [t["seed"] for t in ts], "explainers": names, "metrics": {}}
        for m in metrics:
            hib = bool(metric_info.get(m, {}).get("higher_is_better", True))
            per_seed = []
            for t in ts:
                rows = {r["explainer"]: r for r in t["rows"]}
                per_seed.append(_ranks([(rows[n]["scores"].get(m) or {}).get("mean") for n in names], hib))
            ranks = np.array(per_seed)  # (S, E)
            taus = [kendall_tau_b(ranks[i], ranks[j]) for i, j in combinations(range(len(ts)), 2)]
            taus = [float(x) for x in taus if np.isfinite(x)]
            entry["metrics"][m] = {
                "ranks": {n: ranks[:, i].tolist() for i, n in enumerate(names)},
                "mean": {n: float(ranks[:, i].mean()) for i, n in enumerate(names)},
                "sd": {n: float(ranks[:, i].std(ddof=1)) for i, n in enumerate(names)},
                "tau": float(np.mean(taus)) if taus else None,
            }
        out.append(entry)
    return out


def seed_markdown(stability: Sequence[Mapping[str, Any]], metric_info: Mapping[str, Mapping[str, Any]],
                  hidden: Sequence[str] = ()) -> list[str]:
    """Markdown sections for :func:`seed_stability`: mean rank ± sd per explainer and metric, tau between seeds."""
    lines: list[str] = []
    for s in stability:
        metrics = [m for m in s["metrics"] if m not in hidden]
        if not metrics:
            continue
        head = f"## Across model seeds: {s['dataset']}" + (f" `{s['variant']}`" if s["variant"] else "")
        lines += [head + f" · `{s['model']}` · {s['split']} split", "",
                  f"Rank of each explainer (1 = best, references left out) over {len(s['seeds'])} classifiers trained "
                  f"with seeds {', '.join(map(str, s['seeds']))}: mean ± standard deviation. The last row is the mean "
                  "Kendall tau between the rankings of two seeds (1 = the same order).", ""]
        first = metrics[0]
        order = sorted(s["explainers"], key=lambda n: (s["metrics"][first]["mean"][n], n))
        lines.append(md_row(["explainer", *(md_cell(metric_info.get(m, {}).get("label", m)) for m in metrics)]))
        lines.append(md_rule(1, len(metrics)))
        for n in order:
            lines.append(md_row([md_cell(n), *(f"{s['metrics'][m]['mean'][n]:.1f} ± {s['metrics'][m]['sd'][n]:.1f}"
                                               for m in metrics)]))
        lines.append(md_row(["*tau between seeds*", *("n/a" if s["metrics"][m]["tau"] is None
                                                      else f"{s['metrics'][m]['tau']:.2f}" for m in metrics)]))
        lines.append("")
    return lines
