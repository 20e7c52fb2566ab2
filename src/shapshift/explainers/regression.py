"""Regression-adjusted Monte Carlo Shapley values: an exact proxy plus an unbiased correction of its residual.

Witter, Liu & Musco (2025, "Regression-adjusted Monte Carlo estimators for Shapley values and probabilistic
values"): fit a cheap proxy ``h`` of the game ``f`` whose Shapley values are exact, and estimate the Shapley
values of the residual ``f - h`` by Monte Carlo. ``phi(f) = phi(h) + phi(f - h)`` by linearity, so the result
is unbiased whatever the proxy, and its variance is that of the residual, small when the proxy fits.

Written over coalition sizes (as :mod:`.quadrature`): with ``D_i(t)`` the mean value of the size-``t``
coalitions holding feature ``i`` minus the mean of those without it,

    phi_i = (f(full) - f(empty)) / n + (1 / n) * sum_{t=1}^{n-1} D_i(t).

``task.max_evals`` is spent as:

1. ``f(empty)``, ``f(full)`` and every coalition of size 1 and ``n - 1``: ``D(1)`` and ``D(n - 1)`` exactly
   (``2n + 2`` evaluations, as ``quadrature``);
2. the rest on complementary pairs ``(S, S^c)`` of the middle sizes ``2 .. n - 2``. The sizes form classes
   ``{t, n - t}``; pair ``j`` goes to the class furthest below its share (shares uniform over the sizes:
   within 4 % of the other allocations tried, ``benchmarks/REGRESSION_DESIGN.md``), and its
   coalition is uniform among those of that size. The sequence does not depend on the budget, so a larger
   budget with the same seed scores the same pairs first (precision rounds reuse them);
3. the proxy: kernel ridge regression on every scored coalition with features ``x_i`` (linear, as ContextCite),
   ``P_d(|S|) x_i`` (linear effects that vary smoothly with the coalition's size, degree :data:`SLOPE_DEGREE`),
   optionally ``x_i x_l`` (pairwise, :data:`PAIR_SCALE`; off by default: each pair's correction sees only the
   difference ``f(S) - f(S^c)``, in which pairwise interactions are linear, and on the recorded tables they
   changed the error by under 1 %), and smooth functions of the size (symmetric: they take up the size trend of
   deletion games and have no Shapley value). Its ``D_i(t)`` are exact in closed form (:func:`class_effects`);
4. the correction of middle class ``c`` from each of its pairs: ``D(t)`` of the residual ``f - h_{-j}`` of
   the proxy refitted without pair ``j`` (cross-fitting: the proxy is independent of the pair it corrects, so
   each pair's estimate is unbiased; done in closed form by a block update of the kernel system), on a
   uniform coalition of size ``t``: ``r(S) (x_i n / t - (1 - x_i) n / (n - t))``. Class means add up.

Efficiency is exact: every ``D`` above (the exact ends, the proxy's, each correction) sums to 0 over the
features, so the values sum to ``f(full) - f(empty)`` for every output token, to rounding. Standard errors:
stratified sampling's, ``sqrt(sum_c s^2 / m_c)`` over the classes with ``m_c`` pairs, with one variance ``s^2``
pooled from every class's spread of its pairs' estimates (more degrees of freedom than any class alone: at
``4n + 2`` most classes hold one or two pairs), scaled by :data:`SE_CALIBRATION`. The values are
unbiased Shapley estimates once every size class holds a pair (about ``n / 2`` classes: from about ``3n + 2``
evaluations on); a class without a pair takes the proxy's ``D``, which is biased (logged; standard errors NaN). Every output token
is fitted and corrected with the same coalitions and the same kernel system (common random numbers). When
the budget covers every coalition the values are exact (standard error 0); below ``2n + 2``, or under 4
features, it runs ``kernel``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .base import Attribution, ExplainTask, scorer_attribution
from .quadrature import end_effects, scored_ends
from .registry import Estimator, register

log = logging.getLogger(__name__)

#: Scale of the pairwise features in the proxy's kernel relative to the linear ones (prior variance ratio).
PAIR_SCALE = 0.0
#: Scale of the symmetric size features (Legendre polynomials of the size, degrees 0..SIZE_DEGREE).
SIZE_SCALE = 10.0
#: Highest degree of the size polynomials.
SIZE_DEGREE = 4
#: Ridge strength relative to ``n / 2``, the linear features' part of the kernel's diagonal at the middle size
#: (fixed by ``n`` alone, not by the data, so the cross-fitted proxy stays independent of the pair it corrects).
RIDGE = 0.03
#: Scale of the size-modulated linear features relative to the plain linear ones, and their highest degree.
SLOPE_SCALE = 1.0
SLOPE_DEGREE = 1
#: Factor on the stratified standard error: with 1.1 the 95 % intervals held the exact values 92 %, 95 % and 97 %
#: of the time at 4n + 2, 8n + 2 and 16n + 2 on benchmarks/tables (attention masking, log-odds; 90-95 % with 1: benchmarks/REGRESSION_DESIGN.md).
SE_CALIBRATION = 1.1


@dataclass(frozen=True)
class RegressionOptions:
    """``pair_scale``: weight of the pairwise terms in the proxy (0: none); ``ridge``: the proxy's ridge strength
    (relative to ``n / 2``); ``slope_scale``, ``slope_degree``: weight and highest degree of the linear effects'
    variation with the coalition's size (``slope_degree=0``: a linear proxy, as ContextCite)."""

    pair_scale: float = PAIR_SCALE
    ridge: float = RIDGE
    slope_scale: float = SLOPE_SCALE
    slope_degree: int = SLOPE_DEGREE

    def __post_init__(self) -> None:
        if not self.pair_scale >= 0:
            raise ConfigError(f"regression's pair_scale={self.pair_scale} must be >= 0.", "Use e.g. pair_scale=0 (the default) or 0.5.")
        if not self.ridge > 0:
            raise ConfigError(f"regression's ridge={self.ridge} must be > 0.", "Use e.g. ridge=0.03.")
        if not (self.slope_scale >= 0 and 0 <= self.slope_degree <= 6):
            raise ConfigError(f"regression's slope_scale={self.slope_scale} must be >= 0 and slope_degree="
                              f"{self.slope_degree} between 0 and 6.", "Use e.g. slope_scale=1, slope_degree=1.")


def size_classes(n: int) -> list[tuple[int, ...]]:
    """The middle sizes ``2 .. n - 2`` as classes ``(t, n - t)`` (``(n/2,)`` for even ``n``); empty for ``n < 4``."""
    return [(t, n - t) if t != n - t else (t,) for t in range(2, n // 2 + 1)]


def class_shares(n: int) -> np.ndarray:
    """Each class's share of the pairs ``(n_classes,)``: its number of sizes over ``n - 3`` (uniform over the sizes;
    measured against ``1 / sqrt(t (n - t))`` and the Shapley kernel's weights: ``benchmarks/REGRESSION_DESIGN.md``)."""
    w = np.array([len(c) for c in size_classes(n)], float)
    return w / w.sum()


def pair_schedule(n: int, n_pairs: int) -> np.ndarray:
    """The class index of each pair ``(n_pairs,)``: each pair to the class furthest below its share.

    Deterministic and prefix-stable (the first ``m`` entries do not depend on ``n_pairs``); every class
    gets a pair as soon as ``n_pairs`` reaches the number of classes times at most a few.
    """
    shares = class_shares(n)
    counts = np.zeros(len(shares))
    out = np.empty(n_pairs, dtype=np.int64)
    for j in range(n_pairs):
        c = int(np.argmax(shares * (j + 1) - counts))
        out[j] = c
        counts[c] += 1
    return out


def pair_design(n: int, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(x, classes)``: coalitions ``(n_pairs, n)`` bool of the smaller size of their class, each to be scored
    with its complement, uniform within their size and independent of each other; ``classes`` ``(n_pairs,)``."""
    classes = pair_schedule(n, n_pairs)
    sizes = size_classes(n)
    x = np.zeros((n_pairs, n), bool)
    for j, c in enumerate(classes):
        x[j, rng.permutation(n)[: sizes[c][0]]] = True
    return x, classes


def _size_features(t: np.ndarray, n: int, degree: int) -> np.ndarray:
    """Legendre polynomials ``(m, degree + 1)`` of the sizes ``t`` ``(m,)`` scaled to ``[-1, 1]``."""
    return np.polynomial.legendre.legvander(2 * np.asarray(t, float) / n - 1, degree)


def _slope_scales(slope_scale: float, slope_degree: int) -> np.ndarray:
    """Prior scale of each degree ``(slope_degree + 1,)`` of the size-modulated linear features: 1, then ``slope_scale``."""
    return np.array([1.0] + [slope_scale] * slope_degree)


def proxy_kernel(a: np.ndarray, b: np.ndarray, options: RegressionOptions) -> np.ndarray:
    """The proxy's kernel ``(m_a, m_b)`` between coalitions ``a`` ``(m_a, n)`` and ``b`` ``(m_b, n)``.

    The inner product of the features ``sqrt(s_d) P_d(|S|) x_i`` (linear effects that vary smoothly with the
    coalition's size, ``s_0 = 1``), ``sqrt(pair_scale) x_i x_l`` (``i < l``) and ``sqrt(SIZE_SCALE) P_d(|S|)``
    (symmetric size trend): ``|a ∩ b| sum_d s_d P_d(|a|) P_d(|b|) + pair_scale C(|a ∩ b|, 2) + SIZE_SCALE ...``.
    """
    n = a.shape[1]
    common = a.astype(np.float64) @ b.astype(np.float64).T
    ta, tb = a.sum(axis=1), b.sum(axis=1)
    sa, sb = _size_features(ta, n, options.slope_degree), _size_features(tb, n, options.slope_degree)
    lin = common * ((sa * _slope_scales(options.slope_scale, options.slope_degree)) @ sb.T)
    qa, qb = _size_features(ta, n, SIZE_DEGREE), _size_features(tb, n, SIZE_DEGREE)
    return lin + options.pair_scale * common * (common - 1) / 2 + SIZE_SCALE * qa @ qb.T


def class_effects(z: np.ndarray, options: RegressionOptions) -> np.ndarray:
    """``(n_classes, n, m)``: ``D`` summed over each middle class's sizes of the kernel functions ``k(z_j, .)`` of the
    training coalitions ``z`` ``(m, n)`` (the proxy ``sum_j a_j k(z_j, .)`` has ``D`` of class ``c`` ``out[c] @ a``).

    The game ``q(|S|) sum_{l in z} x_l`` has ``D_i(t) = q(t) (n 1[i in z] - |z|) / (n - 1)``; the pairwise game
    ``sum_{l<k in z} x_l x_k`` has ``D_i(t) = (t - 1) (G_i / (n - 1) - 2 (G - G_i) / ((n - 1) (n - 2)))`` with
    ``G_i`` the pairs holding ``i`` and ``G`` all pairs; the size polynomials are symmetric: no ``D``.
    """
    n = z.shape[1]
    zt = z.T.astype(np.float64)  # (n, m)
    size = zt.sum(axis=0)  # (m,)
    base = (n * zt - size) / (n - 1)
    g_i = zt * (size - 1)
    g = size * (size - 1) / 2
    pair = options.pair_scale * (g_i / (n - 1) - 2 * (g - g_i) / ((n - 1) * (n - 2)))
    scales = _slope_scales(options.slope_scale, options.slope_degree)
    q_z = _size_features(size, n, options.slope_degree) * scales  # (m, d)
    out = []
    for c in size_classes(n):
        q_c = _size_features(np.array(c), n, options.slope_degree).sum(axis=0)  # (d,)
        out.append(base * (q_z @ q_c)[None, :] + sum(t - 1 for t in c) * pair)
    return np.stack(out)


def size_weights(x: np.ndarray) -> np.ndarray:
    """``(m, n)``: ``n / t`` for the features in each coalition of ``x`` ``(m, n)`` (size ``t``), ``-n / (n - t)`` for
    the others. A coalition's value times its row is an unbiased estimate of ``D(t)`` from one uniform coalition."""
    n = x.shape[1]
    t = x.sum(axis=1, keepdims=True).astype(np.float64)
    return np.where(x, n / t, -n / (n - t))


def regression_values(x: np.ndarray, classes: np.ndarray, vx: np.ndarray, vc: np.ndarray, ends: dict[str, np.ndarray],
                      options: RegressionOptions | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values and standard errors ``(n, k)`` from the pairs and the exact ends.

    ``x`` ``(m, n)`` bool: the pairs' smaller coalitions, ``classes`` ``(m,)`` their class, ``vx``/``vc`` ``(m, k)``
    the values of the coalitions and their complements; ``ends``: ``empty``, ``full`` ``(k,)``, ``eye`` ``(n, k)``
    (singletons) and ``loo`` ``(n, k)`` (leave-one-out). Standard errors are NaN where they cannot be estimated
    (no pair, or no class with two pairs).
    """
    options = options or RegressionOptions()
    m, n = x.shape
    k = vx.shape[1]
    empty, full = ends["empty"], ends["full"]
    d1, dn1 = end_effects(ends["eye"], ends["loo"])
    eye = np.eye(n, dtype=bool)
    z = np.concatenate([np.zeros((1, n), bool), np.ones((1, n), bool), eye, ~eye, x, ~x])
    y = np.concatenate([empty[None], full[None], ends["eye"], ends["loo"], vx, vc])
    fixed = 2 + 2 * n  # rows in no pair
    lam = options.ridge * n / 2  # from n alone: the linear features' part of the kernel's diagonal at the middle
    y0 = y[:fixed].mean(axis=0)  # a constant has no D; the fixed rows do not depend on the pairs
    p = np.linalg.inv(proxy_kernel(z, z, options) + lam * np.eye(len(z)))  # (N, N)
    alpha = p @ (y - y0)  # (N, k): the proxy fitted on every coalition
    effects = class_effects(z, options)  # (C, n, N)
    sizes = size_classes(n)
    wx, wc = size_weights(x), size_weights(~x)  # (m, n)
    ys = np.zeros((m, n, k))  # each pair's unbiased estimate of its class's sum of D
    for j in range(m):
        rows = [fixed + j, fixed + m + j]
        u = np.linalg.solve(p[np.ix_(rows, rows)], alpha[rows])  # (2, k): the pair's leave-out residuals
        c = classes[j]
        # the proxy refitted without the pair has coefficients alpha - p[:, rows] @ u (block inverse)
        proxy_d = effects[c] @ alpha - (effects[c] @ p[:, rows]) @ u
        corr = wx[j][:, None] * u[0][None] + wc[j][:, None] * u[1][None]  # (n, k)
        ys[j] = proxy_d + (corr / 2 if len(sizes[c]) == 1 else corr)
    # per class: the mean of its pairs' estimates; the classes' spreads are pooled into one variance (more degrees
    # of freedom than any class alone: at 4n + 2 most classes hold one or two pairs)
    total, spread, dof, covered, missing = np.zeros((n, k)), np.zeros((n, k)), 0, np.zeros(len(sizes)), []
    for c in range(len(sizes)):
        mine = ys[classes == c]
        if not len(mine):  # no pair: the proxy fitted on everything (biased)
            total += effects[c] @ alpha
            missing.append(sizes[c])
            continue
        total += mine.mean(axis=0)
        covered[c] = 1 / len(mine)
        spread += ((mine - mine.mean(axis=0)) ** 2).sum(axis=0)
        dof += len(mine) - 1
    if missing:
        log.info("regression: %d pairs for %d size classes; sizes %s take the proxy's effects (biased)",
                 m, len(sizes), missing)
    var = covered.sum() * spread / dof if dof and not missing else np.full((n, k), np.nan)
    values = (full - empty) / n + (d1 + dn1 + total) / n
    return values, SE_CALIBRATION * np.sqrt(var) / n


@register
class RegressionExplainer(Estimator):
    """Exact ends + kernel-ridge proxy (linear and pairwise, exact Shapley values) + cross-fitted unbiased Monte
    Carlo correction of its residual on complementary pairs of the middle sizes; stratified standard errors."""

    name = "regression"
    deterministic = False
    budget = "evaluations, the empty and full input included (below 2n + 2: kernel's)"
    rounds = True
    Options = RegressionOptions
    auto_evals_per_feature = 4  # a first round of 4n + 2, as quadrature and kernel

    def attribute(self, task: ExplainTask, scorer) -> Attribution:
        n = task.n_features
        start = scored_ends(task, scorer)  # exact when affordable, kernel's below 2n + 2, else the ends
        if isinstance(start, Attribution):
            return start
        empty, full, ends, rng = start
        x, classes = pair_design(n, (task.max_evals - 2 - 2 * n) // 2, rng)
        v = scorer(np.concatenate([x, ~x])) if len(x) else np.zeros((0, len(full)))
        values, err = regression_values(x, classes, v[: len(x)], v[len(x):],
                                        {"empty": empty, "full": full, "eye": ends[:n], "loo": ends[n:]}, self.options)
        return scorer_attribution(scorer, values, empty, err)
