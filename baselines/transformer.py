"""Explainers for Vision Transformers: attention rollout and gradient-weighted attention relevance.

Both read the attention probabilities ``A`` (B, h, N, N) of every self-attention block (``h``
heads, ``N`` tokens: the class token, then the ``g_h x g_w`` patch tokens row by row), captured
by :func:`capture_attention` inside a context manager that removes every hook and restores every
switched flag on exit, errors included. Supported attention modules (:func:`attention_modules`):
torchvision's ``nn.MultiheadAttention`` (``torchvision.models.VisionTransformer``, the ``vit-tiny``
preset) and timm's ``Attention`` (``timm:`` ViTs and DeiTs, the ``deit-tiny`` preset). The
probabilities are the softmax outputs the block multiplies the values with, in the autograd graph
(see :func:`capture_attention` for how each kind is read).

The relevance of the class token to the patch tokens, a (B, g_h, g_w) map, is upsampled to the
input's H x W bilinearly (``align_corners=False``), as the CAMs are.

* ``vit_rollout`` (Abnar & Zuidema, ACL 2020): ``R = prod_l norm(0.5 (Abar_l + I))`` from the
  first block to the last, ``Abar_l`` the heads fused by ``mean``, ``max`` or ``min``, ``norm``
  renormalising each row to sum 1 (the residual connection, half the weight on the token itself);
  optionally the ``discard_ratio`` fraction of smallest entries of each ``Abar_l`` set to 0 before
  adding the identity, the class token's attention to itself spared (the variant of Gildenblat's
  widely used implementation; the paper discards nothing). Class-agnostic.
* ``vit_relevance`` (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability
  for Interpreting Bi-Modal and Encoder-Decoder Transformers", Eqs. 5-6 for self-attention):
  ``R = I``, then for each block in order ``R <- R + E_h[(grad A_l * A_l)^+] R``, with
  ``grad A_l = d S_t / d A_l`` the gradient of the target logit. One forward and one backward pass
  for the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines._options import check_choice
from an8flower.baselines.base import Explainer, HookScope
from an8flower.baselines.registry import register_explainer
from an8flower.baselines.vit import (
    NON_RELU_ACTIVATIONS,
    attention_modules,
    is_timm_attention,
    is_transformer,
    require_relu_network,
    token_grid,
    tokens_to_grid,
)
from an8flower.errors import UsageError

__all__ = [
    "attention_modules",
    "is_transformer",
    "require_relu_network",
    "NON_RELU_ACTIVATIONS",
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


def _explicit_self_attention(m: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.MultiheadAttention`` self-attention of ``x`` written out: ``(output, A (B, h, N, N))``.

    ``A = softmax(Q K^T / sqrt(d))`` with ``Q, K, V`` the packed input projection's thirds split
    into ``h`` heads of width ``d``; output ``= out_proj(concat_h(A V))``: what the module computes
    in eval mode (no dropout) for ``query = key = value = x`` without masks.
    """
    if not m.batch_first:
        x = x.transpose(0, 1)
    b, n, e = x.shape
    h = m.num_heads
    d = e // h
    q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    attention = (q @ k.transpose(-2, -1) * d**-0.5).softmax(dim=-1)
    out = F.linear((attention @ v).transpose(1, 2).reshape(b, n, e), m.out_proj.weight, m.out_proj.bias)
    return (out if m.batch_first else out.transpose(0, 1)), attention


class AttentionMaps:
    """What :func:`capture_attention` yields: after a forward, :attr:`tensors` are the attention
    probabilities (B, h, N, N) of every block in forward order, the very tensors the blocks used
    (``autograd.grad`` can be taken with respect to them)."""

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        self._modules = modules
        self.records: list[tuple[nn.Module, torch.Tensor]] = []

    @property
    def tensors(self) -> list[torch.Tensor]:
        records = self.records
        if len(records) != len(self._modules) or any(m is not r[0] for (_, m), r in zip(self._modules, records, strict=True)):
            names = [n for n, _ in self._modules]
            raise UsageError(f"expected one attention map from each of {len(names)} attention modules ({names[0]}, ...) "
                             f"in one forward pass, got {len(records)}: run one forward inside capture_attention, "
                             "and each attention module once")
        return [t for _, t in records]

    def timm_hook(self, attention: nn.Module) -> Any:
        def hook(dropout: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            self.records.append((attention, inputs[0]))  # attn_drop(attn.softmax(-1)): its input is A

        return hook

    def torch_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        query, key, value = (list(args) + [kwargs.get(k) for k in ("query", "key", "value")][len(args):])[:3]
        masks = [kwargs.get(k) for k in ("key_padding_mask", "attn_mask")] + list(args[4:5]) + list(args[5:6])
        if not (query is key is value) or any(t is not None for t in masks) or module.bias_k is not None \
                or module.add_zero_attn or not module._qkv_same_embed_dim:
            raise UsageError("attention capture reads nn.MultiheadAttention self-attention only (query = key = value, "
                             "no masks, packed projection, no bias_k or zero attention)")
        out, attention = _explicit_self_attention(module, query)
        self.records.append((module, attention))
        return out, None


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionMaps]:
    """Inside the block, a forward of ``model`` records the attention probabilities of every block.

    timm's ``Attention``: its ``fused_attn`` flag is switched off for the block (the explicit path
    ``attn_drop(softmax(q k^T * scale)) @ v``) and the input of ``attn_drop`` is recorded. torch's
    ``nn.MultiheadAttention`` (torchvision's ViT): its output is replaced by the same self-attention
    written out (:func:`_explicit_self_attention`), whose probabilities are recorded. Either way the
    model computes what it computes outside the block, to float rounding. On exit, errors included,
    every hook is removed and the ``fused_attn`` flags are restored.

    Raises:
        UsageError: the model has no supported attention modules.
    """
    modules = attention_modules(model)
    if not modules:
        raise UsageError(f"{type(model).__name__} has no attention modules (torch nn.MultiheadAttention or timm "
                         "Attention): the attention explainers apply to Vision Transformers")
    maps = AttentionMaps(modules)
    fused = [(m, m.fused_attn) for _, m in modules if is_timm_attention(m)]
    with HookScope() as hooks:
        try:
            for _, m in modules:
                if isinstance(m, nn.MultiheadAttention):
                    hooks.add(m.register_forward_hook(maps.torch_hook, with_kwargs=True))
                else:
                    m.fused_attn = False
                    hooks.add(m.attn_drop.register_forward_hook(maps.timm_hook(m)))
            yield maps
        finally:
            for m, flag in fused:
                m.fused_attn = flag


def _fuse(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    if head_fusion == "mean":
        return attention.mean(dim=1)
    return attention.amax(dim=1) if head_fusion == "max" else attention.amin(dim=1)


def rollout(attentions: list[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020) of per-block attention (B, h, N, N), first block first.

    ``M_l = rownorm(0.5 (fuse_h A_l + I))``, ``R = M_L ... M_2 M_1``; with ``discard_ratio = r > 0``
    the ``floor(r N^2)`` smallest entries of ``fuse_h A_l`` are set to 0 first, except entry (0, 0)
    (the class token's attention to itself) when it is among them.

    Returns:
        (B, N, N): row ``i`` is how much token ``i`` of the last block draws on each input token.
    """
    b, _, n, _ = attentions[0].shape
    eye = torch.eye(n, device=attentions[0].device, dtype=attentions[0].dtype)
    result = eye.expand(b, n, n)
    for attention in attentions:
        fused = _fuse(attention, head_fusion)
        drop = int(discard_ratio * n * n)
        if drop:
            flat = fused.flatten(1)
            lowest = flat.topk(drop, dim=1, largest=False).indices
            mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
            mask[:, 0] = False
            fused = flat.masked_fill(mask, 0).view(b, n, n)
        m = 0.5 * (fused + eye)
        m = m / m.sum(dim=-1, keepdim=True)
        result = m @ result
    return result


def gradient_weighted_relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer, Gur & Wolf (ICCV 2021), Eqs. 5-6: ``R = I``, ``R <- R + E_h[(dS/dA_l * A_l)^+] R`` per block.

    Args:
        attentions, gradients: per block, first block first, (B, h, N, N) each.

    Returns:
        (B, N, N) relevance of input tokens (columns) for each output token (rows).
    """
    b, _, n, _ = attentions[0].shape
    r = torch.eye(n, device=attentions[0].device, dtype=attentions[0].dtype).expand(b, n, n)
    for a, g in zip(attentions, gradients, strict=True):
        r = r + (g * a).clamp(min=0).mean(dim=1) @ r
    return r


def _class_token_map(model: nn.Module, relevance: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The class token's row over the patch tokens, on the patch grid, upsampled bilinearly to the input."""
    n_prefix, gh, gw = token_grid(model, images, relevance.shape[-1])
    grid = relevance[:, 0, n_prefix:].reshape(-1, 1, gh, gw)
    return F.interpolate(grid, size=images.shape[2:], mode="bilinear", align_corners=False).squeeze(1)


@register_explainer("vit_rollout")
class AttentionRollout(Explainer):
    """Attention rollout (Abnar & Zuidema, ACL 2020): the class token's row of :func:`rollout` over the
    patches, upsampled to the input. Class-agnostic (the target is ignored). One forward pass.

    Args:
        head_fusion: ``mean`` (the paper's), ``max`` or ``min`` over heads.
        discard_ratio: fraction of the smallest fused attention entries set to 0 per block (0: none).
    """

    amp_safe = False

    def __init__(self, head_fusion: str = "mean", discard_ratio: float = 0.0) -> None:
        self.head_fusion = check_choice("head_fusion", head_fusion, HEAD_FUSIONS)
        if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
            raise UsageError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
        self.discard_ratio = float(discard_ratio)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), capture_attention(model) as maps:
            model(images)
        return _class_token_map(model, rollout(maps.tensors, self.head_fusion, self.discard_ratio), images)

    def options(self) -> dict[str, Any]:
        return {"head_fusion": self.head_fusion, "discard_ratio": self.discard_ratio}


@register_explainer("vit_relevance")
class AttentionRelevance(Explainer):
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021): the class token's row
    of :func:`gradient_weighted_relevance` over the patches, upsampled to the input. One forward
    and one backward pass per batch (gradients of the target logits with respect to the attention
    maps only)."""

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        for p in model.parameters():  # restored by Explainer.__call__
            p.requires_grad_(False)
        x = images.detach().requires_grad_(True)  # so that the attention maps have a graph
        with torch.enable_grad():
            with capture_attention(model) as maps:
                logits = model(x)
            tensors = maps.tensors
            score = logits.gather(1, targets.view(-1, 1)).sum()
            grads = torch.autograd.grad(score, tensors)
        relevance = gradient_weighted_relevance([t.detach() for t in tensors], list(grads))
        return _class_token_map(model, relevance, images)
