"""Adapters: other libraries' explainers under our protocol, by prefixed name.

* ``captum:<Name>``: any Captum attribution class (:mod:`an8flower.baselines.adapters.captum`);
* ``zennit:<Name>``: Zennit's LRP composites and attributors (:mod:`an8flower.baselines.adapters.zennit`);
* ``gradcam:<Name>``: pytorch-grad-cam's CAM family (:mod:`an8flower.baselines.adapters.gradcam`);
* ``lxt:<Name>``: AttnLRP for torchvision ViTs through LXT (:mod:`an8flower.baselines.adapters.lxt`;
  LRP is free for personal and scientific use only);
* ``torchcam:<Name>``: torchcam's LeGrad for torchvision ViTs (:mod:`an8flower.baselines.adapters.torchcam`).

``build_explainer("zennit:EpsilonPlusFlat")`` and the leaderboard's ``--explainer`` take these
names; each library is imported only when one of its names is built (a missing library is a
:class:`~an8flower.errors.UsageError` naming the extra that installs it). The options of a method
are its library's, passed through, plus what the adapter supplies (layer, baselines, feature
masks, channel reduction, seed), listed in each class's docstring and signature.
"""

from an8flower.baselines.adapters._common import (
    LIBRARIES,
    RELU_RULE_ADAPTERS,
    AdapterExplainer,
    Library,
    adapter_class,
    is_adapter_name,
    library_call,
    list_adapter_explainers,
    seeded,
)
from an8flower.baselines.adapters.catalogue import (
    BOARD_ADAPTERS,
    BOARD_OPTIONS,
    DUPLICATES,
    board_config,
    catalogue,
)

__all__ = [
    "LIBRARIES",
    "Library",
    "AdapterExplainer",
    "library_call",
    "seeded",
    "adapter_class",
    "is_adapter_name",
    "list_adapter_explainers",
    "catalogue",
    "BOARD_ADAPTERS",
    "BOARD_OPTIONS",
    "DUPLICATES",
    "RELU_RULE_ADAPTERS",
    "board_config",
]
