"""Reports of a leaderboard run: the long table, the leaderboard (Markdown, JSON) and the plots.

The runner hands this module *cells*: one dict per (dataset, variant, model, explainer, metric,
split, seed) with the per-image scores, their mean ``value`` and count ``n``, and an ``error``
(``None`` when the explainer ran). From them it writes, in one folder:

* ``results.csv``: the long table, columns exactly :data:`RESULT_COLUMNS`; ``value`` is the mean
  over the images with a defined (finite) score and ``n`` their number; a failed cell has an empty
  ``value`` and ``n`` = 0 (its error is in ``leaderboard.json`` and ``leaderboard.md``);
* ``per_image.csv.gz``: one row per image and cell (``image`` = index in the test split), for
  confidence intervals or other statistics;
* ``leaderboard.md`` and ``leaderboard.json``: one table per (dataset, variant, model, split),
  explainers x metrics, mean and 95% confidence interval, the best explainer of each column in
  bold (the ``oracle`` row is the ceiling and is not a candidate), and under each table the
  meta-evaluation of its metrics (:mod:`an8flower.eval.metaeval`): columns that cannot rank
  explainers on these images are flagged (no bold, the reason in a note), metrics that coincide
  are shown once, and with several model seeds a section of ranks across seeds;
* PNG plots (:mod:`an8flower.eval.figures`): IoU against the binarisation threshold, pages of
  example heatmaps over their images with the mask outlined, and the chance-normalised share of
  positive attribution per part of the an8Flower part map, explainers in the verdict's order
  (:mod:`an8flower.eval.verdict`), at most 8 per panel or page;
* ``leaderboard.html`` (:mod:`an8flower.eval.html`): the same tables as one web page;
* where the runner measured model reliance (an8Flower, :mod:`an8flower.eval.reliance`):
  ``reliance.csv`` (one row per group, part and intervention), a bar plot per group and a table
  in ``leaderboard.md``.

The 95% confidence interval of a mean over n images is the Student-t interval
``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (``ddof=1``);
it is undefined (shown without ``+-``) for n < 2 and for set-level metrics.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from an8flower.atomic import atomic_write
from an8flower.eval.markdown import md_cell, md_row, md_rule, slug
from an8flower.eval.stats import mean_ci
from an8flower.eval.verdict import aggregation_lines, annotate_verdicts, summary_markdown, table_marks

__all__ = [
    "RESULT_COLUMNS",
    "REFERENCE_ROWS",
    "results_rows",
    "leaderboard_tables",
    "leaderboard_markdown",
    "legend_markdown",
    "duplicate_agreement",
    "write_report",
    "reliance_markdown",
]

#: Columns of ``results.csv``, in order.
RESULT_COLUMNS: tuple[str, ...] = ("dataset", "variant", "model", "explainer", "metric", "split", "seed", "value", "n")
#: Reference rows: the ceiling (``oracle``, the mask itself) and chance (``random``, ``centre``).
REFERENCE_ROWS: tuple[str, ...] = ("oracle", "random", "centre")
GROUP_KEYS: tuple[str, ...] = ("dataset", "variant", "model", "split", "seed")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def results_rows(cells: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``results.csv``: one per cell, plus one per part for part-attribution cells.

    A part-attribution cell (``extra["parts"]`` and ``extra["share"]``) becomes one row per part,
    metric ``part_share:<part>``: the mean share of positive attribution on that part.
    """
    rows = []
    for c in cells:
        base = {k: c[k] for k in RESULT_COLUMNS if k not in ("metric", "value", "n")}
        extra = c.get("extra") or {}
        if "parts" in extra and "share" in extra:
            for part, share in zip(extra["parts"], extra["share"], strict=True):
                rows.append({**base, "metric": f"part_share:{part}", "value": share, "n": c["n"]})
            continue
        rows.append({**base, "metric": c["metric"], "value": c["value"] if not c.get("error") else math.nan, "n": c["n"]})
    return rows


def _csv_bytes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r[k]) for k in columns])
    return buf.getvalue().encode("utf-8")


def _per_image_bytes(cells: Iterable[Mapping[str, Any]]) -> bytes:
    columns = ("dataset", "variant", "model", "explainer", "metric", "split", "seed", "image", "score")
    rows = []
    for c in cells:
        scores, ids = c.get("scores"), c.get("image_ids")
        if not scores or ids is None or c.get("error"):
            continue
        for i, s in zip(ids, scores, strict=True):
            rows.append({**{k: c[k] for k in columns[:7]}, "image": int(i), "score": s})
    raw = _csv_bytes(rows, columns)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:  # mtime 0: same bytes
        gz.write(raw)
    return out.getvalue()


def _group_key(c: Mapping[str, Any]) -> tuple:
    return tuple(c[k] for k in GROUP_KEYS)


def leaderboard_tables(
    cells: Sequence[Mapping[str, Any]],
    metric_info: Mapping[str, Mapping[str, Any]],
    group_meta: Mapping[tuple, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One leaderboard per (dataset, variant, model, split, seed), as JSON-ready dicts.

    Args:
        cells: the runner's cells.
        metric_info: per metric name, ``{"label": str, "higher_is_better": bool}``; metrics are
            shown in this order, and only those present in it.
        group_meta: per group key, anything to carry along (accuracy, image counts, parts).

    Returns:
        A list of ``{"dataset", "variant", "model", "split", "seed", "meta", "metrics", "rows",
        "best", "errors"}``; ``rows`` is a list of ``{"explainer", "options", "scores": {metric:
        {"mean", "ci95", "n"}}}``, reference rows last except ``oracle`` (first); ``best`` maps each
        metric to the best non-oracle explainer(s).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for c in cells:
        groups.setdefault(_group_key(c), []).append(c)
    tables = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        group = groups[key]
        metrics = [m for m in metric_info if any(c["metric"] == m for c in group)]
        by_expl: dict[str, dict[str, Mapping[str, Any]]] = {}
        options: dict[str, Any] = {}
        for c in group:
            by_expl.setdefault(c["explainer"], {})[c["metric"]] = c
            options.setdefault(c["explainer"], c.get("options") or {})
        rows: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for expl, mcells in by_expl.items():
            scores = {}
            for m in metrics:
                cell = mcells.get(m)
                if cell is None:
                    continue
                if cell.get("error"):
                    scores[m] = {"mean": None, "ci95": None, "n": 0, "error": cell["error"]}
                    if not any(e["explainer"] == expl and e["error"] == cell["error"] for e in errors):
                        errors.append({"explainer": expl, "metric": m, "error": cell["error"]})
                    continue
                if cell.get("scores"):
                    mean, half, n = mean_ci(cell["scores"])
                else:
                    mean, half, n = float(cell["value"]) if cell["value"] is not None else math.nan, math.nan, int(cell["n"])
                scores[m] = {"mean": _json_float(mean), "ci95": _json_float(half), "n": n}
            rows.append({"explainer": expl, "options": options.get(expl, {}), "scores": scores})
        rows = _order_rows(rows, metrics[0] if metrics else None, metric_info)
        best = {}
        for m in metrics:
            sign = 1.0 if metric_info[m].get("higher_is_better", True) else -1.0
            cand = [(sign * r["scores"][m]["mean"], r["explainer"]) for r in rows
                    if r["explainer"] != "oracle" and m in r["scores"] and r["scores"][m]["mean"] is not None]
            if cand:
                top = max(v for v, _ in cand)
                best[m] = sorted(e for v, e in cand if v >= top - 1e-12)
        tables.append({
            **dict(zip(GROUP_KEYS, key, strict=True)),
            "meta": dict(group_meta.get(key, {})) if group_meta else {},
            "metrics": metrics,
            "rows": rows,
            "best": best,
            "errors": errors,
        })
    return tables


def _json_float(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def _order_rows(rows: list[dict], primary: str | None, metric_info: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """Oracle first, then explainers by the first metric (best first), then random and centre."""
    sign = 1.0 if primary is None or metric_info[primary].get("higher_is_better", True) else -1.0

    def key(r: dict) -> tuple:
        name = r["explainer"]
        if name == "oracle":
            return (0, 0.0, name)
        s = r["scores"].get(primary, {}) if primary else {}
        v = s.get("mean")
        rank = -sign * v if v is not None else math.inf
        return (2 if name in REFERENCE_ROWS else 1, rank, name)

    return sorted(rows, key=key)


def _cell_text(s: Mapping[str, Any] | None, bold: bool, note: int | None) -> str:
    if s is None:
        return "–"
    if s.get("error"):
        return f"error [{note}]"
    if s["mean"] is None:
        return "n/a"
    text = f"{s['mean']:.3f}"
    if bold:
        text = f"**{text}**"
    if s["ci95"] is not None:
        text += f" ± {s['ci95']:.3f}"
    return text


def leaderboard_markdown(
    tables: Sequence[Mapping[str, Any]], metric_info: Mapping[str, Mapping[str, Any]], title: str = "Leaderboard"
) -> str:
    """The leaderboard as Markdown: one table per group, ``mean ± 95% CI``, best per column in bold.

    Columns show ``↑`` (higher is better) or ``↓`` and, when a metric was scored on fewer images
    than the group's first metric (model-based metrics on a subset), ``(n=...)``. A legend under
    the title says what the signs, the bold and italic entries and each column mean
    (:func:`legend_markdown`).
    """
    from an8flower.eval.metaeval import flag_suffix, hidden_metrics, metaeval_markdown, seed_markdown, seed_stability

    lines = [f"# {title}", ""] + summary_markdown(tables, md_cell)
    lines += legend_markdown(metric_info, [m for t in tables for m in t["metrics"]], verdict=any("verdict" in t for t in tables))
    for t in tables:
        shown = [m for m in t["metrics"] if m not in hidden_metrics(t)]
        meta = t.get("meta", {})
        head = f"## {t['dataset']}"
        if t["variant"]:
            head += f" `{t['variant']}`"
        head += f" · `{t['model']}` · {t['split']} split"
        lines += [head, ""]
        facts = []
        if meta.get("accuracy") is not None:
            facts.append(f"{t['split']} accuracy {100 * meta['accuracy']:.1f}%")
        if meta.get("n_images") is not None:
            which = "all" if meta.get("all_images") else "correctly classified"
            facts.append(f"{meta['n_images']} {which} images scored")
        if meta.get("image_size"):
            facts.append(f"{meta['image_size']} px")
        if facts:
            lines += ["; ".join(facts) + ".", ""]
        if meta.get("warning"):
            lines += [f"**Warning:** {meta['warning']}.", ""]
        if meta.get("leakage"):
            lines += [f"**Leakage:** {meta['leakage']}.", ""]
        verdict = t.get("verdict") or {}
        if verdict and not verdict["meaningful"]:
            lines += [f"**Not meaningful**: {verdict['reason']}.", ""]
        marks = {r["explainer"]: table_marks(r) for r in verdict.get("rows", [])}
        counts = {}
        for m in shown:
            ns = [r["scores"][m]["n"] for r in t["rows"] if m in r["scores"] and not r["scores"][m].get("error")]
            counts[m] = max(ns) if ns else 0
        full = max(counts.values()) if counts else 0
        header = ["explainer"]
        for m in shown:
            info = metric_info[m]
            h = f"{info.get('label', m)} {'↑' if info.get('higher_is_better', True) else '↓'}"
            if counts[m] and counts[m] < full:
                h += f" (n={counts[m]})"
            header.append(md_cell(h + flag_suffix(t, m)))
        lines.append(md_row(header))
        lines.append(md_rule(1, len(shown)))
        notes: list[str] = []
        for r in t["rows"]:
            name = r["explainer"]
            label = f"*{md_cell(name)}*" if name in REFERENCE_ROWS else md_cell(name)
            if marks.get(name):
                label += f" ({md_cell(', '.join(marks[name]))})"
            cells = [label]
            for m in shown:
                s = r["scores"].get(m)
                note = None
                if s is not None and s.get("error"):
                    msg = f"`{name}`: {s['error']}"
                    if msg not in notes:
                        notes.append(msg)
                    note = notes.index(msg) + 1
                cells.append(_cell_text(s, name in t["best"].get(m, []) and not flag_suffix(t, m), note))
            lines.append(md_row(cells))
        lines.append("")
        if notes:
            lines += ["Errors:", ""] + [f"{i}. {md_cell(msg)}" for i, msg in enumerate(notes, 1)] + [""]
        lines += metaeval_markdown(t, metric_info)
        lines += _duplicate_markdown(t.get("duplicates", []))
        parts = meta.get("part_table")
        if parts:
            lines += _part_markdown(parts, marks) + [""]
        if meta.get("reliance"):
            lines += reliance_markdown(meta["reliance"]) + [""]
    lines += seed_markdown(seed_stability(tables, metric_info), metric_info,
                           hidden=sorted({m for t in tables for m in hidden_metrics(t)}))
    return "\n".join(lines).rstrip() + "\n"


def duplicate_agreement(table: Mapping[str, Any], cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For the pairs of rows that compute the same method under two names
    (:data:`an8flower.baselines.adapters.DUPLICATES`: ours and a library's), whether they agree here.

    Per pair: the largest absolute difference of their per-image scores over every column both
    have (``max_abs_diff``; NaN where one is undefined and the other is not counts as a
    disagreement), the number of compared values, and the catalogue's statement of how the two
    relate.
    """
    try:
        from an8flower.baselines.adapters import DUPLICATES
    except ImportError:  # pragma: no cover - the adapters ship with the package
        return []
    key = tuple(table[k] for k in GROUP_KEYS)
    scores: dict[tuple[str, str], list[float]] = {}
    for c in cells:
        if _group_key(c) == key and c.get("scores") and not c.get("error"):
            scores[(c["explainer"], c["metric"])] = [math.nan if v is None else float(v) for v in c["scores"]]
    rows = {r["explainer"] for r in table["rows"]}
    out = []
    for a, b, how in DUPLICATES:
        if a not in rows or b not in rows:
            continue
        diffs, n = [], 0
        for metric in table["metrics"]:
            sa, sb = scores.get((a, metric)), scores.get((b, metric))
            if sa is None or sb is None or len(sa) != len(sb):
                continue
            for x, y in zip(sa, sb, strict=True):
                n += 1
                both_nan = math.isnan(x) and math.isnan(y)
                diffs.append(0.0 if both_nan else math.inf if math.isnan(x) or math.isnan(y) else abs(x - y))
        if n:
            out.append({"a": a, "b": b, "relation": how, "max_abs_diff": _json_float(max(diffs)) if max(diffs) < math.inf
                        else None, "values": n})
    return out


def _duplicate_markdown(duplicates: Sequence[Mapping[str, Any]]) -> list[str]:
    if not duplicates:
        return []
    lines = ["Same method under two names (per-image scores compared over every column both rows have):", ""]
    for d in duplicates:
        diff = d["max_abs_diff"]
        verdict = ("agree to 1e-6" if diff is not None and diff <= 1e-6 else
                   f"differ by up to {diff:.3g}" if diff is not None else "differ (one is undefined where the other is not)")
        lines.append(f"* `{d['a']}` and `{d['b']}` {verdict} on {d['values']} values; {md_cell(d['relation'])}.")
    return lines + [""]


def legend_markdown(metric_info: Mapping[str, Mapping[str, Any]], shown: Sequence[str], verdict: bool = False) -> list[str]:
    """The legend of ``leaderboard.md`` as lists: how to read a table (with ``verdict``, how the
    summary ranks: :func:`an8flower.eval.verdict.aggregation_lines`), and one line per metric shown."""
    lines = [
        "How to read the tables:",
        "",
        "* each cell is the mean over the scored images ± the half-width of its 95% Student-t confidence interval "
        "(no ± for set-level metrics and for fewer than 2 images);",
        "* ↑ / ↓: higher / lower is better; **bold**: the best explainer of the column (reference rows excluded);",
        "* *italic* rows are references: *oracle* is the ground-truth mask used as the heatmap (the ceiling of the "
        "mask metrics), *random* (uniform noise) and *centre* (a centred Gaussian) are chance levels;",
        "* (n=...): the column was scored on that many images only; n/a: undefined on every image (see the metric's "
        "definition); error [k]: the explainer failed, note k under the table.",
        "",
    ]
    if verdict:
        lines += ["How the summary ranks (rows of every table follow it):", ""] + aggregation_lines() + [""]
    seen = [m for m in dict.fromkeys(shown) if m in metric_info]
    described = [m for m in seen if metric_info[m].get("description")]
    if described:
        lines += ["Columns:", ""]
        lines += [f"* **{md_cell(metric_info[m].get('label', m))}** (`{m}`): {metric_info[m]['description']}."
                  for m in described]
        lines.append("")
    return lines


def _part_markdown(parts: Mapping[str, Any], marks: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    names = parts["parts"]
    disc = set(parts.get("discriminative", []))
    head = [f"**{md_cell(p)}**" if p in disc else md_cell(p) for p in names]
    lines = [
        "Share of positive attribution per part, divided by the part's share of the image area "
        "(1 = chance; discriminative parts in bold):",
        "",
        md_row(["explainer", *head]),
        md_rule(1, len(names)),
    ]
    for expl, values in parts["normalised"].items():
        label = md_cell(expl) + (f" ({md_cell(', '.join(marks[expl]))})" if marks and marks.get(expl) else "")
        lines.append(md_row([label, *("n/a" if v is None else f"{v:.2f}" for v in values)]))
    return lines


def reliance_markdown(rel: Mapping[str, Any]) -> list[str]:
    """The model-reliance table of one group (a :meth:`an8flower.eval.reliance.Reliance.summary`).

    One row per part (discriminative parts in bold, then the row painting every discriminative
    part as another class): mean drop of the target probability (95% CI) and flip rate when the
    part is recoloured, removed or (discriminative) repainted, and how often the prediction
    follows a repaint to the class its new colours define.
    """
    def fmt(r: Mapping[str, Any] | None, key: str, ci: bool = False) -> str:
        if r is None or r.get(key) is None:
            return "–"
        text = f"{round(r[key], 3) + 0.0:.3f}"  # + 0.0: no "-0.000"
        return text + (f" ± {r['ci95']:.3f}" if ci and r.get("ci95") is not None else "")

    by = {(r["part"], r["intervention"]): r for r in rel["rows"]}
    disc = set(rel.get("discriminative", []))
    names = list(rel["parts"]) + [p for p, _ in by if p not in rel["parts"]]
    lines = [
        f"Model reliance by intervention ({rel['n_images']} images, each re-rendered with one part changed and "
        f"every other pixel identical): the mean drop of the target probability (± 95% CI) and the share of "
        f"predictions that flip when the part is recoloured ({rel['colour']}, the spec colour farthest from every "
        f"class colour), removed, or (discriminative parts) repainted in each other class colour of the part; "
        f"*follows*: the prediction moves to the class the new colours define.",
        "",
        "| part | recolour drop | flips | remove drop | flips | repaint drop | flips | follows |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for part in dict.fromkeys(names):
        rows = [by.get((part, w)) for w in ("recolour", "remove", "repaint")]
        if not any(rows):
            continue
        label = f"**{part}**" if part in disc else (f"*{part}*" if part not in rel["parts"] else part)
        cells = []
        for r in rows:
            cells += [fmt(r, "drop", ci=True), fmt(r, "flip_rate")]
        lines.append(md_row([label, *cells, fmt(rows[2], "follow_rate")]))
    return lines


def write_report(
    out_dir: str | os.PathLike[str],
    cells: Sequence[Mapping[str, Any]],
    metric_info: Mapping[str, Mapping[str, Any]],
    group_meta: Mapping[tuple, Mapping[str, Any]] | None = None,
    examples: Mapping[tuple, Mapping[str, Any]] | None = None,
    title: str = "an8flower leaderboard",
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``results.csv``, ``per_image.csv.gz``, ``leaderboard.md``, ``leaderboard.json``,
    ``leaderboard.html`` (:mod:`an8flower.eval.html`) and plots.

    Args:
        out_dir: the results folder.
        cells: the runner's cells (see the module docstring).
        metric_info: see :func:`leaderboard_tables`; ``iou_auc`` cells with ``extra["curve"]``
            feed the IoU plot and cells with ``extra["parts"]`` the part-attribution plot and table.
        group_meta: per group key ``(dataset, variant, model, split, seed)``: facts for the table
            header (``accuracy``, ``n_images``, ``all_images``, ``image_size``) and the part names
            that are ``discriminative``.
        examples: per group key, ``{"images", "masks", "heatmaps": {explainer: (K,H,W)}}``.
        title: the Markdown title.
        plots: write the PNGs.

    Returns:
        ``{"tables": ..., "markdown": str, "files": [written file names]}``.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    meta = {k: dict(v) for k, v in (group_meta or {}).items()}
    part_cells = [c for c in cells if (c.get("extra") or {}).get("parts") and not c.get("error")]
    for c in part_cells:
        key = _group_key(c)
        entry = meta.setdefault(key, {}).setdefault(
            "part_table", {"parts": list(c["extra"]["parts"]), "normalised": {}, "share": {},
                           "discriminative": list(meta.get(key, {}).get("discriminative", []))},
        )
        entry["normalised"][c["explainer"]] = [_json_float(v) for v in c["extra"].get("normalised", [])]
        entry["share"][c["explainer"]] = [_json_float(v) for v in c["extra"]["share"]]
    table_cells = [c for c in cells if not (c.get("extra") or {}).get("parts")]
    tables = leaderboard_tables(table_cells, metric_info, meta)
    from an8flower.eval.metaeval import annotate_tables, seed_stability

    annotate_tables(tables, table_cells, metric_info)
    annotate_verdicts(tables, table_cells, metric_info)
    for t in tables:
        t["duplicates"] = duplicate_agreement(t, table_cells)
        if "part_table" in t["meta"]:
            order = [r["explainer"] for r in t["rows"]]
            pt = t["meta"]["part_table"]
            for k in ("normalised", "share"):
                pt[k] = {e: pt[k][e] for e in order if e in pt[k]} | {e: v for e, v in pt[k].items() if e not in order}
    md = leaderboard_markdown(tables, metric_info, title=title)
    files = ["results.csv", "per_image.csv.gz", "leaderboard.md", "leaderboard.json"]
    atomic_write(os.path.join(out_dir, "results.csv"), _csv_bytes(results_rows(cells), RESULT_COLUMNS))
    atomic_write(os.path.join(out_dir, "per_image.csv.gz"), _per_image_bytes(cells))
    atomic_write(os.path.join(out_dir, "leaderboard.md"), md)
    doc = {"title": title, "metrics": {m: dict(v) for m, v in metric_info.items()}, "tables": tables,
           "model_seeds": seed_stability(tables, metric_info)}
    atomic_write(os.path.join(out_dir, "leaderboard.json"), json.dumps(doc, indent=1, allow_nan=False) + "\n")
    from an8flower.eval.html import leaderboard_html

    atomic_write(os.path.join(out_dir, "leaderboard.html"), leaderboard_html(tables, metric_info, examples, title))
    files.append("leaderboard.html")
    files += _write_reliance_csv(out_dir, tables)
    if plots:
        files += _write_plots(out_dir, cells, tables, examples or {})
    return {"tables": tables, "markdown": md, "files": files}


def _write_reliance_csv(out_dir: str, tables: Sequence[Mapping[str, Any]]) -> list[str]:
    """``reliance.csv`` (:data:`an8flower.eval.reliance.RELIANCE_COLUMNS`) when a group measured reliance."""
    rows = []
    for t in tables:
        if t["meta"].get("reliance"):
            from an8flower.eval.reliance import RELIANCE_COLUMNS, reliance_rows

            rows += reliance_rows(t["meta"]["reliance"], t)
    if not rows:
        return []
    atomic_write(os.path.join(out_dir, "reliance.csv"), _csv_bytes(rows, RELIANCE_COLUMNS))
    return ["reliance.csv"]


def _write_plots(out_dir: str, cells: Sequence[Mapping[str, Any]], tables: Sequence[Mapping[str, Any]],
                 examples: Mapping[tuple, Mapping[str, Any]]) -> list[str]:
    from an8flower.eval import figures

    files = []
    for t in tables:
        key = tuple(t[k] for k in GROUP_KEYS)
        stem = slug(t["dataset"], t["variant"], t["model"], t["split"])
        what = " · ".join(str(v) for v in (t["dataset"], t["variant"], t["model"]) if v)
        order = [r["explainer"] for r in t["rows"]]
        group = [c for c in cells if _group_key(c) == key and not c.get("error")]
        curves = {c["explainer"]: (c["extra"]["thresholds"], c["extra"]["curve"])
                  for c in group if c["metric"] == "iou_auc" and (c.get("extra") or {}).get("curve")}
        if curves:
            name = f"iou_curves_{stem}.png"
            figures.plot_curves(os.path.join(out_dir, name), {e: curves[e] for e in order if e in curves},
                                "threshold on the min-max normalised heatmap", "mean IoU with the mask", what)
            files.append(name)
        pt = t["meta"].get("part_table")
        if pt and pt["normalised"]:
            name = f"part_attribution_{stem}.png"
            figures.plot_part_bars(os.path.join(out_dir, name), pt["parts"], pt["normalised"],
                                   pt.get("discriminative", []), what)
            files.append(name)
        if t["meta"].get("reliance"):
            name = f"reliance_{stem}.png"
            figures.plot_reliance(os.path.join(out_dir, name), t["meta"]["reliance"], what)
            files.append(name)
        ex = examples.get(key)
        if ex and ex.get("heatmaps"):
            hm = ex["heatmaps"]
            files += figures.plot_examples(os.path.join(out_dir, f"examples_{stem}.png"), np.asarray(ex["images"]),
                                           np.asarray(ex["masks"]), {e: hm[e] for e in order if e in hm},
                                           ex.get("labels"), ex.get("predictions"), what)
    return files
