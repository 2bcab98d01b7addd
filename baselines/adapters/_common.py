"""What the three adapters share: library lookup, option specs, the adapter base class, call guards.

An adapter method is one :class:`AdapterExplainer` subclass per library method, made on demand by
:func:`make_adapter_class`. Its ``__init__`` carries an explicit signature (the method's options
and their defaults), so :func:`~an8flower.baselines.registry.build_explainer` rejects unknown option
names and the leaderboard sees whether the method takes a ``layer`` or a ``seed``, as for the
built-in explainers.

Library calls run inside :func:`library_call`, which guarantees what the explainer protocol
promises whatever the library does, errors included: module hooks registered during the call are
removed, module trees a library edits in place (pytorch-grad-cam's AblationCAM swaps the target
layer) are put back, parameter gradients are left as they were, and parameters do not require
gradients during the call (every method here differentiates with respect to the input only).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import io
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from an8flower.baselines._options import check_reduction
from an8flower.baselines.base import Explainer
from an8flower.errors import UsageError

__all__ = [
    "RELU_RULE_ADAPTERS",
    "Library",
    "LIBRARIES",
    "import_library",
    "library_version",
    "Option",
    "signature_options",
    "AdapterExplainer",
    "make_adapter_class",
    "seeded",
    "library_call",
    "split_name",
    "is_adapter_name",
    "adapter_class",
    "list_adapter_explainers",
]


@dataclass(frozen=True)
class Library:
    """An optional library reached through an adapter.

    Attributes:
        prefix: the explainer-name prefix (``captum`` in ``captum:Saliency``).
        module: the adapter module that knows the library's methods.
        import_name: the library's top-level import name.
        distribution: its name on PyPI (for the version and the error message).
        extra: the an8flower extra that installs it.
    """

    prefix: str
    module: str
    import_name: str
    distribution: str
    extra: str

    @property
    def install(self) -> str:
        return f'pip install "an8flower[{self.extra}]" (in a clone of the repository: pip install ".[{self.extra}]")'


#: The libraries, by explainer-name prefix.
LIBRARIES: dict[str, Library] = {
    lib.prefix: lib
    for lib in (
        Library("captum", "an8flower.baselines.adapters.captum", "captum", "captum", "captum"),
        Library("zennit", "an8flower.baselines.adapters.zennit", "zennit", "zennit", "zennit"),
        Library("gradcam", "an8flower.baselines.adapters.gradcam", "pytorch_grad_cam", "grad-cam", "gradcam"),
        Library("lxt", "an8flower.baselines.adapters.lxt", "lxt", "lxt", "lxt"),
        Library("torchcam", "an8flower.baselines.adapters.torchcam", "torchcam", "torchcam", "torchcam"),
    )
}


def split_name(name: str) -> tuple[Library, str]:
    """``"captum:Saliency"`` -> (the captum :class:`Library`, ``"Saliency"``).

    Raises:
        UsageError: an unknown prefix or an empty method name.
    """
    prefix, _, method = name.partition(":")
    if prefix not in LIBRARIES:
        raise UsageError(f"unknown explainer {name!r}: adapter prefixes are {', '.join(p + ':' for p in LIBRARIES)}")
    if not method:
        raise UsageError(f"explainer {name!r} names no method; `an8flower explainers` lists them")
    return LIBRARIES[prefix], method


def import_library(lib: Library) -> ModuleType:
    """Import the library's top-level module (cheap once imported).

    Raises:
        UsageError: the library is not installed, naming the extra that installs it.
    """
    try:
        return importlib.import_module(lib.import_name)
    except ImportError as exc:
        raise UsageError(
            f"{lib.prefix}: explainers need the {lib.distribution} library ({exc}); install it with {lib.install}"
        ) from None


def is_adapter_name(name: str) -> bool:
    """Whether ``name`` has a library prefix (``captum:``, ``zennit:``, ``gradcam:``)."""
    prefix, sep, _ = name.partition(":")
    return bool(sep) and prefix in LIBRARIES


#: Adapter methods whose backward rule is defined at ReLUs only: on a model with other
#: non-linearities (a GELU ViT) the library applies the rule nowhere and returns the plain gradient
#: (or, for excitation backprop, a meaningless map), so they are refused there with a usage error.
RELU_RULE_ADAPTERS: frozenset[str] = frozenset({
    "captum:GuidedBackprop", "captum:Deconvolution", "captum:GuidedGradCam",
    "zennit:GuidedBackprop", "zennit:DeconvNet", "zennit:ExcitationBackprop",
})


def adapter_class(name: str) -> type:
    """The explainer class of an adapter name such as ``"captum:IntegratedGradients"``.

    Raises:
        UsageError: an unknown prefix, the library is not installed (the message names the extra,
        e.g. ``pip install "an8flower[zennit]"``), or it offers no such method (the message
        lists the available ones, or says why a method is left out).
    """
    lib, method = split_name(name)
    import_library(lib)
    cls = importlib.import_module(lib.module).adapter_class(method)
    if name in RELU_RULE_ADAPTERS:
        cls.relu_only = True
    return cls


def list_adapter_explainers() -> list[str]:
    """Every adapter name available in this installation (libraries that are not installed are skipped)."""
    names: list[str] = []
    for lib in LIBRARIES.values():
        try:
            import_library(lib)
        except UsageError:
            continue
        names += [f"{lib.prefix}:{m}" for m in importlib.import_module(lib.module).methods()]
    return names


def library_version(lib: Library) -> str | None:
    """The installed version of the library's distribution, ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(lib.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


_SCALARS = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Option:
    """One option of an adapter method.

    Attributes:
        name: the keyword (``--option captum:IntegratedGradients.n_steps=64``).
        default: its default; the type of a non-``None`` default is the type values must have
            (an integer is accepted for a float).
        target: where it goes: ``"init"`` (the library class's constructor), ``"call"`` (the
            library's attribution call), another name a library adapter gives a second library
            object (``"attributor"``), or ``"adapter"`` (the adapter uses it itself).
        choices: the allowed values, if restricted.
        minimum: the smallest allowed value of a number.
        kind: the type of the values of an option whose default is ``None`` (else any JSON value).
        help: one line for the docstring.
    """

    name: str
    default: Any
    target: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    kind: type | None = None
    help: str = ""

    def check(self, owner: str, value: Any) -> Any:
        """``value`` converted to the option's type; UsageError naming ``owner`` and the option."""
        if self.choices is not None:
            if value not in self.choices:
                raise UsageError(f"{owner}: {self.name}={value!r} is not one of {', '.join(map(repr, self.choices))}")
            return value
        d = self.default
        if isinstance(d, bool):
            ok = isinstance(value, bool)
        elif isinstance(d, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(d, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(d, str):
            ok = isinstance(value, str)
        else:  # default None: a JSON scalar or a list of them
            ok = isinstance(value, _SCALARS) or (
                isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value)
            )
            value = list(value) if isinstance(value, tuple) else value
        if not ok:
            expected = "a JSON value" if d is None else type(d).__name__
            raise UsageError(f"{owner}: {self.name} must be {expected}, got {value!r}")
        if self.kind is not None and value is not None and not (isinstance(value, self.kind)
                                                                and not isinstance(value, bool)):
            raise UsageError(f"{owner}: {self.name} must be {self.kind.__name__} or None, got {value!r}")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.minimum is not None and number and value < self.minimum:
            raise UsageError(f"{owner}: {self.name} must be >= {self.minimum:g}, got {value!r}")
        return value


def signature_options(fn: Callable[..., Any], target: str, skip: Sequence[str]) -> list[Option]:
    """The keyword parameters of a library function that take JSON values, as :class:`Option` s.

    A parameter passes through when its default is ``None``, a bool, a number or a string and its
    name is not in ``skip`` (the ones the adapter supplies itself, or that take Python objects).
    """
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty or not isinstance(p.default, _SCALARS):
            continue
        out.append(Option(p.name, p.default, target, help=f"passed to the library ({target})"))
    return out


class AdapterExplainer(Explainer):
    """An explainer that runs one method of another library (see :mod:`an8flower.baselines.adapters`).

    Subclasses (one per library) set :attr:`library` and implement :meth:`explain`; the
    per-method subclasses made by :func:`make_adapter_class` set :attr:`method` and
    :attr:`option_specs`.
    """

    #: The library's explainer-name prefix.
    library: ClassVar[str] = ""
    #: The library's name for the method.
    method: ClassVar[str] = ""
    #: Option name -> spec, in signature order.
    option_specs: ClassVar[dict[str, Option]] = {}
    #: Whether the method's rule is defined for ReLU networks only (guided backprop, deconvnet,
    #: excitation backprop: set by :func:`~an8flower.baselines.adapters.catalogue.adapter_class`);
    #: such a method is refused on other models (:func:`~an8flower.baselines.transformer.require_relu_network`),
    #: where the library would silently return the plain gradient.
    relu_only: ClassVar[bool] = False

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: Any = None) -> torch.Tensor:
        if self.relu_only:
            from an8flower.baselines.vit import require_relu_network

            require_relu_network(model, self.name)
        return super().__call__(model, images, targets)

    def __init__(self, **options: Any) -> None:
        owner = f"{self.library}:{self.method}"
        unknown = sorted(set(options) - set(self.option_specs))
        if unknown:
            raise UsageError(
                f"explainer {owner!r} has no option {unknown[0]!r}; options: {', '.join(self.option_specs)}")
        values = {name: spec.default for name, spec in self.option_specs.items()}
        values.update({name: self.option_specs[name].check(owner, v) for name, v in options.items()})
        if "reduction" in values:
            self.reduction = check_reduction(values["reduction"])
        self._options = values

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    @classmethod
    def cache_identity(cls) -> dict[str, Any]:
        """The library and its installed version: part of the leaderboard's cache key
        (:func:`an8flower.baselines.spec.explainer_code_identity`), so that upgrading the library
        recomputes its cells."""
        lib = LIBRARIES[cls.library]
        return {"library": lib.distribution, "version": library_version(lib), "method": cls.method}

    def targeted(self, target: str) -> dict[str, Any]:
        """The options that go to ``target`` (see :class:`Option`), lists as tuples."""
        return {
            name: tuple(v) if isinstance(v, list) else v
            for name, v in self._options.items()
            if self.option_specs[name].target == target
        }


def make_adapter_class(base: type[AdapterExplainer], method: str, options: Sequence[Option], summary: str) -> type:
    """A subclass of ``base`` for ``method``, with an ``__init__`` whose signature lists ``options``.

    The class is named for the library and method (``CaptumIntegratedGradients``); its registry
    name (``name``) is ``"<prefix>:<method>"``; its docstring is ``summary`` plus the options.
    """
    specs = {o.name: o for o in options}
    if len(specs) != len(options):
        raise AssertionError(f"{base.library}:{method}: duplicate option names")

    def __init__(self: AdapterExplainer, **kwargs: Any) -> None:
        base.__init__(self, **kwargs)

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default) for o in options]
    __init__.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    lines = [f"``{o.name}={o.default!r}``" + (f": {o.help}" if o.help else "") for o in options]
    doc = summary.strip() + "\n\nOptions:\n\n" + "\n".join(f"* {line}" for line in lines) + "\n"
    cls_name = base.library.capitalize() + "".join(ch for ch in method if ch.isalnum())
    attrs = {"__init__": __init__, "method": method, "option_specs": specs, "__doc__": doc,
             "name": f"{base.library}:{method}", "__module__": base.__module__}
    return type(cls_name, (base,), attrs)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Inside the block, torch's and NumPy's global generators start from ``seed``; both are restored.

    The libraries draw their random numbers (noise, samples, baselines, permutations) from the
    global generators; seeding them per call makes a call deterministic for a given batch, and
    restoring them leaves the caller's random stream untouched.
    """
    devices = [device] if device.type == "cuda" else []
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(state)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_EXTRAS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


@contextlib.contextmanager
def library_call(model: nn.Module, quiet_stderr: bool = False, freeze: bool = True) -> Iterator[None]:
    """Run a library's attribution call on ``model`` without side effects that outlive it.

    Inside the block the parameters do not require gradients (unless ``freeze`` is False: a
    method that differentiates through the weights) and Python warnings are silenced (the
    libraries warn about batch sizes, deprecated arguments and the like); with ``quiet_stderr``
    the library's progress bars (written to stderr) are dropped too. On exit,
    errors included: every module hook registered during the block is removed, every module's
    children are those it had on entry, parameter gradients and ``requires_grad`` flags are
    restored.
    """
    modules = list(model.modules())
    hooks = [{d: set(getattr(m, d, {})) for d in _HOOK_DICTS} for m in modules]
    children = [dict(m._modules) for m in modules]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    stderr = contextlib.redirect_stderr(io.StringIO()) if quiet_stderr else contextlib.nullcontext()
    try:
        for p in params:
            p.requires_grad_(p.requires_grad and not freeze)
        with warnings.catch_warnings(), stderr:
            warnings.simplefilter("ignore")
            yield
    finally:
        for m, before in zip(modules, hooks, strict=True):
            for d, keys in before.items():
                table = getattr(m, d, None)
                if not table:
                    continue
                for key in [k for k in table if k not in keys]:
                    del table[key]
                    for extra in _HOOK_EXTRAS:
                        getattr(m, extra, {}).pop(key, None)
        for m, kids in zip(modules, children, strict=True):
            if m._modules != kids:
                m._modules.clear()
                m._modules.update(kids)
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
