"""``leaderboard.html``: the board as one self-contained web page (styles, script and images inline).

The page shows, from the same tables as ``leaderboard.md`` (with their meta-evaluation and
verdict, :mod:`an8flower.eval.verdict`):

* the summary ranking of every table on top (explainer, overall rank with its 95% interval, the
  rank per family, marks);
* the full tables, every column sortable by a click on its header (best first, a second click
  reverses; undefined values always last), with filters by variant, model, metric family and
  explainer library; the confidence interval, ``n`` and any flag of a cell in its tooltip (the
  ``title`` attribute);
* the legend beside the tables (how the summary ranks, what each column measures);
* per explainer its example maps on the first three images (:func:`an8flower.eval.figures.overlay`,
  PNG inline as base64), shown at twice their size up to 128 px.

Nothing is fetched from the network; the bytes depend only on the tables and examples.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["library_of", "example_strip", "leaderboard_html"]

_REFERENCES = ("oracle", "random", "centre")


def library_of(explainer: str) -> str:
    """The library an explainer comes from: the prefix of an adapter's name (``captum``, ``zennit``,
    ``gradcam``...), ``reference`` for the reference rows, ``an8flower`` otherwise."""
    if explainer in _REFERENCES:
        return "reference"
    return explainer.split(":", 1)[0] if ":" in explainer else "an8flower"


def example_strip(images: np.ndarray, masks: np.ndarray, heatmaps: np.ndarray, gap: int = 2) -> bytes:
    """PNG bytes of one explainer's example maps side by side (:func:`an8flower.eval.figures.overlay`),
    ``gap`` white pixels apart, reduced to a 128-colour palette (median cut, no dithering: the
    same pixels give the same bytes) so that a page of 50 explainers stays a few megabytes."""
    from PIL import Image

    from an8flower.eval.figures import overlay

    k, h, w = heatmaps.shape
    strip = np.full((h, k * w + (k - 1) * gap, 3), 255, np.uint8)
    for i in range(k):
        strip[:, i * (w + gap) : i * (w + gap) + w] = overlay(images[i], heatmaps[i], masks[i])
    buf = io.BytesIO()
    Image.fromarray(strip).quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buf, format="PNG", optimize=True)
    return buf.getvalue()


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _inline(md: str) -> str:
    """The inline Markdown of the legend (``**b**``, ``*i*``, `` `c` ``) as HTML, escaped first."""
    out = _e(md)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<i>\1</i>", out)


def _num(v: float | None, digits: int = 3) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _board_attrs(t: Mapping[str, Any]) -> str:
    return f'data-variant="{_e(t["variant"] or t["dataset"])}" data-model="{_e(t["model"])}"'


def _heading(t: Mapping[str, Any]) -> str:
    seed = f" · seed {t['seed']}" if t.get("seed") else ""
    variant = f" <code>{_e(t['variant'])}</code>" if t["variant"] else ""
    return f"{_e(t['dataset'])}{variant} · <code>{_e(t['model'])}</code> · {_e(t['split'])} split{seed}"


def _summary(t: Mapping[str, Any]) -> list[str]:
    v = t.get("verdict")
    out = [f'<div class="board" {_board_attrs(t)}>', f"<h3>{_heading(t)}</h3>"]
    if not v:
        return out + ["<p>No verdict.</p>", "</div>"]
    if not v["meaningful"]:
        return out + [f'<p class="notice"><b>Not meaningful</b>: {_e(v["reason"])}.</p>', "</div>"]
    fams = list(v["families"])
    head = ['<th data-type="num" data-hib="0">#</th>', '<th data-type="text">explainer</th>',
            '<th data-type="num" data-hib="0" title="mean of the family ranks; lower is better">overall rank</th>']
    head += [f'<th data-type="num" data-hib="0" data-family="{_e(f)}" title="mean rank over the {_e(f)} columns: '
             f'{_e(", ".join(v["families"][f]))}">{_e(f)}</th>' for f in fams]
    head.append('<th data-type="text" class="marks">marks</th>')
    out += ['<table class="sortable summary">', "<thead><tr>" + "".join(head) + "</tr></thead>", "<tbody>"]
    for r in v["rows"]:
        lo, hi = r["rank_ci"] or (None, None)
        tip = f"95% interval [{_num(lo, 2)}, {_num(hi, 2)}] over {v['n_boot']} bootstrap resamples of the images"
        pos = "" if r["position"] is None else r["position"]
        cells = [f'<td data-value="{pos}">{pos}</td>', _name_cell(r["explainer"], []),
                 f'<td data-value="{_num(r["rank"], 6)}" title="{_e(tip)}">{_num(r["rank"], 1)} '
                 f'<span class="ci">[{_num(lo, 1)}, {_num(hi, 1)}]</span></td>']
        cells += [f'<td data-value="{_num(r["families"].get(f), 6)}" data-family="{_e(f)}">'
                  f'{_num(r["families"].get(f), 1)}</td>' for f in fams]
        badges = "".join(f'<span class="mark mark-{_e(m.replace(" ", "-"))}">{_e(m)}</span>' for m in r["marks"])
        cells.append(f'<td class="marks" data-value="{_e(", ".join(r["marks"]))}">{badges}</td>')
        out.append(f'<tr data-library="{_e(library_of(r["explainer"]))}">' + "".join(cells) + "</tr>")
    out += ["</tbody></table>"]
    if v["excluded"]:
        out.append('<p class="small">Not counted: ' + "; ".join(f"<code>{_e(m)}</code> ({_e(w)})"
                                                             for m, w in v["excluded"].items()) + ".</p>")
    return out + ["</div>"]


def _name_cell(name: str, marks: Sequence[str]) -> str:
    badges = "".join(f' <span class="mark mark-{_e(m.replace(" ", "-"))}">{_e(m)}</span>' for m in marks)
    cls = ' class="name ref"' if name in _REFERENCES else ' class="name"'
    return f'<td{cls} data-value="{_e(name)}">{_e(name)}{badges}</td>'


def _full(t: Mapping[str, Any], metric_info: Mapping[str, Mapping[str, Any]]) -> list[str]:
    from an8flower.eval.verdict import family_of, table_marks

    meta = t.get("metaeval") or {}
    flags = {m: (meta.get("metrics", {}).get(m) or {}) for m in t["metrics"]}
    shown = [m for m in t["metrics"] if m not in meta.get("hidden", [])]
    marks = {r["explainer"]: table_marks(r) for r in (t.get("verdict") or {}).get("rows", [])}
    facts = t.get("meta") or {}
    out = [f'<div class="board" {_board_attrs(t)}>', f"<h3>{_heading(t)}</h3>"]
    line = []
    if facts.get("accuracy") is not None:
        line.append(f"{_e(t['split'])} accuracy {100 * facts['accuracy']:.1f}%")
    if facts.get("n_images") is not None:
        line.append(f"{facts['n_images']} images scored")
    if line:
        out.append(f'<p class="small">{"; ".join(line)}.</p>')
    for key, label in (("warning", "Warning"), ("leakage", "Leakage")):
        if facts.get(key):
            out.append(f'<p class="notice"><b>{label}</b>: {_e(facts[key])}.</p>')
    if t.get("verdict") and not t["verdict"]["meaningful"]:
        out.append(f'<p class="notice"><b>Not meaningful</b>: {_e(t["verdict"]["reason"])}.</p>')
    head = ['<th data-type="text">explainer</th>']
    for m in shown:
        info = metric_info.get(m, {})
        hib = bool(info.get("higher_is_better", True))
        fam = family_of(m) or "other"
        tip = f"{info.get('description', m)} [{fam}; {'higher' if hib else 'lower'} is better]"
        flag = flags[m].get("flag")
        if flag:
            tip += f" FLAGGED ({flag}): {flags[m].get('reason')}"
        cls = ' class="flagged"' if flag else ""
        head.append(f'<th data-type="num" data-hib="{int(hib)}" data-family="{_e(fam)}"{cls} title="{_e(tip)}">'
                    f'{_e(info.get("label", m))} {"↑" if hib else "↓"}{" ⚑" if flag else ""}</th>')
    out += ['<table class="sortable full">', "<thead><tr>" + "".join(head) + "</tr></thead>", "<tbody>"]
    for r in t["rows"]:
        name = r["explainer"]
        cells = [_name_cell(name, marks.get(name, []))]
        for m in shown:
            s = r["scores"].get(m)
            fam = _e(family_of(m) or "other")
            label = metric_info.get(m, {}).get("label", m)
            if s is None:
                cells.append(f'<td data-value="" data-family="{fam}" title="{_e(label)}: not scored">–</td>')
                continue
            if s.get("error"):
                cells.append(f'<td data-value="" data-family="{fam}" class="err" title="{_e(s["error"])}">error</td>')
                continue
            mean, ci = s["mean"], s["ci95"]
            tip = f"{name} · {label}: " + ("undefined on every image" if mean is None else
                                           f"{mean:.4f}" + (f" ± {ci:.4f} (95% CI)" if ci is not None else ""))
            tip += f", n = {s['n']}"
            if flags[m].get("flag"):
                tip += f"; column flagged ({flags[m]['flag']})"
            best = name in t.get("best", {}).get(m, []) and not flags[m].get("flag")
            cls = ' class="best"' if best else (' class="muted"' if flags[m].get("flag") else "")
            cells.append(f'<td data-value="{_num(mean, 6)}" data-family="{fam}"{cls} title="{_e(tip)}">'
                         f'{"n/a" if mean is None else f"{mean:.3f}"}</td>')
        out.append(f'<tr data-library="{_e(library_of(name))}">' + "".join(cells) + "</tr>")
    return out + ["</tbody></table>", "</div>"]


def _examples(t: Mapping[str, Any], ex: Mapping[str, Any] | None) -> list[str]:
    if not ex or not ex.get("heatmaps"):
        return []
    images, masks = np.asarray(ex["images"]), np.asarray(ex["masks"])
    k = min(3, images.shape[0])
    side = int(images.shape[1])
    shown = min(128, 2 * side)
    from an8flower.eval.verdict import table_marks

    marks = {r["explainer"]: table_marks(r) for r in (t.get("verdict") or {}).get("rows", [])}
    order = [r["explainer"] for r in t["rows"] if r["explainer"] in ex["heatmaps"]]
    out = [f'<div class="board" {_board_attrs(t)}>', f"<h3>{_heading(t)}</h3>", '<div class="examples">']
    for name in order + [n for n in ex["heatmaps"] if n not in order]:
        png = example_strip(images[:k], masks[:k], np.asarray(ex["heatmaps"][name])[:k])
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        badge = "".join(f' <span class="mark">{_e(m)}</span>' for m in marks.get(name, []))
        out.append(f'<figure data-library="{_e(library_of(name))}"><img src="{uri}" alt="{_e(name)} example maps" '
                   f'height="{shown}" width="{round((k * side + (k - 1) * 2) * shown / side)}"><figcaption>{_e(name)}{badge}</figcaption></figure>')
    return out + ["</div>", "</div>"]


def _select(name: str, label: str, values: Sequence[str]) -> str:
    opts = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
    return f'<label>{_e(label)} <select id="filter-{name}"><option value="">all</option>{opts}</select></label>'


def leaderboard_html(
    tables: Sequence[Mapping[str, Any]],
    metric_info: Mapping[str, Mapping[str, Any]],
    examples: Mapping[tuple, Mapping[str, Any]] | None = None,
    title: str = "an8flower leaderboard",
) -> str:
    """The page (see the module docstring) for ``tables`` (with ``metaeval`` and ``verdict``).

    Args:
        tables: :func:`an8flower.eval.report.leaderboard_tables` with their annotations.
        metric_info: per metric ``label``, ``higher_is_better``, ``description``.
        examples: per group key ``(dataset, variant, model, split, seed)``: ``{"images", "masks",
            "heatmaps": {explainer: (K, H, W)}}``.
        title: the page title.
    """
    from an8flower.eval.verdict import FAMILIES, aggregation_lines, family_of

    examples = examples or {}
    keys = ("dataset", "variant", "model", "split", "seed")
    variants = list(dict.fromkeys(t["variant"] or t["dataset"] for t in tables))
    models = list(dict.fromkeys(t["model"] for t in tables))
    metrics = list(dict.fromkeys(m for t in tables for m in t["metrics"]))
    families = [f for f in FAMILIES if any(family_of(m) == f for m in metrics)]
    families += ["other"] if any(family_of(m) is None for m in metrics) else []
    libraries = sorted({library_of(r["explainer"]) for t in tables for r in t["rows"]})
    legend = [f"<li>{_inline(line[2:])}</li>" for line in aggregation_lines()]
    columns = [f'<li data-family="{_e(family_of(m) or "other")}"><b>{_e(metric_info.get(m, {}).get("label", m))}</b> '
               f'<code>{_e(m)}</code> <span class="small">({_e(family_of(m) or "other")})</span>: '
               f'{_e(metric_info.get(m, {}).get("description", ""))}</li>' for m in metrics]
    body = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<header><h1>{_e(title)}</h1>",
        '<nav class="filters">' + _select("variant", "variant", variants) + _select("model", "model", models)
        + _select("family", "metric family", families) + _select("library", "explainer library", libraries)
        + '<span class="small">Click a column header to sort (best first; again to reverse). '
          'Hover a cell for its interval and flags.</span></nav></header>',
        '<div class="layout"><main>',
        '<section id="summary"><h2>Summary</h2>',
    ]
    for t in tables:
        body += _summary(t)
    body += ["</section>", '<section id="tables"><h2>Full tables</h2>']
    for t in tables:
        body += _full(t, metric_info)
    body += ["</section>"]
    ex_parts = [line for t in tables for line in _examples(t, examples.get(tuple(t[k] for k in keys)))]
    if ex_parts:
        body += ['<section id="examples"><h2>Example maps</h2>',
                 '<p class="small">The first images scored. Each map is scaled from its minimum to its 99th '
                 'percentile and drawn over a faded grey copy of the image (dark red = low, bright yellow = '
                 'high relevance); the mask is outlined in white.</p>'] + ex_parts + ["</section>"]
    body += ["</main>", '<aside class="legend"><h2>Legend</h2>', "<h3>How the summary ranks</h3>",
             "<ul>" + "".join(legend) + "</ul>", "<h3>Columns</h3>", '<ul id="columns">' + "".join(columns) + "</ul>",
             "</aside></div>", f"<script>{_JS}</script>", "</body>", "</html>"]
    return "\n".join(body) + "\n"


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fff}
header{padding:10px 16px;border-bottom:1px solid #ddd;position:sticky;top:0;background:#fafafa;z-index:2}
section{scroll-margin-top:110px}
h1{font-size:20px;margin:0 0 6px}h2{font-size:17px;margin:18px 0 6px}h3{font-size:14px;margin:14px 0 4px}
.filters{display:flex;flex-wrap:wrap;gap:12px;align-items:center}.filters select{font:inherit}
.layout{display:flex;gap:16px;padding:0 16px;align-items:flex-start}
main{flex:1 1 auto;min-width:0}
aside.legend{flex:0 0 300px;position:sticky;top:80px;max-height:calc(100vh - 96px);overflow:auto;font-size:12.5px;
border-left:1px solid #ddd;padding-left:12px}
aside.legend ul{padding-left:18px;margin:4px 0}aside.legend li{margin:3px 0}
.board{overflow-x:auto;margin-bottom:10px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 7px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;position:sticky;top:0;user-select:none;font-weight:600}
th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
td.name,th:first-child{text-align:left;position:sticky;left:0;background:#fff;z-index:1}
th:first-child{background:#f0f0f0}
table.summary td:nth-child(2),table.summary th:nth-child(2),.marks{text-align:left}
td.ref{font-style:italic;color:#555}td.best{font-weight:700}td.muted{color:#999}td.err{color:#b00}
th.flagged{color:#8a5a00}.ci{color:#777;font-size:12px}
.mark{display:inline-block;font-size:11px;padding:0 5px;border-radius:8px;background:#eee;color:#333;margin-left:3px;
font-style:normal}
.mark-fails-sanity{background:#fbe3e3;color:#8b0000}.mark-class-blind{background:#e6eefb;color:#1b3d8f}
.notice{background:#fff4e0;border-left:4px solid #e0a000;padding:4px 8px}
.small{font-size:12px;color:#555}
.examples{display:flex;flex-wrap:wrap;gap:10px 18px}
figure{margin:0}figure img{image-rendering:pixelated;border:1px solid #ccc;display:block}
figcaption{font-size:12px;margin-top:2px}
.hidden{display:none!important}
"""

_JS = """
(function(){
  'use strict';
  function val(td){return td?td.getAttribute('data-value'):'';}
  function sortBy(th){
    var table=th.closest('table'),body=table.tBodies[0],idx=th.cellIndex;
    var first=th.getAttribute('aria-sort')===null;
    var hib=th.getAttribute('data-hib')==='1',num=th.getAttribute('data-type')==='num';
    var best=num?(hib?'descending':'ascending'):'ascending';
    var dir=first?best:(th.getAttribute('aria-sort')==='descending'?'ascending':'descending');
    Array.prototype.forEach.call(th.parentNode.cells,function(c){c.removeAttribute('aria-sort');});
    th.setAttribute('aria-sort',dir);
    var sign=dir==='descending'?-1:1;
    var rows=Array.prototype.map.call(body.rows,function(r,i){return {r:r,i:i,v:val(r.cells[idx])};});
    rows.sort(function(a,b){
      if(num){
        var x=parseFloat(a.v),y=parseFloat(b.v),nx=isNaN(x),ny=isNaN(y);
        if(nx||ny){return nx&&ny?a.i-b.i:(nx?1:-1);}
        return x===y?a.i-b.i:sign*(x-y);
      }
      var c=a.v.localeCompare(b.v);return c===0?a.i-b.i:sign*c;
    });
    rows.forEach(function(o){body.appendChild(o.r);});
  }
  function filter(){
    var f={};['variant','model','family','library'].forEach(function(k){f[k]=document.getElementById('filter-'+k).value;});
    document.querySelectorAll('.board').forEach(function(b){
      var off=(f.variant&&b.getAttribute('data-variant')!==f.variant)||(f.model&&b.getAttribute('data-model')!==f.model);
      b.classList.toggle('hidden',!!off);
    });
    document.querySelectorAll('[data-family]').forEach(function(c){
      c.classList.toggle('hidden',!!f.family&&c.getAttribute('data-family')!==f.family);
    });
    document.querySelectorAll('tr[data-library],figure[data-library]').forEach(function(r){
      r.classList.toggle('hidden',!!f.library&&r.getAttribute('data-library')!==f.library);
    });
  }
  document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){sortBy(th);});});
  document.querySelectorAll('.filters select').forEach(function(s){s.addEventListener('change',filter);});
})();
"""
