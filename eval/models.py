"""Classifiers to explain, built by name.

``build_model(name, num_classes, weights=None)`` returns a ``torch.nn.Module`` mapping a float batch
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

``weights`` is a path to a local file: either a checkpoint written by
:func:`an8flower.eval.train.save_checkpoint` (a dict with ``state_dict`` and ``model_card``) or a
plain ``state_dict`` (e.g. torchvision's ImageNet weights saved locally). Nothing is ever
downloaded. :func:`load_checkpoint` rebuilds a model from a checkpoint's model card alone, and
:func:`model_hash` fingerprints a model's weights (the leaderboard's cache key).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from an8flower.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; part of the model so inputs stay in [0, 1]."""

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


def _torchvision(arch: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        # torchvision's ResNet reuses one ReLU module per block; explainers that hook ReLU modules
        # (guided backprop, deconvnet, VEBI) need one module per use and no in-place ops.
        _make_relus_distinct(net)
        return nn.Sequential(OrderedDict([("normalize", Normalize(IMAGENET_MEAN, IMAGENET_STD)), ("net", net)]))

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

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
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

#: Default layer for CAM-style explainers (Grad-CAM, Grad-CAM++, upsampled activations).
DEFAULT_CAM_LAYER: dict[str, str] = {
    "small-cnn": "features.relu4",
    "lenet": "features.relu2",
    "vgg16": "net.features.29",
    "resnet18": "net.layer4",
    "resnet50": "net.layer4",
}


def list_models() -> list[str]:
    return sorted(MODELS)


def build_model(
    name: str,
    num_classes: int,
    weights: Optional[str | os.PathLike[str]] = None,
    seed: Optional[int] = None,
) -> nn.Module:
    """Build the classifier ``name`` with ``num_classes`` outputs; load ``weights`` from a local file.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of logits.
        weights: a local checkpoint or state dict (see :func:`load_weights`); ``None`` keeps the
            random initialisation.
        seed: seeds the random initialisation without touching the global RNG state (the
            initialisation runs under :func:`torch.random.fork_rng`); ``None`` draws from the
            global RNG as ``torch.nn`` does.

    Returns:
        The model on the CPU, in training mode.

    Raises :class:`~an8flower.errors.UsageError` for an unknown name, a bad ``num_classes``, a
    missing weights file or a state dict that does not fit the architecture (the message names the
    file).
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(list_models())}") from None
    if int(num_classes) < 2:
        raise UsageError(f"num_classes must be at least 2, got {num_classes}")
    if seed is None:
        model = _instantiate(name, factory, int(num_classes))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = _instantiate(name, factory, int(num_classes))
    if weights is not None:
        load_weights(model, weights)
    return model


def _instantiate(name: str, factory: Callable[[int], nn.Module], num_classes: int) -> nn.Module:
    model = factory(num_classes)
    if name == "lenet":
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28))  # materialise the lazy layer
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
    path: str | os.PathLike[str], name: Optional[str] = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint of :func:`an8flower.eval.train.save_checkpoint` describes.

    Args:
        path: the checkpoint file (a dict with ``state_dict`` and a ``model_card``).
        name: the architecture the caller expects; a checkpoint of another architecture raises.
        map_location: device the model is moved to.

    Returns:
        ``(model, model_card)`` with the model in eval mode.

    Raises :class:`~an8flower.errors.UsageError` naming ``path`` when the file is missing,
    unreadable, carries no model card, or holds another architecture than ``name``.
    """
    path = os.fspath(path)
    ckpt = read_checkpoint(path)
    card = ckpt.get("model_card") if isinstance(ckpt, dict) else None
    if not isinstance(card, dict) or "architecture" not in card or "num_classes" not in card:
        raise UsageError(
            f"weights file {path} has no model card (architecture, num_classes); "
            "pass --model and the number of classes to load a plain state dict"
        )
    check_model_card(card, path, ckpt.get("state_dict"))
    arch = card["architecture"]
    if name is not None and arch != name:
        raise UsageError(f"weights file {path} holds a {arch!r} model, not {name!r}")
    model = build_model(arch, int(card["num_classes"]))
    _load_state(model, ckpt["state_dict"] if "state_dict" in ckpt else None, path)
    return model.to(map_location).eval(), card


#: Leading bytes of files a user may pass as ``--weights`` by mistake, and what they are.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a NumPy array (.npy)"), (b"\x1f\x8b", "a gzip file"),
)


def _file_kind(path: str) -> Optional[str]:
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

    def is_int(v: object) -> bool:
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


def read_checkpoint(path: str | os.PathLike[str]) -> object:
    """``torch.load`` a local weights file safely (``weights_only=True``); UsageError naming it on failure.

    Only tensors and plain containers are read: a file that holds other Python objects is refused
    (unpickling them could run code from the file), and the error never suggests loading it
    unsafely. PyTorch's own advice (re-run with ``weights_only=False``) is not passed on.
    """
    import pickle
    import warnings

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"weights file not found: {path}")
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


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict:
    """Load a checkpoint or a plain state dict from ``path`` into ``model``; return the checkpoint.

    Plain torchvision state dicts (keys without the ``net.`` prefix of our wrapper) are accepted.
    """
    path = os.fspath(path)
    ckpt = read_checkpoint(path)
    card = ckpt.get("model_card") if isinstance(ckpt, dict) else None
    if isinstance(card, dict) and isinstance(card.get("num_classes"), int):
        out = _num_outputs(model)
        if out is not None and out != card["num_classes"]:
            raise UsageError(
                f"weights file {path} holds a {card.get('architecture', '?')!r} model with "
                f"{card['num_classes']} classes; the model has {out} outputs"
            )
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    _load_state(model, state, path)
    return ckpt if isinstance(ckpt, dict) else {}


def _num_outputs(model: nn.Module) -> Optional[int]:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear) and not isinstance(m, nn.LazyLinear):
            last = m
    return None if last is None else last.out_features


def _load_state(model: nn.Module, state: object, path: str) -> None:
    if not isinstance(state, dict):
        raise UsageError(f"weights file {path} holds no state dict")
    own = model.state_dict()
    if not set(state) & set(own) and all(k.startswith("net.") for k in own if k not in ("normalize.mean", "normalize.std")):
        state = {f"net.{k}": v for k, v in state.items()}
        for k in ("normalize.mean", "normalize.std"):
            state.setdefault(k, own[k])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise UsageError(f"weights file {path} does not fit the model: {' '.join(first)}") from None
