"""Reference rows of the leaderboard: the ``oracle`` ceiling and the ``random`` and ``centre`` chance levels.

None of them looks at the model. ``oracle`` returns the ground-truth mask (the best a heatmap can
do on the mask metrics); an explainer that does not beat ``random`` and ``centre`` on a
localisation metric says nothing about the image.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from an8flower.baselines.base import Explainer, GroundTruth
from an8flower.baselines.registry import register_explainer
from an8flower.errors import UsageError

__all__ = ["ORACLE", "Oracle", "RandomMap", "CentreGaussian", "centre_gaussian"]

#: The registry name of :class:`Oracle`.
ORACLE = "oracle"


@register_explainer(ORACLE)
class Oracle(Explainer):
    """The ground-truth mask as the heatmap: the ceiling of every mask metric.

    It reads the batch's :class:`~an8flower.baselines.base.GroundTruth` (bound by :meth:`given`,
    as the leaderboard does before each batch). For the labelled class the map is the mask M; for
    another class b (the contrastivity metric explains the model's runner-up) it is ``M & ~C``,
    with C the pixels that change when the image is painted as b: the parts the image shares with
    class b. Called outside the leaderboard, without a ground truth, it raises a UsageError.
    """

    reference = True

    def __init__(self) -> None:
        self.truth: GroundTruth | None = None

    def given(self, truth: GroundTruth) -> Oracle:
        bound = Oracle()
        bound.truth = truth
        return bound

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        truth = self.truth
        if truth is None or truth.masks is None:
            raise UsageError("oracle: no ground-truth masks for this batch (the oracle runs on datasets with masks)")
        if truth.masks.shape[0] != images.shape[0]:
            raise RuntimeError(f"oracle: {truth.masks.shape[0]} masks for {images.shape[0]} images")
        masks = truth.masks.to(images.device)
        same = targets == truth.labels.to(images.device)
        if bool(same.all()):
            return masks.float()
        if truth.changed is None:
            raise UsageError("oracle: a map for a class other than the label needs the counterfactual renders")
        shared = masks & ~truth.changed.to(images.device)
        return torch.where(same[:, None, None], masks, shared).float()


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

    reference = True

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

    reference = True

    def __init__(self, sigma: float = 0.25) -> None:
        if not sigma > 0:
            raise UsageError(f"sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def explain(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return centre_gaussian((h, w), self.sigma, images.device).expand(b, h, w).clone()

    def options(self) -> dict[str, Any]:
        return {"sigma": self.sigma}
