"""Classifiers to explain, built by name.

``build_model(name, num_classes, weights=None, seed=None, finetune=False)`` returns a ``torch.nn.Module`` mapping a float batch
(B, C, H, W) in [0, 1] to logits (B, num_classes). Input normalisation is part of the model
(:class:`Normalize` as its first layer), so explainers and metrics all see images in [0, 1].

* ``small-cnn``: four 3x3 conv blocks (conv-BN-ReLU, max-pool after the first three; 16, 32, 64
  and 64 channels), global average pooling and a linear layer; 61 k parameters (6 classes), trains to
  >= 95% test accuracy on both an8Flower variants at 64 px in about a minute on a 2-core CPU (the
  ``--quick`` preset: 96.2% and 98.3%, 61 s of training for both). Its
  last conv block is ``features.conv4`` (the default Grad-CAM layer is the ReLU after it,
  ``features.relu4``).
* ``lenet``: a LeNet-5-style network for 28x28 grey digits (MNIST).
* ``vgg16``, ``resnet18``, ``resnet50``: the torchvision architectures (ImageNet normalisation).
* ``vit-tiny``, ``deit-tiny``: Vision Transformers for the board (:data:`PRESETS`).
* ``timm:<name>`` and ``torchvision:<builder>``: any model of those libraries, built untrained
  (``timm.create_model(name, pretrained=False, num_classes=K, **options)``,
  ``torchvision.models.get_model(builder, weights=None, num_classes=K, **options)``), options
  written ``NAME[KEY=VALUE,...]`` (``timm:deit_tiny_patch16_224[depth=6,img_size=112]``) or given
  with ``--model-option NAME.KEY=VALUE`` / a ``[model_options."NAME"]`` table. Each library is
  imported only when one of its names is resolved; a missing one is a usage error naming the
  extra (``pip install "an8flower[timm]"``). Library models are wrapped with a ``Normalize`` first
  layer (timm: the model's ``pretrained_cfg`` mean and std; torchvision: ImageNet's).

A name is resolved once into a :class:`ModelSpec` (:func:`resolve_model`): base name, library,
builder, options and code identity (the library's version); everything past the command line
takes the spec. Checkpoints record the canonical name with its options, so
:func:`load_checkpoint` rebuilds any of these models.

``weights`` is a path to a local file: a checkpoint written by
:func:`an8flower.eval.train.save_checkpoint` (a dict with ``state_dict`` and ``model_card``), a
plain ``state_dict`` (e.g. torchvision's or timm's ImageNet weights saved locally) or a
``.safetensors`` file; ``finetune=True`` starts training from such weights with a new classifier
head. Nothing is ever downloaded. :func:`load_checkpoint` rebuilds a model from a checkpoint's model card alone, and
:func:`model_hash` fingerprints a model's weights (the leaderboard's cache key).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeGuard, cast

import torch
from torch import nn

from an8flower.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; part of the model so inputs stay in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            # Broadcasting would silently turn a grey image into a 3-channel one.
            raise RuntimeError(f"expected (B, {self.mean.shape[1]}, H, W) images, got {tuple(x.shape)}")
        return (x - self.mean) / self.std


def _block(i: int, c_in: int, c_out: int, pool: bool) -> list[tuple[str, nn.Module]]:
    layers: list[tuple[str, nn.Module]] = [
        (f"conv{i}", nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)),
        (f"bn{i}", nn.BatchNorm2d(c_out)),
        (f"relu{i}", nn.ReLU()),
    ]
    if pool:
        layers.append((f"pool{i}", nn.MaxPool2d(2)))
    return layers


class SmallCNN(nn.Module):
    """A small VGG-style CNN for an8Flower: fast to train on a CPU, easy to explain.

    ``features``: conv1(w)-pool-conv2(2w)-pool-conv3(4w)-pool-conv4(4w), each conv 3x3 followed
    by batch norm and ReLU; ``classifier``: global average pooling then a linear layer; ``w`` =
    ``width`` (16 for ``small-cnn``: 16-32-64-64 channels). At 112 px the last feature map is
    14x14, at 64 px 8x8. Width 16 trains about four times faster than width 32 on a CPU at 64 px
    (measured on the 2-core development machine), and is enough for an8Flower, whose classes
    are colours of parts.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        layers: list[tuple[str, nn.Module]] = [("normalize", Normalize([0.5] * in_channels, [0.25] * in_channels))]
        layers += _block(1, in_channels, w, True)
        layers += _block(2, w, 2 * w, True)
        layers += _block(3, 2 * w, 4 * w, True)
        layers += _block(4, 4 * w, 4 * w, False)
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


class LeNet(nn.Module):
    """LeNet-5-style network for 28x28 single-channel digits (LeCun et al., 1998), ReLU and max-pool."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("normalize", Normalize([0.1307] * in_channels, [0.3081] * in_channels)),
                    ("conv1", nn.Conv2d(in_channels, 20, 5)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(20, 50, 5)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                ]
            )
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            OrderedDict([("fc1", nn.LazyLinear(500)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(500, num_classes))])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def _wrap(net: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> nn.Module:
    """``Normalize`` then ``net``, as ``nn.Sequential(normalize=..., net=...)``: images stay in [0, 1]."""
    return nn.Sequential(OrderedDict([("normalize", Normalize(mean, std)), ("net", net)]))


def _torchvision(arch: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        # torchvision's ResNet reuses one ReLU module per block; explainers that hook ReLU modules
        # (guided backprop, deconvnet, VEBI) need one module per use and no in-place ops.
        _make_relus_distinct(net)
        return _wrap(net)

    return build


def _make_relus_distinct(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    import torchvision

    for m in module.modules():
        if isinstance(m, (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck)):
            _split_block_relu(m)


def _split_block_relu(block: nn.Module) -> None:
    """Give a torchvision ResNet block one ReLU module per use (relu1, relu2[, relu3]).

    The block's ``forward`` is replaced by an equivalent one that calls the distinct modules, so
    the computation is unchanged and each ReLU can carry its own hook.
    """
    import types

    import torchvision

    bottleneck = isinstance(block, torchvision.models.resnet.Bottleneck)
    n = 3 if bottleneck else 2
    for i in range(1, n + 1):
        block.add_module(f"relu{i}", nn.ReLU())
    del block.relu

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        if bottleneck:
            out = self.relu2(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
        else:
            out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return getattr(self, f"relu{n}")(out)

    block.forward = types.MethodType(forward, block)


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "small-cnn": lambda k: SmallCNN(k),
    "lenet": lambda k: LeNet(k),
    "vgg16": _torchvision("vgg16"),
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
}

#: Default layer for CAM-style explainers (Grad-CAM, Grad-CAM++, upsampled activations). Models
#: not listed (the ViT presets, ``timm:`` and ``torchvision:`` names) use ``layer="auto"``
#: (:func:`an8flower.baselines.cam.default_cam_layer`: for a ViT, the first norm of its last block).
DEFAULT_CAM_LAYER: dict[str, str] = {
    "small-cnn": "features.relu4",
    "lenet": "features.relu2",
    "vgg16": "net.features.29",
    "resnet18": "net.layer4",
    "resnet50": "net.layer4",
}


# ------------------------------------------------------------------ libraries, presets, specs


@dataclass(frozen=True)
class ModelLibrary:
    """A library whose models are named ``<prefix>:<builder>``.

    Attributes:
        prefix: ``timm`` or ``torchvision``.
        distribution: its name on PyPI (for the version and the error message).
        extra: the an8flower extra that installs it (``None``: a core dependency).
    """

    prefix: str
    distribution: str
    extra: str | None

    def module(self) -> ModuleType:
        """The imported library; UsageError naming the extra when it is not installed."""
        try:
            return importlib.import_module(self.prefix)
        except ImportError as exc:
            how = f'pip install "an8flower[{self.extra}]"' if self.extra else f"pip install {self.distribution}"
            raise UsageError(f"{self.prefix}: models need the {self.distribution} library ({exc}); install it with {how}") from None

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return None

    def builders(self) -> list[str]:
        """Every classifier the library builds (UsageError when it is not installed): timm's models,
        torchvision's classification builders (``torchvision.models``, not its detection,
        segmentation, video or optical-flow ones)."""
        lib = self.module()
        return sorted(lib.list_models()) if self.prefix == "timm" else sorted(lib.models.list_models(module=lib.models))

    def has(self, builder: str) -> bool:
        if self.prefix == "timm":
            return bool(self.module().is_model(builder))
        return builder in self.builders()


#: The model libraries, by name prefix; each is imported only when one of its names is resolved.
MODEL_LIBRARIES: dict[str, ModelLibrary] = {
    "timm": ModelLibrary("timm", "timm", "timm"),
    "torchvision": ModelLibrary("torchvision", "torchvision", None),
}

#: Option names never passed to a library's builder: they would download weights, read a file or
#: make the builder return something else than a classifier with ``num_classes`` logits.
RESERVED_OPTIONS: frozenset[str] = frozenset({
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "checkpoint_path", "cache_dir",
    "weights", "weights_backbone", "progress", "num_classes", "features_only", "out_indices", "scriptable",
    "exportable", "no_jit",
})
#: Most options a model name may carry.
MAX_OPTIONS = 32
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
# Builder names and string values: letters, digits and ``_.-+``, so that a name can be part of a
# file name (the runner's cache of trained models) and never reaches a path or code.
_WORD = re.compile(r"[A-Za-z0-9_.+-]{1,128}\Z")


@dataclass(frozen=True)
class Preset:
    """A named model of the package built with a library: ``library`` builder ``builder`` with
    ``defaults`` (any of them, and any other option of the builder, can be overridden)."""

    library: str
    builder: str
    defaults: dict[str, Any]
    summary: str


#: Named ViT presets for the board (trained from scratch on an8Flower at 112 px).
#:
#: * ``vit-tiny``: torchvision's ``VisionTransformer`` (6 blocks, width 192, 16 px patches, 3 heads,
#:   MLP 768, 2.8 M parameters): every transformer explainer applies, LXT's AttnLRP included (LXT
#:   patches torchvision's ``vision_transformer`` module only). Needs no extra.
#: * ``deit-tiny``: timm's ``deit_tiny_patch16_224`` with ``depth=6`` and ``img_size=112`` (the same
#:   shape as ``vit-tiny``): rollout, attention relevance and the CAMs apply, LXT does not. Needs the
#:   ``timm`` extra.
PRESETS: dict[str, Preset] = {
    "vit-tiny": Preset("torchvision", "VisionTransformer",
                       {"image_size": 112, "patch_size": 16, "num_layers": 6, "num_heads": 3, "hidden_dim": 192,
                        "mlp_dim": 768},
                       "torchvision VisionTransformer, 6 blocks x 192, patch 16, 3 heads, 112 px (every ViT explainer)"),
    "deit-tiny": Preset("timm", "deit_tiny_patch16_224", {"depth": 6, "img_size": 112},
                        "timm deit_tiny_patch16_224 with depth=6, img_size=112 (all ViT explainers but lxt:)"),
}


def _check_options(owner: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """JSON scalars (or lists of them) under identifier keys, no reserved key, strings of safe characters."""
    if len(options) > MAX_OPTIONS:
        raise UsageError(f"model {owner!r}: at most {MAX_OPTIONS} options, got {len(options)}")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str) or not _KEY.match(key):
            raise UsageError(f"model {owner!r}: option names are identifiers, got {key!r}")
        if key in RESERVED_OPTIONS:
            raise UsageError(f"model {owner!r}: option {key!r} is not accepted (nothing is downloaded or read by a "
                             "builder; pass local weights with --weights)")
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > MAX_OPTIONS:
            raise UsageError(f"model {owner!r}: option {key} has more than {MAX_OPTIONS} items")
        for v in items:
            if isinstance(v, float) and not math.isfinite(v):
                raise UsageError(f"model {owner!r}: option {key} must be finite, got {v!r}")
            if isinstance(v, str) and not _WORD.match(v):
                raise UsageError(f"model {owner!r}: option {key}={v!r}: string values are words of letters, digits "
                                 "and _.+-")
            if not isinstance(v, (type(None), bool, int, float, str)):
                raise UsageError(f"model {owner!r}: option {key} must be a number, a boolean, a word or a list of "
                                 f"them, got {v!r}")
        out[key] = list(value) if isinstance(value, list) else value
    return out


@dataclass(frozen=True)
class ModelSpec:
    """A model name resolved once: what it builds, with which options, and the code that builds it.

    Attributes:
        base: the name without options (``small-cnn``, ``vit-tiny``, ``timm:deit_tiny_patch16_224``).
        library: ``an8flower`` (the package's own networks), ``timm`` or ``torchvision``.
        builder: the library's builder (``deit_tiny_patch16_224``, ``vit_b_16``,
            ``VisionTransformer`` for ``vit-tiny``); the name itself for the package's networks.
        given: the options the user gave (sorted ``(key, value)`` pairs).
        defaults: a preset's options (sorted pairs; empty otherwise).
    """

    base: str
    library: str
    builder: str
    given: tuple[tuple[str, Any], ...] = ()
    defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def options(self) -> dict[str, Any]:
        """Every option the builder receives: the preset's defaults, then the given ones."""
        return {**dict(self.defaults), **dict(self.given)}

    @property
    def name(self) -> str:
        """The canonical name: ``base`` or ``base[key=value,...]`` with the given options, sorted,
        values as JSON; :func:`resolve_model` of it gives this spec back."""
        if not self.given:
            return self.base
        items = ",".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in self.given)
        return f"{self.base}[{items}]"

    def identity(self) -> dict[str, Any]:
        """The code identity (JSON): name, library and its installed version, builder, every option.

        Recorded in model cards and in the runner's key of a model it trains, so that another
        library version or other options never reuse a trained model.
        """
        if self.library == "an8flower":
            from an8flower import __version__

            version: str | None = __version__
        else:
            version = MODEL_LIBRARIES[self.library].version()
        return {"name": self.name, "library": self.library, "version": version, "builder": self.builder,
                "options": self.options}

    def _make(self, num_classes: int) -> nn.Module:
        if self.library == "an8flower" and self.base in MODELS:
            model = MODELS[self.base](num_classes)
            if self.base == "lenet":
                with torch.no_grad():
                    model(torch.zeros(1, 1, 28, 28))  # materialise the lazy layer
            return model
        lib = MODEL_LIBRARIES[self.library].module()
        options = self.options
        try:
            if self.library == "timm":
                net = lib.create_model(self.builder, pretrained=False, num_classes=num_classes, **options)
                cfg = getattr(net, "pretrained_cfg", None) or {}
                return _wrap(net, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
            if self.builder == "VisionTransformer":
                net = lib.models.VisionTransformer(num_classes=num_classes, **options)
            else:
                net = lib.models.get_model(self.builder, weights=None, num_classes=num_classes, **options)
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"model {self.name!r}: {self.library} could not build it with options "
                             f"{options}: {reason}") from None
        _make_relus_distinct(net)
        return _wrap(net)

    def build(self, num_classes: int, seed: int | None = None) -> nn.Module:
        """The model with ``num_classes`` logits, on the CPU, in training mode (see :func:`build_model`)."""
        if isinstance(num_classes, bool) or int(num_classes) < 2:
            raise UsageError(f"num_classes must be at least 2, got {num_classes}")
        if seed is None:
            return self._make(int(num_classes))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self._make(int(num_classes))

    def skeleton(self, num_classes: int = 2) -> nn.Module:
        """The model built on the ``meta`` device: its modules and tensor shapes, no memory used."""
        with torch.device("meta"):
            return self._make(int(num_classes))

    def shapes(self, num_classes: int) -> dict[str, tuple[int, ...]]:
        """The state dict's tensor shapes (from :meth:`skeleton`)."""
        return {k: tuple(v.shape) for k, v in self.skeleton(num_classes).state_dict().items()}

    def accepts(self, other: ModelSpec) -> bool:
        """Whether a checkpoint of ``other`` is a model of this name: same base and the options given
        here are ``other``'s (a name given without options accepts any options)."""
        theirs = other.options
        return other.base == self.base and all(theirs.get(k) == v for k, v in self.given)


def resolve_model(name: str | ModelSpec, options: Mapping[str, Any] | None = None) -> ModelSpec:
    """Resolve a model name, with optional ``options``, to a :class:`ModelSpec`.

    Names: the package's networks (:data:`MODELS`), the presets (:data:`PRESETS`),
    ``timm:<model>`` (any ``timm.list_models()`` name, built with ``timm.create_model(model,
    pretrained=False, num_classes=K, **options)``) and ``torchvision:<builder>`` (any classifier
    of ``torchvision.models.list_models(module=torchvision.models)``, built with ``weights=None``). Options are written
    ``NAME[KEY=VALUE,...]`` (values as JSON, as explainer variants) and/or passed as ``options``
    (which win); they are the builder's keyword arguments (``timm:vit_small_patch16_224[depth=6,
    img_size=112]``). The package's own networks take none.

    Raises:
        UsageError: an unknown name, a library that is not installed (naming the extra), a model the
            library does not have, options on a network that takes none, a reserved option
            (:data:`RESERVED_OPTIONS`) or a value that is not a JSON scalar or word.
    """
    if isinstance(name, ModelSpec):
        if not options:
            return name
        return resolve_model(name.base, {**dict(name.given), **dict(options)})
    if not isinstance(name, str) or not name:
        raise UsageError(f"a model name is a non-empty string, got {name!r}")
    from an8flower.baselines.spec import split_explainer_name

    try:
        base, given = split_explainer_name(name)
    except UsageError:
        raise UsageError(f"model {name!r}: options are written NAME[KEY=VALUE,...]") from None
    given = _check_options(name, {**given, **dict(options or {})})
    prefix, sep, builder = base.partition(":")
    if sep:
        if prefix not in MODEL_LIBRARIES:
            raise UsageError(f"unknown model {name!r}: library prefixes are {', '.join(p + ':' for p in MODEL_LIBRARIES)}")
        lib = MODEL_LIBRARIES[prefix]
        if not _WORD.match(builder) or not lib.has(builder):
            raise UsageError(f"{lib.distribution} {lib.version()} has no model {builder!r} (`an8flower models` lists "
                             "what is available)")
        return ModelSpec(base, prefix, builder, tuple(sorted(given.items())))
    if base in PRESETS:
        preset = PRESETS[base]
        MODEL_LIBRARIES[preset.library].module()
        return ModelSpec(base, preset.library, preset.builder, tuple(sorted(given.items())),
                         tuple(sorted(preset.defaults.items())))
    if base in MODELS:
        if given:
            raise UsageError(f"model {base!r} takes no options, got {', '.join(given)}")
        return ModelSpec(base, "an8flower", base)
    raise UsageError(f"unknown model {name!r}; choose from {', '.join(list_models(presets=True))}, or timm:<name>, "
                     "torchvision:<name> (`an8flower models` lists them)")


def fold_model_options(names: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``names`` with the options given per name (by its name without options) folded in: canonical
    names ``NAME[KEY=VALUE,...]`` (:attr:`ModelSpec.name`).

    Raises:
        UsageError: options for a model that is not in ``names``, or options the model refuses.
    """
    bases = {resolve_model(n).base: n for n in names}
    unknown = sorted(set(options) - set(bases) - set(names))
    if unknown:
        raise UsageError(f"model options for {unknown[0]!r}, which is not among the models ({', '.join(names)})")
    return [resolve_model(n, {**options.get(resolve_model(n).base, {}), **options.get(n, {})}).name for n in names]


def list_models(presets: bool = False, libraries: bool = False) -> list[str]:
    """Model names, sorted: the package's own networks (:data:`MODELS`); with ``presets`` also the
    named presets (:data:`PRESETS`); with ``libraries`` also every ``torchvision:`` and (when timm
    is installed) ``timm:`` name. :func:`model_catalogue` says which libraries are missing."""
    names = sorted(MODELS) + (sorted(PRESETS) if presets else [])
    if libraries:
        for lib in MODEL_LIBRARIES.values():
            try:
                names += [f"{lib.prefix}:{b}" for b in lib.builders()]
            except UsageError:
                continue
    return names


def model_catalogue() -> dict[str, Any]:
    """What ``an8flower models`` prints: ``ours`` (name -> ``DEFAULT_CAM_LAYER`` or None), ``presets``
    (name -> summary, library, available) and ``libraries`` (one entry per prefix: distribution,
    version, install command, available, number of models)."""
    libraries = []
    for lib in MODEL_LIBRARIES.values():
        entry: dict[str, Any] = {"prefix": lib.prefix, "distribution": lib.distribution, "version": lib.version(),
                                 "install": f'pip install "an8flower[{lib.extra}]"' if lib.extra else None,
                                 "available": False, "models": 0}
        try:
            entry.update(available=True, models=len(lib.builders()))
        except UsageError:
            pass
        libraries.append(entry)
    available = {e["prefix"]: e["available"] for e in libraries}
    presets = {n: {"summary": p.summary, "library": p.library, "available": available[p.library]}
               for n, p in sorted(PRESETS.items())}
    return {"ours": {n: DEFAULT_CAM_LAYER.get(n) for n in sorted(MODELS)}, "presets": presets, "libraries": libraries}


def build_model(
    name: str | ModelSpec,
    num_classes: int,
    weights: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    finetune: bool = False,
) -> nn.Module:
    """Build the classifier ``name`` with ``num_classes`` outputs; load ``weights`` from a local file.

    Args:
        name: a name :func:`resolve_model` accepts (``small-cnn``, ``vit-tiny``,
            ``timm:deit_tiny_patch16_224[depth=6]``, ``torchvision:resnet34``) or a :class:`ModelSpec`.
        num_classes: number of logits.
        weights: a local checkpoint, state dict or ``.safetensors`` file (see :func:`load_weights`);
            ``None`` keeps the random initialisation.
        seed: seeds the random initialisation without touching the global RNG state (the
            initialisation runs under :func:`torch.random.fork_rng`); ``None`` draws from the
            global RNG as ``torch.nn`` does.
        finetune: ``weights`` are a starting point (e.g. ImageNet weights saved locally): the
            classifier head is kept at its initialisation when its shape differs from the file's.

    Returns:
        The model on the CPU, in training mode.

    Raises :class:`~an8flower.errors.UsageError` for an unknown name, a bad ``num_classes``, a
    missing weights file or a state dict that does not fit the architecture (the message names the
    file).
    """
    spec = resolve_model(name)
    model = spec.build(num_classes, seed=seed)
    if weights is not None:
        load_weights(model, weights, finetune=finetune)
    return model


def model_hash(model: nn.Module) -> str:
    """SHA-256 of a model's state dict: parameter and buffer names, dtypes, shapes and bytes.

    Two models with equal weights (whatever their device) have the same hash; any changed weight
    changes it. Used as the model part of the leaderboard's cache keys.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_checkpoint(
    path: str | os.PathLike[str], name: str | ModelSpec | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint of :func:`an8flower.eval.train.save_checkpoint` describes.

    The card's ``architecture`` is the model's canonical name with its options
    (:attr:`ModelSpec.name`, e.g. ``timm:deit_tiny_patch16_224[depth=6,img_size=112]``), so a
    ``timm:`` or ``torchvision:`` model is rebuilt with the options it was trained with. The card is
    untrusted: its name and options are checked as a user's are (:func:`resolve_model`), and the
    model it describes is first built on the ``meta`` device (no memory) and compared with the
    file's tensors, names and shapes: a card whose options or class count would build another or a
    larger model than the file holds is refused before anything is allocated.

    Args:
        path: the checkpoint file (a dict with ``state_dict`` and a ``model_card``).
        name: the model the caller expects (a name or :class:`ModelSpec`); a checkpoint of another
            model, or with other values of the options ``name`` gives, raises.
        map_location: device the model is moved to.

    Returns:
        ``(model, model_card)`` with the model in eval mode.

    Raises :class:`~an8flower.errors.UsageError` naming ``path`` when the file is missing,
    unreadable, carries no model card, holds another model than ``name``, or its card does not
    describe its tensors.
    """
    path = os.fspath(path)
    ckpt = read_checkpoint(path)
    card = ckpt.get("model_card") if isinstance(ckpt, dict) else None
    if (not isinstance(ckpt, dict) or not isinstance(card, dict)
            or "architecture" not in card or "num_classes" not in card):
        raise UsageError(
            f"weights file {path} has no model card (architecture, num_classes); "
            "pass --model and the number of classes to load a plain state dict"
        )
    check_model_card(card, path, ckpt.get("state_dict"))
    arch, k = card["architecture"], card["num_classes"]
    if not isinstance(arch, str) or isinstance(k, bool) or not isinstance(k, int):
        raise UsageError(f"weights file {path}: its model card's architecture and num_classes are not a name and an integer")
    try:
        spec = resolve_model(arch)
    except UsageError as exc:
        raise UsageError(f"weights file {path}: its model card names a model that cannot be built here: {exc}") from None
    if name is not None:
        wanted = resolve_model(name)
        if not wanted.accepts(spec):
            raise UsageError(f"weights file {path} holds a {arch!r} model, not {wanted.name!r}")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UsageError(f"weights file {path} holds no state dict")
    _check_card_fits(spec, k, state, path)
    model = spec.build(k)
    _load_state(model, state, path)
    return model.to(map_location).eval(), card


#: Leading bytes of files a user may pass as ``--weights`` by mistake, and what they are.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a NumPy array (.npy)"), (b"\x1f\x8b", "a gzip file"),
)


def _file_kind(path: str) -> str | None:
    """What ``path`` is, when it is not a pickle at all (a pickle starts with the PROTO opcode 0x80)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    if head[:1] == b"\x80":
        return None
    return "neither a pickle nor a zip archive"


#: Largest number of classes a model card may give (ImageNet-21k has 21,841).
MAX_CARD_CLASSES = 100_000
#: Largest input side (pixels) a model card may give.
MAX_CARD_SIDE = 4096


def check_model_card(card: dict, path: str, state_dict: object = None) -> None:
    """Check every number of a checkpoint's model card before anything is built from it.

    ``architecture`` a name; ``num_classes`` an integer in ``[2, MAX_CARD_CLASSES]`` that the file
    can hold (some tensor of ``state_dict`` has at least ``num_classes`` rows: the last layer's);
    ``input_size`` (if given) ``[C, H, W]`` with ``C`` 1 or 3 and ``1 <= H, W <= MAX_CARD_SIDE``;
    ``classes`` (if given) ``num_classes`` strings.

    Raises:
        UsageError: naming ``path`` and the field.
    """

    def bad(field: str, why: str) -> UsageError:
        return UsageError(f"weights file {path}: model card field {field!r} {why}, got {card.get(field)!r:.80}")

    def is_int(v: object) -> TypeGuard[int]:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(card.get("architecture"), str) or not card["architecture"]:
        raise bad("architecture", "must be a model name")
    k = card.get("num_classes")
    if not is_int(k) or not 2 <= k <= MAX_CARD_CLASSES:
        raise bad("num_classes", f"must be an integer from 2 to {MAX_CARD_CLASSES:,}")
    if isinstance(state_dict, dict):
        rows = max((t.shape[0] for t in state_dict.values() if isinstance(t, torch.Tensor) and t.dim() > 0), default=0)
        if k > rows:
            raise bad("num_classes", f"is more than the file holds (its largest tensor has {rows} rows)")
    size = card.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 3 and all(is_int(v) for v in size)
                                 and size[0] in (1, 3) and all(1 <= v <= MAX_CARD_SIDE for v in size[1:])):
        raise bad("input_size", f"must be [channels (1 or 3), height, width] with sides from 1 to {MAX_CARD_SIDE}")
    classes = card.get("classes")
    if classes is not None and not (isinstance(classes, list) and len(classes) == k
                                    and all(isinstance(c, str) for c in classes)):
        raise bad("classes", "must be num_classes names")


def _check_card_fits(spec: ModelSpec, num_classes: int, state: dict, path: str) -> None:
    """UsageError unless ``spec`` with ``num_classes`` logits has exactly ``state``'s tensor names and shapes."""
    if num_classes < 2:
        raise UsageError(f"weights file {path}: its model card gives num_classes = {num_classes}")
    try:
        expected = spec.shapes(num_classes)
    except UsageError as exc:
        raise UsageError(f"weights file {path}: {exc}") from None
    held = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    for key in sorted(set(expected) | set(held)):
        if expected.get(key) != held.get(key):
            raise UsageError(f"weights file {path}: its model card describes a {spec.name!r} model with "
                             f"{num_classes} classes whose tensor {key!r} has shape {expected.get(key)}, but the file "
                             f"holds {held.get(key)}")


def read_checkpoint(path: str | os.PathLike[str]) -> object:
    """``torch.load`` a local weights file safely (``weights_only=True``); UsageError naming it on failure.

    A ``.safetensors`` file (timm's and Hugging Face's format: tensors only, by construction) is read
    with ``safetensors.torch.load_file`` and returned as a plain state dict.

    Only tensors and plain containers are read: a file that holds other Python objects is refused
    (unpickling them could run code from the file), and the error never suggests loading it
    unsafely. PyTorch's own advice (re-run with ``weights_only=False``) is not passed on.
    """
    import pickle
    import warnings

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler's protocol warnings
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        kind = _file_kind(path)
        if kind is not None:
            raise UsageError(f"weights file {path} is not an an8flower or PyTorch checkpoint: it is {kind}") from None
        raise UsageError(
            f"weights file {path} is not an an8flower or PyTorch checkpoint of tensors: it holds other Python "
            "objects, which an8flower never unpickles (that could run code from the file)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise UsageError(
            f"weights file {path} is not an an8flower or PyTorch checkpoint (torch.load could not read it: "
            f"{type(exc).__name__})"
        ) from None


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UsageError(f"weights file {path}: reading .safetensors needs the safetensors library "
                         '(pip install safetensors; the timm extra installs it)') from None
    try:
        return dict(load_file(path, device="cpu"))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise UsageError(f"weights file {path} is not a safetensors file ({type(exc).__name__})") from None


def load_weights(model: nn.Module, path: str | os.PathLike[str], finetune: bool = False) -> dict:
    """Load a checkpoint, a plain state dict or a ``.safetensors`` file from ``path`` into ``model``;
    return the checkpoint (``{}`` for a plain state dict).

    Plain torchvision and timm state dicts (keys without the ``net.`` prefix of our wrapper) are
    accepted. With ``finetune``, the tensors of the classifier head (the last ``nn.Linear``) whose
    shape differs from the file's (ImageNet's 1000 classes) keep their initialisation; every other
    tensor must fit.
    """
    path = os.fspath(path)
    ckpt = read_checkpoint(path)
    card = ckpt.get("model_card") if isinstance(ckpt, dict) else None
    if isinstance(card, dict) and isinstance(card.get("num_classes"), int) and not finetune:
        out = _num_outputs(model)
        if out is not None and out != card["num_classes"]:
            raise UsageError(
                f"weights file {path} holds a {card.get('architecture', '?')!r} model with "
                f"{card['num_classes']} classes; the model has {out} outputs"
            )
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    _load_state(model, state, path, keep=_head_keys(model) if finetune else ())
    return ckpt if isinstance(ckpt, dict) else {}


def _last_linear(model: nn.Module) -> str | None:
    """Module path of the last ``nn.Linear`` (the classifier head of every model here)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not isinstance(m, nn.LazyLinear):
            last = name
    return last


def _head_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys of the classifier head."""
    last = _last_linear(model)
    if last is None:
        return ()
    return tuple(f"{last}.{p}" for p, _ in model.get_submodule(last).named_parameters(recurse=False))


def _num_outputs(model: nn.Module) -> int | None:
    last = _last_linear(model)
    return None if last is None else int(cast(nn.Linear, model.get_submodule(last)).out_features)


def _load_state(model: nn.Module, state: object, path: str, keep: Sequence[str] = ()) -> None:
    """Load ``state`` into ``model`` strictly; the keys in ``keep`` whose shapes differ keep the model's tensors."""
    if not isinstance(state, dict):
        raise UsageError(f"weights file {path} holds no state dict")
    own = model.state_dict()
    if not set(state) & set(own) and all(k.startswith("net.") for k in own if k not in ("normalize.mean", "normalize.std")):
        state = {f"net.{k}": v for k, v in state.items()}
        for k in ("normalize.mean", "normalize.std"):
            state.setdefault(k, own[k])
    for k in keep:
        held = state.get(k)
        if not isinstance(held, torch.Tensor) or held.shape != own[k].shape:
            state = {**state, k: own[k]}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise UsageError(f"weights file {path} does not fit the model: {' '.join(first)}") from None
