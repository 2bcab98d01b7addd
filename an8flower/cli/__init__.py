"""The ``an8flower`` command line.

Each group of subcommands lives next to the code it drives and exposes
``register(subparsers)``; that function adds its subparsers and sets ``func`` on each, a callable
``func(args) -> int`` (the exit code). Command modules import heavy dependencies (torch) inside
their handlers so that ``an8flower --help`` and ``an8flower cite`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from an8flower import __version__
from an8flower.errors import An8FlowerError

#: Modules that contribute subcommands, in the order their commands are listed.
COMMAND_MODULES: tuple[str, ...] = (
    "an8flower.commands",  # generate, verify, show, cite
    "an8flower.export_cmd",  # export
    "an8flower.intervene_cli",  # intervene
    "an8flower.eval.commands",  # train, leaderboard
    "an8flower.eval.interpret",  # interpret, explain (they load checkpoints and data: eval's side)
    "an8flower.eval.reproduce",  # reproduce (the paper's experiments, on the leaderboard runner)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="an8flower",
        description="Generate the an8Flower dataset and benchmark visual explanations.",
    )
    parser.add_argument("--version", action="version", version=f"an8flower {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
