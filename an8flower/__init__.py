"""an8flower: the an8Flower dataset and a benchmark of visual explanations.

Implements the dataset of *Visual Explanation by Interpretation: Improving Visual Feedback
Capabilities of Deep Neural Networks* (Oramas, Wang, Tuytelaars; ICLR 2019, arXiv:1712.06302).

Public names are imported lazily (PEP 562), so ``import an8flower`` and the CLI's light commands
do not pay for importing torch.
"""

from __future__ import annotations

from an8flower._lazy import lazy_exports

__version__ = "0.1.0"

#: Public name -> (module, attribute). The renderer function is exported as ``render_sample`` and
#: the intervention function as ``intervene_sample``: the names ``an8flower.render`` and
#: ``an8flower.intervene`` belong to the submodules (importing one rebinds that attribute).
_EXPORTS = {
    "VariantSpec": ("an8flower.spec", "VariantSpec"),
    "load_spec": ("an8flower.spec", "load_spec"),
    "builtin_variants": ("an8flower.spec", "builtin_variants"),
    "Sample": ("an8flower.render", "Sample"),
    "render_sample": ("an8flower.render", "render"),
    "class_of": ("an8flower.render", "class_of"),
    "intervene_sample": ("an8flower.intervene", "intervene"),
    "intervene_many": ("an8flower.intervene", "intervene_many"),
    "Intervention": ("an8flower.intervene", "Intervention"),
    "An8Flower": ("an8flower.datasets.generated", "An8Flower"),
    "An8FlowerOnTheFly": ("an8flower.datasets.generated", "An8FlowerOnTheFly"),
}

__all__ = ["__version__", *sorted(_EXPORTS)]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
