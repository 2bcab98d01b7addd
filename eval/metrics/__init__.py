"""Metrics: localisation (heatmap vs mask) and faithfulness (model-based) scores."""
