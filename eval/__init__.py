"""Evaluation: metrics, classifiers to explain, the leaderboard runner and reports."""

from an8flower.eval.models import DEFAULT_CAM_LAYER, build_model, list_models, load_weights

__all__ = ["DEFAULT_CAM_LAYER", "build_model", "list_models", "load_weights"]
