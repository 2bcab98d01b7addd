"""``torchcam:<Name>``: torchcam's methods that no other adapter offers.

torchcam (``torchcam``) implements CAM, Grad-CAM, Grad-CAM++, Smooth Grad-CAM++, XGrad-CAM,
LayerCAM, Score-CAM, SS-CAM, IS-CAM, and, since 0.5, LeGrad for Vision Transformers. Only LeGrad is
offered: it is the one ViT method that neither our explainers nor pytorch-grad-cam's nor Captum's
provide. Its CAMs duplicate ``gradcam:`` rows (:data:`EXCLUDED` says which), on CNNs only.

* ``torchcam:LeGrad`` (Bousselham et al., 2024, "LeGrad: An Explainability Method for Vision
  Transformers via Feature Formation Sensitivity"): for each block ``l`` the class score ``s^l``
  read from that block's tokens (``heads(ln(mean of the tokens))``, torchcam's projection for
  torchvision's ``VisionTransformer``), ``map_l = mean_{h, q} relu(d s^l / d A^l)`` over the patch
  keys, averaged over the blocks, min-max scaled per image by torchcam, then upsampled bilinearly
  to the input (``align_corners=False``). ``blocks``: how many of the last blocks (0 = all, the
  paper's choice). torchvision ViTs only (the ``vit-tiny`` preset): torchcam's projection and
  attention hooks need ``encoder.ln``, ``heads`` and ``nn.MultiheadAttention`` blocks; other models
  are refused with a usage error.

The call runs inside :func:`~an8flower.baselines.adapters._common.library_call` (parameters frozen,
every hook torchcam registers removed, errors included).
"""

from __future__ import annotations

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
)
from an8flower.errors import UsageError

__all__ = ["TorchcamExplainer", "EXCLUDED", "methods", "excluded", "adapter_class"]

LIB = LIBRARIES["torchcam"]

#: torchcam methods not offered, with the reason.
EXCLUDED: dict[str, str] = {
    **{name: "a CAM for CNNs that pytorch-grad-cam offers too (gradcam:)" for name in
       ("CAM", "GradCAM", "GradCAMpp", "XGradCAM", "LayerCAM", "ScoreCAM")},
    **{name: "a noise- or integration-smoothed variant of a CAM for CNNs (ScoreCAM, Grad-CAM++), not a ViT method"
       for name in ("SSCAM", "ISCAM", "SmoothGradCAMpp")},
    "FinerCAM": "a wrapper around another CAM method that compares classes",
    "RefineCAM": "a wrapper around another CAM method",
}


def methods() -> dict[str, str]:
    """Offered names -> what they apply to (UsageError when torchcam is missing)."""
    import_library(LIB)
    return {"LeGrad": "torchvision VisionTransformer"}


def excluded() -> dict[str, str]:
    import_library(LIB)
    return dict(EXCLUDED)


def _vision_transformer(model: nn.Module) -> nn.Module:
    from torchvision.models import VisionTransformer

    for m in model.modules():
        if isinstance(m, VisionTransformer):
            return m
    raise UsageError(f"torchcam:LeGrad: torchcam reads torchvision's VisionTransformer only, and {type(model).__name__} "
                     "holds none (use the vit-tiny preset or a torchvision:vit_* model)")


class TorchcamExplainer(AdapterExplainer):
    """Base of the ``torchcam:<Name>`` explainers (see the module docstring)."""

    library = "torchcam"

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import_library(LIB)
        from torchcam.methods import LeGrad

        vit = _vision_transformer(model)
        blocks: list[nn.Module | str] = list(vit.get_submodule("encoder.layers").children())
        n = self._options["blocks"]
        if n > len(blocks):
            raise UsageError(f"torchcam:LeGrad: blocks={n}, but the model has {len(blocks)}")
        x = images.detach().clone().requires_grad_(True)
        with library_call(model), torch.enable_grad():
            extractor = LeGrad(vit, blocks[-n:] if n else blocks)
            try:
                scores = model(x)
                (maps,) = extractor(targets.tolist(), scores)
            finally:
                extractor.remove_hooks()
        return F.interpolate(maps.unsqueeze(1).float(), size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]


def _options() -> list[Option]:
    return [Option("blocks", 0, "adapter", minimum=0, help="the last this many blocks (0: all)")]


_CLASSES: dict[str, type] = {}


def adapter_class(method: str) -> type:
    """The explainer class of ``torchcam:<method>`` (made once, then cached).

    Raises:
        UsageError: torchcam is not installed, or the method is not offered (the reason is given).
    """
    available = methods()
    if method not in available:
        if method in EXCLUDED:
            raise UsageError(f"torchcam:{method} is not offered: {EXCLUDED[method]}")
        raise UsageError(f"torchcam has no method {method!r} offered here; available: {', '.join(available)}")
    if method not in _CLASSES:
        summary = f"torchcam's ``{method}`` for torchvision ViTs, through :mod:`an8flower.baselines.adapters.torchcam`."
        _CLASSES[method] = make_adapter_class(TorchcamExplainer, method, _options(), summary)
    return _CLASSES[method]
