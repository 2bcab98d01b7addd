"""Input checks and chunking shared by the metrics.

Every public metric validates its inputs here, so the error messages are uniform: a wrong type,
shape, dtype or device raises :class:`~an8flower.errors.UsageError` naming the argument, and a
heatmap holding NaN or inf raises it naming the first bad batch index.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from an8flower.errors import UsageError

#: Pixels per chunk when ``chunk_size`` is ``None`` (5 heatmaps of 224 x 224). Small chunks keep the
#: temporaries in the CPU caches and the allocator's free lists: on a CPU, chunks of a few heatmaps
#: run several times faster than one big batch.
DEFAULT_CHUNK_PIXELS = 1 << 18


def as_tensor(x: object, name: str) -> torch.Tensor:
    """``x`` as a tensor (NumPy arrays are wrapped without a copy); anything else is a UsageError."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise UsageError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_heatmaps(heatmaps: object, name: str = "heatmaps") -> torch.Tensor:
    """Validate a (B, H, W) floating batch; float16/bfloat16 are widened (exactly) to float32."""
    h = as_tensor(heatmaps, name)
    if h.dim() != 3:
        raise UsageError(f"{name} must have shape (B, H, W), got {tuple(h.shape)}")
    if not h.is_floating_point():
        raise UsageError(f"{name} must be a floating-point tensor, got {h.dtype}")
    if h.shape[1] == 0 or h.shape[2] == 0:
        raise UsageError(f"{name} has an empty image size {tuple(h.shape[1:])}")
    if h.dtype in (torch.float16, torch.bfloat16):
        h = h.float()
    return h


def check_masks(masks: object, heatmaps: torch.Tensor, name: str = "masks") -> torch.Tensor:
    """Validate a bool batch shaped and placed like ``heatmaps``."""
    m = as_tensor(masks, name)
    if m.dtype != torch.bool:
        raise UsageError(f"{name} must be a bool tensor, got {m.dtype} (use {name}.bool() or {name} > 0)")
    if tuple(m.shape) != tuple(heatmaps.shape):
        raise UsageError(f"{name} has shape {tuple(m.shape)} but heatmaps have shape {tuple(heatmaps.shape)}")
    if m.device != heatmaps.device:
        raise UsageError(f"{name} is on {m.device} but heatmaps are on {heatmaps.device}")
    return m


def check_finite(h: torch.Tensor, offset: int = 0, name: str = "heatmaps") -> None:
    """Raise a UsageError naming the first image of ``h`` (a (c, ...) chunk) with NaN or inf.

    A row sum is finite when every value is, unless finite values overflow it; only rows whose sum
    is not finite are scanned element-wise, which settles both cases. (On the GPU the sum is taken in
    float64, which float32 values cannot overflow; on the CPU NumPy sums in the input's precision.)
    """
    if h.device.type == "cpu":
        # NumPy's SIMD sum in the input's precision: an overflow to inf only sends the row to the
        # element-wise scan below, so the test stays exact.
        with np.errstate(over="ignore", invalid="ignore"):  # inf (or inf - inf) is handled below
            sums = torch.from_numpy(np.asarray(h.reshape(h.shape[0], -1).numpy().sum(axis=1)))
    else:
        sums = h.reshape(h.shape[0], -1).sum(dim=1, dtype=torch.float64)
    suspects = (~torch.isfinite(sums)).nonzero().flatten()
    if suspects.numel() == 0:
        return
    bad = ~torch.isfinite(h[suspects].reshape(suspects.numel(), -1)).all(dim=1)
    if bad.any():
        i = int(suspects[bad.nonzero()[0, 0]]) + offset
        raise UsageError(f"{name}[{i}] contains NaN or inf")


def resolve_chunk_size(chunk_size: int | None, pixels_per_image: int) -> int:
    """Images per chunk: ``chunk_size`` if given, else about :data:`DEFAULT_CHUNK_PIXELS` pixels."""
    if chunk_size is None:
        return max(1, DEFAULT_CHUNK_PIXELS // max(1, pixels_per_image))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise UsageError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return chunk_size


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
