"""Explainers for Vision Transformers: attention rollout and gradient-weighted attention relevance.

Both read the attention probabilities ``A`` (B, h, N, N) of every self-attention block (``h``
heads, ``N`` tokens: the class token, then the ``g_h x g_w`` patch tokens row by row), captured
by :func:`capture_attention` inside a context manager that removes every hook and restores every
switched flag on exit, errors included. Supported attention modules (:func:`attention_modules`):
torchvision's ``nn.MultiheadAttention`` (``torchvision.models.VisionTransformer``, the ``vit-tiny``
preset) and timm's ``Attention`` (``timm:`` ViTs and DeiTs, the ``deit-tiny`` preset). The
probabilities are the softmax outputs the block multiplies the values with: the capture forces the
explicit (unfused) attention path for the call (torchvision: ``need_weights=True``; timm:
``fused_attn = False``), whose result equals the fused one's to float rounding, and records the
softmax output inside each attention module's forward with a
:class:`torch.overrides.TorchFunctionMode`.

The relevance of the class token to the patch tokens, a (B, g_h, g_w) map, is upsampled to the
input's H x W bilinearly (``align_corners=False``), as the CAMs are.

* ``attention_rollout`` (Abnar & Zuidema, ACL 2020): ``R = prod_l norm(0.5 (Abar_l + I))`` from the
  first block to the last, ``Abar_l`` the heads fused by ``mean``, ``max`` or ``min``, ``norm``
  renormalising each row to sum 1 (the residual connection, half the weight on the token itself);
  optionally the ``discard_ratio`` smallest entries of each ``Abar_l`` (class-token column kept) set
  to 0 before adding the identity (Gildenblat's variant, as the original leaves them). Class-agnostic.
* ``attention_relevance`` (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability
  for Interpreting Bi-Modal and Encoder-Decoder Transformers", Eqs. 5-6 for self-attention):
  ``R = I``, then for each block in order ``R <- R + E_h[(grad A_l * A_l)^+] R``, with
  ``grad A_l = d S_t / d A_l`` the gradient of the target logit. One forward and one backward pass
  for the whole batch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines._options import check_choice
from an8flower.baselines.base import Explainer, HookScope, register_explainer
from an8flower.errors import UsageError

__all__ = [
    "attention_modules",
    "is_transformer",
    "token_grid",
    "tokens_to_grid",
    "capture_attention",
    "rollout",
    "gradient_weighted_relevance",
    "AttentionRollout",
    "AttentionRelevance",
    "HEAD_FUSIONS",
]

#: Ways of fusing the heads of one block's attention (B, h, N, N) -> (B, N, N).
HEAD_FUSIONS = ("mean", "max", "min")


def _is_timm_attention(m: nn.Module) -> bool:
    return hasattr(m, "fused_attn") and hasattr(m, "qkv") and hasattr(m, "num_heads")


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every self-attention module the transformer explainers can read, in
    registration order (torchvision's ``nn.MultiheadAttention``, timm's ``Attention``)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention) or _is_timm_attention(m)]


def is_transformer(model: nn.Module) -> bool:
    """Whether ``model`` has attention blocks (see :func:`attention_modules`)."""
    return bool(attention_modules(model))
