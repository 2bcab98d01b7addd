"""Markdown helpers shared by the reports: safe table cells, table rows and rules, file-name slugs.

Tables are GitHub-flavoured Markdown: ``| a | b |`` rows under a rule such as ``|:--|--:|`` (first
columns left-aligned, the rest right-aligned).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["md_cell", "md_row", "md_rule", "slug"]


def md_cell(text: Any) -> str:
    """``text`` safe inside a GitHub-flavoured Markdown table cell: ``|`` escaped, no line breaks."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_row(cells: Iterable[Any]) -> str:
    """One table row, ``| c1 | c2 | ... |`` (the cells as given: escape text with :func:`md_cell`)."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_rule(left: int, right: int) -> str:
    """The rule under a header of ``left`` left-aligned then ``right`` right-aligned columns."""
    return "|" + "|".join([":--"] * left + ["--:"] * right) + "|"


def slug(*parts: Any) -> str:
    """The non-empty ``parts`` joined by ``_`` for a file name, ``/`` and spaces turned into ``-``."""
    return "_".join(str(p).replace("/", "-").replace(" ", "-") for p in parts if p)
