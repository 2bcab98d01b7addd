"""Explainers: the protocol, the registry, the paper's method (VEBI) and baseline explainers."""

from an8flower.baselines.base import (
    CHANNEL_REDUCTIONS,
    Explainer,
    HookScope,
    SelectOutput,
    build_explainer,
    check_inputs,
    explainer_class,
    list_explainers,
    model_device,
    reduce_channels,
    register_explainer,
)
from an8flower.baselines.cam import GradCAM, GradCAMPlusPlus, UpsampledActivation, default_cam_layer, resolve_layer
from an8flower.baselines.gradient import (
    Deconvnet,
    Gradient,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    SmoothGrad,
)
from an8flower.baselines.perturbation import RISE, Occlusion
from an8flower.baselines.reference import CentreGaussian, RandomMap
from an8flower.baselines.rules import backward_rules, modified_gradient
from an8flower.baselines.transformer import AttentionRelevance, AttentionRollout
from an8flower.baselines.vebi import VEBI, FeatureMaps, RelevantFeature

__all__ = [
    "CHANNEL_REDUCTIONS",
    "Explainer",
    "HookScope",
    "SelectOutput",
    "build_explainer",
    "check_inputs",
    "explainer_class",
    "list_explainers",
    "model_device",
    "reduce_channels",
    "register_explainer",
    "backward_rules",
    "modified_gradient",
    "default_cam_layer",
    "resolve_layer",
    "Gradient",
    "InputXGradient",
    "GuidedBackprop",
    "Deconvnet",
    "IntegratedGradients",
    "SmoothGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "UpsampledActivation",
    "Occlusion",
    "RISE",
    "AttentionRollout",
    "AttentionRelevance",
    "RandomMap",
    "CentreGaussian",
    "VEBI",
    "FeatureMaps",
    "RelevantFeature",
]
