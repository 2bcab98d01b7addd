"""Subcommands of the ``an8flower`` CLI (see :mod:`an8flower.cli`): generate, verify, show, cite.

Handlers import their modules lazily so that ``an8flower --help`` and ``an8flower cite`` stay fast;
none of them imports torch.
"""

from __future__ import annotations

import argparse
import sys

#: ``an8flower.generate.DEFAULT_PER_CLASS``, repeated so building the parser imports nothing heavy.
DEFAULT_PER_CLASS = 1000


def _int_arg(text: str | None, option: str, minimum: int) -> int | None:
    """Parse an integer option in the handler, so a bad value is a one-line :class:`UsageError`."""
    from an8flower.errors import UsageError

    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected an integer") from None
    if value < minimum:
        raise UsageError(f"{option} {value}: must be >= {minimum}")
    return value


_GENERATE_EPILOG = """\
Splits: the samples of each class are cut 70/10/20 into train/val/test; the default
--per-class 1000 gives 700/100/200 images per class (6,000 images for single-6c, 12,000 for
double-12c). Sample i has class i mod K; splits are contiguous index ranges.

Layout of DIR: images/<split>/<LL-class>/<index>.png (RGB; <LL-class> = label and class name,
e.g. 00-centre-red, so torchvision's ImageFolder numbers the classes as an8flower does),
masks/... (1-bit PNG, 1/white = visible pixel of a discriminative part), parts/... (palette PNG,
value = part id), manifest.csv, dataset.json, DATACARD.md, croissant.json.

The bytes written do not depend on --workers or --shard. An interrupted run resumes when the same
command is run again. With --shard I/N, run every shard (any order; several machines may share
DIR if they run the same an8flower installation); the last one to finish writes manifest.csv and
dataset.json (or run the command once more without --shard).

A folder is locked while a run writes it: a second unsharded run, or the same shard twice, is
refused, naming the process. --per-class is at most 100,000 (1,000,000 images in all); the
output size is estimated first and refused when it exceeds 100 GB or the free disk space.

examples:
  an8flower generate single-6c --out data/single-6c
  an8flower generate double-12c --out data/double-12c --size 112 --workers 8
  an8flower generate my-spec.toml --out data/mine --per-class 200 --seed 1
  an8flower generate single-6c --out /shared/s6 --shard 1/4   # ... and 2/4, 3/4, 4/4
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate``, ``verify``, ``show`` and ``cite`` to the CLI."""
    p = subparsers.add_parser(
        "generate",
        help="generate an an8Flower dataset folder",
        description="Render an an8Flower variant into a dataset folder (images, masks, part maps, manifest).",
        epilog=_GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("variant", metavar="VARIANT", help="built-in variant (single-6c, double-12c) or a .json/.toml spec file")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create (or resume)")
    p.add_argument("--size", default=None, metavar="PX", help="image side in pixels, 64..512 (default: the spec's, 224)")
    p.add_argument("--per-class", default=str(DEFAULT_PER_CLASS), metavar="N",
                   help=f"images per class over all splits, >= 3 (default {DEFAULT_PER_CLASS}: 700 train/100 val/200 test)")
    p.add_argument("--seed", default="0", metavar="S", help="global seed (default 0)")
    p.add_argument("--workers", default=None, metavar="W", help="worker processes (default: all usable CPUs)")
    p.add_argument("--shard", default=None, metavar="I/N", help="render only shard I of N (1-based)")
    p.set_defaults(func=_cmd_generate)

    p = subparsers.add_parser(
        "verify",
        help="check that a dataset folder is exactly what generate writes",
        description="Check a dataset folder: dataset.json and every manifest row against the index plan its spec, "
        "seed and per-class imply (counts, splits, labels, file names), every file's hash, the data card and "
        "croissant.json, a few samples rendered again, and no other file. Exit 0 when everything matches, 1 naming "
        "every inconsistent entry and missing, changed or extra file.",
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument("--pixels", action="store_true",
                   help="compare decoded pixels instead of file bytes (for a copy regenerated on a machine whose zlib "
                   "compresses differently)")
    p.add_argument("--render", default=None, metavar="N",
                   help="samples to render again and compare (default: the first of each class in each split; "
                   "0: none; all: every sample, as slow as generate)")
    p.set_defaults(func=_cmd_verify)

    p = subparsers.add_parser(
        "show",
        help="contact sheet of a dataset: images beside their masks",
        description="Write a PNG contact sheet: one row per class, a few images each beside its mask.",
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.add_argument("--out", required=True, metavar="PNG", help="output PNG file (missing folders are created)")
    p.add_argument("--per-class", default="4", metavar="N", help="samples per class (default 4)")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="split to draw from (default: all, i.e. the first samples of each class)")
    p.add_argument("--thumb", default="112", metavar="PX", help="thumbnail side (default 112)")
    p.set_defaults(func=_cmd_show)

    p = subparsers.add_parser(
        "cite",
        help="BibTeX for the paper and this dataset version",
        description="Print BibTeX: the paper that introduced an8Flower (Oramas, Wang, Tuytelaars, ICLR 2019) and "
        "this version of the generator.",
    )
    p.add_argument("--variant", default=None, metavar="V", help="add this variant's spec hash (name or spec file)")
    p.add_argument("--seed", default=None, metavar="S", help="the seed used (with --variant)")
    p.add_argument("--dataset", default=None, metavar="DIR", help="cite a generated folder: adds its manifest and content hashes")
    p.set_defaults(func=_cmd_cite)


def _cmd_generate(args: argparse.Namespace) -> int:
    from an8flower.generate import generate

    result = generate(
        args.variant,
        args.out,
        size=_int_arg(args.size, "--size", 0),
        per_class=_int_arg(args.per_class, "--per-class", 0),
        seed=_int_arg(args.seed, "--seed", 0),
        workers=_int_arg(args.workers, "--workers", 1),
        shard=args.shard,
    )
    if not result.complete:
        print(
            f"{result.root}: shard done ({result.rendered} rendered, {result.skipped} already there); "
            f"{result.chunks_done}/{result.chunks_total} chunks complete. The last shard to finish, or "
            f"`an8flower generate` without --shard, writes the manifest."
        )
        return 0
    status = ("already complete" if result.rendered == 0 and result.skipped == 0
              else f"{result.rendered} rendered now, {result.skipped} from an earlier run")
    print(
        f"{result.root}: {result.num_samples} samples ({status})\n"
        f"manifest sha256 {result.manifest_sha256}\ncontent  sha256 {result.content_sha256}"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from an8flower.verify import verify_dataset

    render = None if args.render is None else "all" if args.render == "all" else _int_arg(args.render, "--render", 0)
    report = verify_dataset(args.dir, pixels=args.pixels, render=render)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.ok:
        what = "decoded pixels" if args.pixels else "files"
        print(f"{args.dir}: OK, {report.checked} {what} match the manifest, dataset.json and the manifest match the "
              f"index plan, {report.rendered} samples rendered again match")
        return 0
    for line in report.lines():
        print(line)
    counts = {"inconsistent": report.inconsistent, "missing": report.missing, "changed": report.changed,
              "extra": report.extra}
    n = sum(len(v) for v in counts.values())
    print(f"{args.dir}: FAILED, " + ", ".join(f"{len(v)} {k}" for k, v in counts.items()) + f" ({n} problems)",
          file=sys.stderr)
    return 1


def _cmd_show(args: argparse.Namespace) -> int:
    from an8flower.show import write_contact_sheet

    per_class, thumb = _int_arg(args.per_class, "--per-class", 1), _int_arg(args.thumb, "--thumb", 16)
    path = write_contact_sheet(args.dir, args.out, per_class=per_class, split=args.split, thumb=thumb)
    print(f"wrote {path}")
    return 0


def _cmd_cite(args: argparse.Namespace) -> int:
    from an8flower.cite import bibtex
    from an8flower.errors import UsageError

    if args.seed is not None and args.variant is None:
        raise UsageError("--seed needs --variant")
    if args.dataset is not None and args.variant is not None:
        raise UsageError("give --dataset or --variant, not both")
    print(bibtex(args.variant, _int_arg(args.seed, "--seed", 0), args.dataset), end="")
    return 0
