"""CAM-style explainers: Grad-CAM, Grad-CAM++ and upsampled unit activations, and layer resolution.

Each works on the output ``A`` (B, K, h, w) of one layer, chosen by its module path (``layer="features.relu4"``)
or by ``layer="auto"`` (:func:`default_cam_layer`); the (B, N, D) tokens of a Vision Transformer's
layer are laid out on its patch grid first (B, D, g_h, g_w), the class token dropped. Their maps are computed at the layer's
resolution and upsampled bilinearly (``align_corners=False``) to the input's H x W; they are
single-channel by construction, so no colour reduction applies.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines._options import check_choice
from an8flower.baselines.base import Explainer, HookScope
from an8flower.baselines.registry import register_explainer
from an8flower.baselines.vit import attention_modules, token_grid, tokens_to_grid
from an8flower.errors import UsageError

__all__ = [
    "GradCAM",
    "GradCAMPlusPlus",
    "UpsampledActivation",
    "default_cam_layer",
    "resolve_layer",
    "layer_activation_and_gradient",
    "gradcam_plus_plus_map",
    "upsample",
]


def default_cam_layer(model: nn.Module) -> str:
    """The module path CAM-style explainers use when ``layer="auto"``.

    Rules, in order:

    0. a Vision Transformer (:func:`~an8flower.baselines.transformer.attention_modules`): the first
       ``LayerNorm`` of the block holding the last attention module (``norm1`` of timm's last
       block, ``ln_1`` of torchvision's): the layer pytorch-grad-cam documents for ViTs. The last
       block's output will not do: only its class token reaches the classifier, so the gradient
       at its patch tokens is 0; ``norm1``'s patch tokens feed the last attention, whose class-token
       row mixes them;
    1. a module named ``layer4`` (the last stage of torchvision ResNets: ``layer4`` bare,
       ``net.layer4`` in the package's wrapper); the shortest such path;
    2. otherwise the first ``nn.ReLU`` registered after the last ``nn.Conv2d`` (the rectified
       output of the last convolution: ``features.29`` of torchvision VGG16, ``features.relu4`` of
       the package's small CNN);
    3. otherwise the last ``nn.Conv2d``.

    Raises:
        UsageError: the model has no ``nn.Conv2d``.
    """
    attention = attention_modules(model)
    if attention:
        block = attention[-1][0].rpartition(".")[0]
        norms = [n for n, m in model.get_submodule(block).named_children() if isinstance(m, nn.LayerNorm)]
        if norms:
            return f"{block}.{norms[0]}"
        raise UsageError(f"layer='auto': the last attention block {block!r} has no LayerNorm; name a layer with layer=")
    named = list(model.named_modules())
    stages = [name for name, _ in named if name.split(".")[-1] == "layer4"]
    if stages:
        return min(stages, key=lambda n: (n.count("."), n))
    last_conv = max((i for i, (_, m) in enumerate(named) if isinstance(m, nn.Conv2d)), default=None)
    if last_conv is None:
        raise UsageError(f"layer='auto': {type(model).__name__} has no nn.Conv2d; name a layer with layer=")
    for name, m in named[last_conv + 1 :]:
        if isinstance(m, nn.ReLU):
            return name
    return named[last_conv][0]


def resolve_layer(model: nn.Module, layer: str) -> tuple[str, nn.Module]:
    """``(path, module)`` for ``layer``, a module path of ``model`` or ``"auto"``.

    Raises:
        UsageError: naming ``layer`` when the model has no such module.
    """
    name = default_cam_layer(model) if layer == "auto" else layer
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise UsageError(f"layer={layer!r}: {type(model).__name__} has no submodule {name!r}") from None
    if module is model:
        raise UsageError(f"layer={layer!r} names the whole model; name one of its layers")
    return name, module


def layer_activation_and_gradient(
    model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output ``A`` of ``layer`` and ``dS_t / dA`` for every image, in one batched pass.

    Args:
        model: the classifier.
        layer: a module path or ``"auto"`` (see :func:`resolve_layer`).
        images: (B, C, H, W) on the model's device.
        targets: (B,) class indices.

    Returns:
        ``(A, G)``, both (B, K, h, w), detached. A transformer layer's tokens (B, N, D) are laid out
        on the patch grid as (B, D, g_h, g_w), the class (and other prefix) tokens dropped
        (:func:`~an8flower.baselines.transformer.tokens_to_grid`).

    Raises:
        UsageError: the layer's output is neither a 4-D feature map nor (B, N, D) tokens of a ViT,
            the layer runs more than once per forward, or the target scores do not depend on it.
    """
    name, module = resolve_layer(model, layer)
    acts: list[torch.Tensor] = []

    def capture(m: nn.Module, inputs: Any, out: Any) -> Any:
        if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(f"layer={name!r} outputs {shape}, not a (B, K, h, w) feature map or (B, N, D) tokens")
        # A leaf from here on: autograd records only the part of the network after the layer. The
        # clone keeps the leaf intact if a later in-place op modifies the layer's output.
        leaf = out.detach().requires_grad_(True)
        acts.append(leaf)
        return leaf.clone()

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            with HookScope() as hooks:
                hooks.add(module.register_forward_hook(capture))
                logits = model(images.detach())
            if len(acts) != 1:
                raise UsageError(f"layer={name!r} ran {len(acts)} times in one forward pass; name a layer that runs once")
            score = logits.gather(1, targets.view(-1, 1)).sum()
            if not score.requires_grad:
                raise UsageError(f"layer={name!r}: the class scores do not depend on this layer's output")
            (grad,) = torch.autograd.grad(score, acts[0], allow_unused=True)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    if grad is None:
        raise UsageError(f"layer={name!r}: the class scores do not depend on this layer's output")
    act, grad = acts[0].detach(), grad.detach()
    if act.dim() == 3:
        layout = token_grid(model, images, act.shape[1])
        act, grad = tokens_to_grid(act, *layout), tokens_to_grid(grad, *layout)
    return act, grad


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W) by bilinear interpolation (align_corners=False)."""
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def gradcam_plus_plus_map(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The Grad-CAM++ map at the layer's resolution (Chattopadhay et al., WACV 2018, Eq. 19).

    With ``Y = exp(S)`` the derivatives of the score are ``exp(S) G``, ``exp(S) G^2``, ``exp(S) G^3``
    (``G = dS/dA``, a ReLU network being piecewise linear), so the closed form is

    ``alpha^k_ij = G_ij^2 / (2 G_ij^2 + sum_ab A^k_ab G_ij^3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha^k_ij relu(G^k_ij)``, ``L = relu(sum_k w_k A^k)``.

    The common factor ``exp(S)`` of the weights is dropped: it is a positive constant per image that
    would overflow for logits above ~88.

    Args:
        act: (B, K, h, w) layer output.
        grad: (B, K, h, w) gradient of the target score with respect to it.

    Returns:
        (B, h, w).
    """
    g2 = grad.pow(2)
    denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g2 * grad
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    weights = (alpha * grad.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    return (weights * act).sum(dim=1).clamp(min=0)


class _LayerExplainer(Explainer):
    def __init__(self, layer: str = "auto") -> None:
        if not isinstance(layer, str) or not layer:
            raise UsageError(f"layer must be a module path or 'auto', got {layer!r}")
        self.layer = layer

    def options(self) -> dict[str, Any]:
        return {"layer": self.layer}


@register_explainer("gradcam")
class GradCAM(_LayerExplainer):
    """Grad-CAM (Selvaraju et al., ICCV 2017).

    ``w_k = (1/hw) sum_ij dS_t / dA^k_ij``, ``L = relu(sum_k w_k A^k)``, upsampled bilinearly to the
    input size; equal to Captum's ``LayerGradCam`` with ``relu_attributions=True`` on feature maps
    (``tests/test_adapters_captum.py``). ``layer``: a module path or ``"auto"``
    (:func:`default_cam_layer`). On a ViT the layer's patch tokens are laid out on the patch grid
    (the class token dropped, see :func:`layer_activation_and_gradient`), as pytorch-grad-cam's
    ``reshape_transform`` does.
    """

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        act, grad = layer_activation_and_gradient(model, self.layer, images, targets)
        cam = (grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1).clamp(min=0)
        return upsample(cam, (images.shape[2], images.shape[3]))


@register_explainer("gradcam_pp")
class GradCAMPlusPlus(_LayerExplainer):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018); the map of :func:`gradcam_plus_plus_map`
    upsampled bilinearly to the input size. ``layer``: a module path or ``"auto"``."""

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        act, grad = layer_activation_and_gradient(model, self.layer, images, targets)
        return upsample(gradcam_plus_plus_map(act, grad), (images.shape[2], images.shape[3]))


@register_explainer("upsampled_activation")
class UpsampledActivation(_LayerExplainer):
    """The activation map of one unit, upsampled (Bau et al., CVPR 2017, Network Dissection).

    Network Dissection reads a unit's activation map ``A^k`` (B, h, w) at input resolution by
    bilinear upsampling. The unit is chosen per image as the channel of ``layer`` most relevant to
    the target class:

    * ``select="contribution"`` (default): ``k* = argmax_k sum_ij A^k_ij dS_t / dA^k_ij``, the
      channel's first-order contribution to the target logit (exactly ``W_tk * mean(A^k)`` for a
      global-average-pooling + linear head);
    * ``select="activation"``: ``k* = argmax_k mean_ij A^k_ij``, the most active unit, whatever the
      class.

    The map is the continuous activation (Network Dissection's thresholding at a top quantile is
    left to the metrics).
    """

    SELECTIONS = ("contribution", "activation")

    def __init__(self, layer: str = "auto", select: str = "contribution") -> None:
        super().__init__(layer)
        self.select = check_choice("select", select, self.SELECTIONS)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        act, grad = layer_activation_and_gradient(model, self.layer, images, targets)
        relevance = (act * grad).sum(dim=(2, 3)) if self.select == "contribution" else act.mean(dim=(2, 3))
        unit = relevance.argmax(dim=1)
        maps = act[torch.arange(act.shape[0], device=act.device), unit]
        return upsample(maps, (images.shape[2], images.shape[3]))

    def options(self) -> dict[str, Any]:
        return {"layer": self.layer, "select": self.select}
