"""The ``an8flower export`` subcommand (see :mod:`an8flower.cli` and :mod:`an8flower.export`).

Building the parser imports nothing heavy; the handler imports :mod:`an8flower.export` (and
pyarrow for Parquet) when it runs.
"""

from __future__ import annotations

import argparse

#: ``an8flower.export.DEFAULT_SHARD_SIZE``, repeated so building the parser imports nothing heavy.
DEFAULT_SHARD_SIZE = 1000

_EPILOG = """\
Parquet: OUT/data/<split>-<i>-of-<n>.parquet (image, mask and part map as Hugging Face Image
features holding the dataset's PNG bytes, label as a ClassLabel, every manifest column), and
OUT/README.md, a dataset card with the Hugging Face YAML header: datasets.load_dataset("OUT")
reads it. WebDataset: OUT/<split>-<i>.tar with the keys <index> and the members .image.png,
.mask.png, .parts.png, .json (the manifest row) and .cls (the label). Both write
OUT/manifest.json (the dataset's manifest and content hashes, the sha256 of every file).

The same dataset and options give the same bytes. Every file is checked against the manifest
while it is read. OUT is written in full under a temporary name, then renamed; an existing
non-empty OUT is refused unless --overwrite, which replaces only an earlier an8flower export.

examples:
  an8flower export data/double-12c --format parquet --out exports/double-12c-parquet
  an8flower export data/double-12c --format webdataset --out exports/d12-wds --split train --shard-size 500
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the CLI."""
    p = subparsers.add_parser(
        "export",
        help="export a dataset folder to Parquet (Hugging Face datasets) or WebDataset shards",
        description="Write a generated dataset folder as Parquet shards with a Hugging Face dataset card, or as "
        "WebDataset tar shards; deterministic, with the manifest hash kept.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder (an8flower generate's output)")
    p.add_argument("--format", required=True, metavar="FORMAT", help="parquet or webdataset")
    p.add_argument("--out", required=True, metavar="OUT", help="export folder to create")
    p.add_argument("--split", default="all", metavar="SPLIT",
                   help="all (default), or train, val, test; several comma-separated")
    p.add_argument("--shard-size", default=str(DEFAULT_SHARD_SIZE), metavar="N",
                   help=f"at most N rows per shard (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier an8flower export")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from an8flower.commands import _int_arg
    from an8flower.export import export_dataset

    splits = None if args.split == "all" else [s.strip() for s in args.split.split(",")]
    result = export_dataset(args.dir, args.out, format=args.format, splits=splits,
                            shard_size=_int_arg(args.shard_size, "--shard-size", 1), overwrite=args.overwrite)
    rows = ", ".join(f"{split} {n}" for split, n in result.rows.items())
    print(f"{result.out}: {args.format} export, {len(result.files) - 1} shards ({rows}); "
          f"manifest.json sha256 {result.manifest_sha256}")
    return 0
