"""Data cards of an8Flower variants: the shipped cards, their spec tables, and generated cards.

Each built-in variant has a hand-written datasheet ``data_cards/an8flower-<variant>.md`` (shipped
as the package ``an8flower.data_cards``) and a Croissant template beside it. The part of a card
that restates the spec (classes and their colours, parts, palettes, nuisance distributions) lies
between the markers :data:`BEGIN` and :data:`END` and is produced by :func:`spec_tables`; the tests
check that the shipped text equals it, and ``python -m an8flower.datacard`` rewrites the blocks
and the Croissant templates after a spec change. A spec file that is not a built-in variant gets
:func:`generated_card`.
"""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from an8flower.spec import VariantSpec, builtin_variants, load_spec

__all__ = ["BEGIN", "END", "spec_tables", "card_name", "is_builtin", "data_card_text", "generated_card",
           "refresh_cards", "dataset_documents"]

BEGIN = "<!-- BEGIN SPEC TABLES: written by an8flower.datacard.spec_tables, do not edit by hand -->"
END = "<!-- END SPEC TABLES -->"
_TABLES_BLOCK = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)


def card_name(variant: str) -> str:
    """File name of a built-in variant's card, e.g. ``an8flower-single-6c.md``."""
    return f"an8flower-{variant}.md"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _weights(pairs: Any) -> str:
    pairs = list(pairs.items()) if isinstance(pairs, dict) else list(pairs)
    weights = {w for _, w in pairs}
    if len(weights) == 1:
        return ", ".join(n for n, _ in sorted(pairs)) + " (equal weights)"
    return ", ".join(f"{n} {_fmt(w)}" for n, w in sorted(pairs, key=lambda p: (-p[1], p[0])))


def spec_tables(spec: VariantSpec) -> str:
    """Markdown tables restating a spec: classes, parts, palettes, nuisance distributions.

    Colours are the spec's RGB values before jitter and lighting. Returns the text between (and
    including) :data:`BEGIN` and :data:`END`.
    """
    disc = spec.discriminative
    from an8flower.layout import class_folder

    lines = [BEGIN, "", "**Classes** (label = position; RGB before jitter and lighting):", ""]
    lines.append("| label | class | folder | " + " | ".join(f"{p} colour (RGB)" for p in disc) + " |")
    lines.append("|---|---|---|" + "---|" * len(disc))
    for label, (name, cols) in enumerate(zip(spec.classes, spec.class_colours, strict=True)):
        cells = " | ".join(f"{c} {spec.rgb(c)}" for c in cols)
        lines.append(f"| {label} | {name} | {class_folder(spec, label)} | {cells} |")
    lines += ["", "**Parts** (the part map stores the id):", "", "| id | part | role |", "|---|---|---|"]
    for i, part in enumerate(spec.parts):
        role = ("**discriminative**: its colour decides the class" if part in disc
                else "background" if part == "background"
                else "clutter behind the flower and occluding blades in front" if part == "clutter"
                else "nuisance: colour drawn independently of the class")
        lines.append(f"| {i} | {part} | {role} |")
    lines += ["", "**Palettes** of the non-discriminative parts (colour name and weight):", "",
              "| part | colours |", "|---|---|"]
    for part, pal in spec.palettes:
        lines.append(f"| {part} | {_weights(pal)} |")
    lines += ["", "**Nuisance distributions** (ranges sampled uniformly; lengths are fractions of the image",
              "side; see `an8flower.spec.Nuisance`):", "", "| attribute | value |", "|---|---|"]
    for key, value in spec.nuisance.to_dict().items():
        if isinstance(value, dict):
            text = _weights(value)
        elif isinstance(value, list):
            text = f"{_fmt(value[0])} .. {_fmt(value[1])}"
        else:
            text = _fmt(value)
        lines.append(f"| {key} | {text} |")
    lines += ["", f"Spec SHA-256 at {spec.size} px: `{spec.sha256()}`.", "", END]
    return "\n".join(lines)


def is_builtin(spec: VariantSpec) -> bool:
    """Whether ``spec`` is a built-in variant (at any image size)."""
    return spec.name in builtin_variants() and load_spec(spec.name).with_size(spec.size) == spec


def generated_card(spec: VariantSpec) -> str:
    """A minimal data card for a spec that is not a built-in variant."""
    return "\n".join([
        f"# Data card: an8Flower variant `{spec.name}` (from a user spec)",
        "",
        "Written by `an8flower generate` for a spec file that is not one of the built-in variants "
        f"({', '.join(builtin_variants())}); their data cards describe the generator, the masks and the "
        "known limits in full.",
        "",
        f"- Description: {spec.description or '(none)'}",
        f"- Image size: {spec.size} x {spec.size} px.",
        f"- Discriminative parts (the mask): {', '.join(spec.discriminative)}.",
        "- Files: `images/<split>/<label>-<class>/<index>.png` (RGB; the class folder starts with the "
        "zero-padded label, so torchvision's `ImageFolder` numbers the classes as the package does); "
        "`masks/...` (1-bit PNG, 1 (white) = visible pixel of a discriminative part); `parts/...` (palette PNG, "
        "value = part id); `manifest.csv` (one row per sample with SHA-256 hashes and the sampled parameters); "
        "`dataset.json` (the spec itself). `an8flower verify DIR` checks a folder against all of it.",
        "- Resizing: `An8Flower(..., resize=S)` resizes images with area interpolation and masks by any covered "
        "pixel (area interpolation of the mask, > 0), so no class colour lies outside a resized mask.",
        "- Cite: `an8flower cite` (the paper by Oramas, Wang and Tuytelaars, ICLR 2019, and this package).",
        "",
        spec_tables(spec),
        "",
    ])


def data_card_text(spec: VariantSpec) -> str:
    """The shipped card of a built-in variant, else :func:`generated_card`."""
    if is_builtin(spec):
        card = resources.files("an8flower.data_cards") / card_name(spec.name)
        if card.is_file():
            return card.read_text(encoding="utf-8")
    return generated_card(spec)


def _with_tables(text: str, tables: str) -> str:
    """``text`` with its :data:`BEGIN` ... :data:`END` block replaced by ``tables``, taken literally."""
    return _TABLES_BLOCK.sub(lambda _: tables, text)


def refresh_cards(folder: str | Path) -> list[Path]:
    """Rewrite the spec tables of the built-in cards and their Croissant templates in ``folder``.

    Returns the files changed.
    """
    from an8flower.croissant import croissant_metadata
    from an8flower.layout import DEFAULT_PER_CLASS
    from an8flower.manifest import canonical_json

    changed = []
    for variant in builtin_variants():
        spec = load_spec(variant)
        path = Path(folder) / card_name(variant)
        text = path.read_text(encoding="utf-8")
        new = _with_tables(text, spec_tables(spec))
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
        meta = Path(folder) / f"an8flower-{variant}.croissant.json"
        new_meta = canonical_json(croissant_metadata(spec, DEFAULT_PER_CLASS, 0))
        if not meta.is_file() or meta.read_text(encoding="utf-8") != new_meta:
            meta.write_text(new_meta, encoding="utf-8")
            changed.append(meta)
    return changed


if __name__ == "__main__":  # pragma: no cover - maintainer tool
    target = sys.argv[1] if len(sys.argv) > 1 else str(resources.files("an8flower.data_cards"))
    for p in refresh_cards(target):
        print(f"rewrote {p}")


def dataset_documents(spec: VariantSpec, seed: int, per_class: int, manifest_sha256: str) -> dict[str, bytes]:
    """The bytes of the data card and ``croissant.json`` of a dataset: ``{file name: bytes}``.

    ``generate`` writes them; ``verify`` regenerates them to compare.
    """
    from an8flower.croissant import croissant_metadata
    from an8flower.layout import CROISSANT_NAME, DATACARD_NAME
    from an8flower.manifest import canonical_json

    total = spec.num_classes * per_class
    croissant = canonical_json(croissant_metadata(spec, per_class, seed, manifest_sha256, total))
    return {DATACARD_NAME: data_card_text(spec).encode("utf-8"), CROISSANT_NAME: croissant.encode("utf-8")}
