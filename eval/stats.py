"""Statistics shared by the leaderboard, its meta-evaluation and the experiments.

* :func:`mean_ci`: the mean of the finite scores with its 95% Student-t half-width
  ``t_{0.975, n-1} * s / sqrt(n)`` (``s`` the sample standard deviation, ``ddof = 1``).
* :func:`bootstrap_means`: means over paired resamples of the images (Efron & Tibshirani, *An
  Introduction to the Bootstrap*, 1993), with :func:`percentile_interval` their 95% percentile
  interval.
* :func:`kendall_tau_b`: Kendall's tau-b between rankings, batched (Kendall, *Biometrika* 1945).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["N_BOOT", "mean_ci", "bootstrap_means", "percentile_interval", "kendall_tau_b"]

#: Bootstrap resamples of the images (an even number: the meta-evaluation's tau pairs them up).
N_BOOT = 200


def mean_ci(scores: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean, 95% Student-t half-width and count of the finite entries of ``scores``.

    Returns ``(nan, nan, 0)`` when no score is finite; the half-width is NaN when n < 2.
    """
    from scipy import stats

    x = np.asarray(scores, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, n
    half = float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, half, n


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between the rows of ``a`` and ``b`` (..., E): (...,) float64.

    ``tau_b = (n_c - n_d) / sqrt((n_0 - t_a) (n_0 - t_b))`` over the ``n_0 = E (E - 1) / 2`` pairs,
    ``t_a``, ``t_b`` the pairs tied in ``a`` and in ``b``; NaN when either ranking is all ties
    (or E < 2). NaN entries count as ties.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    e = a.shape[-1]
    iu = np.triu_indices(e, 1)
    with np.errstate(invalid="ignore"):
        sa = np.nan_to_num(np.sign(a[..., :, None] - a[..., None, :]))[..., iu[0], iu[1]]
        sb = np.nan_to_num(np.sign(b[..., :, None] - b[..., None, :]))[..., iu[0], iu[1]]
    n0 = len(iu[0])
    den = np.sqrt((n0 - (sa == 0).sum(-1)) * (n0 - (sb == 0).sum(-1)).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (sa * sb).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_means(x: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Means of each row of ``x`` (E, N) on ``n_boot`` paired resamples of its columns: (n_boot, E).

    Resample b draws N columns with replacement (the same for every row, from
    ``numpy.random.default_rng(seed)``); each row's mean ignores its NaN entries (NaN when all are).
    """
    n = x.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    out = np.empty((n_boot, x.shape[0]))
    for start in range(0, n_boot, 50):  # bounded memory: E x 50 x N at a time
        sub = x[:, idx[start : start + 50]]  # (E, b, N)
        finite = np.isfinite(sub)
        count = finite.sum(-1)
        total = np.where(finite, sub, 0.0).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + 50] = np.where(count > 0, total / np.maximum(count, 1), np.nan).T
    return out


def percentile_interval(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile interval of bootstrap resamples: the 2.5 and 97.5 percentiles over axis 0, NaN
    resamples ignored (NaN where all are)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(diff, 2.5, axis=0), np.nanpercentile(diff, 97.5, axis=0)
