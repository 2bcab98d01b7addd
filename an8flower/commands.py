"""Subcommands of the ``an8flower`` CLI (see :mod:`an8flower.cli`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the CLI."""
