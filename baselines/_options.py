"""Validation of explainer options: each failure is a UsageError naming the option."""

from __future__ import annotations

from collections.abc import Sequence

from an8flower.baselines.base import CHANNEL_REDUCTIONS
from an8flower.errors import UsageError


def check_int(name: str, value: int, low: int = 1) -> int:
    """``value`` if it is an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise UsageError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def check_reduction(reduction: str) -> str:
    """``reduction`` if it names one of :data:`~an8flower.baselines.base.CHANNEL_REDUCTIONS`."""
    return check_choice("reduction", reduction, tuple(CHANNEL_REDUCTIONS))
