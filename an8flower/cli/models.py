"""The model commands: ``train``, ``models``, ``explainers``.

Parsers only: ``train`` calls :func:`an8flower.eval.train.train_checkpoint`, ``models``
:func:`an8flower.eval.models.list_models`, ``explainers`` the registries
(:func:`an8flower.baselines.list_explainers`, :func:`an8flower.baselines.adapters.catalogue`,
:func:`an8flower.eval.quantus_metrics.list_quantus_metrics`), each imported when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from an8flower.cli.common import add_device_option, add_threads_option, apply_threads
from an8flower.defaults import (
    BOARD_PER_CLASS,
    BOARD_SIZE,
    DEFAULT_MODEL,
    DEFAULT_SEED,
    MODEL_NAMES,
    TRAIN_DEFAULTS,
)

_TRAIN_EPILOG = f"""\
models: small-cnn (61 k parameters, minutes on a CPU at 64 px), lenet (28 x 28 grey, MNIST),
vgg16, resnet18, resnet50 (the torchvision architectures, trained from scratch here).

Default sizes, and why they differ between commands: `train` and `leaderboard` render {BOARD_SIZE} px
images (the input size of the paper's an8Flower networks) with {BOARD_PER_CLASS} per class (350 train / 50 val /
100 test); `generate` writes 224 px and 1000 per class, the scale of the original release;
`leaderboard --quick` uses 64 px and 200 per class (100 for double-12c) to finish in about 3 minutes on 2 CPU cores. The
training recipe (AdamW, warm-up then cosine decay, early stopping on validation accuracy) is the
same everywhere; its defaults reach >= 95% test accuracy on both built-in variants at the sizes the
README shows. A test accuracy below 90% is reported as a warning.

examples:
  an8flower train --variant double-12c --size 64 --per-class 300 --out model.pt
  an8flower train --data data/single-6c --model resnet18 --out resnet18.pt --device cuda
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``models`` and ``explainers`` to the CLI."""
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
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                   help=f"classifier: {', '.join(MODEL_NAMES)}, vit-tiny, timm:NAME, torchvision:NAME, ... "
                        f"(default: {DEFAULT_MODEL}; `an8flower models` lists them)")
    p.add_argument("--model-option", action="append", dest="model_option", metavar="OPT",
                   help="MODEL.KEY=VALUE: a model builder's option, VALUE parsed as JSON when it can be, e.g. "
                        "timm:deit_tiny_patch16_224.depth=6 (repeatable; same as --model MODEL[KEY=VALUE])")
    p.add_argument("--weights", metavar="CKPT",
                   help="fine-tune from a local state dict, checkpoint or .safetensors file (the classifier head is "
                        "re-initialised when its shape differs); nothing is downloaded")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--size", type=int, default=BOARD_SIZE, metavar="PX", help=f"image side when rendering (default: {BOARD_SIZE})")
    p.add_argument("--per-class", type=int, default=BOARD_PER_CLASS, metavar="N",
                   help=f"samples per class when rendering, split 70/10/20 (default: {BOARD_PER_CLASS})")
    p.add_argument("--epochs", type=int, metavar="N",
                   help=f"maximum epochs (default: the model family's recipe; CNNs {t['epochs']})")
    p.add_argument("--patience", type=int, metavar="N",
                   help=f"stop after N epochs without a better val accuracy (default: recipe; CNNs {t['patience']})")
    p.add_argument("--lr", type=float, metavar="LR", help=f"peak learning rate (default: recipe; CNNs {t['lr']:g})")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"images per step (default: recipe; CNNs {t['batch_size']})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                   help=f"dataset, initialisation and shuffling seed (default: {DEFAULT_SEED})")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="data-loading worker processes (default: 0)")
    add_device_option(p)
    add_threads_option(p)
    p.set_defaults(func=_train)

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


def _train(args: argparse.Namespace) -> int:
    apply_threads(args)
    from an8flower.eval.config import parse_model_options
    from an8flower.eval.train import train_checkpoint

    settings = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "patience") if getattr(args, k) is not None}
    report = train_checkpoint(args.model, args.out, variant=args.variant, data=args.data, size=args.size,
                              per_class=args.per_class, seed=args.seed, workers=args.workers,
                              device=args.device, settings=settings,
                              model_options=parse_model_options(args.model_option), weights=args.weights,
                              log=lambda line: print(line, file=sys.stderr))
    warning = report.pop("warning")
    if warning:
        print(f"an8flower: warning: {warning}", file=sys.stderr)
    print(json.dumps(report, indent=1))
    return 0


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


def _explainers(args: argparse.Namespace) -> int:
    import textwrap

    from an8flower import __version__
    from an8flower.baselines import default_explainers, list_explainers
    from an8flower.baselines.adapters import board_config, catalogue
    from an8flower.eval.quantus_metrics import list_quantus_metrics

    builtin = list_explainers()
    if args.board:
        print(board_config(default_explainers()), end="")
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
