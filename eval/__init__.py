"""Evaluation: metrics, classifiers to explain, the leaderboard runner and reports.

Public names are imported lazily (PEP 562), so that importing a submodule (the CLI's command
registration imports ``an8flower.eval.config`` and ``an8flower.eval.reproduce``) does not import torch.
"""

from __future__ import annotations

from an8flower._lazy import lazy_exports

#: Public name -> (module, attribute).
_EXPORTS = {
    "DEFAULT_CAM_LAYER": ("an8flower.eval.models", "DEFAULT_CAM_LAYER"),
    "build_model": ("an8flower.eval.models", "build_model"),
    "list_models": ("an8flower.eval.models", "list_models"),
    "ModelSpec": ("an8flower.eval.models", "ModelSpec"),
    "resolve_model": ("an8flower.eval.models", "resolve_model"),
    "load_weights": ("an8flower.eval.models", "load_weights"),
    "load_checkpoint": ("an8flower.eval.models", "load_checkpoint"),
    "run_leaderboard": ("an8flower.eval.runner", "run_leaderboard"),
    "RunConfig": ("an8flower.eval.config", "RunConfig"),
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
