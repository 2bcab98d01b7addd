"""Row-wise sorting, selection and ranking primitives for the rank-based metrics.

CPU tensors are handled through NumPy (zero-copy views), other devices through torch.

How fast ``np.sort`` is depends on the machine much more than on the data. On rows of 50,176
32-bit keys (one 224 x 224 heatmap), one thread, NumPy 2.4, an AMD EPYC (Zen 4) took 3.4 ns per
key on NumPy's AVX2 sort (x86-simd-sort), 20 ns on its AVX-512 sort (Zen 4 runs the
memory-destination compress store that its partitioning relies on in microcode) and 44 ns
without a SIMD sort (a CPU without AVX2, or ``NPY_DISABLE_CPU_FEATURES``); ``torch.sort`` took
45-75 ns. Hence:

* the rank sums of ``pixel_auc`` sort packed integer keys with whichever of two kernels is faster
  on this machine (:data:`SORT_KERNEL`, :func:`sort_kernel`): ``np.sort``, or a
  least-significant-digit radix sort, stable passes over 16-bit digits through NumPy's radix
  argsort for 16-bit integers (about 11 ns per 32-bit key, whatever the SIMD level);
* the top-k metrics do not sort (:func:`top_k_counts`): a sorted sample of each row brackets its
  k-th largest value, one comparison pass counts the pixels above the bracket, and a radix select
  (histograms of digits of order-preserving keys, ``np.bincount``) finishes on the few percent of
  pixels inside it: O(N), about 2 ns per pixel whatever the SIMD level;
* the IoU curve counts the pixels at or above each threshold by comparisons
  (:func:`normalised_at_least`), without sorting.

Every kernel computes exact integer counts, so the scores do not depend on which one ran.
"""

from __future__ import annotations

import time

import numpy as np
import torch

#: Use the NumPy kernels for CPU tensors (tests switch it off to exercise the torch code paths,
#: which other devices take).
NUMPY_ON_CPU = True

#: How CPU rows of packed integer keys are sorted: ``"numpy"`` (``np.sort``), ``"radix"`` (LSD
#: radix sort over 16-bit digits), or ``None``: on first use for each key width, time both on a
#: sample and keep the faster (:func:`sort_kernel`). Scores are identical either way.
SORT_KERNEL: str | None = None

_SORT_KERNELS = ("numpy", "radix")
_calibrated: dict[int, str] = {}

#: :func:`normalised_at_least` counts by comparisons up to this many thresholds, else sorts.
_COUNTING_MAX_THRESHOLDS = 32
#: Keys per block of rows of the radix sort (:func:`_radix_sort_rows`).
_RADIX_BLOCK = 1 << 16
#: Values per row in the sample that brackets the k-th largest value (:func:`top_k_counts`).
_SAMPLE = 1024
#: The widest digit of the radix select (:func:`_radix_select`): 2**12 histogram bins per row.
_SELECT_DIGIT_BITS = 12
#: The radix select sorts its candidates once at most this many per row are left.
_SELECT_FINISH = 64


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


def _buffer(ws: Workspace | None, name: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    return ws.get(name, shape, dtype) if ws is not None else np.empty(shape, dtype=dtype)


# ----------------------------------------------------------------------------- integer keys


def order_keys(a: np.ndarray, ws: Workspace | None = None, descending: bool = False) -> np.ndarray:
    """Unsigned keys that order like the values of the float32 / float64 array ``a``.

    uint32 for float32, uint64 for float64 (IEEE 754 bit patterns: a non-negative value gets its
    top bit set, a negative one all its bits flipped); ``-0.0`` and ``0.0`` get the same key.
    ``descending``: all bits inverted, so that larger values get smaller keys. ``a`` must hold no
    NaN. With a :class:`Workspace`, a view of its buffer ``"order_keys"``.
    """
    utype, itype = (np.uint32, np.int32) if a.dtype == np.float32 else (np.uint64, np.int64)
    bits = 8 * a.dtype.itemsize
    keys = _buffer(ws, "order_keys", a.shape, utype)
    np.add(a, a.dtype.type(0.0), out=keys.view(a.dtype))  # -0.0 + 0.0 = 0.0
    flip = _buffer(ws, "order_flip", a.shape, utype)
    np.right_shift(keys.view(itype), bits - 1, out=flip.view(itype))  # arithmetic: 0 or all ones
    np.bitwise_or(flip, utype(1 << (bits - 1)), out=flip)
    np.bitwise_xor(keys, flip, out=keys)
    if descending:
        np.invert(keys, out=keys)
    return keys


def _radix_sort_rows(keys: np.ndarray, bits: int, ws: Workspace | None = None) -> np.ndarray:
    """Sort each row of the unsigned (c, N) ``keys`` whose values are below ``2**bits``, in place.

    Least significant digit first: each pass orders the rows stably by one 16-bit digit
    (``np.argsort(kind="stable")`` is a radix sort for 16-bit integers) and gathers the keys in
    that order. Blocks of rows of about :data:`_RADIX_BLOCK` keys are sorted one after another, so
    that the keys, digits and orders of a block stay in the L2 cache (blocks of 250,000 keys ran
    1.8x slower than blocks of 50,000).
    """
    c, n = keys.shape
    block = max(1, _RADIX_BLOCK // n)
    digit = _buffer(ws, "radix_digit", (min(c, block), n), np.uint16)
    other = _buffer(ws, "radix_other", (min(c, block), n), keys.dtype)
    for start in range(0, c, block):
        part = keys[start : start + block]
        r = part.shape[0]
        sorted_part, spare = part, other[:r]
        offsets = (np.arange(r, dtype=np.intp) * n)[:, None]
        for shift in range(0, bits, 16):
            np.right_shift(sorted_part, shift, out=digit[:r], casting="unsafe")  # the cast keeps the low 16 bits
            order = np.argsort(digit[:r], axis=1, kind="stable")
            order += offsets
            np.take(sorted_part.reshape(-1), order.reshape(-1), out=spare.reshape(-1), mode="clip")
            sorted_part, spare = spare, sorted_part
        if sorted_part is not part:
            np.copyto(part, sorted_part)
    return keys


def _calibrate(dtype: type, bits: int) -> str:
    """``"radix"`` if the radix sort beats ``np.sort`` on a sample of 4 x 2**15 keys, else ``"numpy"``."""
    sample: np.ndarray = np.random.default_rng(0).integers(0, 1 << bits, size=(4, 1 << 15), dtype=np.uint64).astype(dtype)
    ws = Workspace()
    work = ws.get("sample", sample.shape, dtype)

    def best(sort) -> float:
        times = []
        for _ in range(3):
            np.copyto(work, sample)
            start = time.perf_counter()
            sort(work)
            times.append(time.perf_counter() - start)
        return min(times)

    numpy_s = best(lambda k: k.sort(axis=1))
    radix_s = best(lambda k: _radix_sort_rows(k, bits, ws))
    return "radix" if radix_s < numpy_s else "numpy"


def sort_kernel(bits: int = 32) -> str:
    """The kernel that sorts CPU rows of ``bits``-bit keys: :data:`SORT_KERNEL` if set, else measured.

    The measurement (a few milliseconds, once per process and key width) times ``np.sort`` and the
    radix sort on the same random sample and keeps the faster.
    """
    if SORT_KERNEL is not None:
        if SORT_KERNEL not in _SORT_KERNELS:
            raise ValueError(f"SORT_KERNEL must be one of {_SORT_KERNELS} or None, got {SORT_KERNEL!r}")
        return SORT_KERNEL
    if bits not in _calibrated:
        _calibrated[bits] = _calibrate(np.uint32 if bits <= 32 else np.uint64, bits)
    return _calibrated[bits]


def sort_keys(keys: np.ndarray, bits: int, ws: Workspace | None = None) -> np.ndarray:
    """Sort each row of the unsigned (c, N) ``keys`` (values below ``2**bits``) with :func:`sort_kernel`.

    Sorts in place and returns ``keys``.
    """
    if sort_kernel(bits) == "radix":
        return _radix_sort_rows(keys, bits, ws)
    keys.sort(axis=1)
    return keys


# ------------------------------------------------------------------------------ selection


def row_counts(b: np.ndarray) -> np.ndarray:
    """Number of True entries of each row of the bool (c, N) array ``b``, int64.

    With N a multiple of 8 and C-contiguous rows, the rows are read as 64-bit words and their bits
    counted (``np.bitwise_count``, NumPy 2): 5-10x faster than ``np.count_nonzero(b, axis=1)``.
    """
    if hasattr(np, "bitwise_count") and b.shape[1] % 8 == 0 and b.flags.c_contiguous:
        return np.bitwise_count(b.view(np.uint64)).sum(axis=1, dtype=np.int64)
    return np.count_nonzero(b, axis=1).astype(np.int64)


def _mask_buffer(ws: Workspace | None, name: str, c: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A bool (c, N) buffer for :func:`row_counts`: ``(padded, view)``, rows padded with False to a
    multiple of 8; write into ``view``, count ``padded``."""
    padded = _buffer(ws, name, (c, -(-n // 8) * 8), np.bool_)
    padded[:, n:] = False
    return padded, padded[:, :n]


def _bracket(a: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``a`` (c, N), values ``lo <= hi`` that most likely enclose the k-th largest value.

    From a strided sample of about :data:`_SAMPLE` values per row: the k-th largest value sits near
    the ``k s / N``-th largest of the ``s`` sampled values, give or take the binomial spread
    ``sqrt(s p (1 - p))``, ``p = k / N``; the bracket spans 3.5 spreads (plus 2) either side, and
    -inf / inf where that runs off the sample. The caller checks that it holds.
    """
    c, n = a.shape
    sample = np.sort(a[:, :: max(1, n // _SAMPLE)], axis=1)
    s = sample.shape[1]
    p = k / n
    centre = s * (1 - p)
    spread = 3.5 * np.sqrt(s * p * (1 - p)) + 2
    low = np.floor(centre - spread).astype(np.intp)
    high = np.ceil(centre + spread).astype(np.intp)
    rows = np.arange(c)
    lo = np.where(low >= 0, sample[rows, low.clip(0, s - 1)], -np.inf).astype(a.dtype)
    hi = np.where(high < s, sample[rows, high.clip(0, s - 1)], np.inf).astype(a.dtype)
    return lo, hi


def _radix_select(
    keys: np.ndarray, flags: np.ndarray, rows: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Counts at the ``rank``-th smallest key of each row, by most-significant-digit radix select.

    ``keys``: unsigned (M,), the candidates of ``c = rank.size`` rows, grouped by row: ``rows``
    (M,) non-decreasing, every row present; ``flags`` bool (M,); ``rank`` int64 (c,), in [1, the
    row's candidate count].

    Each level takes, per row, the candidates' offsets from the row's smallest candidate and their
    top ``w`` bits (``w`` = 4 to 12, about one bin per candidate), histograms them
    (``np.bincount``; the flagged candidates once more on their own); the running count from the
    bottom finds the digit of the wanted key; the candidates below it are counted and dropped, and
    only those holding that digit stay, until every row's candidates are equal or at most
    :data:`_SELECT_FINISH` per row are left; those are sorted (``np.lexsort``). Then count.
    Returns ``(n_below, n_tied, flagged_below, flagged_tied)``, int64 (c,).
    """
    c = rank.size
    rank = rank.astype(np.int64)
    n_below = np.zeros(c, dtype=np.int64)
    flagged_below = np.zeros(c, dtype=np.int64)
    arange = np.arange(c, dtype=np.intp)
    kth = None
    while rows.size > _SELECT_FINISH * c:
        starts = np.searchsorted(rows, arange)
        low = np.minimum.reduceat(keys, starts)
        span = np.maximum.reduceat(keys, starts) - low
        if not span.any():  # every row's candidates are equal
            kth = low
            break
        width = min(_SELECT_DIGIT_BITS, max(4, (rows.size // c).bit_length() - 1))
        bins = 1 << width
        # bit length of span, rounded up if anything (float64 rounds up at most to the next power of 2)
        length = np.where(span > 0, np.floor(np.log2(np.maximum(span, 1).astype(np.float64))) + 1, 0)
        shift = np.maximum(length - width, 0).astype(keys.dtype)
        bin_of = rows * bins + ((keys - low[rows]) >> shift[rows]).astype(np.intp)
        total = np.bincount(bin_of, minlength=c * bins).reshape(c, bins)
        flagged = np.bincount(bin_of[flags], minlength=c * bins).reshape(c, bins)
        cumulative = np.cumsum(total, axis=1)
        digit = np.count_nonzero(cumulative < rank[:, None], axis=1)
        below = cumulative[arange, digit] - total[arange, digit]
        n_below += below
        flagged_below += np.cumsum(flagged, axis=1)[arange, digit] - flagged[arange, digit]
        rank -= below
        picked = np.flatnonzero(bin_of == (arange * bins + digit)[rows])
        keys, flags, rows = keys[picked], flags[picked], rows[picked]
    if kth is None:
        order = np.lexsort((keys, rows))
        kth = keys[order[np.searchsorted(rows[order], arange) + rank - 1]]
    below, tied = keys < kth[rows], keys == kth[rows]
    n_below += np.bincount(rows[below], minlength=c)
    flagged_below += np.bincount(rows[below & flags], minlength=c)
    return n_below, np.bincount(rows[tied], minlength=c), flagged_below, np.bincount(rows[tied & flags], minlength=c)


def top_k_counts(
    x: torch.Tensor, flags: torch.Tensor, k: torch.Tensor | int, ws: Workspace | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the ``k``-th largest value ``v`` of each row of ``x`` (c, N) sits, and the flags there.

    Args:
        x: (c, N) floating, no NaN.
        flags: (c, N) bool.
        k: an int or a (c,) integer tensor, in [1, N].
        ws: see :class:`Workspace`.

    Returns:
        ``(#{x > v}, #{x == v}, #{x > v and flag}, #{x == v and flag})`` per row, int64 tensors on
        the device of ``x``.

    CPU float32/float64 rows (NumPy) are not sorted. A sample brackets ``v`` between ``lo`` and
    ``hi`` (:func:`_bracket`); one comparison pass over the rows counts the pixels above ``hi``
    (and their flags) and checks the bracket (``#{x > hi} < k <= #{x >= lo}``; a row where it
    fails falls back to the whole row); the few pixels inside it go to :func:`_radix_select`, with
    the rank ``k - #{x > hi}`` among them. Other devices take the k-th value of ``torch.sort``.
    """
    c, n = x.shape
    if _numpy_path(x) and x.dtype in (torch.float32, torch.float64):
        a, f = x.contiguous().numpy(), flags.contiguous().numpy()
        kk = np.full(c, k, dtype=np.int64) if isinstance(k, int) else k.cpu().numpy().astype(np.int64)
        lo, hi = _bracket(a, kk)
        above_padded, above = _mask_buffer(ws, "top_k_above", c, n)
        inside_padded, inside = _mask_buffer(ws, "top_k_inside", c, n)
        while True:
            np.greater(a, hi[:, None], out=above)
            np.greater_equal(a, lo[:, None], out=inside)
            n_above = row_counts(above_padded)
            holds = (n_above < kk) & (kk <= row_counts(inside_padded))
            if holds.all():
                break
            lo[~holds], hi[~holds] = -np.inf, np.inf  # the whole row: holds by definition
        np.logical_xor(inside, above, out=inside)  # lo <= x <= hi (x > hi implies x >= lo)
        np.logical_and(above, f, out=above)
        flagged_above = row_counts(above_padded)
        picked = np.flatnonzero(inside)
        keys = order_keys(a.reshape(-1)[picked], descending=True)  # the largest value: the smallest key
        n_below, n_tied, flagged_below, flagged_tied = _radix_select(
            keys, f.reshape(-1)[picked], picked // n, kk - n_above
        )
        counts = (n_above + n_below, n_tied, flagged_above + flagged_below, flagged_tied)
        return tuple(torch.from_numpy(np.ascontiguousarray(t, dtype=np.int64)) for t in counts)  # type: ignore[return-value]
    position = torch.as_tensor(k, device=x.device).expand(c)
    v = torch.sort(x, dim=1).values.gather(1, (n - position).unsqueeze(1))
    is_above, is_tied = x > v, x == v
    return is_above.sum(dim=1), is_tied.sum(dim=1), (is_above & flags).sum(dim=1), (is_tied & flags).sum(dim=1)


# -------------------------------------------------------------------------------- ranks


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
        packed = torch.sort(packed, dim=1).values.view(torch.int64)
        low_bit = packed & 1
        return (packed ^ low_bit).view(torch.float64), low_bit
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
    """Number of True entries of each row of the bool (c, N) ``m``, int64 (NumPy on a CPU: :func:`row_counts`)."""
    if _numpy_path(m):
        return torch.from_numpy(row_counts(m.contiguous().numpy()))
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

    CPU float32 rows (NumPy) pack each pixel into one integer key that orders like its value and
    carries its flag in the lowest bit, and sort the keys with :func:`sort_keys`. With no negative
    value (the usual heatmap) the float32 bit pattern already orders like the value and leaves the
    top bit free: ``bits << 1 | flag``, 32 bits. Otherwise ``order_key << 1 | flag``
    (:func:`order_keys`), 33 bits in a uint64. ``key >> 1`` compares like the values for the tie
    correction; ``-0.0`` and ``0.0`` tie. Any other input takes :func:`sort_with_flags`.
    """
    if values.dtype == torch.float32 and _numpy_path(values) and values.shape[1] <= 1 << 26:
        v = values.contiguous().numpy()
        f = flags.contiguous().numpy().view(np.uint8)
        shape = tuple(v.shape)
        if not bool((v < 0).any()):
            bits, keys = 32, _buffer(ws, "keys", shape, np.uint32)
            np.add(v, np.float32(0.0), out=keys.view(np.float32))  # -0.0 -> 0.0
        else:
            bits, keys = 33, _buffer(ws, "keys", shape, np.uint64)
            np.copyto(keys, order_keys(v, ws))
        np.left_shift(keys, 1, out=keys)
        np.bitwise_or(keys, f, out=keys)
        keys = sort_keys(keys, bits, ws)
        key_flags = _buffer(ws, "key_flags", shape, keys.dtype)
        np.bitwise_and(keys, 1, out=key_flags)
        np.right_shift(keys, 1, out=keys)
        signed = np.int32 if keys.dtype == np.uint32 else np.int64
        return flagged_midrank_sum_x2(
            torch.from_numpy(keys.view(signed)), torch.from_numpy(key_flags.view(signed)), ws
        )
    sorted_values, sorted_flags = sort_with_flags(values, flags, ws)
    return flagged_midrank_sum_x2(sorted_values, sorted_flags, ws)


def normalised_at_least(
    x: torch.Tensor, flags: torch.Tensor, thresholds: torch.Tensor, ws: Workspace | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts of min-max normalised values at or above each threshold, per row of ``x`` (c, N).

    With ``h' = (x - min x) / (max x - min x)`` in float64 (divisor 1 for a constant row), returns
    ``(#{h' >= t}, #{h' >= t and flag})``, int64 (c, T), for the T ``thresholds`` (float64, on the
    device of ``x``), and ``max x - min x`` (c,) float64. On a CPU (NumPy) with at most
    :data:`_COUNTING_MAX_THRESHOLDS` thresholds, two comparison passes per threshold count them
    (:func:`row_counts`); otherwise the rows are sorted with their flags (:func:`sort_with_flags`)
    and each threshold is a binary search into the sorted normalised values.
    """
    c, n = x.shape
    if _numpy_path(x) and thresholds.numel() <= _COUNTING_MAX_THRESHOLDS:
        a, f = x.contiguous().numpy(), flags.contiguous().numpy()
        low = a.min(axis=1, keepdims=True).astype(np.float64)
        span = a.max(axis=1, keepdims=True).astype(np.float64) - low
        h = _buffer(ws, "normalised", (c, n), np.float64)
        np.subtract(a, low, out=h)
        np.divide(h, np.where(span > 0, span, 1.0), out=h)
        at_least_padded, at_least = _mask_buffer(ws, "at_least", c, n)
        counts = np.empty((2, c, thresholds.numel()), dtype=np.int64)
        for j, t in enumerate(thresholds.tolist()):
            np.greater_equal(h, t, out=at_least)
            counts[0, :, j] = row_counts(at_least_padded)
            np.logical_and(at_least, f, out=at_least)
            counts[1, :, j] = row_counts(at_least_padded)
        return torch.from_numpy(counts[0]), torch.from_numpy(counts[1]), torch.from_numpy(span[:, 0])
    values, sorted_flags = sort_with_flags(x, flags, ws)
    low = values[:, :1]
    span = values[:, -1:] - low
    queries = thresholds.expand(c, -1).contiguous()
    below = torch.searchsorted((values - low) / torch.where(span > 0, span, 1.0), queries)
    flagged_below = sorted_flags.cumsum(dim=1).gather(1, (below - 1).clamp(min=0)) * (below > 0)
    return n - below, flags.sum(dim=1, keepdim=True) - flagged_below, span.squeeze(1)


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
