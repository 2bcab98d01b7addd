"""Row-wise sorting and ranking primitives for the rank-based metrics.

On a CPU, NumPy's sort (vectorised, x86-simd-sort) is about ten times faster than ``torch.sort``
on rows of 50,000 values, so CPU tensors are sorted through NumPy (zero-copy views); other devices
use ``torch.sort``. Sorting values only is deterministic whatever the algorithm.
"""

from __future__ import annotations

import numpy as np
import torch

#: Use the NumPy kernels for CPU tensors (tests switch it off to exercise the torch code paths,
#: which other devices take).
NUMPY_ON_CPU = True


def _numpy_path(x: torch.Tensor) -> bool:
    return NUMPY_ON_CPU and x.device.type == "cpu"


class Workspace:
    """Reusable NumPy buffers for the chunked CPU kernels, one per metric call.

    A fresh multi-megabyte temporary in every chunk costs page faults on first touch (the
    allocator returns such blocks to the system when freed), which doubled the run time of the
    rank metrics; buffers taken from a workspace are allocated once per call. A buffer is valid
    until the next :meth:`get` of the same name.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype``, reusing the storage of ``name``."""
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
            buf = np.empty(size, dtype=dtype)
            self._buffers[name] = buf
        return buf[:size].reshape(shape)


def _buffer(ws: "Workspace | None", name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return ws.get(name, shape, dtype) if ws is not None else np.empty(shape, dtype=dtype)


def sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Values of each row of the 2-D tensor ``x`` in ascending order."""
    if _numpy_path(x):
        return torch.from_numpy(np.sort(x.contiguous().numpy(), axis=1))
    return torch.sort(x, dim=1).values


def kth_largest(x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """The ``k``-th largest value of each row of ``x`` (c, N); ``k`` an int or a (c,) tensor in [1, N]."""
    n = x.shape[1]
    if isinstance(k, int):
        if _numpy_path(x):
            part = np.partition(x.contiguous().numpy(), n - k, axis=1)[:, n - k]
            return torch.from_numpy(np.ascontiguousarray(part))
        return sort_rows(x)[:, n - k]
    return sort_rows(x).gather(1, (n - k).unsqueeze(1)).squeeze(1)


def sort_with_flags(
    values: torch.Tensor, flags: torch.Tensor, ws: Workspace | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row of ``values`` (c, N) ascending and carry the bool ``flags`` along.

    Returns ``(sorted_values, sorted_flags)``: float64 values and int64 flags in the same order
    (the order among tied values is unspecified). A float32 value widened to float64 leaves the
    low 29 mantissa bits zero, so the flag is packed into the lowest bit and one value-only sort
    does the job (the packed number stays strictly between the value and the next float32, so the
    order of distinct values is kept); float64 rows use an argsort and a gather. With a
    :class:`Workspace` (CPU), the results are views of its buffers ``"values"`` and ``"flags"``.
    """
    if values.dtype == torch.float32 and _numpy_path(values):
        # The same packing, in place in NumPy buffers.
        v = _buffer(ws, "values", tuple(values.shape), np.float64)
        np.copyto(v, values.contiguous().numpy())
        v += 0.0  # turns -0.0 into 0.0, so the two tie
        bits = v.view(np.int64)
        bits |= flags.contiguous().numpy()
        v.sort(axis=1)
        sorted_flags = _buffer(ws, "flags", tuple(values.shape), np.int64)
        np.bitwise_and(bits, 1, out=sorted_flags)
        bits ^= sorted_flags
        return torch.from_numpy(v), torch.from_numpy(sorted_flags)
    if values.dtype == torch.float32:
        packed = values.double().add_(0.0)  # + 0.0 turns -0.0 into 0.0, so the two tie
        packed.view(torch.int64).bitwise_or_(flags)
        packed = sort_rows(packed).view(torch.int64)
        sorted_flags = packed & 1
        return (packed ^ sorted_flags).view(torch.float64), sorted_flags
    if _numpy_path(values):
        order = torch.from_numpy(np.argsort(values.contiguous().numpy(), axis=1))
    else:
        order = torch.sort(values, dim=1, stable=True).indices
    return values.double().gather(1, order), flags.long().gather(1, order)


def tie_bounds(sorted_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position of the sorted rows, the 1-based first and last position of its tie group."""
    c, n = sorted_keys.shape
    pos = torch.arange(1, n + 1, device=sorted_keys.device).expand(c, n)
    change = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    edge = torch.ones((c, 1), dtype=torch.bool, device=sorted_keys.device)
    starts = torch.cat([edge, change], dim=1)
    ends = torch.cat([change, edge], dim=1)
    first = (starts * pos).cummax(dim=1).values
    last = (n + 1 - ends * (n + 1 - pos)).flip(1).cummin(dim=1).values.flip(1)
    return first, last


def count_true(m: torch.Tensor) -> torch.Tensor:
    """Number of True entries of each row of the bool (c, N) ``m``, int64 (NumPy on a CPU: 10x faster)."""
    if _numpy_path(m):
        return torch.from_numpy(np.count_nonzero(m.contiguous().numpy(), axis=1).astype(np.int64))
    return m.sum(dim=1)


def adjacent_ties(x: torch.Tensor, ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, i)`` of every ``x[row, i] == x[row, i + 1]``, row-major; NumPy on a CPU (5x faster)."""
    if _numpy_path(x):
        a = x.contiguous().numpy()
        equal = _buffer(ws, "equal", (a.shape[0], a.shape[1] - 1), np.bool_)
        np.equal(a[:, 1:], a[:, :-1], out=equal)
        flat = torch.from_numpy(np.flatnonzero(equal))
        return flat // (x.shape[1] - 1), flat % (x.shape[1] - 1)
    pairs = (x[:, 1:] == x[:, :-1]).nonzero()
    return pairs[:, 0], pairs[:, 1]


def flagged_midrank_sum_x2(
    sorted_values: torch.Tensor, sorted_flags: torch.Tensor, ws: Workspace | None = None
) -> torch.Tensor:
    """Twice the sum of the average (mid) ranks of the flagged entries of each row, as int64.

    Ranks are 1-based positions in ascending order; tied values share the mean of their positions.
    Twice the sum keeps it an exact integer. Ties are sparse in real heatmaps, so the sum is taken
    over positions first and then corrected group by group, touching only the tied entries: a
    group at positions ``a..b`` holding ``q`` flagged entries whose positions sum to ``S``
    contributes ``q (a + b)`` instead of ``2 S``. The bookkeeping on the (few) tied entries runs
    in NumPy on the host whatever the device: it is a handful of tiny operations. ``ws``: see
    :class:`Workspace`.
    """
    c, n = sorted_values.shape
    if _numpy_path(sorted_flags) and n <= 1 << 26:
        # float64 matrix-vector product (BLAS): exact, as every partial sum is an integer < 2 n^2 <= 2**53.
        positions = np.arange(2, 2 * n + 1, 2, dtype=np.float64)
        weights = _buffer(ws, "weights", tuple(sorted_flags.shape), np.float64)
        np.copyto(weights, sorted_flags.numpy())
        total = torch.from_numpy((weights @ positions).astype(np.int64))
    else:
        total = (sorted_flags * torch.arange(2, 2 * n + 1, 2, device=sorted_values.device)).sum(dim=1)
    row_t, i_t = adjacent_ties(sorted_values, ws)
    if row_t.numel() == 0:
        return total
    flag_here = sorted_flags[row_t, i_t].cpu().numpy()
    flag_next = sorted_flags[row_t, i_t + 1].cpu().numpy()
    row, i = row_t.cpu().numpy(), i_t.cpu().numpy()
    starts = np.ones(row.size, dtype=bool)  # pair j opens a new group of equal values
    starts[1:] = (row[1:] != row[:-1]) | (i[1:] != i[:-1] + 1)
    ends = np.append(starts[1:], True)
    group = np.cumsum(starts) - 1
    first, last = i[starts], i[ends] + 1  # 0-based positions of each group's first and last member
    # Members of a group: the left entry of each of its pairs, plus the right entry of its last pair.
    member_group = np.concatenate([group, np.arange(first.size)])
    member_flag = np.concatenate([flag_here, flag_next[ends]])
    member_pos = np.concatenate([i, last]) + 1
    q = np.bincount(member_group, weights=member_flag).astype(np.int64)
    pos_sum = np.bincount(member_group, weights=member_flag * member_pos).astype(np.int64)
    correction = q * (first + last + 2) - 2 * pos_sum
    per_row = np.bincount(row[starts], weights=correction, minlength=c).astype(np.int64)
    return total + torch.from_numpy(per_row).to(total.device)


def midrank_sum_x2_of_flagged(values: torch.Tensor, flags: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
    """:func:`flagged_midrank_sum_x2` of the rows of ``values`` (c, N), unsorted, flagged by ``flags``.

    Fast path (NumPy on a CPU, float32 rows with no negative value, the usual heatmap): the bit
    pattern of a non-negative float32 orders like its value and leaves the top bit free, so
    ``bits << 1 | flag`` is a 32-bit key in the values' order with the flag carried in the lowest
    bit, and one 32-bit sort (half the cost of the float64 packing of :func:`sort_with_flags`) does
    the job; ``key >> 1`` compares like the values for the tie correction. ``-0.0`` is turned into
    ``0.0`` first, so the two tie. Any other input takes :func:`sort_with_flags`.
    """
    if values.dtype == torch.float32 and _numpy_path(values) and values.shape[1] <= 1 << 26:
        v = values.contiguous().numpy()
        if not bool((v < 0).any()):
            shape = tuple(v.shape)
            keys = _buffer(ws, "keys", shape, np.uint32)
            np.add(v, np.float32(0.0), out=keys.view(np.float32))  # -0.0 -> 0.0
            np.left_shift(keys, 1, out=keys)
            np.bitwise_or(keys, flags.contiguous().numpy(), out=keys)
            keys.sort(axis=1)
            sorted_flags = _buffer(ws, "key_flags", shape, np.uint32)
            np.bitwise_and(keys, 1, out=sorted_flags)
            np.right_shift(keys, 1, out=keys)
            return flagged_midrank_sum_x2(
                torch.from_numpy(keys.view(np.int32)), torch.from_numpy(sorted_flags.view(np.int32)), ws
            )
    sorted_values, sorted_flags = sort_with_flags(values, flags, ws)
    return flagged_midrank_sum_x2(sorted_values, sorted_flags, ws)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each row of ``x`` (c, N) in ascending order, ties averaged, as float64."""
    if _numpy_path(x):
        order = torch.from_numpy(np.argsort(x.contiguous().numpy(), axis=1))
    else:
        order = torch.sort(x, dim=1, stable=True).indices
    first, last = tie_bounds(x.gather(1, order))
    mid = (first + last).double() / 2
    return torch.empty_like(mid).scatter_(1, order, mid)


def spearman_rows(ranks_a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation per row: Pearson correlation of ``ranks_a`` with the ranks of ``b``.

    ``ranks_a`` are :func:`average_ranks` of the first variable (computed once by callers that
    correlate it with several others). NaN for a row where either variable is constant.
    """
    ranks_b = average_ranks(b).to(ranks_a.device)
    ca = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    cb = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    den = (ca.square().sum(dim=1) * cb.square().sum(dim=1)).sqrt()
    return ((ca * cb).sum(dim=1) / den).masked_fill(den == 0, float("nan"))
