"""Internal features of a CNN as one vector per image: the input of VEBI's relevant-feature selection.

Following Oramas, Wang and Tuytelaars, "Visual Explanation by Interpretation", ICLR 2019 (and their
released code), each chosen layer output A (C x H x W, or F units for a linear layer, a unit counting
as a channel) gives one value per channel, its squared L2 norm

    s_c = sum_{h,w} A[c, h, w]^2,

normalised to sum to one within the layer (``s_c / sum_c' s_c'``); the layers' vectors are
concatenated and the whole vector is scaled to unit L2 norm. A layer whose activations are all zero
for an image contributes zeros (no division by zero); so does an image whose whole vector is zero.

Layers are named by their module path (``model.named_modules()``: ``"features.conv1"``). By default
(:func:`default_layers`) the outputs of every ``nn.ReLU`` and 2-D pooling module, in the order a
forward pass runs them: the rectified activations of every convolution and of the classifier's
hidden linear layers, and the pooled maps. That is what the authors' code reads: in their Caffe and
MatConvNet networks the ReLUs run in place, so the blob of ``conv5_3`` or ``fc7`` *is* the
rectified activation. The raw output of a separate ``nn.Conv2d`` (before batch norm and ReLU) is
signed, and its energy ``sum A^2`` counts strongly negative responses as relevant; visualising
such a feature by sending its own (negative) activation back and rectifying the result highlights
the wrong pixels (in the published leaderboard, ``single-6c`` with the small CNN, VEBI's pixel
AUC was 0.443 with conv outputs among the defaults and 0.793 without). A model without ReLU modules falls back to the
outputs of its convolutions and of its linear layers except the logits. Any module can still be
chosen by name.

Named layer sets (:data:`LAYER_PRESETS`, accepted by ``default_layers(..., preset=)`` and by VEBI's
``layers`` option):

* ``"rectified"`` (the default above): every ReLU and 2-D pooling output;
* ``"released"``: every layer output, as the authors' released code takes it from its MatConvNet
  networks (every ``conv``, ``relu``, ``pool`` and ``fc`` layer, convolutions included): the
  outputs of every ``nn.Conv2d``, batch-norm, ``nn.ReLU``, 2-D pooling and hidden ``nn.Linear``
  module, in forward order, the logits excluded. The MatConvNet networks have no batch norm; in
  ours its output is the signed pre-activation, the role a MatConvNet ``conv`` output has there,
  so it is taken too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from an8flower.baselines.base import HookScope
from an8flower.errors import UsageError

__all__ = [
    "FALLBACK_MODULE_TYPES",
    "FEATURE_MODULE_TYPES",
    "LAYER_PRESETS",
    "LayerRecorder",
    "channel_energy",
    "default_layers",
    "feature_vector",
    "resolve_layers",
]

#: Module types whose outputs :func:`default_layers` selects: rectified activations and pooling.
FEATURE_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
#: The fallback of :func:`default_layers` for a model without ``nn.ReLU`` modules (logits excluded).
FALLBACK_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
#: Named layer sets of :func:`default_layers`: the module types whose outputs each one selects.
LAYER_PRESETS: dict[str, tuple[type[nn.Module], ...]] = {
    "rectified": FEATURE_MODULE_TYPES,
    "released": FEATURE_MODULE_TYPES + FALLBACK_MODULE_TYPES + (nn.modules.batchnorm._BatchNorm,),
}


def resolve_layers(model: nn.Module, layers: Sequence[str]) -> list[nn.Module]:
    """The modules named ``layers`` (module paths) in ``model``.

    Raises:
        UsageError: a name that is not a submodule of ``model`` (the message lists a few that are), or
            a name given twice.
    """
    modules = dict(model.named_modules())
    out = []
    seen: set[str] = set()
    for name in layers:
        if name in seen:
            raise UsageError(f"layer {name!r} is listed twice")
        seen.add(name)
        if not name or name not in modules:
            some = [n for n in modules if n][:8]
            raise UsageError(f"layer {name!r}: the model has no such module; module names look like {', '.join(some)}")
        out.append(modules[name])
    return out


def channel_energy(activation: torch.Tensor) -> torch.Tensor:
    """Per-channel squared L2 norm: (B, C, ...) -> (B, C), ``s_c = sum over the rest of A[c]^2``.

    A (B, F) linear output gives ``A^2`` (one unit per channel).
    """
    if activation.dim() < 2:
        raise UsageError(f"a layer output must be at least (B, C), got shape {tuple(activation.shape)}")
    if activation.dim() == 2:
        return activation.pow(2)
    return activation.flatten(2).pow(2).sum(dim=2)


def feature_vector(energies: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-layer energies (B, C_l) into VEBI's feature vector (B, m), m = sum_l C_l.

    Each layer's block is divided by its sum (L1 normalisation; an all-zero block stays zero) and the
    whole vector by its L2 norm (a zero vector stays zero).
    """
    if not energies:
        raise UsageError("no layers to build a feature vector from")
    blocks = []
    for s in energies:
        total = s.sum(dim=1, keepdim=True)
        blocks.append(torch.where(total > 0, s / total.clamp(min=torch.finfo(s.dtype).tiny), torch.zeros_like(s)))
    x = torch.cat(blocks, dim=1)
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(x))


class LayerRecorder:
    """Context manager recording the outputs of named layers during forward passes.

    Inside the block, each forward pass of ``model`` fills :attr:`outputs` (layer name -> output
    tensor, or ``reduce(output)`` when ``reduce`` is given, e.g. :func:`channel_energy` to keep only
    (B, C)). The hooks live in a :class:`HookScope` and are removed on exit, errors included.

    Args:
        model: the network.
        layers: module paths.
        reduce: optional function applied to each output as it is produced (saves memory).

    Raises:
        UsageError: unknown layer names; a recorded module that runs more than once in a forward pass
            (its output would be ambiguous: give each use its own module).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.layers = list(layers)
        self.modules = resolve_layers(model, self.layers)
        self.reduce = reduce
        self.outputs: dict[str, torch.Tensor] = {}
        self._scope = HookScope()

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if name in self.outputs:
                raise UsageError(
                    f"layer {name!r} runs more than once in a forward pass; VEBI needs one module per use"
                )
            if not isinstance(output, torch.Tensor):
                raise UsageError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            self.outputs[name] = self.reduce(output) if self.reduce is not None else output

        return hook

    def _reset(self, *_: Any) -> None:
        self.outputs = {}

    def __enter__(self) -> LayerRecorder:
        try:
            self._scope.add(self.model.register_forward_pre_hook(self._reset))
            for name, module in zip(self.layers, self.modules, strict=True):
                self._scope.add(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self._scope.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._scope.__exit__(*exc)
        self.outputs = {}

    def collect(self) -> list[torch.Tensor]:
        """The recorded outputs in the order of :attr:`layers` (UsageError if a layer did not run)."""
        missing = [n for n in self.layers if n not in self.outputs]
        if missing:
            raise UsageError(f"layer {missing[0]!r} did not run in the forward pass")
        return [self.outputs[n] for n in self.layers]


def default_layers(model: nn.Module, images: torch.Tensor, preset: str = "rectified") -> list[str]:
    """VEBI's default layers: every ReLU and pooling output, in forward order (see the module docstring).

    One forward pass on ``images[:1]`` records which modules of the preset's types run
    (:data:`LAYER_PRESETS`; for ``"rectified"``, :data:`FEATURE_MODULE_TYPES`, or, in a model
    without ``nn.ReLU`` modules, those and :data:`FALLBACK_MODULE_TYPES`), in what order; the
    module producing the logits (the model's output tensor itself, or failing that the last module
    to produce a tensor of the logits' shape) is left out. Modules that are not run are left out too.

    Args:
        model: maps (B, C, H, W) to logits (B, K).
        images: an example batch on the model's device (only the first image is used).
        preset: a name of :data:`LAYER_PRESETS` (``"rectified"``: the default set; ``"released"``:
            every layer output, convolutions included, as the authors' code).

    Returns:
        Module paths in execution order.

    Raises:
        UsageError: an unknown preset.
    """
    if preset not in LAYER_PRESETS:
        raise UsageError(f"unknown layer set {preset!r}; choose from {', '.join(LAYER_PRESETS)}")
    types = LAYER_PRESETS[preset]
    if preset == "rectified" and not any(isinstance(m, nn.ReLU) for m in model.modules()):
        types = FEATURE_MODULE_TYPES + FALLBACK_MODULE_TYPES
    candidates = {name: m for name, m in model.named_modules() if name and isinstance(m, types)}
    order: list[tuple[str, torch.Tensor]] = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor) and name not in {n for n, _ in order}:
                order.append((name, output))

        return hook

    with HookScope() as scope, torch.no_grad():
        for name, module in candidates.items():
            scope.add(module.register_forward_hook(hook_for(name)))
        logits = model(images[:1])
    logit_layer = next((n for n, out in order if out is logits), None)
    if logit_layer is None:
        same_shape = [n for n, out in order if tuple(out.shape) == tuple(logits.shape)]
        logit_layer = same_shape[-1] if same_shape else None
    return [n for n, _ in order if n != logit_layer]
