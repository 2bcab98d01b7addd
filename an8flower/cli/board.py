"""The board commands: ``leaderboard`` and ``leaderboard merge``.

Parsers only: ``leaderboard`` builds its :class:`~an8flower.eval.config.RunConfig` with
:func:`an8flower.eval.config.build_run_config` and runs
:func:`an8flower.eval.runner.run_leaderboard`; ``leaderboard merge`` calls
:func:`an8flower.eval.merge.merge_shards`. Both are imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from an8flower.cli.common import (
    add_device_option,
    add_import_option,
    add_threads_option,
    apply_imports,
    apply_threads,
    command_line,
)
from an8flower.defaults import (
    BOARD_PER_CLASS,
    BOARD_SIZE,
    DEFAULT_MODEL,
    DEFAULT_SEED,
    RESULTS_DIR,
)

_EPILOG = """\
Outputs in --out: results.csv, per_image.csv.gz, leaderboard.md, leaderboard.json, PNG plots, run.json,
and the per-cell cache (cache/) and trained models (models/) that make a rerun resume. The folder is
marked as an8flower's (.an8flower-results): a non-empty folder without the mark (a user's own) is
refused unless --overwrite, and a run that fails before writing anything leaves no folder behind.

The published board (docs/leaderboard/) is `--config published`; `--config published-gpu` is the
same run without its CPU cuts. Both are shipped in the package (an8flower/configs/).

Several processes or GPUs (one code path; same numbers as one process):
  torchrun --nproc-per-node 4 -m an8flower leaderboard --config published-gpu
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      -m an8flower leaderboard --config published-gpu
Without torch.distributed (a job array, say):
  an8flower leaderboard --config C.toml --weights m.pt --shard 2/4 --out part-2   # ... and 1/4, 3/4, 4/4
  an8flower leaderboard merge part-1 part-2 part-3 part-4 --out results
"""

#: ``leaderboard`` flags that set a RunConfig field of the same name (``--per-class`` -> ``per_class``).
_FIELD_FLAGS = ("out", "size", "per_class", "seed", "model_seeds", "max_images", "model_metric_images", "batch_size",
                "workers", "device")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``leaderboard`` and its subcommand ``leaderboard merge`` to the CLI."""
    p = subparsers.add_parser(
        "leaderboard",
        help="score explainers against the ground-truth masks (the main job)",
        description="Run every explainer on a trained classifier's test images and score the heatmaps against "
        "the ground-truth masks. `an8flower leaderboard --quick` renders a small an8Flower, trains the small CNN, "
        "runs all explainers and metrics and prints the table in about 3 minutes on 2 CPU cores (2 min 50 s "
        "measured on an idle 2-core machine). Results are cached per cell in the results folder: rerunning resumes and skips what is done.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="the small preset: both variants at 64 px, cheap explainer options")
    p.add_argument("--config", metavar="TOML",
                   help="a run configuration file, or `published` / `published-gpu` (the packaged published "
                        "board's); flags override it")
    p.add_argument("--out", metavar="DIR", help=f"results folder (default: ./{RESULTS_DIR})")
    p.add_argument("--allow-overlap", action="store_true",
                   help="score images that a checkpoint's model card says were in its training or validation split "
                        "(refused otherwise; every report says so)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even when it is a non-empty folder that an8flower did not create "
                        "(files of the same names are replaced)")
    p.add_argument("--variant", action="append", metavar="VARIANT", help="an8Flower variant or spec file (repeatable)")
    p.add_argument("--data", action="append", metavar="[VARIANT=]DIR",
                   help="use a generated folder for a variant instead of rendering it (repeatable)")
    p.add_argument("--imagenet", metavar="DIR", help="score on ILSVRC12 validation boxes (needs --weights)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help=f"classifier: small-cnn, vit-tiny, timm:NAME, torchvision:NAME, ... (repeatable; default: "
                        f"{DEFAULT_MODEL}; see `an8flower models`)")
    p.add_argument("--model-option", action="append", dest="model_option", metavar="OPT",
                   help="MODEL.KEY=VALUE: a model builder's option, e.g. timm:deit_tiny_patch16_224.depth=6 "
                        "(repeatable)")
    p.add_argument("--weights", action="append", metavar="[MODEL=]CKPT",
                   help="local checkpoint or state dict for a model (else the model is trained on the variant)")
    p.add_argument("--explainer", action="append", metavar="NAME", help="explainer to run (repeatable; default: all)")
    add_import_option(p)
    p.add_argument("--metric", action="append", metavar="NAME", help="metric to score (repeatable; default: all)")
    p.add_argument("--option", "--explainer-option", action="append", dest="option", metavar="NAME.KEY=VALUE",
                   help="an explainer (or metric) option, VALUE parsed as JSON when it can be (repeatable)")
    p.add_argument("--size", type=int, metavar="PX", help=f"image side of rendered datasets (default: {BOARD_SIZE}; --quick: 64)")
    p.add_argument("--per-class", type=int, metavar="N",
                   help=f"samples per class of rendered datasets (default: {BOARD_PER_CLASS})")
    p.add_argument("--seed", type=int, metavar="S", help=f"dataset, model and explainer seed (default: {DEFAULT_SEED})")
    p.add_argument("--model-seeds", type=int, metavar="N",
                   help="train N classifiers per model (seeds S, S+1, ...) and report rank spread (default: 1)")
    p.add_argument("--max-images", type=int, metavar="N", help="score at most N images per dataset (default: 300)")
    p.add_argument("--model-metric-images", type=int, metavar="N",
                   help="images scored by deletion/insertion/randomisation (default: 64; --quick: 6)")
    p.add_argument("--all-images", action="store_true", help="score misclassified images too")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per explainer call (default: 32)")
    p.add_argument("--epochs", type=int, metavar="N", help="maximum training epochs of models the run trains")
    p.add_argument("--workers", type=int, metavar="N", help="data-loading worker processes (default: 0)")
    add_device_option(p)
    add_threads_option(p)
    p.add_argument("--amp", action="store_true",
                   help="mixed precision for the explainers that allow it (RISE); off by default")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--shard", metavar="I/N",
                   help="compute only shard I of N (1-based) of every cell into --out, for schedulers without "
                        "torch.distributed; then `an8flower leaderboard merge` the N folders")
    p.add_argument("--fresh", action="store_true",
                   help="recompute every requested cell instead of reading the cache in --out (trained models are reused)")
    p.add_argument("--list", action="store_true", help="list the explainers and metrics, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages; print only the table")
    p.set_defaults(func=_leaderboard)

    sub = p.add_subparsers(dest="leaderboard_command", metavar="[merge]")
    m = sub.add_parser(
        "merge",
        help="combine the finished --shard I/N runs into one results folder",
        description="Combine the results folders of the N finished `leaderboard --shard I/N` runs of one "
        "configuration into a complete results folder (report, plots, run.json), as one run would have written.",
    )
    m.add_argument("shard_dirs", nargs="+", metavar="DIR", help="the shard folders (every shard of the run)")
    m.add_argument("--out", required=True, metavar="DIR", help="a new folder for the combined results")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=_merge)


def _merge(args: argparse.Namespace) -> int:
    from an8flower.eval.merge import merge_shards
    from an8flower.eval.results_folder import results_folder

    with results_folder(args.out):
        summary = merge_shards(args.shard_dirs, args.out, command=command_line(), progress=False if args.quiet else None)
    print(summary.markdown)
    return 0


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """RunConfig fields the flags set (only those given)."""
    flags: dict[str, Any] = {key: getattr(args, key) for key in _FIELD_FLAGS if getattr(args, key) is not None}
    for key, flag in (("variants", "variant"), ("models", "model"), ("explainers", "explainer"), ("metrics", "metric")):
        if getattr(args, flag):
            flags[key] = list(getattr(args, flag))
    if args.imagenet:
        flags["imagenet"] = args.imagenet
        flags.setdefault("variants", [])
    if args.epochs is not None:
        flags["train"] = {"epochs": args.epochs}
    if args.model_option:
        from an8flower.eval.config import parse_model_options

        flags["model_options"] = parse_model_options(args.model_option)
    for key, on, value in (("all_images", args.all_images, True), ("plots", args.no_plots, False), ("amp", args.amp, True)):
        if on:
            flags[key] = value
    return flags


def _list() -> int:
    from an8flower.baselines import default_explainers
    from an8flower.eval.scoring import METRICS

    print("explainers: " + ", ".join(default_explainers()))
    print("metrics:    " + ", ".join(METRICS))
    print("adapters (captum:, zennit:, gradcam:) and quantus: metrics: `an8flower explainers`")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    apply_imports(args)
    if args.list:
        return _list()
    apply_threads(args)
    from an8flower.eval.config import build_run_config
    from an8flower.eval.distributed import RankLost
    from an8flower.eval.results_folder import results_folder
    from an8flower.eval.runner import run_leaderboard
    from an8flower.eval.scoring import METRICS
    from an8flower.layout import parse_shard

    config = build_run_config(args.config, quick=args.quick, flags=_flags(args), data=args.data or (),
                              weights=args.weights or (), options=args.option or (), metric_names=METRICS)
    shard = parse_shard(args.shard)
    start = time.perf_counter()
    try:
        with results_folder(config.out, overwrite=args.overwrite):
            summary = run_leaderboard(config, command=command_line(), progress=False if args.quiet else None,
                                      fresh=args.fresh, shard=shard, allow_overlap=args.allow_overlap)
    except RankLost as exc:
        print(f"an8flower: error: {exc}; rerun the same command to resume from the cache", file=sys.stderr)
        return 3
    if "rank" in summary.record or args.shard:  # ranks other than 0 print nothing; a shard has no report
        return 0
    print(summary.markdown)
    if not args.quiet:
        cells = summary.record["cells"]
        print(f"results in {os.path.abspath(config.out)} ({summary.computed} cells computed, {summary.cached} from the "
              f"cache, {cells['from_earlier_runs']} more from earlier runs, {len(summary.record['errors'])} errors; "
              f"{time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0
