"""Perturbation explainers: occlusion (Captum) and RISE (batched, on the device).

Both score masked copies of the image with the model; ``output="softmax"`` (default, as in both
papers) scores by the target class probability, ``output="logit"`` by the target logit. Their maps
are single-channel, so no colour reduction applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from an8flower.baselines._options import check_choice, check_int
from an8flower.baselines.base import Explainer
from an8flower.baselines.registry import register_explainer
from an8flower.errors import UsageError

__all__ = ["Occlusion", "RISE", "rise_masks", "OUTPUTS"]

#: How perturbation explainers score a masked image.
OUTPUTS: tuple[str, ...] = ("softmax", "logit")


def _scorer(model: nn.Module, output: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if output == "softmax":
        return lambda x: model(x).softmax(dim=1)
    return model


@register_explainer("occlusion")
class Occlusion(Explainer):
    """Occlusion sensitivity (Zeiler & Fergus, ECCV 2014), computed by Captum's ``Occlusion``.

    A ``window`` x ``window`` square of value ``baseline`` (0.5 = the grey square of the paper for
    images in [0, 1]) slides over the image with step ``stride``, all colour channels at once; each
    pixel's relevance is the mean, over the windows covering it, of ``f(x) - f(x_occluded)`` with
    ``f`` the target score (windows at the border are clipped, so every pixel is covered).

    Args:
        window: side of the occluding square in pixels.
        stride: step of the sliding window in pixels.
        baseline: value of the occluding square.
        output: ``"softmax"`` or ``"logit"``.
        batch_size: occluded images per forward pass.
    """

    def __init__(
        self, window: int = 16, stride: int = 8, baseline: float = 0.5, output: str = "softmax", batch_size: int = 64
    ) -> None:
        self.window = check_int("window", window)
        self.stride = check_int("stride", stride)
        self.baseline = float(baseline)
        self.output = check_choice("output", output, OUTPUTS)
        self.batch_size = check_int("batch_size", batch_size)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        b, c, h, w = images.shape
        if self.window > min(h, w):
            raise UsageError(f"window={self.window} is larger than the images ({h}x{w})")
        with torch.no_grad():
            attr = CaptumOcclusion(_scorer(model, self.output)).attribute(
                images,
                sliding_window_shapes=(c, self.window, self.window),
                strides=(c, self.stride, self.stride),
                baselines=self.baseline,
                target=targets,
                perturbations_per_eval=max(1, self.batch_size // b),
            )
        return attr.mean(dim=1)

    def options(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "stride": self.stride,
            "baseline": self.baseline,
            "output": self.output,
            "batch_size": self.batch_size,
        }


def rise_masks(
    grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int], cell: tuple[int, int]
) -> torch.Tensor:
    """Smooth RISE masks from binary grids (Petsiuk et al., BMVC 2018, Sec. 3.2).

    Each s x s grid is upsampled bilinearly to ``((s + 1) * cell_h, (s + 1) * cell_w)`` and a
    ``size`` window is cropped at offset ``shifts[n] = (dy, dx)``, ``0 <= dy < cell_h``.

    Args:
        grids: (N, s, s) float grids of 0/1.
        shifts: (N, 2) long offsets.
        size: (H, W) of the masks.
        cell: (cell_h, cell_w) = (ceil(H / s), ceil(W / s)).

    Returns:
        (N, H, W) masks in [0, 1] on the grids' device.
    """
    n, s, _ = grids.shape
    h, w = size
    up = F.interpolate(grids.unsqueeze(1), size=((s + 1) * cell[0], (s + 1) * cell[1]), mode="bilinear", align_corners=False)
    rows = shifts[:, 0:1] + torch.arange(h, device=grids.device)  # (N, H)
    cols = shifts[:, 1:2] + torch.arange(w, device=grids.device)  # (N, W)
    idx = torch.arange(n, device=grids.device)[:, None, None]
    return up[:, 0][idx, rows[:, :, None], cols[:, None, :]]


@register_explainer("rise")
class RISE(Explainer):
    """RISE: Randomized Input Sampling for Explanation (Petsiuk, Das, Saenko, BMVC 2018).

    ``S(x) = 1 / (N p) * sum_i f_t(x * M_i) M_i`` with ``N`` random masks ``M_i``: binary ``s`` x ``s``
    grids whose cells are 1 with probability ``p``, upsampled bilinearly and randomly shifted
    (:func:`rise_masks`); ``f_t`` the target class probability (``output="softmax"``) or logit.
    Defaults ``N=4000, s=7, p=0.5`` (the paper's ImageNet setting).

    Determinism: the grids and shifts are drawn from a CPU ``torch.Generator`` seeded with ``seed``
    and shared by every image (as in the paper), so a batch gives the per-image results, and CPU
    and CUDA use the same masks. The masks are built chunk by chunk on the model's device; each
    forward pass scores ``batch_size`` masked images.

    Args:
        n_masks: N.
        grid: s.
        p: probability that a grid cell is kept.
        seed: seed of the masks.
        output: ``"softmax"`` or ``"logit"``.
        batch_size: masked images per forward pass.
    """

    amp_safe = True

    def __init__(
        self,
        n_masks: int = 4000,
        grid: int = 7,
        p: float = 0.5,
        seed: int = 0,
        output: str = "softmax",
        batch_size: int = 64,
    ) -> None:
        self.n_masks = check_int("n_masks", n_masks)
        self.grid = check_int("grid", grid, 2)
        if not 0 < p <= 1:
            raise UsageError(f"p must be in (0, 1], got {p!r}")
        self.p = float(p)
        self.seed = int(seed)
        self.output = check_choice("output", output, OUTPUTS)
        self.batch_size = check_int("batch_size", batch_size)

    def masks_for(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The (N, s, s) grids, (N, 2) shifts and cell size this explainer uses at image ``size``, on the CPU."""
        h, w = size
        cell = (math.ceil(h / self.grid), math.ceil(w / self.grid))
        gen = torch.Generator().manual_seed(self.seed)
        grids = (torch.rand((self.n_masks, self.grid, self.grid), generator=gen) < self.p).float()
        shifts = torch.stack(
            [torch.randint(0, cell[0], (self.n_masks,), generator=gen), torch.randint(0, cell[1], (self.n_masks,), generator=gen)],
            dim=1,
        )
        return grids, shifts, cell

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        grids, shifts, cell = self.masks_for((h, w))
        grids, shifts = grids.to(images.device), shifts.to(images.device)
        score = _scorer(model, self.output)
        chunk = max(1, self.batch_size // b)
        sal = torch.zeros(b, h * w, device=images.device, dtype=images.dtype)
        with torch.no_grad():
            for start in range(0, self.n_masks, chunk):
                masks = rise_masks(grids[start : start + chunk], shifts[start : start + chunk], (h, w), cell).to(images.dtype)
                m = masks.shape[0]
                masked = (images.unsqueeze(1) * masks.view(1, m, 1, h, w)).flatten(0, 1)
                probs = score(masked).view(b, m, -1).gather(2, targets.view(b, 1, 1).expand(b, m, 1)).squeeze(2)
                sal += probs @ masks.view(m, h * w)
        return (sal / (self.n_masks * self.p)).view(b, h, w)

    def options(self) -> dict[str, Any]:
        return {
            "n_masks": self.n_masks,
            "grid": self.grid,
            "p": self.p,
            "seed": self.seed,
            "output": self.output,
            "batch_size": self.batch_size,
        }
