"""The dataset commands: ``generate``, ``verify``, ``show``, ``export``, ``intervene``, ``cite``.

Parsers only: each handler converts its arguments and calls one public function
(:func:`an8flower.generate.generate`, :func:`an8flower.verify.verify_dataset`,
:func:`an8flower.show.write_contact_sheet`, :func:`an8flower.export.export_dataset`,
:func:`an8flower.intervene_sheet.write_intervention`, :func:`an8flower.cite.bibtex`), imported when
it runs. None of them imports torch.
"""

from __future__ import annotations

import argparse
import sys

from an8flower.cli.common import int_arg
from an8flower.defaults import (
    DATASET_PER_CLASS,
    DEFAULT_SEED,
    EXPORT_SHARD_SIZE,
    SHOW_PER_CLASS,
    SHOW_THUMB,
)

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
    """Add ``generate``, ``verify``, ``show``, ``export``, ``intervene`` and ``cite`` to the CLI."""
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
    p.add_argument("--per-class", default=str(DATASET_PER_CLASS), metavar="N",
                   help=f"images per class over all splits, >= 3 (default {DATASET_PER_CLASS}: 700 train/100 val/200 test)")
    p.add_argument("--seed", default=str(DEFAULT_SEED), metavar="S", help=f"global seed (default {DEFAULT_SEED})")
    p.add_argument("--workers", default=None, metavar="N", help="worker processes (default: all usable CPUs)")
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
    p.add_argument("--per-class", default=str(SHOW_PER_CLASS), metavar="N", help=f"samples per class (default {SHOW_PER_CLASS})")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="split to draw from (default: all, i.e. the first samples of each class)")
    p.add_argument("--thumb", default=str(SHOW_THUMB), metavar="PX", help=f"thumbnail side (default {SHOW_THUMB})")
    p.set_defaults(func=_cmd_show)

    _register_export(subparsers)
    _register_intervene(subparsers)

    p = subparsers.add_parser(
        "cite",
        help="BibTeX for the paper and this dataset version",
        description="Print BibTeX: the paper that introduced an8Flower (Oramas, Wang, Tuytelaars, ICLR 2019) and "
        "this version of the generator.",
    )
    p.add_argument("--variant", default=None, metavar="VARIANT", help="add this variant's spec hash (name or spec file)")
    p.add_argument("--seed", default=None, metavar="S", help="the seed used (with --variant)")
    p.add_argument("--dataset", default=None, metavar="DIR", help="cite a generated folder: adds its manifest and content hashes")
    p.set_defaults(func=_cmd_cite)


_EXPORT_EPILOG = """\
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


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a dataset folder to Parquet (Hugging Face datasets) or WebDataset shards",
        description="Write a generated dataset folder as Parquet shards with a Hugging Face dataset card, or as "
        "WebDataset tar shards; deterministic, with the manifest hash kept.",
        epilog=_EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="dataset folder (an8flower generate's output)")
    p.add_argument("--format", required=True, metavar="FORMAT", help="parquet or webdataset")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder to create")
    p.add_argument("--split", default="all", metavar="SPLIT",
                   help="all (default), or train, val, test; several comma-separated")
    p.add_argument("--shard-size", default=str(EXPORT_SHARD_SIZE), metavar="N",
                   help=f"at most N rows per shard (default {EXPORT_SHARD_SIZE})")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is an earlier an8flower export")
    p.set_defaults(func=_cmd_export)


_INTERVENE_EPILOG = """\
COLOUR is a colour name of the spec (red, white, slate, ...), an RGB triple "r,g,b" or "#rrggbb";
it is the part's base colour, before the colour jitter and the lighting. The background takes it
for both its colours; clutter for every clutter shape and occluding blade. A removed part is not
painted: what was under it shows. Everything else (pose, lighting, noise, other colours) stays.

The PNG shows the original, the counterfactual and their absolute difference per channel on a
square-root scale (the largest difference white), so that one-level differences still show.

examples:
  an8flower intervene double-12c --index 7 --label 0 --out cf.png
  an8flower intervene double-12c --index 7 --recolour petals=red --recolour stem=0,0,255 --out cf.png
  an8flower intervene single-6c --index 3 --size 224 --remove petals --out cf.png
"""


def _register_intervene(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "intervene",
        help="render a sample with one part changed (a counterfactual) beside the original",
        description="Re-render sample INDEX of an an8Flower variant with its class, a part's colour or a part's "
        "presence changed, every other pixel as in the original; write original | counterfactual | "
        "difference as a PNG.",
        epilog=_INTERVENE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("variant", metavar="VARIANT", help="built-in variant (single-6c, double-12c) or a .json/.toml spec file")
    p.add_argument("--index", required=True, metavar="I", help="sample index (its class is I mod K)")
    p.add_argument("--seed", default=str(DEFAULT_SEED), metavar="S", help=f"dataset seed (default {DEFAULT_SEED})")
    p.add_argument("--size", default=None, metavar="PX", help="image side, 64..512 (default: the spec's)")
    p.add_argument("--label", default=None, metavar="C", help="paint the discriminative parts as class C (index or name)")
    p.add_argument("--recolour", action="append", default=[], metavar="PART=COLOUR",
                   help="give PART the base colour COLOUR (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="PART", help="leave PART out (repeatable)")
    p.add_argument("--allow-invisible", action="store_true",
                   help="allow removing a discriminative part (the class is then undefined)")
    p.add_argument("--out", required=True, metavar="PNG", help="the PNG to write")
    p.set_defaults(func=_cmd_intervene)


def _cmd_generate(args: argparse.Namespace) -> int:
    from an8flower.generate import generate

    result = generate(
        args.variant,
        args.out,
        size=int_arg(args.size, "--size", 0),
        per_class=int_arg(args.per_class, "--per-class", 0),
        seed=int_arg(args.seed, "--seed", 0),
        workers=int_arg(args.workers, "--workers", 1),
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

    render = None if args.render is None else "all" if args.render == "all" else int_arg(args.render, "--render", 0)
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

    per_class, thumb = int_arg(args.per_class, "--per-class", 1), int_arg(args.thumb, "--thumb", 16)
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
    print(bibtex(args.variant, int_arg(args.seed, "--seed", 0), args.dataset), end="")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from an8flower.export import export_dataset

    splits = None if args.split == "all" else [s.strip() for s in args.split.split(",")]
    result = export_dataset(args.dir, args.out, format=args.format, splits=splits,
                            shard_size=int_arg(args.shard_size, "--shard-size", 1), overwrite=args.overwrite)
    rows = ", ".join(f"{split} {n}" for split, n in result.rows.items())
    print(f"{result.out}: {args.format} export, {len(result.files) - 1} shards ({rows}); "
          f"manifest.json sha256 {result.manifest_sha256}")
    return 0


def _cmd_intervene(args: argparse.Namespace) -> int:
    from an8flower.intervene_sheet import parse_recolour, write_intervention

    result = write_intervention(args.variant, int_arg(args.index, "--index", 0), args.out,
                                seed=int_arg(args.seed, "--seed", 0), size=int_arg(args.size, "--size", 0),
                                label=args.label, recolour=parse_recolour(args.recolour), remove=args.remove,
                                allow_invisible=args.allow_invisible)
    after = result.label_after if result.label_after >= 0 else "undefined"
    print(f"wrote {result.out}: {result.variant} sample {result.index} ({result.what}): {result.pixels_changed} "
          f"pixels changed, label {result.label_before} -> {after}")
    return 0
