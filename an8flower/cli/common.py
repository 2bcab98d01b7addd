"""Argument helpers shared by the command groups of :mod:`an8flower.cli`.

Light: the standard library, :mod:`an8flower.defaults` and :mod:`an8flower.errors` only.

Placeholders are one style across every command: ``PX`` an image side, ``N`` a count, ``S`` a
seed, ``DEV`` a device, ``DIR`` a folder, ``PNG`` an image file written, ``CKPT`` an an8Flower
checkpoint (``--weights`` always means one), ``NAME`` a registered name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import overload

from an8flower.defaults import default_threads
from an8flower.errors import UsageError

__all__ = [
    "int_arg", "command_line", "add_import_option", "apply_imports", "add_device_option", "add_threads_option",
    "apply_threads", "positive",
]


@overload
def int_arg(text: str, option: str, minimum: int) -> int: ...
@overload
def int_arg(text: None, option: str, minimum: int) -> None: ...
@overload
def int_arg(text: str | None, option: str, minimum: int) -> int | None: ...


def int_arg(text: str | None, option: str, minimum: int) -> int | None:
    """Parse an integer option in the handler, so a bad value is a one-line :class:`UsageError`."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected an integer") from None
    if value < minimum:
        raise UsageError(f"{option} {value}: must be >= {minimum}")
    return value


def command_line() -> list[str] | None:
    """The command as typed (``an8flower`` and its arguments), recorded in ``run.json`` and reports."""
    return ["an8flower"] + sys.argv[1:] if sys.argv else None


def add_import_option(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE_OR_FILE``: code that registers user explainers (see :mod:`an8flower.baselines.plugins`)."""
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE_OR_FILE",
                        help="import a module or .py file first, so that the explainers it registers with "
                             "@register_explainer can be named (repeatable); installed packages can use the "
                             "'an8flower.explainers' entry-point group instead")


def apply_imports(args: argparse.Namespace) -> None:
    """Import what ``--import`` names (UsageError naming it when that fails)."""
    targets = getattr(args, "imports", None) or []
    if targets:
        from an8flower.baselines.plugins import import_explainers

        for target in targets:
            import_explainers(target)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device DEV``."""
    parser.add_argument("--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's intra-op threads (see :func:`an8flower.defaults.default_threads`)."""
    parser.add_argument("--threads", default=None, metavar="N",
                        help="CPU threads torch uses (default: half the usable CPUs, at most 4, so a shared machine "
                             "is not oversubscribed; when OMP_NUM_THREADS is set, torch's own choice)")


def apply_threads(args: argparse.Namespace) -> int | None:
    """Set torch's intra-op thread count from ``--threads`` or the default; return what was set.

    Called first in a handler, before any tensor work (torch reads the setting when its pool starts).
    """
    threads = int_arg(getattr(args, "threads", None), "--threads", 1)
    if threads is None:
        threads = default_threads()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


def positive(values: Sequence[tuple[str, int | None, int]]) -> None:
    """Refuse any ``(flag, value, minimum)`` whose value is below its minimum."""
    for flag, value, low in values:
        if value is not None and value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
