"""``lxt:<Name>``: AttnLRP, layer-wise relevance propagation for transformers, through LXT (``lxt``).

LXT ("LRP eXplains Transformers", Achtibat et al., ICML 2024, "AttnLRP: Attention-Aware
Layer-wise Relevance Propagation for Transformers") implements LRP rules as modified gradients
("efficient" mode): ``lxt.efficient.monkey_patch`` replaces the ``forward`` of the layer classes
of a supported module so that ``input * gradient`` is the LRP relevance. For torchvision's
``vision_transformer`` (the only image model it patches; the ``vit-tiny`` preset) its default
map applies the AttnLRP rules outside attention (identity rule through GELU, LayerNorm with its
standard deviation held constant) and CP-LRP inside attention (no relevance through the softmax:
query and key detached), the variant LXT recommends for ViTs.

* ``lxt:AttnLRP``: that map. The relevance of a pixel is ``sum_c x~_c dS_t/dx~_c`` at the input
  ``x~`` of the patch embedding, the normalised image: the model's ``Normalize`` first layer passes
  relevance through (as Zennit's ``Pass`` rule does in :mod:`~an8flower.baselines.adapters.zennit`),
  so that the map conserves the relevance the rules do. ``output="logit"`` (default) starts from
  the target logit ``S_t``; ``"one_hot"`` divides the map by it. Default channel reduction ``sum``
  (signed relevance, as Zennit's LRP rows).

**Conservation**, measured by ``tests/test_transformer_lxt.py`` on a 2-block random-weight ViT
(32 px, width 16): with every bias, the position embedding and the class token set to 0 (the
terms LRP gives a share of relevance to), the pixel relevance sums to the target logit (tested to
1e-4 relative; measured 6e-8 to 1e-6); with them the sum is another number (relevance / logit
1.1 to 11 on that model: the bias terms take or give relevance).

**Hygiene.** LXT patches the *classes* (``torch.nn.GELU``, ``torch.nn.LayerNorm``,
``torch.nn.MultiheadAttention``) of the whole process, not one model. The adapter patches them only
for its call, inside :func:`patched`, and puts every class attribute back on exit, errors included,
so no other explainer or model ever sees LXT's rules (not thread-safe: the board runs explainers one
at a time per process). Models other than torchvision's ``VisionTransformer`` are refused with a
usage error naming the reason (a timm ViT's layers would not be patched: its gradient would be
returned as if it were AttnLRP).

**Licence.** LXT is BSD-3-Clause; its authors state that LRP is a patented technology that can be
used free of charge for personal and scientific purposes only (:data:`LICENCE`, shown by
``an8flower explainers``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import types
from collections.abc import Callable, Iterator

import torch
from torch import nn

from an8flower.baselines.adapters._common import (
    LIBRARIES,
    AdapterExplainer,
    Option,
    import_library,
    library_call,
    make_adapter_class,
)
from an8flower.baselines.base import HookScope
from an8flower.errors import UsageError

__all__ = ["LxtExplainer", "LICENCE", "OUTPUTS", "methods", "excluded", "adapter_class", "patched"]

LIB = LIBRARIES["lxt"]
#: The licence terms shown with the ``lxt:`` names.
LICENCE = ("LXT is BSD-3-Clause; LRP is a patented technology that can be used free of charge for personal and "
           "scientific purposes only")
OUTPUTS = ("logit", "one_hot")
#: LXT's patches that are not offered, with the reason.
EXCLUDED: dict[str, str] = {
    "language models": "LXT's patches for Hugging Face language models (llama, bert, gpt2, qwen, gemma) explain "
                       "token classifiers, not images",
}


def methods() -> dict[str, str]:
    """Offered names -> what they patch (UsageError when LXT is missing)."""
    import_library(LIB)
    return {"AttnLRP": "torchvision.models.vision_transformer"}


def excluded() -> dict[str, str]:
    import_library(LIB)
    return dict(EXCLUDED)


@functools.lru_cache(maxsize=1)
def vit_patch_map() -> dict[type, Callable[[type], bool]]:
    """LXT's patch map for torchvision's ``vision_transformer`` (``lxt.efficient.models.vit_torch.cp_LRP``).

    LXT 2.1's ``lxt.efficient`` package imports its Hugging Face language-model patches first, which
    fail with transformers 5 (``find_pruneable_heads_and_indices`` was removed). When that import
    fails, LXT's own rule and patch modules (``lxt/efficient/rules.py``, ``patches.py``) are loaded
    without the package's ``__init__`` (``sys.modules`` is restored afterwards) and the map is the
    one ``vit_torch.py`` defines: GELU -> ``non_linear_forward``, LayerNorm -> ``layer_norm_forward``,
    MultiheadAttention -> ``cp_multi_head_attention_forward``.
    """
    try:
        from lxt.efficient.models.vit_torch import cp_LRP

        return dict(cp_LRP)
    except ImportError:
        pass
    import lxt

    names = ("lxt.efficient", "lxt.efficient.rules", "lxt.efficient.patches")
    saved = {name: sys.modules.get(name) for name in names}
    package = types.ModuleType("lxt.efficient")
    package.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
    sys.modules["lxt.efficient"] = package
    try:
        patches = importlib.import_module("lxt.efficient.patches")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return {
        nn.GELU: functools.partial(patches.patch_method, patches.non_linear_forward, keep_original=True),
        nn.LayerNorm: functools.partial(patches.patch_method, patches.layer_norm_forward),
        nn.MultiheadAttention: functools.partial(patches.patch_method, patches.cp_multi_head_attention_forward,
                                                 keep_original=True),
    }


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """Inside the block, LXT's patch map for torchvision's ``vision_transformer`` is applied (each
    patch called on its class, as ``lxt.efficient.monkey_patch`` does); on exit every patched class
    gets back the attributes it had (``forward``, ``original_forward``), errors included."""
    patch_map = vit_patch_map()
    saved = {cls: {k: cls.__dict__[k] for k in ("forward", "original_forward") if k in cls.__dict__} for cls in patch_map}
    try:
        for cls, patch in patch_map.items():
            if not patch(cls):
                raise UsageError(f"lxt: could not patch {cls.__name__} (already patched by someone else?)")
        yield
    finally:
        for cls, attrs in saved.items():
            for key in ("forward", "original_forward"):
                if key in attrs:
                    setattr(cls, key, attrs[key])
                elif key in cls.__dict__:
                    delattr(cls, key)


def _patch_embedding(model: nn.Module) -> nn.Module:
    from torchvision.models import VisionTransformer

    vits = [m for m in model.modules() if isinstance(m, VisionTransformer)]
    if not vits:
        raise UsageError(f"lxt:AttnLRP: LXT patches torchvision's VisionTransformer only, and {type(model).__name__} holds "
                         "none (use the vit-tiny preset or a torchvision:vit_* model)")
    return vits[0].conv_proj


class LxtExplainer(AdapterExplainer):
    """Base of the ``lxt:<Name>`` explainers (see the module docstring)."""

    library = "lxt"
    reduction = "sum"

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import_library(LIB)
        embedding = _patch_embedding(model)
        inputs: list[torch.Tensor] = []
        x = images.detach().clone().requires_grad_(True)
        with library_call(model), patched(), torch.enable_grad(), HookScope() as hooks:
            hooks.add(embedding.register_forward_pre_hook(lambda m, args: inputs.append(args[0])))
            logits = model(x)
            score = logits.gather(1, targets.view(-1, 1))
            if self._options["output"] == "one_hot":
                score = score / score.detach()
            (grad,) = torch.autograd.grad(score.sum(), inputs[0])
        return (inputs[0].detach() * grad).detach()


def _options() -> list[Option]:
    return [Option("output", "logit", "adapter", OUTPUTS, help="relevance at the output: the target logit or 1"),
            Option("reduction", "sum", "adapter", help="channel reduction")]


_CLASSES: dict[str, type] = {}


def adapter_class(method: str) -> type:
    """The explainer class of ``lxt:<method>`` (made once, then cached).

    Raises:
        UsageError: LXT is not installed, or offers no such method.
    """
    available = methods()
    if method not in available:
        raise UsageError(f"lxt has no method {method!r}; available: {', '.join(available)}")
    if method not in _CLASSES:
        summary = (f"LXT's ``{method}`` for torchvision ViTs, through :mod:`an8flower.baselines.adapters.lxt`. "
                   f"Licence: {LICENCE}.")
        _CLASSES[method] = make_adapter_class(LxtExplainer, method, _options(), summary)
    return _CLASSES[method]
