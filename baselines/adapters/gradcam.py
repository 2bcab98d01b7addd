"""``gradcam:<Class>``: the CAM family of pytorch-grad-cam (``pytorch_grad_cam``), as explainers.

Every ``BaseCAM`` subclass the installed package exports is offered (GradCAM, HiResCAM,
GradCAMPlusPlus, XGradCAM, EigenCAM, EigenGradCAM, LayerCAM, ScoreCAM, AblationCAM, FullGrad,
GradCAMElementWise, KPCA_CAM, FEM, ShapleyCAM, RandomCAM, SegEigenCAM, ...), except the ones in
:data:`EXCLUDED`. Each is built with ``target_layers=[layer]``: ``layer`` is a module path or
``"auto"`` (:func:`~an8flower.baselines.cam.default_cam_layer`); the leaderboard passes the
model's ``DEFAULT_CAM_LAYER``, the layer of our own Grad-CAM. FullGrad takes no layer (it uses
every convolution and batch norm with a bias). On a Vision Transformer, ``"auto"`` is the first
norm of the last block (``norm1`` / ``ln_1``) and the layer's tokens reach the library through its
``reshape_transform``, laid out on the patch grid with the class token dropped: the layer and
transform pytorch-grad-cam's documentation gives for ViTs. The target of image ``i`` is
``ClassifierOutputTarget(targets[i])``, the target logit.

The maps are what the library returns: ReLU of the class activation map, min-max scaled to [0, 1]
per image at the layer's resolution and resized to the input with OpenCV's bilinear ``resize``
(a constant map becomes zeros). Our ``gradcam`` upsamples first and does not rescale; after
min-max scaling the two agree where no resize happens (``tests/test_adapters_gradcam.py``).

Options: the class's own (AblationCAM's ``batch_size`` and ``ratio_channels_to_ablate``,
KPCA_CAM's ``kernel`` and ``gamma``, FEM's ``k``, ...) pass through with the library's defaults;
``aug_smooth`` and ``eigen_smooth`` go to the call; ScoreCAM's ``batch_size`` (masked images per
forward pass, the library's default 16) is set on the instance, as the library reads it;
RandomCAM's random weights are drawn from NumPy's global generator, seeded with ``seed`` for the
call.

Hygiene: the library registers its hooks when a CAM object is made and releases them in
``__exit__``; its ``__exit__`` also swallows ``IndexError`` (it prints it and returns nothing), so
the adapter does not use ``with`` but releases the hooks in a ``finally``. The call runs inside
:func:`~an8flower.baselines.adapters._common.library_call`: the layer AblationCAM swaps into the
model is put back and the hook it removes only on success is removed even when the call fails,
the parameters are frozen (the library's ``backward`` then leaves no parameter gradients; except
for ShapleyCAM, whose Hessian-vector product needs them, and whose gradients are dropped after
the call), and the progress bars of ScoreCAM and AblationCAM are not printed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
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
from an8flower.baselines.cam import resolve_layer
from an8flower.baselines.vit import is_transformer, token_grid, tokens_to_grid
from an8flower.errors import UsageError

__all__ = ["GradCAMExplainer", "EXCLUDED", "NO_LAYER", "methods", "excluded", "adapter_class"]

LIB = LIBRARIES["gradcam"]

#: Exported names of pytorch-grad-cam that are not offered, with the reason.
EXCLUDED: dict[str, str] = {
    "FinerCAM": "a wrapper around another CAM method that compares classes",
    "RefineCAM": "a wrapper around another CAM method",
    "SESS": "a wrapper around another CAM method (multi-scale sliding windows)",
    "GuidedBackpropReLUModel": "guided backpropagation, not a CAM: use guided_backprop or captum:GuidedBackprop",
    "DeepFeatureFactorization": "concept factorisation, not a per-class map",
}
#: Classes that take no target layer.
NO_LAYER = ("FullGrad",)
#: Classes that differentiate the layer's gradient again (a Hessian-vector product): the weights must
#: require gradients for the gradient to have a graph.
SECOND_ORDER = ("ShapleyCAM",)
_SUPPLIED = ["model", "target_layers", "reshape_transform", "ablation_layer", "base_method",
             "compute_input_gradient", "uses_gradients", "tta_transforms", "detach"]


@lru_cache(maxsize=1)
def _catalogue() -> tuple[dict[str, type[Any]], dict[str, str]]:
    import pytorch_grad_cam
    from pytorch_grad_cam.base_cam import BaseCAM

    offered, left_out = {}, {}
    for name in sorted(dir(pytorch_grad_cam)):
        cls = getattr(pytorch_grad_cam, name)
        if not inspect.isclass(cls):
            continue
        if name in EXCLUDED:
            left_out[name] = EXCLUDED[name]
        elif issubclass(cls, BaseCAM):
            offered[name] = cls
    return offered, left_out


def methods() -> dict[str, type[Any]]:
    """The CAM classes offered, by name (UsageError when pytorch-grad-cam is missing)."""
    import_library(LIB)
    return dict(_catalogue()[0])


def excluded() -> dict[str, str]:
    """Exported classes not offered, with the reason."""
    import_library(LIB)
    return dict(_catalogue()[1])


def _options(name: str, cls: type[Any]) -> list[Option]:
    opts = []
    if name not in NO_LAYER:
        opts.append(Option("layer", "auto", "adapter", help="module path of the target layer, or 'auto'"))
    opts += signature_options(cls.__init__, "init", _SUPPLIED)
    if name == "ScoreCAM":
        opts.append(Option("batch_size", 16, "attribute", minimum=1, help="masked images per forward pass"))
    opts += [Option("aug_smooth", False, "call", help="test-time augmentation smoothing"),
             Option("eigen_smooth", False, "call", help="first principal component of the weighted activations")]
    if name == "RandomCAM":
        opts.append(Option("seed", 0, "adapter", help="seed of the random weights"))
    return opts


class GradCAMExplainer(AdapterExplainer):
    """Base of the ``gradcam:<Class>`` explainers (see the module docstring)."""

    library = "gradcam"

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import_library(LIB)
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = methods()[self.method]
        layers = [] if self.method in NO_LAYER else [resolve_layer(model, self._options["layer"])[1]]
        kwargs = self.targeted("init")
        if self.method not in NO_LAYER:
            kwargs["reshape_transform"] = _token_layout(model, images)
        if "ablation_layer" in inspect.signature(cls.__init__).parameters:
            from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit

            # a fresh instance (the library's default is shared and stateful); on a ViT the one the
            # library documents for token layers, which ablates channels of the (B, N, D) tokens
            kwargs["ablation_layer"] = AblationLayerVit() if is_transformer(model) else AblationLayer()
        # The input requires grad so that the layer's output does, with the parameters frozen.
        x = images.detach().clone().requires_grad_(True)
        wanted = [ClassifierOutputTarget(int(t)) for t in targets.tolist()]
        guard = library_call(model, quiet_stderr=True, freeze=self.method not in SECOND_ORDER)
        with guard, seeded(self._options.get("seed", 0), images.device), torch.enable_grad():
            cam = cls(model, layers, **kwargs)
            try:
                for key, value in self.targeted("attribute").items():
                    setattr(cam, key, value)
                maps = cam(x, wanted, **self.targeted("call"))
            finally:
                cam.activations_and_grads.release()
        out = torch.from_numpy(maps).to(images.device, torch.float32)
        if out.dim() != 3:
            raise UsageError(f"{self.name}: the library returned maps of shape {tuple(out.shape)}")
        return out


def _token_layout(model: nn.Module, images: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's ``reshape_transform``: a ViT layer's (B, N, D) tokens on the patch grid,
    (B, D, g_h, g_w), the class token dropped (the library's documented transform for ViTs);
    feature maps pass unchanged."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return tokens_to_grid(t, *token_grid(model, images, t.shape[1])) if t.dim() == 3 else t

    return reshape


_CLASSES: dict[str, type] = {}


def adapter_class(method: str) -> type:
    """The explainer class of ``gradcam:<method>`` (made once, then cached).

    Raises:
        UsageError: pytorch-grad-cam is not installed or has no such CAM class.
    """
    available = methods()
    if method not in available:
        reason = excluded().get(method)
        if reason is not None:
            raise UsageError(f"gradcam:{method} is not offered: {reason}")
        raise UsageError(f"pytorch-grad-cam has no CAM class {method!r}; available: {', '.join(available)}")
    if method not in _CLASSES:
        summary = f"pytorch-grad-cam's ``{method}``, through :mod:`an8flower.baselines.adapters.gradcam`."
        _CLASSES[method] = make_adapter_class(GradCAMExplainer, method, _options(method, available[method]), summary)
    return _CLASSES[method]
