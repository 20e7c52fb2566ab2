"""Uncertainty over examples: seeded bootstrap CIs of a mean, the paired Wilcoxon test, Holm's correction.

The unit of resampling is the example: each example contributes one number (for per-token metrics,
its mean over output positions), and examples are treated as independent draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as _sstats
from scipy.stats import rankdata


class MeanCI(NamedTuple):
    """A mean with its percentile bootstrap confidence interval over ``n`` finite values."""

    mean: float
    low: float
    high: float
    n: int


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[np.isfinite(x)]


def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, *, n_bootstrap: int = 1000, level: float = 0.95,
                      seed: int = 0) -> MeanCI:
    """Mean of ``values`` and its percentile bootstrap CI (``level``, default 95 %).

    ``values``: one number per example (NaN values are dropped, and ``n`` counts the rest).
    ``scipy.stats.bootstrap`` (``method="percentile"``) draws ``n_bootstrap`` resamples of ``n``
    values with replacement from ``numpy.random.default_rng(seed)``, so equal inputs and seeds give
    equal intervals: the ``(1-level)/2`` and ``(1+level)/2`` quantiles of the resampled means. With no finite value
    everything is NaN; with one value the mean is that value and the interval NaN (no spread can be
    estimated from one example); constant values give a zero-width interval.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}.")
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant values: scipy warns, the interval is [mean, mean]
        ci = _sstats.bootstrap((x,), np.mean, n_resamples=n_bootstrap, confidence_level=level, method="percentile",
                               rng=np.random.default_rng(seed)).confidence_interval
    return MeanCI(mean, float(ci.low), float(ci.high), n)


def bootstrap_curve_ci(matrix: np.ndarray, *, n_bootstrap: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column means of ``matrix`` ``(n_examples, n_points)`` with percentile bootstrap bands over rows.

    Rows (examples) are resampled jointly, so the band of a curve keeps its shape; NaN cells are
    ignored in each column's mean. Returns ``(mean, low, high)``, each ``(n_points,)``.

    Hand-written, not ``scipy.stats.bootstrap``: on a column with few finite cells some resamples
    hold none, and scipy's percentile then makes the whole band NaN, where this ignores those resamples.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"matrix must be (n_examples, n_points), got shape {m.shape}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as documented
        mean = np.nanmean(m, axis=0)
        if m.shape[0] < 2:
            nan = np.full(m.shape[1], np.nan)
            return mean, nan, nan.copy()
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, m.shape[0], size=(n_bootstrap, m.shape[0]))
        boots = np.nanmean(m[idx], axis=1)  # (n_bootstrap, n_points)
        alpha = (1.0 - level) / 2.0
        low, high = np.nanquantile(boots, [alpha, 1.0 - alpha], axis=0)
    return mean, low, high


#: Up to this many non-zero differences the Wilcoxon p-value is exact (all 2^n sign flips).
WILCOXON_EXACT_MAX = 16


def wilcoxon_paired(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of the paired differences ``x - y``.

    ``x``, ``y``: one number per example, in the same example order (e.g. a condition's overlap
    with the baseline and the noise floor's). Pairs with a NaN on either side are dropped, and so
    are zero differences (Wilcoxon's treatment, scipy's ``zero_method="wilcox"``). When every
    difference is zero the two samples are indistinguishable and the p-value is **1.0** by
    convention (scipy would give NaN); NaN when no pair is left.

    Overlaps are coarse (multiples of 1/k), so tied |differences| are common. Up to
    :data:`WILCOXON_EXACT_MAX` non-zero differences the p-value is exact: the statistic ``T+`` (sum
    of the average ranks of ``|d|`` with ``d > 0``) is compared with its distribution over all
    ``2^n`` equally likely sign assignments, counting ``|T - n(n+1)/4| >= |T_obs - n(n+1)/4|``
    (valid with ties, equal to scipy's exact test without them). Above that, the normal
    approximation with tie correction (``scipy.stats.wilcoxon(method="asymptotic")``).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have equal length, got {x.size} and {y.size}.")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    if d.size == 0:
        return math.nan
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    if d.size <= WILCOXON_EXACT_MAX:
        return _wilcoxon_exact(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _sstats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="asymptotic")
    return float(res.pvalue)


def _wilcoxon_exact(d: np.ndarray) -> float:
    """Exact two-sided sign-flip p-value of the signed-rank statistic for non-zero differences ``d``."""
    n = d.size
    ranks = _sstats.rankdata(np.abs(d))  # average ranks for ties
    center = ranks.sum() / 2.0
    observed = abs(ranks[d > 0].sum() - center)
    flips = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # every subset of positive signs
    null = np.abs(flips @ ranks - center)
    return float(min(1.0, np.mean(null >= observed - 1e-9)))


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error control); NaN inputs stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


# -- the precision of an estimate: the expected rank agreement of two independent runs ------------------------
#: Simulated pairs of runs behind one precision estimate.
N_SIMULATIONS = 200


def importance(values: np.ndarray) -> np.ndarray:
    """Per input token: ``|value|`` summed over the output tokens; ``values`` ``(n_in, n_out)`` or ``(n_in,)``."""
    values = np.asarray(values, dtype=np.float64)
    return np.abs(values).sum(axis=1) if values.ndim == 2 else np.abs(values)


def row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of matching rows of ``a`` and ``b`` ``(s, n)`` (ties averaged; constant rows give 0)."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.divide((ra * rb).sum(axis=1), den, out=np.zeros(len(a)), where=den > 0)


def simulated_runs(values: np.ndarray, error_std: np.ndarray | None, n_sim: int = N_SIMULATIONS,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray] | float:
    """The importances ``(n_sim, n_in)`` of two simulated independent runs (the values plus independent normal errors
    of ``error_std``), or the agreement itself where no simulation is needed: 1.0 for exact values (zero standard
    errors) or a single input token, NaN when a standard error is unknown (NaN) or missing."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 2:
        return 1.0
    if error_std is None or not np.all(np.isfinite(error_std)):
        return float("nan")
    err = np.asarray(error_std, dtype=np.float64)
    if not np.any(err > 0):
        return 1.0
    rng = np.random.default_rng(seed)
    a, b = (importance_batch(values + rng.standard_normal((n_sim, *values.shape)) * err) for _ in range(2))
    return a, b


def expected_rank_agreement(values: np.ndarray, error_std: np.ndarray | None, n_sim: int = N_SIMULATIONS,
                            seed: int = 0) -> float:
    """Expected Spearman of the importances of two independent runs, from ``values`` and ``error_std`` ``(n_in, n_out)``.

    1.0 for exact values (zero standard errors) or a single input token; NaN when a standard error is
    unknown (NaN) or missing. Deterministic for a given ``seed``.
    """
    runs = simulated_runs(values, error_std, n_sim, seed)
    return runs if isinstance(runs, float) else float(row_spearman(*runs).mean())


def expected_topk_agreement(values: np.ndarray, error_std: np.ndarray | None, k: int, n_sim: int = N_SIMULATIONS,
                            seed: int = 0) -> float:
    """Expected overlap@k (share of common features in the two top-k sets, in [0, 1]) of two independent runs,
    simulated as for :func:`expected_rank_agreement` from ``values`` and ``error_std`` ``(n_in, n_out)``.

    1.0 when ``k >= n_in`` or for exact values; NaN when a standard error is unknown (NaN) or missing.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k >= np.asarray(values).shape[0]:
        return 1.0
    runs = simulated_runs(values, error_std, n_sim, seed)
    if isinstance(runs, float):
        return runs
    tops = []
    for imp in runs:
        top = np.zeros(imp.shape, bool)
        np.put_along_axis(top, np.argsort(-imp, axis=1, kind="stable")[:, :k], True, axis=1)
        tops.append(top)
    return float((tops[0] & tops[1]).sum(axis=1).mean() / k)


def importance_batch(values: np.ndarray) -> np.ndarray:
    """:func:`importance` of a stack ``(s, n_in, n_out)`` → ``(s, n_in)``."""
    return np.abs(values).sum(axis=2) if values.ndim == 3 else np.abs(values)
