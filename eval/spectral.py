"""The stride-fix artefact, measured: the share of a heatmap's spectral energy at the stride frequencies.

Back-propagating a signal through a convolution of stride ``s`` with its transpose scatters it on a
grid of period ``s``: the input-space map carries a checkerboard whose energy sits at the
frequencies of that grid. Oramas et al. (ICLR 2019) remove it with the stride fix
(:mod:`an8flower.baselines.rules`). For a map of ``H x W`` pixels and a total stride ``s``, the
**stride frequencies** of an axis of length ``n`` are the FFT bins

    f_k = round(k n / s) (mod n), k = 1, ..., s - 1,

each widened by a tolerance band of ``tol`` bins on either side (default 1: ``f_k - 1, f_k,
f_k + 1``, for the rounding of non-integer ``k n / s`` and the spread of a finite grid). A 2-D bin
``(u, v)`` is a stride frequency when ``u`` is one on the vertical axis **or** ``v`` one on the
horizontal axis (a grid of period ``s`` puts its energy on the lines ``u = f_k`` and ``v = f_k``
of the spectrum). The **share** of a heatmap ``h`` is

    share = sum_{(u, v) in S} |F(h)(u, v)|^2 / sum_{(u, v) != (0, 0)} |F(h)(u, v)|^2,

``F`` the 2-D discrete Fourier transform, the DC bin (the mean) left out of both sums. A
checkerboard or a dot grid of period ``s`` has share 1; a smooth blob has share near 0; white noise
has, in expectation, the fraction of non-DC bins in ``S`` (:func:`chance_share`). The share is NaN
for a constant map (no energy outside DC).

Which stride: :func:`conv_stride` multiplies the strides of a network's strided convolutions,
the only layers the stride fix changes (max-pooling back-propagates through its switches and is
left out). The small CNN has none (its convolutions have stride 1; it downsamples by max-pooling),
so the fix does nothing there; ResNet18 has four stride-2 stages of convolutions (total 16).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from an8flower.baselines.base import HookScope
from an8flower.errors import UsageError

__all__ = ["stride_frequencies", "stride_frequency_mask", "stride_energy_share", "chance_share", "conv_stride"]


def stride_frequencies(n: int, stride: int, tol: int = 1) -> torch.Tensor:
    """Bool (n,): the FFT bins of an axis of ``n`` samples that are stride frequencies (see the module docstring).

    Raises:
        UsageError: ``n < 2``, ``stride < 1`` or ``tol < 0``.
    """
    if int(n) < 2 or int(stride) < 1 or int(tol) < 0:
        raise UsageError(f"need n >= 2, stride >= 1 and tol >= 0, got n={n}, stride={stride}, tol={tol}")
    sel = torch.zeros(int(n), dtype=torch.bool)
    for k in range(1, int(stride)):
        centre = round(k * n / stride)
        for d in range(-int(tol), int(tol) + 1):
            sel[(centre + d) % n] = True
    return sel


def stride_frequency_mask(h: int, w: int, stride: int, tol: int = 1) -> torch.Tensor:
    """Bool (h, w): the 2-D stride-frequency bins ``S`` in FFT order, the DC bin excluded."""
    mask = stride_frequencies(h, stride, tol)[:, None] | stride_frequencies(w, stride, tol)[None, :]
    mask[0, 0] = False
    return mask


def chance_share(h: int, w: int, stride: int, tol: int = 1) -> float:
    """The share white noise gets in expectation: the fraction of non-DC bins that are stride frequencies."""
    return float(stride_frequency_mask(h, w, stride, tol).sum()) / (h * w - 1)


def stride_energy_share(heatmaps: torch.Tensor, stride: int, tol: int = 1) -> torch.Tensor:
    """The share of each heatmap's non-DC spectral energy at the stride frequencies: (B,) float64.

    Args:
        heatmaps: (B, H, W) or (H, W) real maps.
        stride: the total stride ``s`` (1: no stride frequency, every share is 0).
        tol: the tolerance band in bins on either side of each ``k n / s``.

    Returns:
        (B,) float64 on the maps' device; NaN for a constant map.

    Raises:
        UsageError: maps that are not 2-D or 3-D, or not finite.
    """
    h = torch.as_tensor(heatmaps)
    if h.dim() == 2:
        h = h[None]
    if h.dim() != 3:
        raise UsageError(f"heatmaps must have shape (B, H, W), got {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise UsageError("heatmaps contain NaN or inf")
    energy = torch.fft.fft2(h.double()).abs().square()
    mask = stride_frequency_mask(h.shape[-2], h.shape[-1], stride, tol).to(h.device)
    energy[:, 0, 0] = 0.0
    total = energy.flatten(1).sum(1)
    part = (energy * mask).flatten(1).sum(1)
    return torch.where(total > 0, part / total.clamp(min=torch.finfo(torch.float64).tiny), torch.full_like(total, float("nan")))


def conv_stride(model: nn.Module, images: torch.Tensor) -> int:
    """The total stride of ``model``'s strided convolutions, measured in one forward pass of ``images[:1]``.

    Every ``nn.Conv2d`` with a stride above 1 that runs is recorded with the height of its output;
    convolutions producing the same height (a ResNet block's strided 3 x 3 and its 1 x 1
    downsampling shortcut) are one stage; the result is the product of the stages' (largest)
    vertical strides, 1 when there is no strided convolution.
    """
    stages: dict[int, int] = {}

    def hook(module: nn.Conv2d, inputs: Any, output: Any) -> None:
        s = int(module.stride[0])
        if s > 1 and isinstance(output, torch.Tensor):
            stages[int(output.shape[-2])] = max(stages.get(int(output.shape[-2]), 1), s)

    with HookScope() as scope, torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                scope.add(m.register_forward_hook(hook))
        model(images[:1])
    total = 1
    for s in stages.values():
        total *= s
    return total
