"""The explainer protocol, option and input checks, channel reductions and the hook scope.

An explainer is called as ``explainer(model, images, targets) -> heatmaps``:

* ``model``: a ``torch.nn.Module`` in eval mode, mapping (B, 3, H, W) to logits (B, K);
* ``images``: float tensor (B, C, H, W) on the model's device (moved there if not);
* ``targets``: long tensor (B,) of class indices in ``[0, K)``, or ``None`` for the predicted class;
* returns float32 heatmaps (B, H, W) at the input resolution, on the model's device, larger = more
  relevant, detached (no autograd graph kept).

No hook outlives a call: explainers register module hooks only inside :class:`HookScope`, which
removes them on exit, exceptions included. Explainers that need fitting (VEBI) also implement
``fit(model, loader)``, ``save(path)`` and ``load(path)``.

Explainers are registered and looked up by name in :mod:`an8flower.baselines.registry`; this
module knows no explainer and no registry, so every explainer and adapter module can import it.
"""

from __future__ import annotations

import inspect
import types
import typing
import weakref
from collections import abc
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from an8flower.errors import UsageError

__all__ = [
    "Explainer",
    "HookScope",
    "check_options",
    "complete_options",
    "check_inputs",
    "model_device",
    "CHANNEL_REDUCTIONS",
    "reduce_channels",
    "SelectOutput",
    "GroundTruth",
]

def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON-like ``value`` (None, bool, number, string, list, dict) can be of type ``hint``.

    Types this check cannot judge (type variables, unresolved names) accept anything; a class
    accepts its instances only (a JSON value is never a tensor or a module).
    """
    if hint is Any or isinstance(hint, (str, typing.TypeVar)):
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is abc.Callable or hint is abc.Callable:
        return callable(value)
    if isinstance(origin, type) and issubclass(origin, abc.Mapping):
        return isinstance(value, dict)
    if isinstance(origin, type) and issubclass(origin, (abc.Sequence, abc.Set)) and origin is not str:
        if not isinstance(value, (list, tuple)):
            return False
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and items and len(items) == len(args):  # tuple[X, Y]: one type per position
            return len(value) == len(items) and all(_matches(v, a) for v, a in zip(value, items, strict=True))
        return all(_matches(v, items[0]) for v in value) if items else True
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _hint_of(param: inspect.Parameter, hints: Mapping[str, Any]) -> Any:
    """A parameter's type: its annotation, else the type of a bool/int/float/str default, else Any."""
    if param.name in hints:
        return hints[param.name]
    d = param.default
    return type(d) if isinstance(d, (bool, int, float, str)) else Any


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _parameters(function: Callable[..., Any], skip: int) -> tuple[list[inspect.Parameter], Mapping[str, Any]]:
    """The parameters of ``function`` after ``self`` and ``skip`` more (a class: its constructor's), and
    their resolved annotations (none when an annotation does not resolve)."""
    if inspect.isclass(function):
        function = function.__init__
    try:
        params = [p for p in inspect.signature(function).parameters.values() if p.name != "self"][skip:]
    except (TypeError, ValueError):  # a builtin without a signature
        return [], {}
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - an annotation naming what this module cannot see
        hints = {}
    return params, hints


def check_options(owner: str, function: Callable[..., Any], options: Mapping[str, Any], skip: int = 0) -> None:
    """Check option names and types against the signature of ``function``, before any work.

    Args:
        owner: how the message names the options' owner (``"explainer 'vebi[k=one]'"``,
            ``"metric 'insertion_auc'"``).
        function: the constructor (a class) or function the options go to.
        options: the keyword options.
        skip: leading parameters that are data, not options (``self`` is skipped too).

    Raises:
        UsageError: an option the signature does not take (unless it takes ``**kwargs``), naming the
            options it takes; a value of a type its annotation (or its bool, number or string
            default) rules out, naming the expected type.
    """
    params, hints = _parameters(function, skip)
    named = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    for name, value in options.items():
        param = named.get(name)
        if param is None:
            if takes_any:
                continue
            raise UsageError(f"{owner} has no option {name!r}; options: {', '.join(named) or 'none'}")
        hint = _hint_of(param, hints)
        if not _matches(value, hint):
            raise UsageError(f"{owner}: option {name} must be {_type_name(hint)}, got {value!r}")


def complete_options(function: Callable[..., Any] | None, options: Mapping[str, Any], skip: int = 0) -> dict[str, Any]:
    """``options`` over the keyword defaults of ``function``'s signature (after its first ``skip`` parameters).

    So that a cache key does not change when an option is spelt out at its default value, and does
    change when a default changes.
    """
    out: dict[str, Any] = {}
    if function is not None:
        try:
            params = list(inspect.signature(function).parameters.values())[skip:]
        except (TypeError, ValueError):
            params = []
        for p in params:
            if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                out[p.name] = p.default
    out.update(options)
    return out


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Inside the block ``model`` is in eval mode; its training mode is restored on exit, errors included."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    tensor: torch.Tensor
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_inputs(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor | list[int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and move ``images``/``targets`` to the model's device.

    ``targets=None`` means the predicted class. Raises :class:`~an8flower.errors.UsageError` for a
    non-4-D image batch, a non-floating image dtype, NaN/inf pixels, images the model cannot take
    (wrong channel count or size: the model's own error is quoted), a model whose output is not a
    logits tensor (B, K) (a tuple or dict: see :class:`SelectOutput`), a target batch of another
    length, or a target outside ``[0, K)`` with K the number of logits. With ``targets`` given, K is
    learnt from one forward pass of one image the first time a model sees images of that shape,
    then cached (no extra forward pass per call).
    """
    if not isinstance(images, torch.Tensor):
        raise UsageError(f"images must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise UsageError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise UsageError(f"images must be a floating-point tensor, got {images.dtype}")
    if images.shape[0] == 0:
        raise UsageError("images is an empty batch")
    device = model_device(model)
    images = images.to(device)
    if targets is not None:
        targets = torch.as_tensor(targets, device=device)
        if targets.dim() == 0:
            targets = targets.expand(images.shape[0])
        if targets.dim() != 1 or targets.shape[0] != images.shape[0]:
            raise UsageError(
                f"targets must have shape ({images.shape[0]},) to match images, got {tuple(targets.shape)}"
            )
        if targets.is_floating_point():
            raise UsageError(f"targets must be integer class indices, got {targets.dtype}")
        targets = targets.long()
    if targets is None:
        logits = _checked_logits(model, images)
        n_classes = logits.shape[1]
        targets = logits.argmax(dim=1)
    else:
        n_classes = _num_logits(model, images)
        bad = ((targets < 0) | (targets >= n_classes)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise UsageError(f"targets[{i}] = {int(targets[i])} is out of range for a model with {n_classes} classes")
    return images, targets


def _checked_logits(model: nn.Module, images: torch.Tensor, batch_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """``model(images)`` without autograd, as a logits tensor (B, K); a clear UsageError otherwise.

    ``batch_shape`` is the shape quoted in the error (the caller's batch when ``images`` is its
    first image).
    """
    try:
        with torch.no_grad():
            out = model(images)
    except RuntimeError as exc:  # wrong channel count or image size for this model
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"the model cannot take images of shape {batch_shape or tuple(images.shape)} (channels or size wrong?): "
            f"{reason}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise UsageError(
            f"the model must return a logits tensor (B, K), got a {type(out).__name__}; wrap it to select the "
            "logits, e.g. an8flower.baselines.SelectOutput(model, 0) or SelectOutput(model, 'logits')"
        )
    if out.dim() != 2 or out.shape[0] != images.shape[0]:
        raise UsageError(f"the model must return logits (B, K) for B = {images.shape[0]} images, got shape {tuple(out.shape)}")
    return out


#: Number of logits per (model, input signature), so that explaining a given target costs no extra
#: forward pass after the first call (the explainer's own forward would fail less clearly).
_LOGITS_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


def _num_logits(model: nn.Module, images: torch.Tensor) -> int:
    """K for ``model`` on images like ``images``: one checked forward of one image, then cached.

    The cache key is the image shape, dtype and device plus the shapes of the model's parameters,
    so replacing a layer (another K) is seen.
    """
    signature = (tuple(images.shape[1:]), images.dtype, images.device,
                 tuple(tuple(p.shape) for p in model.parameters()))
    per_model = _LOGITS_CACHE.setdefault(model, {})
    k = per_model.get(signature)
    if k is None:
        k = per_model[signature] = int(_checked_logits(model, images[:1], tuple(images.shape)).shape[1])
    return k


class SelectOutput(nn.Module):
    """Wraps a model whose forward returns a tuple, list or dict, keeping the logits only.

    ``SelectOutput(model, key)(x) == model(x)[key]``: ``key`` is a position (tuple/list outputs)
    or a name (dict outputs, e.g. ``"logits"``; Hugging Face outputs, whose fields are also
    attributes, work too). Every explainer and metric of the package expects ``model(x)`` to be
    the logits tensor (B, K): wrap such models once.
    """

    def __init__(self, model: nn.Module, key: int | str = 0) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(self.key, str) and not isinstance(out, dict) and hasattr(out, self.key):
            return getattr(out, self.key)
        try:
            return out[self.key]
        except (KeyError, IndexError, TypeError) as exc:
            raise UsageError(f"SelectOutput: the model's output ({type(out).__name__}) has no entry {self.key!r}") from exc


def _reduce_abs_max(x: torch.Tensor) -> torch.Tensor:
    return x.abs().amax(dim=1)


def _reduce_abs_sum(x: torch.Tensor) -> torch.Tensor:
    return x.abs().sum(dim=1)


def _reduce_l2(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(dim=1).sqrt()


def _reduce_sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=1)


def _reduce_pos_l2(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=0).pow(2).sum(dim=1).sqrt()


#: Rules that reduce an input-space attribution (B, C, H, W) to a map (B, H, W).
#: ``abs_max``: max_c |a_c| (Simonyan et al. 2014); ``abs_sum``: sum_c |a_c|; ``l2``: sqrt(sum_c a_c^2);
#: ``sum``: sum_c a_c (signed); ``pos_l2``: sqrt(sum_c max(a_c, 0)^2) (the rectify-then-L2 rule of
#: Oramas et al. 2019).
CHANNEL_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs_max": _reduce_abs_max,
    "abs_sum": _reduce_abs_sum,
    "l2": _reduce_l2,
    "sum": _reduce_sum,
    "pos_l2": _reduce_pos_l2,
}


def reduce_channels(attribution: torch.Tensor, rule: str) -> torch.Tensor:
    """Reduce (B, C, H, W) to (B, H, W) with one of :data:`CHANNEL_REDUCTIONS`."""
    try:
        fn = CHANNEL_REDUCTIONS[rule]
    except KeyError:
        raise UsageError(f"unknown channel reduction {rule!r}; choose from {', '.join(CHANNEL_REDUCTIONS)}") from None
    return fn(attribution)


class HookScope:
    """Context manager owning module hooks: every handle added is removed on exit, errors included.

    >>> with HookScope() as hooks:
    ...     hooks.add(layer.register_forward_hook(fn))
    ...     model(x)
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def add(self, handle: Any) -> Any:
        self._handles.append(handle)
        return handle

    def __enter__(self) -> HookScope:
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._handles)


@dataclass(frozen=True)
class GroundTruth:
    """What the leaderboard knows of a batch besides its images: handed to reference explainers.

    Attributes:
        masks: bool (B, H, W) ground-truth masks, or None (a dataset without masks).
        labels: long (B,) ground-truth classes.
        changed: bool (B, H, W): the pixels that change when each image is painted as the model's
            runner-up class (:mod:`an8flower.eval.reliance`), or None where there are none.
    """

    masks: torch.Tensor | None
    labels: torch.Tensor
    changed: torch.Tensor | None = None

    def first(self, k: int) -> GroundTruth:
        """The ground truth of the first ``k`` images."""
        return GroundTruth(None if self.masks is None else self.masks[:k], self.labels[:k],
                           None if self.changed is None else self.changed[:k])


class Explainer:
    """Base class of explainers: callable ``(model, images, targets) -> heatmaps (B, H, W)``.

    Subclasses implement :meth:`explain`, which receives validated inputs on the model's device
    (``targets`` resolved to class indices) and returns (B, H, W) heatmaps or (B, C, H, W)
    attributions (reduced with ``self.reduction``). ``__call__`` puts the model in eval mode for
    the call, restores its mode and ``requires_grad`` flags afterwards, and checks the output.
    """

    #: Registry name, set by :func:`register_explainer`.
    name: str = ""
    #: Whether :meth:`fit` must run before the explainer can be called.
    requires_fit: bool = False
    #: Default channel reduction for (B, C, H, W) attributions.
    reduction: str = "abs_max"
    #: Whether the explainer may run under mixed precision (the leaderboard's ``amp`` option):
    #: True only for methods made of forward passes whose maps are shown equal to float32's within
    #: tolerance (tests/test_explainers.py); the gradient family stays float32.
    amp_safe: bool = False
    #: A reference row of the leaderboard (the ``oracle`` ceiling, the ``random`` and ``centre``
    #: chance levels), not an explanation method: reports set it apart.
    reference: ClassVar[bool] = False

    def given(self, truth: GroundTruth) -> Explainer:
        """This explainer for a batch whose ground truth is ``truth``.

        Explainers explain the model, not the annotation: they return themselves. A reference that
        reads the ground truth (``oracle``) returns a copy bound to ``truth``; the leaderboard calls
        this before every batch and every metric that calls the explainer again.
        """
        return self

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The options this explainer was built with (JSON-serialisable), for caching and reports."""
        return {}

    def __call__(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor | list[int] | None = None
    ) -> torch.Tensor:
        flags = [p.requires_grad for p in model.parameters()]
        try:
            with eval_mode(model):
                images, targets = check_inputs(model, images, targets)
                out = self.explain(model, images, targets)
            if out.dim() == 4:
                out = reduce_channels(out, self.reduction)
            expected = (images.shape[0], images.shape[2], images.shape[3])
            if tuple(out.shape) != expected:
                raise RuntimeError(f"{type(self).__name__} returned heatmaps of shape {tuple(out.shape)}, expected {expected}")
            return out.detach().float()
        finally:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"
