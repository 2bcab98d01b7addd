"""Reference rows of the leaderboard: ``random`` and ``centre`` heatmaps, which ignore the model.

An explainer that does not beat them on a localisation metric says nothing about the image.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from an8flower.baselines.base import Explainer, register_explainer
from an8flower.errors import UsageError

__all__ = ["RandomMap", "CentreGaussian", "centre_gaussian"]


@register_explainer("random")
class RandomMap(Explainer):
    """Uniform noise in [0, 1): the chance level of every metric.

    Each image's map is drawn from a CPU ``torch.Generator`` seeded with the first 8 bytes of
    ``BLAKE2b(seed || image bytes as float32 CPU array)``, so it depends on the image's content and
    ``seed`` only: deterministic across calls, batch sizes, batch positions and devices; identical
    images get identical maps, different images (almost surely) different ones.

    Args:
        seed: mixed into every image's generator seed.
    """

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UsageError(f"seed must be an integer, got {seed!r}")
        self.seed = seed

    def image_seed(self, image: torch.Tensor) -> int:
        """The generator seed of one (C, H, W) image."""
        digest = hashlib.blake2b(digest_size=8)
        digest.update(self.seed.to_bytes(16, "little", signed=True))
        digest.update(image.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
        return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[2:]
        maps = [torch.rand((h, w), generator=torch.Generator().manual_seed(self.image_seed(img))) for img in images]
        return torch.stack(maps).to(images.device)

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed}


def centre_gaussian(size: tuple[int, int], sigma: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``exp(-((y - c_y)^2 / (2 (sigma H)^2) + (x - c_x)^2 / (2 (sigma W)^2)))`` on an H x W grid.

    ``c = ((H - 1) / 2, (W - 1) / 2)`` is the image centre in pixel coordinates; the standard
    deviations are ``sigma`` times the side (isotropic on square images). Peak 1 at the centre.
    """
    h, w = size
    y = (torch.arange(h, device=device, dtype=torch.float32) - (h - 1) / 2) / (sigma * h)
    x = (torch.arange(w, device=device, dtype=torch.float32) - (w - 1) / 2) / (sigma * w)
    return torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


@register_explainer("centre")
class CentreGaussian(Explainer):
    """A Gaussian centred in the image, the same for every image: the centre-bias reference.

    See :func:`centre_gaussian`; ``sigma`` is the standard deviation as a fraction of the side
    (default 0.25).
    """

    def __init__(self, sigma: float = 0.25) -> None:
        if not sigma > 0:
            raise UsageError(f"sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return centre_gaussian((h, w), self.sigma, images.device).expand(b, h, w).clone()

    def options(self) -> dict[str, Any]:
        return {"sigma": self.sigma}
