"""What the leaderboard knows of a metric (:class:`MetricSpec`), apart from the scorer.

The built-in metrics' specs (:data:`an8flower.eval.scoring.METRICS`) and the Quantus metrics'
(:mod:`an8flower.eval.quantus_metrics`) are both made of this class, so neither registry imports
the other's module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MetricSpec"]


@dataclass(frozen=True)
class MetricSpec:
    """A metric as the leaderboard uses it.

    Attributes:
        name: the metric's name in tables and ``results.csv``.
        label: the column header in ``leaderboard.md``.
        kind: ``"mask"`` (heatmaps, masks), ``"set"`` (a set-level accumulator), ``"parts"``
            (heatmaps, part maps), ``"model"`` (model, images, heatmaps, targets),
            ``"explainer"`` (model, explainer, images, targets), ``"counterfactual"`` (heatmaps and
            the counterfactual inputs of :mod:`an8flower.eval.reliance`: change masks, per-part
            reliance), ``"contrast"`` (the same, plus a second explanation, of the runner-up), or
            ``"quantus"`` / ``"quantus_model"`` (a Quantus metric on the batch, heatmap-only /
            model-based: :mod:`an8flower.eval.quantus_metrics`).
        higher_is_better: the direction in which the best explainer of a column is picked.
        defaults: keyword options passed to the metric function unless the run overrides them.
        function: the name of the function (or accumulator class) in :mod:`an8flower.eval.metrics`
            that computes it (default: ``name``); its signature's defaults complete the options in
            the cache key.
        skip: leading positional parameters of ``function`` that are data, not options.
        description: one line for the legend of ``leaderboard.md``.
    """

    name: str
    label: str
    kind: str
    higher_is_better: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)
    function: str | None = None
    skip: int = 2
    description: str = ""

    def callable(self) -> Callable[..., Any] | None:
        """The function that computes the metric, or None when it is not in :mod:`an8flower.eval.metrics`."""
        from an8flower.eval import metrics as M

        return getattr(M, self.function or self.name, None)
