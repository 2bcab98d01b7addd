"""``zennit:<Name>``: Zennit's layer-wise relevance propagation (LRP) composites and its attributors.

Two kinds of names:

* ``zennit:<Composite>`` for every composite Zennit registers (``EpsilonPlusFlat``,
  ``EpsilonGammaBox``, ``EpsilonAlpha2Beta1Flat``, ``EpsilonPlus``, ``EpsilonAlpha2Beta1``,
  ``GuidedBackprop``, ``DeconvNet``, ``ExcitationBackprop``, ``BetaSmooth``): the modified
  gradient of the composite, computed by Zennit's ``Gradient`` attributor inside its context
  manager (``with Gradient(model, composite) as attributor:``), which registers the rules' hooks
  and the canonizers on entry and removes them on exit.
* ``zennit:<Attributor>`` for ``Gradient``, ``SmoothGrad`` and ``IntegratedGradients``: the
  attributor with no composite (plain gradients), or with ``composite="<Composite>"`` (the
  composite with its defaults). Zennit's ``Occlusion`` attributor is not offered: it returns the
  score of the occluded image (larger = less relevant) with windows that wrap around the border.

Relevance at the output (``output``, composites and ``Gradient``): ``"logit"`` (default) starts
from ``R = f_t(x) e_t``, the target logit, as LRP does (Bach et al. 2015), so the input relevance
sums to the logit up to what the rules absorb; ``"one_hot"`` starts from ``e_t`` (the map divided
by ``f_t(x)``; for a negative logit the epsilon rule then inverts the map's sign). SmoothGrad and
IntegratedGradients always start from ``e_t``: with ``R = f_t`` at every noisy or interpolated
input they would explain ``f_t^2 / 2``.

The package's models (:mod:`an8flower.eval.models`) take images in [0, 1] and normalise them in
their first module. Two consequences, both handled here:

* **Preprocessing passes relevance through.** With the LRP composites (Epsilon*,
  ExcitationBackprop, also as ``composite=`` of an attributor), modules before the first layer
  with parameters that hold no parameters themselves (the ``Normalize`` module:
  ``(x - mean) / std``) get Zennit's ``Pass`` rule (``pass_preprocessing=True``), so the relevance
  of a normalised pixel is the relevance of the pixel. Left to the plain gradient, the
  normalisation would multiply every relevance by ``1 / std`` (4 for the small CNN, about 4.4 for
  ImageNet statistics) and break conservation. The gradient composites (GuidedBackprop,
  DeconvNet, BetaSmooth) and the bare attributors keep the gradient through it: theirs are
  gradients, equal to our ``guided_backprop``, ``deconvnet`` and ``gradient``.
* **EpsilonGammaBox's bounds.** Its first convolution uses the ZBox rule, which needs the lowest
  and highest possible values of *its* input. ``low`` and ``high`` are given in image space
  (default 0.0 and 1.0, the range of our images) and mapped to the first convolution's input by
  running the model on the all-``low`` and all-``high`` images (so they become
  ``(low - mean) / std`` and ``(high - mean) / std`` per channel for our models).

Canonizers (``canonizer="auto"``, applied by the composite, removed on exit): Zennit's
``SequentialMergeBatchNorm`` when the model has batch norms (each BatchNorm folded into the
convolution or linear layer before it: the small CNN's conv-BN-ReLU blocks, ResNets); for
torchvision ResNet blocks, a ``Sum`` module for the residual addition so that Zennit's ``Norm``
rule splits relevance between the two branches (without it the addition's gradient copies the
relevance into both). Stock torchvision blocks get Zennit's ``ResNetBasicBlockCanonizer`` /
``ResNetBottleneckCanonizer``; the package's blocks, whose ``forward`` is replaced to call one ReLU
module per use (``relu1``, ``relu2`` [, ``relu3``], see ``an8flower.eval.models``), get
:class:`SplitReLUBlockCanonizer`, the same canonisation written for those modules (Zennit's would
call the removed ``relu`` and, on removal, delete the replaced ``forward``).

Conservation, measured by ``tests/test_adapters_zennit.py`` with EpsilonPlusFlat and
``output="logit"``: with ``zero_params=["bias"]`` (the rules ignore biases) the input relevance
sums to the logit within 1e-3 relative on the small CNN (BN merged), ResNet18 and VGG16 with
random weights (measured 2e-5 to 5e-4); on trained small CNNs a unit that is active only through
its merged bias loses its relevance under bias-free rules (relevance / logit 0.98-1.0, median
0.99998). With the biases (the default), the biases absorb their share and the gap depends on
the weights (0.75-1.0 of the logit on the trained small CNNs). README: "Layer-wise relevance
propagation".

Default channel reductions: ``sum`` (signed pixel relevance, the sum over colour channels as LRP
heatmaps are drawn) for the LRP composites (Epsilon*, ExcitationBackprop); ``abs_max`` for
GuidedBackprop, DeconvNet, BetaSmooth, Gradient and SmoothGrad (as our ``gradient``); ``abs_sum``
for IntegratedGradients (as our ``integrated_gradients``).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines.adapters._common import (
    LIBRARIES,
    AdapterExplainer,
    Option,
    import_library,
    library_call,
    make_adapter_class,
    seeded,
    signature_options,
)
from an8flower.baselines.base import CHANNEL_REDUCTIONS, HookScope
from an8flower.baselines.vit import is_transformer
from an8flower.errors import UsageError

__all__ = [
    "ZennitExplainer", "ATTRIBUTORS", "EXCLUDED", "OUTPUTS", "methods", "excluded", "adapter_class",
    "auto_canonizers", "preprocessing_modules", "first_layer_bounds", "SplitReLUBlockCanonizer",
]

LIB = LIBRARIES["zennit"]

#: Zennit attributors offered, with their default channel reduction.
ATTRIBUTORS: dict[str, str] = {"Gradient": "abs_max", "SmoothGrad": "abs_max", "IntegratedGradients": "abs_sum"}
#: Zennit methods not offered, with the reason.
EXCLUDED: dict[str, str] = {
    "Occlusion": "returns the occluded image's score (larger = less relevant) with windows wrapping around the border: "
                 "use captum:Occlusion or occlusion",
}
#: Composites whose maps are signed relevance (LRP): reduced by ``sum``; the others by ``abs_max``.
_LRP = ("EpsilonPlusFlat", "EpsilonGammaBox", "EpsilonAlpha2Beta1Flat", "EpsilonPlus", "EpsilonAlpha2Beta1",
        "ExcitationBackprop")
#: Output relevance choices.
OUTPUTS = ("logit", "one_hot")
_SUPPLIED = ["low", "high", "layer_map", "first_map", "canonizers", "zero_params"]


@lru_cache(maxsize=1)
def _composites() -> dict[str, type[Any]]:
    import zennit.composites

    return {cls.__name__: cls for cls in zennit.composites.COMPOSITES.values()}


def methods() -> dict[str, str]:
    """Offered names -> ``"composite"`` or ``"attributor"`` (UsageError when Zennit is missing)."""
    import_library(LIB)
    return {**{name: "composite" for name in sorted(_composites())}, **{name: "attributor" for name in ATTRIBUTORS}}


def excluded() -> dict[str, str]:
    """Zennit methods not offered, with the reason."""
    import_library(LIB)
    return dict(EXCLUDED)


def _composite_options(cls: type[Any]) -> list[Option]:
    opts = signature_options(cls.__init__, "init", _SUPPLIED)
    params = inspect.signature(cls.__init__).parameters
    if "low" in params:
        opts += [Option("low", 0.0, "adapter", help="lowest pixel value, in image space (ZBox)"),
                 Option("high", 1.0, "adapter", help="highest pixel value, in image space (ZBox)")]
    if "zero_params" in params:
        opts.append(Option("zero_params", None, "init", help="parameter names the rules set to zero, e.g. ['bias']"))
    return opts


def _shared_options(lrp: bool) -> list[Option]:
    opts = [Option("canonizer", "auto", "adapter", ("auto", "none"), help="merge batch norms, canonise ResNet blocks")]
    if lrp:
        opts.append(Option("pass_preprocessing", True, "adapter",
                           help="Pass rule for parameter-free modules before the first layer"))
    return opts


def _options(method: str) -> list[Option]:
    import zennit.attribution

    if method in ATTRIBUTORS:
        opts = [Option("reduction", ATTRIBUTORS[method], "adapter", tuple(CHANNEL_REDUCTIONS),
                       help="channel reduction"),
                Option("composite", None, "adapter", (None, *sorted(_composites())), help="a composite, or None")]
        opts += signature_options(getattr(zennit.attribution, method).__init__, "attributor",
                                  ["model", "composite", "attr_output", "create_graph", "retain_graph", "baseline_fn"])
        if method == "Gradient":
            opts.append(Option("output", "logit", "adapter", OUTPUTS, help="output relevance f_t e_t or e_t"))
        if method == "SmoothGrad":
            opts.append(Option("seed", 0, "adapter", help="seed of the noise"))
        return opts + _shared_options(lrp=False)
    reduction = "sum" if method in _LRP else "abs_max"
    opts = [Option("reduction", reduction, "adapter", tuple(CHANNEL_REDUCTIONS), help="channel reduction"),
            Option("output", "logit", "adapter", OUTPUTS, help="output relevance f_t e_t or e_t")]
    return opts + _composite_options(_composites()[method]) + _shared_options(lrp=method in _LRP)


class ZennitExplainer(AdapterExplainer):
    """Base of the ``zennit:<Name>`` explainers (see the module docstring)."""

    library = "zennit"

    def _composite_name(self) -> str | None:
        return self._options["composite"] if self.method in ATTRIBUTORS else self.method

    def build_composite(self, model: nn.Module, images: torch.Tensor) -> Any:
        """The Zennit composite of this explainer for ``model`` (None for a bare attributor)."""
        from zennit.composites import MixedComposite, NameMapComposite
        from zennit.rules import Pass

        name = self._composite_name()
        if name is None:
            return None
        cls = _composites()[name]
        own = self.method == name
        kwargs = self.targeted("init") if own else {}
        params = inspect.signature(cls.__init__).parameters
        if "low" in params:
            low, high = (self._options["low"], self._options["high"]) if own else (0.0, 1.0)
            kwargs["low"], kwargs["high"] = first_layer_bounds(model, images, low, high)
        canonizers = auto_canonizers(model) if self._options["canonizer"] == "auto" else []
        composite = cls(canonizers=canonizers, **kwargs)
        pre = preprocessing_modules(model) if self._options.get("pass_preprocessing", name in _LRP) else []
        if pre:
            composite = MixedComposite([NameMapComposite([(tuple(pre), Pass())]), composite])
        return composite

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import zennit.attribution

        import_library(LIB)
        attributor_name = self.method if self.method in ATTRIBUTORS else "Gradient"
        logit = self._options.get("output", "one_hot") == "logit"

        def attr_output(output: torch.Tensor) -> torch.Tensor:
            one_hot = F.one_hot(targets, output.shape[1]).to(output)
            return one_hot * output if logit else one_hot

        if self._composite_name() is not None and is_transformer(model):
            raise UsageError(
                f"{self.name}: Zennit's composites have rules for convolutions, linear layers, batch norms and "
                f"activations, none for attention: {type(model).__name__} is a transformer (its attention blocks "
                "return tuples that Zennit's hooks cannot take); refused rather than returning a partial "
                "relevance; use lxt:AttnLRP, LRP for transformers")
        composite = None
        x = images.detach().clone().requires_grad_(True)
        with library_call(model), seeded(self._options.get("seed", 0), images.device), torch.enable_grad():
            try:
                composite = self.build_composite(model, images)
                attributor = getattr(zennit.attribution, attributor_name)(
                    model, composite=composite, attr_output=attr_output, **self.targeted("attributor"))
                with attributor:
                    _, relevance = attributor(x)
            finally:
                if composite is not None:  # also when registering the composite failed half-way
                    composite.remove()
        return relevance.detach()


def preprocessing_modules(model: nn.Module) -> list[str]:
    """Names of the leaf modules, in registration order, before the first leaf with parameters,
    that have no parameters themselves (``["normalize"]`` for the package's models)."""
    out = []
    for name, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue
        if next(m.parameters(recurse=False), None) is not None:
            break
        out.append(name)
    return out


def first_layer_bounds(
    model: nn.Module, images: torch.Tensor, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of the model's first convolution for the all-``low`` and all-``high`` images.

    Returns two (1, C', H', W') tensors: ZBox's bounds in the space where the rule applies (for
    the package's models ``(low - mean) / std`` and ``(high - mean) / std`` per channel).

    Raises:
        UsageError: ``low >= high`` or the model has no convolution.
    """
    from zennit.types import Convolution

    if not low < high:
        raise UsageError(f"zennit:EpsilonGammaBox: low={low} must be below high={high}")
    first = next((m for m in model.modules() if isinstance(m, Convolution)), None)
    if first is None:
        raise UsageError(f"zennit:EpsilonGammaBox: {type(model).__name__} has no convolution for the ZBox rule")
    seen: list[torch.Tensor] = []
    bounds = torch.stack([torch.full(images.shape[1:], low), torch.full(images.shape[1:], high)]).to(images)
    with HookScope() as hooks, torch.no_grad():
        hooks.add(first.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach())))
        model(bounds)
    return seen[0][:1], seen[0][1:2]


def auto_canonizers(model: nn.Module) -> list[Any]:
    """Zennit canonizers for ``model``: batch-norm merging and, for ResNets, the residual ``Sum``.

    Raises:
        UsageError: the model mixes the package's split-ReLU ResNet blocks and stock ones.
    """
    import torchvision
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
    from zennit.types import BatchNorm

    canonizers: list[Any] = []
    if any(isinstance(m, BatchNorm) for m in model.modules()):
        canonizers.append(SequentialMergeBatchNorm())
    blocks = [m for m in model.modules()
              if isinstance(m, (torchvision.models.resnet.BasicBlock, torchvision.models.resnet.Bottleneck))]
    split = [hasattr(b, "relu1") for b in blocks]
    if blocks and all(split):
        canonizers.append(SplitReLUBlockCanonizer())
    elif blocks and not any(split):
        canonizers += [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
    elif blocks:
        raise UsageError(
            "zennit: the model mixes split-ReLU and stock torchvision ResNet blocks; pass canonizer='none'")
    return canonizers


def _canonized_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    # The package's block forward (an8flower.eval.models._split_block_relu) with the residual
    # addition done by a zennit Sum module over the stacked branches, so that a rule applies to it.
    import torchvision

    identity = x
    out = self.relu1(self.bn1(self.conv1(x)))
    if isinstance(self, torchvision.models.resnet.Bottleneck):
        out = self.relu2(self.bn2(self.conv2(out)))
        out, last = self.bn3(self.conv3(out)), self.relu3
    else:
        out, last = self.bn2(self.conv2(out)), self.relu2
    if self.downsample is not None:
        identity = self.downsample(x)
    return last(self.canonizer_sum(torch.stack([identity, out], dim=-1)))


def _make_split_canonizer() -> type:
    import torchvision
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    class SplitReLUBlock(AttributeCanonizer):
        """Canonizer for torchvision ResNet blocks whose ReLUs were split into ``relu1``, ``relu2``, ...

        Overloads the block's ``forward`` with one that adds the residual through a Zennit
        ``Sum`` module (``canonizer_sum``); on removal it restores the block's own instance
        ``forward`` (Zennit's ``AttributeCanonizer`` would delete it, reverting to torchvision's
        ``forward``, which calls the removed ``relu``).
        """

        def __init__(self) -> None:
            super().__init__(self._attribute_map)
            self.saved: dict[str, Any] = {}

        @staticmethod
        def _attribute_map(name: str, module: nn.Module) -> dict[str, Any] | None:
            resnet = torchvision.models.resnet
            if isinstance(module, (resnet.BasicBlock, resnet.Bottleneck)) and hasattr(module, "relu1"):
                return {"forward": _canonized_forward.__get__(module), "canonizer_sum": Sum()}
            return None

        def register(self, module: nn.Module, attributes: dict[str, Any]) -> None:
            self.saved = {k: module.__dict__[k] for k in attributes if k in module.__dict__}
            super().register(module, attributes)

        def remove(self) -> None:
            super().remove()
            for key, value in self.saved.items():
                setattr(self.module, key, value)

        def copy(self) -> SplitReLUBlock:
            return SplitReLUBlock()

    return SplitReLUBlock


@lru_cache(maxsize=1)
def _split_canonizer_class() -> type:
    return _make_split_canonizer()


def SplitReLUBlockCanonizer() -> Any:  # noqa: N802 - a factory standing in for the class
    """A new canonizer for the package's split-ReLU ResNet blocks (see the module docstring)."""
    return _split_canonizer_class()()


_CLASSES: dict[str, type] = {}


def adapter_class(method: str) -> type:
    """The explainer class of ``zennit:<method>`` (made once, then cached).

    Raises:
        UsageError: Zennit is not installed, or has no such composite or attributor.
    """
    available = methods()
    if method not in available:
        if method in EXCLUDED:
            raise UsageError(f"zennit:{method} is not offered: {EXCLUDED[method]}")
        raise UsageError(f"zennit has no composite or attributor {method!r}; available: {', '.join(available)}")
    if method not in _CLASSES:
        kind = available[method]
        summary = (f"Zennit's ``{method}`` {kind}"
                   + (" (through the Gradient attributor)" if kind == "composite" else "")
                   + ", through :mod:`an8flower.baselines.adapters.zennit`.")
        _CLASSES[method] = make_adapter_class(ZennitExplainer, method, _options(method), summary)
    return _CLASSES[method]
