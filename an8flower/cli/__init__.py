"""The ``an8flower`` command line: parsers only, one module per group of commands.

* :mod:`an8flower.cli.dataset`: generate, verify, show, export, intervene, cite;
* :mod:`an8flower.cli.models`: train, models, explainers;
* :mod:`an8flower.cli.board`: leaderboard, leaderboard merge;
* :mod:`an8flower.cli.interpret`: interpret, explain, reproduce.

Each module exposes ``register(subparsers)``, which adds its parsers and sets ``func`` on each: a
callable ``func(args) -> int`` (the exit code) that converts the arguments and calls one public
function of the logic modules, imported when it runs. Defaults come from :mod:`an8flower.defaults`.
Importing this package (and building the parser) imports nothing heavy: no torch, no numpy.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from an8flower import __version__
from an8flower.cli import board, dataset, interpret, models
from an8flower.errors import An8FlowerError

__all__ = ["main", "build_parser"]

#: The command groups, in the order their commands are listed.
COMMAND_GROUPS = (dataset, models, board, interpret)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="an8flower",
        description="Generate the an8Flower dataset and benchmark visual explanations.",
    )
    parser.add_argument("--version", action="version", version=f"an8flower {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except An8FlowerError as exc:
        print(f"an8flower: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("an8flower: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`an8flower explainers | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
