"""``captum:<Name>``: any attribution class of Captum (``captum.attr``), as an explainer.

Which classes: every attribution class ``captum.attr`` exports, found by inspecting the installed
version, except the ones in :data:`EXCLUDED` (abstract bases, neuron attributions, wrappers and
methods whose map depends on the rest of the batch or whose cost is exponential; the reason is
given for each). Two families:

* **Input attributions** (Saliency, InputXGradient, IntegratedGradients, DeepLift, DeepLiftShap,
  GradientShap, GuidedBackprop, Deconvolution, GuidedGradCam, LRP, Occlusion, FeatureAblation,
  ShapleyValueSampling, Lime, KernelShap, ...) return (B, C, H, W), reduced over colour channels
  by ``reduction`` (one of :data:`~an8flower.baselines.base.CHANNEL_REDUCTIONS`).
* **Layer attributions** (LayerGradCam, LayerActivation, LayerConductance, LayerDeepLift,
  LayerGradientXActivation, LayerIntegratedGradients, InternalInfluence, ...) attribute to the
  output of ``layer`` (a module path or ``"auto"``, the rule of
  :func:`~an8flower.baselines.cam.default_cam_layer`; the leaderboard passes the model's
  ``DEFAULT_CAM_LAYER``, the layer of our Grad-CAM). Their (B, K, h, w) attribution is reduced over
  the layer's K channels by ``reduction`` at the layer's resolution (default ``sum``: for
  LayerActivation the summed activations, for LayerGradCam, already summed by Captum, the map
  itself), then upsampled bilinearly (``align_corners=False``) to the input's H x W, as our CAMs.

What the adapter supplies (each documented in the method's options):

* ``target``: the explained class of each image.
* ``baselines`` (the reference image of IntegratedGradients, DeepLift, Occlusion, FeatureAblation,
  ShapleyValueSampling, Lime, KernelShap, ...): a constant image of value ``baselines`` (default
  0.0, black; images are in [0, 1] for the package's models, whose normalisation is their first
  layer). The SHAP-type gradient methods (DeepLiftShap, GradientShap and their layer versions)
  need a distribution of baselines: ``n_baselines`` images of uniform noise in [0, 1], drawn from a
  generator seeded with ``seed`` and shared by the batch.
* ``feature_mask`` of the perturbation methods that ablate groups of pixels (FeatureAblation,
  ShapleyValueSampling, Lime, KernelShap): ``"grid"`` (default) cuts the image into square
  ``patch`` x ``patch`` cells, all colour channels of a cell together; ``patch`` defaults to
  ``max(1, round(min(H, W) / 8))``, 8 px at 64 px (an 8 x 8 grid, 64 features, whatever the size).
  ``"slic"`` uses SLIC superpixels (scikit-image, Achanta et al. 2012) with ``n_segments`` and
  ``compactness``, computed per image on the CPU.
* Occlusion's sliding window: a ``patch`` x ``patch`` square (same default) over all channels,
  moved by ``stride`` pixels (default ``patch // 2``).
* ``noise_tunnel`` for gradient methods: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``
  wraps the method in Captum's ``NoiseTunnel`` with ``nt_samples`` noisy copies of standard
  deviation ``nt_stdevs`` (default 0.15, 15% of the [0, 1] pixel range, the middle of the
  10-20% SmoothGrad recommends; Captum's own default, 1.0, would swamp the image).

Every other keyword of the class's constructor or of its ``attribute`` that takes a JSON value
(``n_steps``, ``method``, ``internal_batch_size``, ``multiply_by_inputs``, ``eps``, ``n_samples``,
``stdevs``, ``perturbations_per_eval``, ``relu_attributions``, ``abs``, ...) passes through with
Captum's default. Randomised methods draw from torch's global generator, seeded with ``seed`` for
the call (restored afterwards): a call is deterministic for a given batch; Lime, KernelShap and
ShapleyValueSampling draw their samples image after image, so an image's map depends on its
position in the batch.

Default channel reductions (:data:`DEFAULT_REDUCTIONS`): ``abs_max`` for the sensitivity maps
(Saliency, GuidedBackprop, Deconvolution, GuidedGradCam), as our ``gradient``; ``abs_sum`` for the
attributions that multiply by the input or its difference to a baseline (InputXGradient,
IntegratedGradients, DeepLift, DeepLiftShap, GradientShap), as our ``input_x_gradient`` and
``integrated_gradients``; ``sum`` (signed) for LRP, the perturbation methods (whose value is
shared by the channels of a feature) and the layer attributions.
"""

from __future__ import annotations

import inspect
import math
from functools import lru_cache
from typing import Any

import numpy as np
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
from an8flower.baselines.base import CHANNEL_REDUCTIONS, reduce_channels
from an8flower.baselines.cam import resolve_layer, upsample
from an8flower.errors import UsageError

__all__ = [
    "CaptumExplainer", "EXCLUDED", "DEFAULT_REDUCTIONS", "NOISE_TUNNELS", "methods", "excluded", "adapter_class",
    "grid_mask", "slic_mask",
]

LIB = LIBRARIES["captum"]

#: Abstract base classes of ``captum.attr`` (never listed).
_ABSTRACT = ("Attribution", "GradientAttribution", "PerturbationAttribution", "LayerAttribution", "NeuronAttribution")

#: Classes of ``captum.attr`` that are not offered, with the reason (and every ``Neuron*`` class:
#: it attributes one neuron of a layer, not a class score).
EXCLUDED: dict[str, str] = {
    "NoiseTunnel": "a wrapper: use the noise_tunnel option of a gradient method",
    "LimeBase": "needs Python functions for its interpretable space: use captum:Lime or captum:KernelShap",
    "FeaturePermutation": "permutes features between the images of a batch: an image's map depends on the others",
    "LayerFeaturePermutation": "permutes features between the images of a batch: an image's map depends on the others",
    "ShapleyValues": "exact Shapley values cost 2^F forward passes for F features: use captum:ShapleyValueSampling",
    "DataLoaderAttribution": "attributes a whole data loader, not one image",
    "LLMAttribution": "for language models",
    "LLMGradientAttribution": "for language models",
    "RemoteLLMAttribution": "for language models",
}

#: Channel reduction by method; perturbation methods, LRP and layer methods: ``sum``; others ``abs_sum``.
DEFAULT_REDUCTIONS: dict[str, str] = {
    "Saliency": "abs_max",
    "GuidedBackprop": "abs_max",
    "Deconvolution": "abs_max",
    "GuidedGradCam": "abs_max",
    "LRP": "sum",
}

#: Parameters the adapter supplies itself, or that take Python objects (never passed through).
_SUPPLIED = {
    "forward_func", "model", "layer", "device_ids", "inputs", "target", "additional_forward_args",
    "baselines", "layer_baselines", "feature_mask", "layer_mask", "sliding_window_shapes", "strides",
    "return_convergence_delta", "show_progress", "return_input_shape", "custom_attribution_func",
    "grad_kwargs", "interpretable_model", "similarity_func", "perturb_func", "perm_func", "verbose",
}

NOISE_TUNNELS = ("smoothgrad", "smoothgrad_sq", "vargrad")


@lru_cache(maxsize=1)
def _captum_attr() -> Any:
    import_library(LIB)
    import captum.attr

    return captum.attr


def _kinds() -> tuple[type, type, type, type]:
    from captum.attr._utils.attribution import (
        Attribution,
        GradientAttribution,
        LayerAttribution,
        NeuronAttribution,
    )

    return Attribution, GradientAttribution, LayerAttribution, NeuronAttribution


@lru_cache(maxsize=1)
def _catalogue() -> tuple[dict[str, type[Any]], dict[str, str]]:
    attr = _captum_attr()
    base, _, _, neuron = _kinds()
    offered, left_out = {}, {}
    for name in sorted(dir(attr)):
        cls = getattr(attr, name)
        if not (inspect.isclass(cls) and issubclass(cls, base)) or name in _ABSTRACT:
            continue
        if name in EXCLUDED:
            left_out[name] = EXCLUDED[name]
        elif issubclass(cls, neuron):
            left_out[name] = "attributes one neuron of a layer, not a class score"
        else:
            offered[name] = cls
    return offered, left_out


def methods() -> dict[str, type[Any]]:
    """The Captum classes offered, by name (raises UsageError when Captum is not installed)."""
    import_library(LIB)
    return dict(_catalogue()[0])


def excluded() -> dict[str, str]:
    """Classes of the installed Captum that are not offered, with the reason."""
    import_library(LIB)
    return dict(_catalogue()[1])


def _is_shap_distribution(name: str, cls: type) -> bool:
    _, gradient, _, _ = _kinds()
    return name.endswith("Shap") and issubclass(cls, gradient)


def _default_reduction(name: str, cls: type) -> str:
    from captum.attr._utils.attribution import PerturbationAttribution

    _, _, layer, _ = _kinds()
    if name in DEFAULT_REDUCTIONS:
        return DEFAULT_REDUCTIONS[name]
    if issubclass(cls, (layer, PerturbationAttribution)):
        return "sum"
    return "abs_sum"


def _options(name: str, cls: type[Any]) -> list[Option]:
    _, gradient, layer, _ = _kinds()
    init = inspect.signature(cls.__init__).parameters
    call = inspect.signature(cls.attribute).parameters
    opts = [Option("reduction", _default_reduction(name, cls), "adapter", tuple(CHANNEL_REDUCTIONS),
                   help="channel reduction" + (" over the layer's channels" if issubclass(cls, layer) else ""))]
    if "layer" in init:
        opts.append(Option("layer", "auto", "adapter", help="module path of the layer, or 'auto'"))
    if "baselines" in call:
        if _is_shap_distribution(name, cls):
            opts.append(Option("n_baselines", 8, "adapter", minimum=1, help="uniform-noise baseline images"))
        else:
            opts.append(Option("baselines", 0.0, "adapter", help="pixel value of the baseline image"))
    if "feature_mask" in call:
        opts += [
            Option("feature_mask", "grid", "adapter", ("grid", "slic"), help="square patches or SLIC superpixels"),
            Option("patch", None, "adapter", minimum=1, kind=int, help="grid cell side in px (None: min(H, W) / 8)"),
            Option("n_segments", 64, "adapter", minimum=1, help="SLIC: approximate number of superpixels"),
            Option("compactness", 10.0, "adapter", minimum=0, help="SLIC: colour vs space weight"),
        ]
    if "sliding_window_shapes" in call:
        opts += [
            Option("patch", None, "adapter", minimum=1, kind=int,
                   help="occluding square side in px (None: min(H, W) / 8)"),
            Option("stride", None, "adapter", minimum=1, kind=int, help="window step in px (None: patch // 2)"),
        ]
    if issubclass(cls, gradient):
        opts += [
            Option("noise_tunnel", None, "adapter", (None, *NOISE_TUNNELS), help="wrap in NoiseTunnel of this type"),
            Option("nt_samples", 5, "adapter", minimum=1, help="NoiseTunnel: noisy copies per image"),
            Option("nt_stdevs", 0.15, "adapter", minimum=0, help="NoiseTunnel: noise standard deviation"),
            Option("nt_samples_batch_size", None, "adapter", minimum=1, kind=int, help="NoiseTunnel: copies per pass"),
        ]
    opts.append(Option("seed", 0, "adapter", help="seed of the random draws"))
    taken = {o.name for o in opts}
    opts += [o for o in signature_options(cls.__init__, "init", sorted(_SUPPLIED)) if o.name not in taken]
    taken = {o.name for o in opts}
    opts += [o for o in signature_options(cls.attribute, "call", sorted(_SUPPLIED)) if o.name not in taken]
    return opts


class CaptumExplainer(AdapterExplainer):
    """Base of the ``captum:<Name>`` explainers (see the module docstring)."""

    library = "captum"

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        attr = _captum_attr()
        cls = methods()[self.method]
        _, _, layer_kind, _ = _kinds()
        o = self._options
        call_params = inspect.signature(cls.attribute).parameters
        init = self.targeted("init")
        if "layer" in o:
            init["layer"] = resolve_layer(model, o["layer"])[1]
        kwargs = self.targeted("call")
        if "target" in call_params:
            kwargs["target"] = targets
        h, w = images.shape[2], images.shape[3]
        patch = o.get("patch") or max(1, round(min(h, w) / 8))
        if "n_baselines" in o:
            gen = torch.Generator().manual_seed(o["seed"])
            kwargs["baselines"] = torch.rand((o["n_baselines"], *images.shape[1:]), generator=gen).to(images)
        elif "baselines" in o:
            kwargs["baselines"] = o["baselines"]
        if "feature_mask" in o:
            kwargs["feature_mask"] = (grid_mask(h, w, patch, images.device) if o["feature_mask"] == "grid"
                                      else slic_mask(images, o["n_segments"], o["compactness"]))
        if "stride" in o:
            c = images.shape[1]
            kwargs["sliding_window_shapes"] = (c, min(patch, h), min(patch, w))
            kwargs["strides"] = (c, o["stride"] or max(1, patch // 2), o["stride"] or max(1, patch // 2))
        x = images.detach().clone().requires_grad_(True)
        with library_call(model), seeded(o["seed"], images.device), torch.enable_grad():
            method = cls(model, **init)
            if o.get("noise_tunnel") is not None:
                method = attr.NoiseTunnel(method)
                kwargs.update(nt_type=o["noise_tunnel"], nt_samples=o["nt_samples"], stdevs=o["nt_stdevs"],
                              nt_samples_batch_size=o["nt_samples_batch_size"])
            out = method.attribute(x, **kwargs)
        out = out.detach()
        if issubclass(cls, layer_kind):
            if out.dim() != 4:
                raise UsageError(f"{self.name}: layer={o['layer']!r} has an attribution of shape {tuple(out.shape)}, "
                                 "not a (B, K, h, w) feature map")
            return upsample(reduce_channels(out, self.reduction), (h, w))
        return out


def grid_mask(h: int, w: int, patch: int, device: torch.device) -> torch.Tensor:
    """Feature ids (1, 1, H, W) of a grid of ``patch`` x ``patch`` cells, row-major from 0.

    The last row and column of cells are cut at the image border when ``patch`` does not divide
    the size.
    """
    rows = torch.arange(h, device=device) // patch
    cols = torch.arange(w, device=device) // patch
    return (rows[:, None] * math.ceil(w / patch) + cols[None, :]).view(1, 1, h, w)


def slic_mask(images: torch.Tensor, n_segments: int, compactness: float) -> torch.Tensor:
    """SLIC superpixel ids (B, 1, H, W) of each image (scikit-image's ``slic``, labels from 0).

    Raises:
        UsageError: scikit-image is not installed.
    """
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise UsageError('feature_mask="slic" needs scikit-image: pip install scikit-image') from None
    arrays = images.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    labels = np.stack([slic(a, n_segments=n_segments, compactness=compactness, start_label=0,
                            channel_axis=-1 if a.shape[2] > 1 else None) for a in arrays])
    return torch.from_numpy(labels).to(images.device).unsqueeze(1).long()


_CLASSES: dict[str, type] = {}


def adapter_class(method: str) -> type:
    """The explainer class of ``captum:<method>`` (made once, then cached).

    Raises:
        UsageError: Captum is not installed, or offers no such class (excluded ones give the reason).
    """
    available = methods()
    if method not in available:
        reason: str | None = excluded().get(method)
        if reason is not None:
            raise UsageError(f"captum:{method} is not offered: {reason}")
        raise UsageError(f"captum has no attribution class {method!r}; available: {', '.join(available)}")
    if method not in _CLASSES:
        cls = available[method]
        kind = "layer attribution" if issubclass(cls, _kinds()[2]) else "input attribution"
        summary = f"Captum's ``{method}`` ({kind}), through :mod:`an8flower.baselines.adapters.captum`."
        _CLASSES[method] = make_adapter_class(CaptumExplainer, method, _options(method, cls), summary)
    return _CLASSES[method]
