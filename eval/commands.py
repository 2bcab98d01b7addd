"""Subcommands of the ``an8flower`` CLI (see :mod:`an8flower.cli`): ``train`` and ``leaderboard``.

Handlers import torch and the runner lazily so that ``an8flower --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

from an8flower.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``leaderboard``, ``explainers`` and ``models`` to the CLI."""
    _register_train(subparsers)
    _register_leaderboard(subparsers)
    _register_explainers(subparsers)
    _register_models(subparsers)


# ------------------------------------------------------------------------------------ train


#: Models the CLI offers (``an8flower.eval.models.MODELS``), repeated so building the parser imports no torch.
MODEL_NAMES: tuple[str, ...] = ("lenet", "resnet18", "resnet50", "small-cnn", "vgg16")

_TRAIN_EPILOG = """\
models: small-cnn (61 k parameters, minutes on a CPU at 64 px), lenet (28 x 28 grey, MNIST),
vgg16, resnet18, resnet50 (the torchvision architectures, trained from scratch here).

Default sizes, and why they differ between commands: `train` and `leaderboard` render 112 px
images (the input size of the paper's an8Flower networks) with 500 per class (350 train / 50 val /
100 test); `generate` writes 224 px and 1000 per class, the scale of the original release;
`leaderboard --quick` uses 64 px and 200 per class (100 for double-12c) to finish in under two minutes on a CPU. The
training recipe (AdamW, warm-up then cosine decay, early stopping on validation accuracy) is the
same everywhere; its defaults reach >= 95% test accuracy on both built-in variants at the sizes the
README shows. A test accuracy below 90% is reported as a warning.

examples:
  an8flower train --variant double-12c --size 64 --per-class 300 --out model.pt
  an8flower train --data data/single-6c --model resnet18 --out resnet18.pt --device cuda
"""


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    from an8flower.eval.config import TRAIN_DEFAULTS

    t = TRAIN_DEFAULTS
    p = subparsers.add_parser(
        "train",
        help="train a classifier to explain on an8Flower",
        description="Train a classifier on an an8Flower variant (rendered in memory) or a generated folder, "
        "and write a checkpoint with its model card (architecture, dataset hash, accuracy per split, seed, "
        "versions). Early stopping on validation accuracy; mixed precision on CUDA. One line per epoch is "
        "logged when stderr is not a terminal.",
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--variant", metavar="VARIANT",
                     help="built-in variant (single-6c, double-12c) or spec file, rendered in memory")
    src.add_argument("--data", metavar="DIR", help="a folder written by `an8flower generate`")
    p.add_argument("--model", default="small-cnn", metavar="MODEL",
                   help=f"classifier: {', '.join(MODEL_NAMES)} (default: small-cnn)")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--size", type=int, default=112, metavar="PX", help="image side when rendering (default: 112)")
    p.add_argument("--per-class", type=int, default=500, metavar="N",
                   help="samples per class when rendering, split 70/10/20 (default: 500)")
    p.add_argument("--model-option", action="append", dest="model_option", metavar="OPT",
                   help="MODEL.KEY=VALUE: a model's builder option, VALUE parsed as JSON when it can be, e.g. "
                        "timm:deit_tiny_patch16_224.depth=6 (repeatable; same as --model MODEL[KEY=VALUE])")
    p.add_argument("--weights", metavar="FILE",
                   help="fine-tune from a local state dict, checkpoint or .safetensors file (the classifier head is "
                        "re-initialised when its shape differs); nothing is downloaded")
    p.add_argument("--epochs", type=int, metavar="N", help=f"maximum epochs (default: the model family's recipe; "
                                                          f"CNNs {t['epochs']})")
    p.add_argument("--patience", type=int, metavar="N",
                   help=f"stop after N epochs without a better val accuracy (default: recipe; CNNs {t['patience']})")
    p.add_argument("--lr", type=float, metavar="LR", help=f"peak learning rate (default: recipe; CNNs {t['lr']:g})")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"images per step (default: {t['batch_size']})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="dataset, initialisation and shuffling seed (default: 0)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="data-loading worker processes (default: 0)")
    p.add_argument("--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from an8flower.eval.config import RunConfig
    from an8flower.eval.models import build_model, fold_model_options, resolve_model
    from an8flower.eval.runner import _device, prepare_an8flower
    from an8flower.eval.train import accuracy_warning, evaluate, model_card, recipe_config, save_checkpoint, train

    try:
        spec = resolve_model(fold_model_options([args.model], model_options(args.model_option))[0])
    except UsageError as exc:
        raise UsageError(f"--model: {exc}") from None
    variant = args.variant or "data"
    explicit = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "patience") if getattr(args, k) is not None}
    try:
        config = RunConfig(variants=[variant], data={variant: args.data} if args.data else {}, size=args.size,
                           per_class=args.per_class, seed=args.seed, workers=args.workers, device=args.device)
        tconf = recipe_config(spec, explicit, seed=args.seed, workers=args.workers, hflip=True)
    except UsageError as exc:
        raise UsageError(f"--{str(exc).split(': ', 1)[-1]}") from None
    if args.data is not None and not os.path.isdir(args.data):
        raise UsageError(f"--data: no such folder: {args.data}")
    data = prepare_an8flower(variant, config)
    device = _device(config)
    model = build_model(spec, len(data.classes), seed=args.seed, weights=args.weights, finetune=True)
    print(f"training {spec.name} on {data.variant} ({len(data.train)} train / {len(data.val)} val images, "
          f"{data.size} px) on {device}", file=sys.stderr)
    result = train(model, data.train, data.val, tconf, device=device)
    test_acc = evaluate(result.model, data.test)
    card = model_card(
        spec, len(data.classes), (3, data.size, data.size),
        {"name": data.dataset, "variant": data.variant, "hash": data.hash, "source": data.source, **data.info},
        {"train": result.train_accuracy, "val": result.val_accuracy, "test": test_acc},
        seed=args.seed, config=tconf, history=result.history, classes=data.classes,
    )
    save_checkpoint(args.out, result.model, card)
    warning = accuracy_warning(test_acc)
    if warning:
        print(f"an8flower: warning: {warning}", file=sys.stderr)
    print(json.dumps({"checkpoint": args.out, "architecture": spec.name, "variant": data.variant,
                      "epochs": len(result.history), "best_epoch": result.best_epoch, "accuracy": card["accuracy"],
                      "seconds": round(result.seconds, 1)}, indent=1))
    return 0


# ------------------------------------------------------------------------------ leaderboard


_LEADERBOARD_EPILOG = """\
Outputs in --out: results.csv, per_image.csv.gz, leaderboard.md, leaderboard.json, PNG plots, run.json,
and the per-cell cache (cache/) and trained models (models/) that make a rerun resume.

Several processes or GPUs (one code path; same numbers as one process):
  torchrun --nproc-per-node 4 -m an8flower leaderboard --config eval/leaderboard.toml
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      -m an8flower leaderboard --config eval/leaderboard.toml
Without torch.distributed (a job array, say):
  an8flower leaderboard --config C.toml --weights m.pt --shard 2/4 --out part-2   # ... and 1/4, 3/4, 4/4
  an8flower leaderboard merge part-1 part-2 part-3 part-4 --out results
"""


def _register_leaderboard(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "leaderboard",
        help="score explainers against the ground-truth masks (the main job)",
        description="Run every explainer on a trained classifier's test images and score the heatmaps against "
        "the ground-truth masks. `an8flower leaderboard --quick` renders a small an8Flower, trains the small CNN, "
        "runs all explainers and metrics and prints the table in under 2 minutes on 2 CPU cores (1 min 36 s measured). Results are cached "
        "per cell in the results folder: rerunning resumes and skips what is done.",
        epilog=_LEADERBOARD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", nargs="?", metavar="merge",
                   help="`leaderboard merge DIR... --out OUT`: combine the finished --shard I/N runs in DIR...")
    p.add_argument("shard_dirs", nargs="*", metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="the small preset: both variants at 64 px, cheap explainer options")
    p.add_argument("--config", metavar="TOML", help="a run configuration file (flags override it)")
    p.add_argument("--out", metavar="DIR", help="results folder (default: ./an8flower-results)")
    p.add_argument("--variant", action="append", metavar="V", help="an8Flower variant or spec file (repeatable)")
    p.add_argument("--data", action="append", metavar="[VARIANT=]DIR",
                   help="use a generated folder for a variant instead of rendering it (repeatable)")
    p.add_argument("--imagenet", metavar="ROOT", help="score on ILSVRC12 validation boxes (needs --weights)")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="classifier: small-cnn, vit-tiny, timm:NAME, torchvision:NAME, ... (repeatable; default: "
                        "small-cnn; `an8flower models` lists them)")
    p.add_argument("--model-option", action="append", dest="model_option", metavar="MODEL.KEY=VALUE",
                   help="a model's builder option, e.g. timm:deit_tiny_patch16_224.depth=6 (repeatable)")
    p.add_argument("--weights", action="append", metavar="[MODEL=]FILE",
                   help="local checkpoint or state dict for a model (else the model is trained on the variant)")
    p.add_argument("--explainer", action="append", metavar="NAME", help="explainer to run (repeatable; default: all)")
    add_import_option(p)
    p.add_argument("--metric", action="append", metavar="NAME", help="metric to score (repeatable; default: all)")
    p.add_argument("--option", "--explainer-option", action="append", dest="option", metavar="EXPLAINER.KEY=VALUE",
                   help="an explainer (or metric) option, VALUE parsed as JSON when it can be (repeatable)")
    p.add_argument("--size", type=int, help="image side of rendered datasets (default: 112; --quick: 64)")
    p.add_argument("--per-class", type=int, help="samples per class of rendered datasets (default: 500)")
    p.add_argument("--seed", type=int, help="dataset, model and explainer seed (default: 0)")
    p.add_argument("--model-seeds", type=int, metavar="N",
                   help="train N classifiers per model (seeds SEED, SEED+1, ...) and report rank spread (default: 1)")
    p.add_argument("--max-images", type=int, help="score at most this many images per dataset (default: 300)")
    p.add_argument("--model-metric-images", type=int,
                   help="images scored by deletion/insertion/randomisation (default: 64; --quick: 16)")
    p.add_argument("--all-images", action="store_true", help="score misclassified images too")
    p.add_argument("--batch-size", type=int, help="images per explainer call (default: 32)")
    p.add_argument("--epochs", type=int, help="maximum training epochs of models the run trains")
    p.add_argument("--workers", type=int, help="data-loading worker processes (default: 0)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
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


def model_options(items: Optional[list[str]]) -> dict[str, dict[str, Any]]:
    """``--model-option MODEL.KEY=VALUE`` flags as ``{MODEL: {KEY: VALUE}}`` (VALUE parsed as JSON
    when it can be)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        target, sep, value = item.partition("=")
        name, dot, key = target.rpartition(".")
        if not sep or not dot or not name or not key:
            raise UsageError(f"--model-option {item!r}: expected MODEL.KEY=VALUE")
        out.setdefault(name, {})[key] = _parse_value(value)
    return out


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(values: Optional[list[str]], flag: str, default_key: Optional[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        key, sep, rest = v.partition("=")
        if sep and key and not os.path.exists(v):
            out[key] = rest
        elif default_key is not None:
            out[default_key] = v
        else:
            raise UsageError(f"{flag} {v!r}: expected NAME=PATH")
    return out


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if args.out is not None:
        o["out"] = args.out
    if args.variant:
        o["variants"] = list(args.variant)
    if args.imagenet:
        o["imagenet"] = args.imagenet
        o.setdefault("variants", [])
    if args.model:
        o["models"] = list(args.model)
    if args.model_option:
        o["model_options"] = model_options(args.model_option)
    if args.explainer:
        o["explainers"] = list(args.explainer)
    if args.metric:
        o["metrics"] = list(args.metric)
    for flag, key in (("size", "size"), ("per_class", "per_class"), ("seed", "seed"), ("model_seeds", "model_seeds"),
                      ("max_images", "max_images"),
                      ("model_metric_images", "model_metric_images"), ("batch_size", "batch_size"),
                      ("workers", "workers"), ("device", "device")):
        if getattr(args, flag) is not None:
            o[key] = getattr(args, flag)
    if args.all_images:
        o["all_images"] = True
    if args.no_plots:
        o["plots"] = False
    if args.amp:
        o["amp"] = True
    return o


def _merge(args: argparse.Namespace) -> int:
    from an8flower.eval.shards import merge_shards

    if args.action != "merge":
        raise UsageError(f"leaderboard: unexpected argument {args.action!r} (the only sub-command is "
                         "`leaderboard merge DIR... --out OUT`; options start with --)")
    if not args.shard_dirs:
        raise UsageError("leaderboard merge: give the shard folders, then --out OUT")
    if not args.out:
        raise UsageError("leaderboard merge: --out OUT is required (a new folder for the combined results)")
    summary = merge_shards(args.shard_dirs, args.out, command=["an8flower"] + sys.argv[1:] if sys.argv else None,
                           progress=False if args.quiet else None)
    print(summary.markdown)
    return 0


def add_import_option(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE_OR_FILE``: code that registers user explainers (see :mod:`an8flower.baselines.plugins`)."""
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE_OR_FILE",
                        help="import a module or .py file first, so that the explainers it registers with "
                             "@register_explainer can be named (repeatable); installed packages can use the "
                             "'an8flower.explainers' entry-point group instead")


def apply_imports(args: argparse.Namespace) -> None:
    """Import what ``--import`` names (UsageError naming it when that fails)."""
    from an8flower.baselines.plugins import import_explainers

    for target in getattr(args, "imports", None) or []:
        import_explainers(target)


def _leaderboard(args: argparse.Namespace) -> int:
    from an8flower.eval.config import RunConfig, load_config, quick_config

    apply_imports(args)
    if args.action is not None or args.shard_dirs:
        return _merge(args)
    if args.list:
        from an8flower.baselines import list_explainers
        from an8flower.eval.runner import METRICS, ORACLE

        print("explainers: " + ", ".join([ORACLE] + list_explainers()))
        print("metrics:    " + ", ".join(METRICS))
        print("adapters (captum:, zennit:, gradcam:) and quantus: metrics: `an8flower explainers`")
        return 0
    overrides = _overrides(args)
    base = quick_config() if args.quick else RunConfig()
    try:
        if args.config:
            config = load_config(args.config, base=base)
            config = RunConfig(**{**config.to_dict(), **overrides})
        else:
            config = RunConfig(**{**base.to_dict(), **overrides})
    except UsageError as exc:
        raise UsageError(str(exc).replace("config: ", "", 1)) from None
    variants = config.variants
    data = dict(config.data)
    data.update(_pairs(args.data, "--data", variants[0] if len(variants) == 1 else None))
    weights = dict(config.weights)
    weights.update(_pairs(args.weights, "--weights", config.models[0] if len(config.models) == 1 else None))
    options = {k: dict(v) for k, v in config.explainer_options.items()}
    metric_options = {k: dict(v) for k, v in config.metric_options.items()}
    from an8flower.eval.runner import METRICS

    for item in args.option or []:
        target, sep, value = item.partition("=")
        name, dot, key = target.rpartition(".")
        if not sep or not dot or not name or not key:
            raise UsageError(f"--option {item!r}: expected EXPLAINER.KEY=VALUE")
        table = metric_options if name in METRICS else options
        table.setdefault(name, {})[key] = _parse_value(value)
    train = dict(config.train)
    if args.epochs is not None:
        train["epochs"] = args.epochs
    config = RunConfig(**{**config.to_dict(), "data": data, "weights": weights, "explainer_options": options,
                          "metric_options": metric_options, "train": train})
    if config.imagenet and not config.weights:
        raise UsageError("--imagenet needs --weights FILE (local pretrained weights; nothing is downloaded)")
    for key, folder in config.data.items():
        if not os.path.isdir(folder):
            raise UsageError(f"--data {key}={folder}: no such folder")
    from an8flower.eval.distributed import RankLost
    from an8flower.eval.runner import run_leaderboard
    from an8flower.generate import parse_shard

    start = time.perf_counter()
    try:
        summary = run_leaderboard(config, command=["an8flower"] + sys.argv[1:] if sys.argv else None,
                                  progress=False if args.quiet else None, fresh=args.fresh,
                                  shard=parse_shard(args.shard))
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


# ------------------------------------------------------------------------------ explainers


def _register_explainers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explainers",
        help="list every explainer name available in this installation",
        description="List the built-in explainers, the library adapters (captum:, zennit:, gradcam:) with each "
        "library's version, the libraries that are not installed with the extra that installs them, the "
        "methods an adapter does not offer (and why), and the Quantus metrics (quantus:).",
    )
    p.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    p.add_argument("--board", action="store_true",
                   help="print the TOML lines of the published board's explainers: ours and the recommended adapters, "
                        "their cost-cutting options, and which names compute the same method")
    p.set_defaults(func=_explainers)


def _explainers(args: argparse.Namespace) -> int:
    import textwrap

    from an8flower import __version__
    from an8flower.baselines import list_explainers
    from an8flower.baselines.adapters import board_config, catalogue
    from an8flower.eval.quantus_metrics import list_quantus_metrics

    builtin = list_explainers()
    if args.board:
        print(board_config(["oracle"] + builtin), end="")
        return 0
    libraries = catalogue()
    quantus = list_quantus_metrics()
    if args.json:
        print(json.dumps({"builtin": builtin, "libraries": libraries, "quantus_metrics": quantus}, indent=1))
        return 0

    def block(title: str, names: list[str]) -> None:
        print(title)
        print(textwrap.fill(", ".join(names), width=100, initial_indent="  ", subsequent_indent="  "))

    block(f"an8flower {__version__} (built in, {len(builtin)}):", builtin)
    for lib in libraries:
        if not lib["available"]:
            continue
        block(f"{lib['prefix']}: {lib['distribution']} {lib['version']} ({len(lib['methods'])}):", lib["methods"])
        if lib.get("licence"):
            print(textwrap.fill(f"licence: {lib['licence']}", width=100, initial_indent="  ", subsequent_indent="    "))
        reasons: dict[str, list[str]] = {}
        for name, why in lib["excluded"].items():
            reasons.setdefault(why, []).append(name)
        for why, names in reasons.items():
            print(textwrap.fill(f"not offered: {', '.join(names)}: {why}", width=100, initial_indent="  ",
                                subsequent_indent="    "))
    missing = [lib for lib in libraries if not lib["available"]]
    for lib in missing:
        print(f"unavailable: {lib['prefix']}: ({lib['distribution']} is not installed): {lib['install']}")
    if quantus:
        block(f"quantus: metrics ({len(quantus)}):", quantus)
    else:
        print('unavailable: quantus: metrics (quantus is not installed): pip install "an8flower[quantus]"')
    return 0


# ---------------------------------------------------------------------------------- models


def _register_models(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list every model name available in this installation",
        description="List the package's classifiers, the named ViT presets, and the model libraries (timm:, "
        "torchvision:) with their version and number of models, or the extra that installs a missing one. "
        "Options are written NAME[KEY=VALUE,...] or given with --model-option NAME.KEY=VALUE.",
    )
    p.add_argument("--json", action="store_true", help="print the catalogue as JSON")
    p.add_argument("--library", choices=("timm", "torchvision"), help="print every model name of one library")
    p.set_defaults(func=_models)


def _models(args: argparse.Namespace) -> int:
    from an8flower.eval.models import MODEL_LIBRARIES, model_catalogue

    if args.library:
        print("\n".join(f"{args.library}:{b}" for b in MODEL_LIBRARIES[args.library].builders()))
        return 0
    cat = model_catalogue()
    if args.json:
        print(json.dumps(cat, indent=1))
        return 0
    print("an8flower: " + ", ".join(cat["ours"]))
    for name, preset in cat["presets"].items():
        state = "" if preset["available"] else f" (needs {preset['library']})"
        print(f"  {name}: {preset['summary']}{state}")
    for lib in cat["libraries"]:
        if lib["available"]:
            print(f"{lib['prefix']}: {lib['distribution']} {lib['version']} ({lib['models']} models: "
                  f"`an8flower models --library {lib['prefix']}`)")
        else:
            print(f"unavailable: {lib['prefix']}: ({lib['distribution']} is not installed): {lib['install']}")
    return 0
