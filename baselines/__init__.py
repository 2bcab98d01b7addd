"""Explainers: the protocol, the registry, the paper's method (VEBI) and baseline explainers.

Importing this package registers the built-in explainers: each explainer module registers its
classes (:func:`~an8flower.baselines.registry.register_explainer`) when imported, and this
``__init__`` imports every one of them. A new explainer module is imported here.
"""

from an8flower.baselines.base import (
    CHANNEL_REDUCTIONS,
    Explainer,
    GroundTruth,
    HookScope,
    SelectOutput,
    check_inputs,
    check_options,
    complete_options,
    model_device,
    reduce_channels,
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
from an8flower.baselines.reference import ORACLE, CentreGaussian, Oracle, RandomMap
from an8flower.baselines.registry import build_explainer, explainer_class, list_explainers, register_explainer
from an8flower.baselines.rules import backward_rules, modified_gradient
from an8flower.baselines.spec import (
    ExplainerSpec,
    default_explainers,
    explainer_code_identity,
    resolve_explainers,
    split_explainer_name,
)
from an8flower.baselines.transformer import AttentionRelevance, AttentionRollout
from an8flower.baselines.vebi import VEBI, FeatureMaps, RelevantFeature

__all__ = [
    "CHANNEL_REDUCTIONS",
    "Explainer",
    "GroundTruth",
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
    "ORACLE",
    "Oracle",
    "AttentionRollout",
    "AttentionRelevance",
    "RandomMap",
    "CentreGaussian",
    "ExplainerSpec",
    "resolve_explainers",
    "default_explainers",
    "split_explainer_name",
    "explainer_code_identity",
    "check_options",
    "complete_options",
    "VEBI",
    "FeatureMaps",
    "RelevantFeature",
]
