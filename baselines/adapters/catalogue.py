"""Adapter names: the catalogue of libraries, the recommended set for the board, and known duplicates
(resolving and listing names: :mod:`an8flower.baselines.adapters._common`)."""

from __future__ import annotations

import importlib
from typing import Any

from an8flower.baselines.adapters._common import LIBRARIES, import_library, library_version, list_adapter_explainers
from an8flower.errors import UsageError

__all__ = [
    "catalogue",
    "BOARD_ADAPTERS",
    "BOARD_OPTIONS",
    "DUPLICATES",
    "board_config",
]


def catalogue() -> list[dict[str, Any]]:
    """One entry per library: ``prefix``, ``distribution``, ``version`` (None when missing),
    ``install`` (the pip command of its extra), ``available``, ``methods`` (adapter names),
    ``excluded`` (method -> why it is not offered) and, for libraries with terms of use beyond
    their licence (LXT: LRP is patented), ``licence``."""
    out = []
    for lib in LIBRARIES.values():
        entry: dict[str, Any] = {"prefix": lib.prefix, "distribution": lib.distribution, "install": lib.install,
                                 "version": library_version(lib), "available": False, "methods": [], "excluded": {}}
        try:
            import_library(lib)
        except UsageError:
            out.append(entry)
            continue
        module = importlib.import_module(lib.module)
        entry.update(available=True, methods=[f"{lib.prefix}:{m}" for m in module.methods()],
                     excluded={f"{lib.prefix}:{m}": why for m, why in module.excluded().items()})
        if hasattr(module, "LICENCE"):
            entry["licence"] = module.LICENCE
        out.append(entry)
    return out


#: The adapter methods recommended for the published board: every offered method that works on
#: the package's models (small CNN, ResNet18, VGG16) at 64-112 px on a CPU within a few times the
#: cost of our occlusion row, with :data:`BOARD_OPTIONS`. Left out (they run, but are not worth a
#: row): captum's LRP and LayerLRP (Captum's LRP has no rule for the models' ``Normalize`` module:
#: a cell error; Zennit covers LRP), LayerFeatureAblation (one forward pass per layer unit),
#: InternalInfluence/LayerConductance/LayerIntegratedGradients/LayerDeepLift/LayerDeepLiftShap/
#: LayerGradientShap/LayerGradientXActivation (layer versions of the input rows, upsampled like
#: LayerGradCam), captum:ShapleyValueSampling (64 features x n_samples forward passes per image),
#: gradcam:RandomCAM (a chance row we already have), gradcam:KPCA_CAM / SegEigenCAM / FEM /
#: GradCAMElementWise / ShapleyCAM (variants of rows on the board), zennit:BetaSmooth (a smoothed
#: gradient for second-order methods) and the zennit attributors (SmoothGrad and
#: IntegratedGradients duplicate ours; see :data:`DUPLICATES`). The costliest rows are ScoreCAM and
#: AblationCAM: one forward pass per channel of the CAM layer per image (64 on the small CNN, 512
#: on ResNet18's ``layer4``), then Lime and KernelShap (200 passes per image).
BOARD_ADAPTERS: tuple[str, ...] = (
    "captum:Saliency",
    "captum:InputXGradient",
    "captum:IntegratedGradients",
    "captum:DeepLift",
    "captum:DeepLiftShap",
    "captum:GradientShap",
    "captum:GuidedBackprop",
    "captum:Deconvolution",
    "captum:GuidedGradCam",
    "captum:Occlusion",
    "captum:FeatureAblation",
    "captum:Lime",
    "captum:KernelShap",
    "captum:LayerGradCam",
    "captum:LayerActivation",
    "zennit:EpsilonPlusFlat",
    "zennit:EpsilonGammaBox",
    "zennit:EpsilonAlpha2Beta1Flat",
    "zennit:EpsilonPlus",
    "zennit:EpsilonAlpha2Beta1",
    "zennit:ExcitationBackprop",
    "zennit:GuidedBackprop",
    "zennit:DeconvNet",
    "gradcam:GradCAM",
    "gradcam:HiResCAM",
    "gradcam:GradCAMPlusPlus",
    "gradcam:XGradCAM",
    "gradcam:EigenCAM",
    "gradcam:EigenGradCAM",
    "gradcam:LayerCAM",
    "gradcam:ScoreCAM",
    "gradcam:AblationCAM",
    "gradcam:FullGrad",
)

#: Cost-cutting options of the board (the same budget as our rows: integrated gradients 32
#: quadrature points, occlusion an 8 px window moved by 4 px at 64 px, perturbation methods 64
#: grid features and 100-200 model evaluations per image).
BOARD_OPTIONS: dict[str, dict[str, Any]] = {
    "captum:IntegratedGradients": {"n_steps": 32, "internal_batch_size": 64},
    "captum:DeepLiftShap": {"n_baselines": 4},
    "captum:GradientShap": {"n_samples": 16},
    "captum:Occlusion": {"stride": 4},
    "captum:FeatureAblation": {"perturbations_per_eval": 16},
    "captum:Lime": {"n_samples": 200, "perturbations_per_eval": 50},
    "captum:KernelShap": {"n_samples": 200, "perturbations_per_eval": 50},
    "gradcam:ScoreCAM": {"batch_size": 64},
    "gradcam:AblationCAM": {"batch_size": 64},
}

#: Pairs of names that compute the same method, with the options that make them comparable and
#: what ``tests/test_adapters_*.py`` measures: ``"equal"`` (to float32 rounding, 1e-4 relative, on
#: the small CNN, before any min-max scaling), or a sentence saying how they differ.
DUPLICATES: tuple[tuple[str, str, str], ...] = (
    ("gradient", "captum:Saliency", "equal (both max_c |dS/dx_c|)"),
    ("gradient", "zennit:Gradient", "equal (output='one_hot')"),
    ("input_x_gradient", "captum:InputXGradient", "equal (both abs_sum of x * dS/dx)"),
    ("guided_backprop", "captum:GuidedBackprop", "equal"),
    ("guided_backprop", "zennit:GuidedBackprop", "equal (output='one_hot')"),
    ("deconvnet", "captum:Deconvolution", "equal"),
    ("deconvnet", "zennit:DeconvNet", "equal (output='one_hot')"),
    ("integrated_gradients", "captum:IntegratedGradients", "equal with n_steps=steps (both Captum, Gauss-Legendre)"),
    ("integrated_gradients", "zennit:IntegratedGradients",
     "same integral, other quadrature (right Riemann sum, 20 steps): close, not equal"),
    ("smoothgrad", "zennit:SmoothGrad",
     "same estimator, other noise draws (and zennit's last sample is noise-free): equal at zero noise, else not"),
    ("smoothgrad", "captum:Saliency",
     "with noise_tunnel='smoothgrad' and abs=False: the same estimator, other draws; equal at zero noise"),
    ("gradcam", "captum:LayerGradCam", "equal with relu_attributions=True on feature maps (the same formula)"),
    ("gradcam", "gradcam:GradCAM",
     "equal after min-max scaling when the layer is at input resolution; theirs rescales before resizing"),
    ("gradcam_pp", "gradcam:GradCAMPlusPlus",
     "equal after min-max scaling to 1e-3 when the logits are large; their 1e-7 in the denominator differs"),
    ("occlusion", "captum:Occlusion",
     "same method (ours calls Captum), other defaults: ours scores the softmax with a grey 16 px square, theirs "
     "the logit with a black one of side / 8; equal with output='logit', baseline=0, the same window and stride"),
)


def board_config(ours: list[str]) -> str:
    """A TOML fragment for a leaderboard config: ``explainers`` = ``ours`` then the available
    :data:`BOARD_ADAPTERS`, their :data:`BOARD_OPTIONS` tables, and the :data:`DUPLICATES` among
    them as comments (what the published board's note says)."""
    available = set(list_adapter_explainers())
    names = list(ours) + [n for n in BOARD_ADAPTERS if n in available]
    missing = [n for n in BOARD_ADAPTERS if n not in available]
    lines = ["# The board's explainers: ours, then the recommended adapters (an8flower.baselines.adapters)."]
    if missing:
        lines.append(f"# Not installed here: {', '.join(missing)}")
    lines.append("# Same method under two names (tests/test_adapters_*.py measure the agreement):")
    lines += [f"#   {a} = {b}: {how}" for a, b, how in DUPLICATES if a in names and b in names]
    lines.append("explainers = [" + ", ".join(f'"{n}"' for n in names) + "]")
    for name in names:
        if name in BOARD_OPTIONS:
            lines.append(f'\n[explainer_options."{name}"]')
            lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v!r}" for k, v in BOARD_OPTIONS[name].items()]
    return "\n".join(lines) + "\n"
