"""The interpretation commands: ``interpret``, ``explain``, ``reproduce``.

Parsers only: ``interpret`` calls :func:`an8flower.eval.interpret.interpret_checkpoint`,
``explain`` :func:`an8flower.eval.interpret.explain_image`, ``reproduce``
:func:`an8flower.eval.reproduce.run_reproduction`. Building the parsers imports
:mod:`an8flower.eval.reproduce` for its settings' defaults; it imports no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from an8flower.cli.common import (
    add_device_option,
    add_import_option,
    add_threads_option,
    apply_imports,
    apply_threads,
    command_line,
    positive,
)
from an8flower.defaults import DEFAULT_SEED, INTERPRET_DEFAULTS
from an8flower.errors import UsageError
from an8flower.eval.config import parse_value
from an8flower.eval.reproduce import TINY, ReproSettings, run_reproduction

#: ``reproduce`` flags that set the ReproSettings field of the same name.
_REPRO_FIELDS = ("size", "per_class", "max_images", "seed", "model_seeds", "draws", "sheets", "top_n",
                 "spectral_images", "batch_size", "mnist", "mnist_train", "mnist_test", "imagenet", "imagenet_weights",
                 "imagenet_model", "imagenet_train_per_class", "device")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``interpret``, ``explain`` and ``reproduce`` to the CLI."""
    d = INTERPRET_DEFAULTS
    p = subparsers.add_parser(
        "interpret",
        help="fit VEBI on a trained classifier and write each class's relevant features as PNG sheets",
        description="Fit VEBI (Oramas et al., ICLR 2019) on the training split a checkpoint was trained on: select "
        "each class's relevant internal features with the mu-lasso, and draw for each the average visualisation "
        "over the training images that activate it most. Writes vebi.npz (for `an8flower explain --vebi` and the "
        "leaderboard), interpretation.json and class_<i>_<name>.png.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint written by `an8flower train` or the leaderboard")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for vebi.npz, interpretation.json and the sheets")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="a generated an8Flower folder (default: what the model card names)")
    src.add_argument("--variant", metavar="VARIANT", help="variant or spec file to render in memory (default: the model card's)")
    p.add_argument("--size", type=int, metavar="PX", help="image side when rendering (default: the model's input size)")
    p.add_argument("--per-class", type=int, metavar="N", help="samples per class when rendering (default: the model card's)")
    p.add_argument("--seed", type=int, metavar="S", help="dataset seed when rendering (default: the model card's)")
    p.add_argument("--mu", type=float, default=d["mu"], metavar="MU",
                   help=f"L1 radius of the lasso (default: {d['mu']:g}, the paper's an8Flower value)")
    p.add_argument("--k", type=int, default=d["k"], metavar="N", help=f"features per explanation stored with the state (default: {d['k']})")
    p.add_argument("--top-n", type=int, default=d["top_n"], metavar="N",
                   help=f"training images averaged per feature (default: {d['top_n']})")
    p.add_argument("--labels", choices=["ground_truth", "predicted"], default="ground_truth",
                   help="lasso targets (default: ground_truth)")
    p.add_argument("--layer", action="append", metavar="NAME",
                   help="module path of a feature layer (repeatable; default: every ReLU and pooling output)")
    p.add_argument("--no-stride-fix", action="store_true", help="visualise without the stride fix")
    p.add_argument("--max-features", type=int, default=d["max_features"], metavar="N",
                   help=f"features drawn per class sheet (default: {d['max_features']})")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], metavar="N",
                   help=f"images per forward pass (default: {d['batch_size']})")
    add_device_option(p)
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_interpret)

    p = subparsers.add_parser(
        "explain",
        help="explain one image with one explainer and write the heatmap over it as a PNG",
        description="Run an explainer on one image (resized to the model's input size) and write a PNG: the image, "
        "the heatmap over it and, for VEBI, each of its top-k feature maps with the feature's name.",
    )
    p.add_argument("image", metavar="IMAGE", help="an image file (PNG, JPEG, ...)")
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint with a model card")
    p.add_argument("--out", required=True, metavar="PNG", help="the figure to write")
    p.add_argument("--explainer", default=d["explainer"], metavar="NAME",
                   help=f"registered explainer (default: {d['explainer']}, which needs --vebi; without a fitted VEBI "
                        "state name a fit-free one, e.g. gradcam)")
    add_import_option(p)
    p.add_argument("--vebi", metavar="NPZ", help="VEBI state from `an8flower interpret` (needed for --explainer vebi)")
    p.add_argument("--target", type=int, metavar="C", help="class to explain (default: the predicted class)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="explainer option, VALUE parsed as JSON when it can be (repeatable)")
    add_device_option(p)
    add_threads_option(p)
    p.set_defaults(func=_explain)

    _register_reproduce(subparsers)


def _register_reproduce(subparsers: argparse._SubParsersAction) -> None:
    d = ReproSettings()
    p = subparsers.add_parser(
        "reproduce",
        help="run the paper's experiments (VEBI vs baselines, ablations, feature removal, stride fix) into reproduction.md",
        description="Run Oramas et al.'s protocol on an8Flower with the leaderboard runner: VEBI against upsampled "
        "activations, deconvnet, guided backprop and Grad-CAM on the IoU-vs-threshold curves, VEBI's ablations "
        "(stride fix, layer set, k, mu, labels) as rows of the same board, feature removal, the stride-fix "
        "artefact's spectral share, and interpretation sheets; optionally MNIST and ILSVRC12 from local files. "
        "Writes DIR/reproduction.md, reproduction.json, reproduction_files/ and the board in DIR/board.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--tiny", action="store_true",
                   help=f"the test preset: {TINY['variants'][0]} at {TINY['size']} px, {TINY['per_class']} images per "
                        f"class, {TINY['train']['epochs']} epochs")
    p.add_argument("--variant", action="append", metavar="VARIANT",
                   help=f"an8Flower variant (repeatable; default: {', '.join(d.variants)})")
    p.add_argument("--model", action="append", metavar="NAME", help=f"classifier (repeatable; default: {', '.join(d.models)})")
    p.add_argument("--size", type=int, metavar="PX", help=f"image side (default: {d.size})")
    p.add_argument("--per-class", type=int, metavar="N", help=f"images per class, split 70/10/20 (default: {d.per_class})")
    p.add_argument("--max-images", type=int, metavar="N", help=f"scored test images per variant and model (default: {d.max_images})")
    p.add_argument("--epochs", type=int, metavar="N", help=f"maximum training epochs (default: {d.train['epochs']})")
    p.add_argument("--seed", type=int, metavar="S", help=f"dataset, model and explainer seed (default: {DEFAULT_SEED})")
    p.add_argument("--model-seeds", type=int, metavar="N", help="classifiers per model, seeds S, S+1, ... (default: 1)")
    p.add_argument("--draws", type=int, metavar="N", help=f"random draws per class in feature removal (default: {d.draws})")
    p.add_argument("--sheets", type=int, metavar="N",
                   help=f"classes with interpretation sheets per variant and model (default: {d.sheets})")
    p.add_argument("--top-n", type=int, metavar="N", help=f"training images averaged per sheet feature (default: {d.top_n})")
    p.add_argument("--spectral-images", type=int, metavar="N",
                   help=f"test images of the stride-fix table (default: {d.spectral_images})")
    p.add_argument("--batch-size", type=int, metavar="N", help=f"images per explainer call (default: {d.batch_size})")
    p.add_argument("--mnist", metavar="DIR", help="a local MNIST (IDX files): train LeNet, fit VEBI, mask-free metrics")
    p.add_argument("--mnist-train", type=int, metavar="N", help=f"first MNIST training images used (default: {d.mnist_train})")
    p.add_argument("--mnist-test", type=int, metavar="N", help=f"first MNIST test images used (default: {d.mnist_test})")
    p.add_argument("--imagenet", metavar="DIR",
                   help="an ILSVRC12 root: pointing games on the validation boxes (needs --imagenet-weights)")
    p.add_argument("--imagenet-weights", metavar="FILE",
                   help="local pretrained weights of --imagenet-model for --imagenet (a state dict; nothing is downloaded)")
    p.add_argument("--imagenet-model", metavar="NAME", help=f"the ILSVRC12 classifier (default: {d.imagenet_model})")
    p.add_argument("--imagenet-train-per-class", type=int, metavar="N",
                   help=f"ILSVRC12 training images per class for VEBI's fit (default: {d.imagenet_train_per_class})")
    add_device_option(p)
    add_threads_option(p)
    p.add_argument("--no-plots", action="store_true", help="skip the board's PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.set_defaults(func=_reproduce)


def _interpret(args: argparse.Namespace) -> int:
    positive([("--k", args.k, 1), ("--top-n", args.top_n, 1), ("--max-features", args.max_features, 1),
              ("--batch-size", args.batch_size, 1)])
    apply_threads(args)
    from an8flower.eval.interpret import interpret_checkpoint

    result = interpret_checkpoint(
        args.weights, args.out, data=args.data, variant=args.variant, size=args.size, per_class=args.per_class,
        seed=args.seed, mu=args.mu, k=args.k, top_n=args.top_n, labels=args.labels, layers=args.layer,
        stride_fix=not args.no_stride_fix, max_features=args.max_features, batch_size=args.batch_size,
        device=args.device, progress=False if args.quiet else None)
    fit = result["fit_info"]
    print(f"vebi fitted on {result['dataset']['train_images']} {result['dataset']['variant']} training images: "
          f"{fit.get('n_features')} features, relevant per class {fit.get('relevant_per_class', [])}; wrote "
          f"{len(result['sheets'])} sheets, vebi.npz and interpretation.json to {args.out}", file=sys.stderr)
    return 0


def _explain(args: argparse.Namespace) -> int:
    apply_imports(args)
    options: dict[str, Any] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = parse_value(value)
    apply_threads(args)
    from an8flower.eval.interpret import explain_image

    report = explain_image(args.image, args.weights, args.out, explainer=args.explainer, vebi=args.vebi,
                           target=args.target, options=options, device=args.device)
    print(json.dumps(report, indent=1))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {"out": args.out}
    if args.tiny:
        settings.update(TINY, tiny=True)
    settings.update({key: getattr(args, key) for key in _REPRO_FIELDS if getattr(args, key) is not None})
    if args.variant:
        settings["variants"] = list(args.variant)
    if args.model:
        settings["models"] = list(args.model)
    if args.epochs is not None:
        settings["train"] = {**settings.get("train", ReproSettings().train), "epochs": args.epochs}
    if args.no_plots:
        settings["plots"] = False
    s = ReproSettings(**settings)
    apply_threads(args)
    from an8flower.eval.results_folder import removed_on_failure

    with removed_on_failure(s.out):
        result = run_reproduction(s, command=command_line(), progress=False if args.quiet else None)
    if not args.quiet:
        print(f"wrote {os.path.join(s.out, 'reproduction.md')} ({result['timings']['total']:.0f} s)", file=sys.stderr)
    return 0
