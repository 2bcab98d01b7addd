"""Leakage check: were any scored images in a loaded checkpoint's training or validation split?

an8Flower renders sample ``i`` of a variant and seed identically whatever the dataset's size, and
the index plan (:class:`an8flower.generate.IndexPlan`) puts the first ``K * n_train`` indices in
``train``, the next ``K * n_val`` in ``val`` and the rest in ``test`` (``K`` classes, the split
sizes of :func:`an8flower.generate.split_sizes` for the per-class count). So a board built with
``--per-class 100`` scores test indices ``[K * 80, K * 100)``, and a checkpoint trained with
``--per-class 200`` of the same variant and seed learned indices ``[0, K * 180)``: all of them.

:func:`check_leakage` reads the checkpoint's model card (``dataset.variant``, ``dataset.seed``,
``dataset.per_class``, written by :func:`an8flower.eval.train.model_card` from the data it was
trained on) and, when the card names the board's variant and seed, counts the scored sample
indices inside the card's ``train`` and ``val`` ranges:

* none: nothing to say;
* some: :class:`~an8flower.errors.UsageError` naming the count, unless ``allow_overlap``
  (``--allow-overlap``), in which case the returned note goes into every report;
* a card of another variant or seed: other images, nothing to say;
* no card, or a card that does not say which variant, seed and per-class count it was trained on:
  a note that leakage cannot be checked (the runner logs it and the reports show it).

The card is untrusted input: its values are checked for type and range before use, and a bad
value only means the check cannot be made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from an8flower.errors import UsageError

__all__ = ["check_leakage", "overlap_count"]


def overlap_count(num_classes: int, per_class: int, image_ids: Sequence[int]) -> int:
    """How many of the sample indices ``image_ids`` the index plan of ``num_classes`` x ``per_class``
    puts in ``train`` or ``val`` (both are one contiguous range starting at 0)."""
    from an8flower.layout import IndexPlan

    plan = IndexPlan(num_classes, per_class)
    end = plan.split_range("val").stop
    return sum(1 for i in image_ids if 0 <= int(i) < end)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_leakage(
    card: Mapping[str, Any] | None,
    variant: str,
    seed: int | None,
    num_classes: int,
    image_ids: Sequence[int],
    source: str,
    allow_overlap: bool = False,
) -> str | None:
    """Check a loaded checkpoint against the images a board scores (see the module docstring).

    Args:
        card: the checkpoint's model card (None: the file has none).
        variant, seed: the board's an8Flower variant and dataset seed.
        num_classes: the variant's class count.
        image_ids: the scored images' sample indices.
        source: the checkpoint file, named in messages.
        allow_overlap: score overlapping images anyway.

    Returns:
        None when there is nothing to report; else one line for the log and every report.

    Raises:
        UsageError: scored images were in the checkpoint's training or validation split and
            ``allow_overlap`` is False.
    """
    if not isinstance(card, Mapping) or "dataset" not in card:
        return f"{source} has no model card: leakage between its training data and the scored images cannot be checked"
    data = card.get("dataset")
    data = data if isinstance(data, Mapping) else {}
    if data.get("name") not in (None, "an8flower"):
        return None
    card_variant, card_seed, per_class = data.get("variant"), _int(data.get("seed")), _int(data.get("per_class"))
    if not isinstance(card_variant, str) or card_seed is None:
        return (f"the model card of {source} does not name the variant and seed it was trained on: leakage "
                "cannot be checked")
    if card_variant != variant or card_seed != seed:
        return None
    try:
        n = overlap_count(num_classes, per_class, image_ids) if per_class is not None else None
    except UsageError:
        n = None
    if n is None:
        return (f"the model card of {source} has no valid per-class count for {variant} seed {seed}: leakage cannot "
                "be checked")
    if n == 0:
        return None
    what = (f"{n} of the {len(image_ids)} scored images were in the training or validation split of {source} "
            f"({variant}, seed {seed}, per-class {per_class})")
    if not allow_overlap:
        raise UsageError(f"{what}; score a test split the model never saw (the same per-class count, or another "
                         "seed), or pass --allow-overlap to score them anyway")
    return f"{what}; scored anyway (--allow-overlap)"
