"""Explainers: the protocol, the registry, the paper's method (VEBI) and baseline explainers."""

from an8flower.baselines.base import (
    CHANNEL_REDUCTIONS,
    Explainer,
    HookScope,
    build_explainer,
    check_inputs,
    explainer_class,
    list_explainers,
    model_device,
    reduce_channels,
    register_explainer,
)

__all__ = [
    "CHANNEL_REDUCTIONS",
    "Explainer",
    "HookScope",
    "build_explainer",
    "check_inputs",
    "explainer_class",
    "list_explainers",
    "model_device",
    "reduce_channels",
    "register_explainer",
]
