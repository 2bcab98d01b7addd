"""Compare two published boards on the cells they share: the largest difference of their values.

    python benchmarks/compare_boards.py OLD NEW [--tolerance T]

OLD and NEW are results folders (``an8flower leaderboard --out``, or ``docs/leaderboard``), each
given as a path or as ``git:REV:FOLDER`` (read with ``git show`` from this repository, e.g.
``git:e2e21a6:eval`` for the board published before the house was rebuilt). A folder is read from
its ``results.csv`` (full precision) when it has one, else from ``leaderboard.md`` with the column
labels of its ``run.json`` (the values as printed: three decimals).

A cell is one (dataset, variant, model, explainer, metric, split, seed) value; shared cells are
those both boards hold a number for (``n/a`` and ``error`` are not numbers). Printed: how many
cells each board has, how many they share, the largest absolute difference and its cell, and how
many shared cells differ by more than the tolerance. When either side comes from ``leaderboard.md``
the other side is rounded to three decimals first, so equal numbers give a difference of exactly
0 (the default tolerance is 0, not the rounding step); the exit status is 1 when a shared cell
differs by more than the tolerance, else 0.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import subprocess
import sys

Cell = tuple[str, str, str, str, str, str, str]

_HEADING = re.compile(r"^## (\S+) `([^`]+)` · `([^`]+)` · (\S+) split(?: · seed (\d+))?")


def read_text(where: str, name: str) -> str | None:
    """The text of ``name`` in the folder ``where`` (a path or ``git:REV:FOLDER``); None when absent."""
    if where.startswith("git:"):
        _, rev, folder = where.split(":", 2)
        path = f"{folder.rstrip('/')}/{name}" if folder else name
        done = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None
    path = os.path.join(where, name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def cells_from_csv(text: str) -> dict[Cell, float]:
    """``results.csv`` rows with a finite value, by cell."""
    out: dict[Cell, float] = {}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            value = float(row["value"])
        except ValueError:
            continue
        if math.isfinite(value):
            out[(row["dataset"], row["variant"], row["model"], row["explainer"], row["metric"], row["split"],
                 row["seed"])] = value
    return out


def _label_key(text: str) -> str:
    """A column header reduced to its label: arrows, ``(n=...)``, ``[flag k]`` and escapes removed."""
    text = re.sub(r"\(n=\d+\)|\[flag \d+\]|[↑↓*]", "", text.replace("\\|", "|"))
    return " ".join(text.split())


def cells_from_markdown(text: str, labels: dict[str, str], seed: str = "0") -> dict[Cell, float]:
    """The first table under each board heading of ``leaderboard.md``, by cell.

    ``labels``: column label -> metric name (from ``run.json``). A cell's printed mean is the
    number before its ``±``; bold and italic marks are dropped; other cells (n/a, errors) skipped.
    """
    out: dict[Cell, float] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _HEADING.match(lines[i])
        i += 1
        if not m:
            continue
        dataset, variant, model, split, group_seed = m.groups()
        while i < len(lines) and not lines[i].startswith("| explainer"):
            if _HEADING.match(lines[i]):
                break
            i += 1
        if i >= len(lines) or not lines[i].startswith("| explainer"):
            continue
        header = [_label_key(h) for h in lines[i].strip("|").split(" | ")]
        i += 2
        while i < len(lines) and lines[i].startswith("|"):
            row = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip().strip("|"))]
            explainer = row[0].strip("*").strip()
            for label, cell in zip(header[1:], row[1:], strict=False):
                metric = labels.get(label)
                number = re.match(r"^\**(-?\d+(?:\.\d+)?)\**", cell)
                if metric and number:
                    out[(dataset, variant, model, explainer, metric, split, group_seed or seed)] = float(number.group(1))
            i += 1
    return out


def read_board(where: str) -> tuple[dict[Cell, float], bool]:
    """The cells of a results folder and whether they were read as rounded (from ``leaderboard.md``)."""
    text = read_text(where, "results.csv")
    if text is not None:
        return cells_from_csv(text), False
    md, run = read_text(where, "leaderboard.md"), read_text(where, "run.json")
    if md is None or run is None:
        raise SystemExit(f"{where}: neither results.csv nor leaderboard.md with run.json")
    labels = {_label_key(spec["label"]): name for name, spec in json.loads(run)["metrics"].items()}
    return cells_from_markdown(md, labels), True


def compare(old: dict[Cell, float], new: dict[Cell, float], rounded: bool) -> dict[str, object]:
    """The shared cells' differences: count, largest, its cell, and every difference by cell."""
    shared = sorted(set(old) & set(new))
    diffs = {c: abs((round(new[c], 3) if rounded else new[c]) - (round(old[c], 3) if rounded else old[c]))
             for c in shared}
    worst = max(diffs, key=lambda c: diffs[c]) if diffs else None
    return {"old": len(old), "new": len(new), "shared": len(shared), "largest": diffs[worst] if worst else math.nan,
            "cell": worst, "diffs": diffs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--tolerance", type=float, default=0.0, help="largest difference counted as equal (default 0)")
    args = parser.parse_args(argv)
    (old, old_rounded), (new, new_rounded) = read_board(args.old), read_board(args.new)
    rounded = old_rounded or new_rounded
    result = compare(old, new, rounded)
    diffs: dict[Cell, float] = result["diffs"]  # type: ignore[assignment]
    over = sorted(c for c, d in diffs.items() if d > args.tolerance + 1e-12)
    print(f"old: {args.old}: {result['old']} cells{' (leaderboard.md, 3 decimals)' if old_rounded else ''}")
    print(f"new: {args.new}: {result['new']} cells{' (leaderboard.md, 3 decimals)' if new_rounded else ''}")
    print(f"shared cells: {result['shared']}" + (" (compared at 3 decimals)" if rounded else ""))
    print(f"largest difference: {result['largest']:.6g}" + (f" at {' / '.join(result['cell'])}" if result["cell"] else ""))
    print(f"cells differing by more than {args.tolerance:g}: {len(over)}")
    for cell in over[:20]:
        print(f"  {' / '.join(cell)}: old {old[cell]:.6g}, new {new[cell]:.6g}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
