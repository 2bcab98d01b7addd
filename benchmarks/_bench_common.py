"""What the explainer benchmarks share: the device, a seeded random-weight model with a random
batch, and a CUDA synchronisation for timing."""

from __future__ import annotations

import os

import torch

from an8flower.eval.models import build_model

#: ``AN8FLOWER_BENCH_DEVICE`` (default: CUDA when available, else CPU).
DEVICE = os.environ.get("AN8FLOWER_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
#: Classes of the benchmark models (random weights, so any count serves).
NUM_CLASSES = 12


def sync() -> None:
    """Wait for queued CUDA work, so that a timer measures it."""
    if torch.device(DEVICE).type == "cuda":
        torch.cuda.synchronize()


def random_setting(name: str, size: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Model ``name`` with seeded random weights in eval mode, and a seeded batch of ``batch``
    random ``size`` x ``size`` images with random targets, all on :data:`DEVICE`."""
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES).eval().to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, size, size, generator=gen).to(DEVICE)
    targets = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(DEVICE)
    return model, images, targets
