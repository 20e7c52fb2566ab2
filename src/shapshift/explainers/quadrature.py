"""Shapley values as a quadrature over coalition sizes, with regression-adjusted middle strata.

For a coalition size ``t`` let ``D_i(t)`` be the mean value of the coalitions of size ``t`` that
hold feature ``i`` minus the mean of those that do not. Then exactly

    phi_i = (f(full) - f(empty)) / n + (1 / n) * sum_{t=1}^{n-1} D_i(t),

and ``sum_i D_i(t) = 0`` for every ``t``, so any estimate built from per-size effects that sum to
zero satisfies efficiency exactly. For every game with interactions of order at most 2, ``D_i(t)``
is linear in ``t``; for text models it is smooth and nearly quadratic (measured on the recorded
tables of ``benchmarks/tables``). This estimator therefore spends ``task.max_evals`` as:

1. ``f(empty)``, ``f(full)`` and every coalition of size 1 and ``n - 1``: ``D(1)`` and ``D(n - 1)``
   exactly (``2n + 2`` evaluations; with nothing more the result equals paired KernelSHAP's there);
2. the rest on the middle size (``n / 2``; ``(n - 1) / 2`` and its complements' ``(n + 1) / 2`` when
   ``n`` is odd), each coalition with its complement, chosen one pair at a time to keep the design
   well conditioned (sequential D-optimal choice among random candidates);
3. ``D`` of the middle size by a ridge regression of the scores on the coalitions, adjusted around
   the straight line between ``D(1)`` and ``D(n - 1)`` (the order-2 answer, which the ridge falls
   back to when few pairs are scored; for odd ``n`` the two middle sizes share one correction, so
   a pair's two coalitions inform it together); the sum over sizes by the polynomial through the
   sizes known (a Simpson-like rule over sizes).

Its standard errors are a delete-one-pair jackknife of the whole estimate, scaled by
:data:`SE_INFLATION` (calibrated on the recorded tables: ``benchmarks/ESTIMATORS.md``). When the
budget covers every coalition the values are exact (standard error 0); below ``2n + 2`` it runs
``kernel``. Rounds: a larger budget with the same seed scores the same pairs first, so a
caching scorer re-runs it for only the new pairs (:mod:`shapshift.explainers.precision`).
"""

from __future__ import annotations

import numpy as np

from .base import Attribution, ExplainTask, endpoints, scorer_attribution
from .exact import all_coalitions, shapley_from_table
from .kernel import KernelExplainer
from .registry import Estimator, register

#: Random candidate coalitions per chosen pair (the one adding most information is kept).
CANDIDATES = 16
#: Ridge strength: the penalty is this times the mean information one scored coalition carries, so
#: the pull toward the order-2 prior fades as pairs are added (chosen on the recorded tables:
#: benchmarks/ESTIMATORS.md; 0.2-0.8 all within 5 % of the best error, coverage 0.93-0.97).
RIDGE = 0.5
#: Factor on the jackknife standard error (covers the quadrature's bias over sizes; see ESTIMATORS.md).
SE_INFLATION = 1.0


def middle_sizes(n: int) -> list[int]:
    """The interior coalition sizes sampled: ``[n // 2]`` for even ``n``, ``[(n-1)/2, (n+1)/2]`` for odd."""
    return [n // 2] if n % 2 == 0 else [(n - 1) // 2, (n + 1) // 2]


def size_quadrature(n: int, nodes: list[int]) -> np.ndarray:
    """Weights ``w`` with ``sum_{t=1}^{n-1} P(t) = sum_k w_k P(nodes_k)`` for the polynomial through the nodes."""
    x = np.asarray(nodes, float)
    scale = lambda t: 2 * (np.asarray(t, float) - 1) / max(n - 2, 1) - 1  # noqa: E731  (sizes to [-1, 1])
    deg = len(nodes) - 1
    vander = np.polynomial.legendre.legvander(scale(x), deg)
    total = np.polynomial.legendre.legvander(scale(np.arange(1, n)), deg).sum(axis=0)
    return np.linalg.solve(vander.T, total)


def end_effects(v1: np.ndarray, vn1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``D(1)`` and ``D(n - 1)`` ``(n, k)`` from the values of the singletons ``v1`` and the leave-one-outs ``vn1``."""
    n = len(v1)
    d1 = v1 - (v1.sum(axis=0) - v1) / (n - 1)
    dn1 = (vn1.sum(axis=0) - vn1) / (n - 1) - vn1
    return d1, dn1


def pair_design(n: int, n_pairs: int, rng: np.random.Generator, candidates: int = CANDIDATES,
                size: int | None = None, intercept: bool | None = None) -> np.ndarray:
    """``(n_pairs, n)`` bool coalitions of ``size`` (default ``middle_sizes(n)[0]``), each to be scored with its complement.

    Pairs are chosen one at a time: of ``candidates`` random coalitions the one with the largest
    ``x^T A^{-1} x`` (``A`` the information matrix so far, centred coalitions) is kept, and no pair
    repeats. The first ``m`` rows do not depend on ``n_pairs`` (rounds reuse them).

    ``intercept`` (default: odd ``n``): the regression centres the coalitions on their own mean (odd ``n``:
    a pair's two sizes differ, :func:`quadrature_values`), so the information is that of ``(1, x)``; without
    it a feature kept in every coalition looks informative (``x - t/n`` is not 0) though its centred column
    is 0, and for odd ``n`` the greedy choice put one feature in every pair: its middle effect was never
    measured and its jackknife standard error was exactly 0.
    """
    t = middle_sizes(n)[0] if size is None else size
    intercept = n % 2 == 1 if intercept is None else intercept
    # each candidate's information vector: centred (x - t/n), or with the intercept (1, x)
    embed = (lambda c: np.concatenate([np.ones((len(c), 1)), c], axis=1)) if intercept else (lambda c: c - t / n)
    a_inv = np.eye(n + intercept) * 1e3
    rows: list[np.ndarray] = []
    seen: set[bytes] = set()
    attempts = 0
    while len(rows) < n_pairs and attempts < 50 * n_pairs + 100:
        attempts += 1
        cand = _new_candidates(rng, candidates, n, t, seen)
        if not len(cand):
            continue
        xa = embed(cand)
        k = int(np.argmax(np.einsum("ci,ij,cj->c", xa, a_inv, xa)))
        seen.add(np.packbits(cand[k]).tobytes())
        rows.append(cand[k])
        u = a_inv @ xa[k]
        a_inv -= np.outer(u, u) / (1 + xa[k] @ u)
    return np.asarray(rows, bool).reshape(-1, n)


def _new_candidates(rng: np.random.Generator, candidates: int, n: int, t: int, seen: set[bytes]) -> np.ndarray:
    """``candidates`` random coalitions of size ``t`` ``(m, n)``, without those (or their complements) in ``seen``."""
    picks = np.argsort(rng.random((candidates, n)), axis=1)[:, :t]
    cand = np.zeros((candidates, n), bool)
    np.put_along_axis(cand, picks, True, axis=1)
    return np.array([c for c in cand if np.packbits(c).tobytes() not in seen and np.packbits(~c).tobytes() not in seen])


def middle_correction(groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]], ridge: float = RIDGE) -> np.ndarray:
    """The correction ``(n, k)`` to add to each prior ``D(t)``, shared by the sizes in ``groups``.

    ``groups``: ``(x, y, prior)`` per size ``t``: coalitions ``(m, n)`` bool of that size, their values
    ``(m, k)`` and a guess of ``D(t)`` ``(n, k)`` (rows summing to 0). One ridge regression of the
    values minus each prior's linear game on the centred coalitions (each size centred on its own
    mean). The correction sums to 0 over features, and is 0 without data.
    """
    n = groups[0][0].shape[1]
    xcs, rs = [], []
    for x, y, prior in groups:
        xf = x.astype(np.float64)
        r = y - xf @ ((n - 1) / n * prior)  # a linear game with coefficients b has D = n b / (n - 1)
        xcs.append(xf - xf.mean(axis=0))
        rs.append(r - r.mean(axis=0))
    xc, r = np.concatenate(xcs), np.concatenate(rs)
    a = xc.T @ xc
    lam = ridge * np.trace(a) / len(xc) + 1e-9
    beta = np.linalg.solve(a + lam * np.eye(n), xc.T @ r)
    return (n * beta - beta.sum(axis=0)) / (n - 1)


def quadrature_values(x: np.ndarray, vx: np.ndarray, vc: np.ndarray, d1: np.ndarray, dn1: np.ndarray,
                      delta: np.ndarray) -> np.ndarray:
    """Shapley values ``(n, k)`` from the pairs ``x`` with values ``vx`` and complements' ``vc``, and the end effects."""
    n = x.shape[1]
    sizes = middle_sizes(n)
    line = lambda t: d1 + (t - 1) / (n - 2) * (dn1 - d1)  # noqa: E731  (the order-2 answer)
    if len(sizes) == 1:
        groups = [(np.concatenate([x, ~x]), np.concatenate([vx, vc]), line(sizes[0]))]
    else:  # odd n: the two middle sizes share one correction around their own straight-line values
        groups = [(x, vx, line(sizes[0])), (~x, vc, line(sizes[1]))]
    corr = middle_correction(groups)
    mids = [line(t) + corr for t in sizes]
    w = size_quadrature(n, [1, *sizes, n - 1])
    total = w[0] * d1 + w[-1] * dn1 + sum(wk * m for wk, m in zip(w[1:-1], mids))
    return delta / n + total / n


def jackknife_std(x: np.ndarray, vx: np.ndarray, vc: np.ndarray, d1: np.ndarray, dn1: np.ndarray,
                  delta: np.ndarray) -> np.ndarray:
    """Delete-one-pair jackknife standard error ``(n, k)`` of :func:`quadrature_values` (NaN with < 3 pairs).

    A feature that no pair varied (in every coalition or in none: possible with few pairs) has its
    middle effect from the order-2 line alone, which no deleted pair changes; its jackknife is 0 though
    its error is not. It gets the largest standard error of the features the pairs did vary (NaN if none).
    """
    m = len(x)
    if m < 3:
        return np.full(d1.shape, np.nan)
    keep = ~np.eye(m, dtype=bool)
    reps = np.stack([quadrature_values(x[k], vx[k], vc[k], d1, dn1, delta) for k in keep])
    err = np.sqrt((m - 1) / m * ((reps - reps.mean(axis=0)) ** 2).sum(axis=0))
    fixed = x.all(axis=0) | ~x.any(axis=0)
    if fixed.any():
        err[fixed] = err[~fixed].max(axis=0) if (~fixed).any() else np.nan
    return err


def scored_ends(task: ExplainTask, scorer) -> Attribution | tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """What the estimators over coalition sizes (this one, ``regression``) start with.

    The attribution itself when the budget covers every coalition (exact values, standard error 0) or when it
    is below ``2n + 2`` or ``n < 4`` (``kernel``'s); otherwise ``(empty, full, ends, rng)``: the scores ``(k,)``
    of the empty and full inputs, ``ends`` ``(2n, k)`` of the singletons then the leave-one-outs, and the
    task's random generator (nothing drawn from it yet).
    """
    n = task.n_features
    if n <= 16 and task.max_evals >= 2**n:  # everything affordable: exact, no error
        v = scorer(all_coalitions(n))
        return scorer_attribution(scorer, shapley_from_table(v, n), v[0], np.zeros((n, v.shape[1])))
    if n < 4 or task.max_evals < 2 * n + 2:
        return KernelExplainer().attribute(task, scorer)
    rng = np.random.default_rng(task.seed)
    empty, full = endpoints(task, scorer)
    eye = np.eye(n, dtype=bool)
    return empty, full, scorer(np.concatenate([eye, ~eye])), rng


@register
class QuadratureExplainer(Estimator):
    """Exact end sizes + regression-adjusted middle size + quadrature over sizes; jackknife standard errors."""

    name = "quadrature"
    deterministic = False
    budget = "evaluations, the empty and full input included (below 2n + 2: kernel's)"
    rounds = True
    auto_order, auto_max_features = 1, 32  # auto: from 6 to 32 features, in precision rounds (levels beyond)
    auto_evals_per_feature = 4  # auto's first round: 4n + 2 (leave-one-in/out and about as many again)

    def attribute(self, task: ExplainTask, scorer) -> Attribution:
        n = task.n_features
        start = scored_ends(task, scorer)
        if isinstance(start, Attribution):
            return start
        empty, full, ends, rng = start
        d1, dn1 = end_effects(ends[:n], ends[n:])
        delta = full - empty
        x = pair_design(n, (task.max_evals - 2 - 2 * n) // 2, rng)
        if not len(x):
            line = (d1 + dn1) / 2
            return scorer_attribution(scorer, delta / n + (n - 1) / n * line, empty, np.full(d1.shape, np.nan))
        v = scorer(np.concatenate([x, ~x]))
        vx, vc = v[: len(x)], v[len(x):]
        values = quadrature_values(x, vx, vc, d1, dn1, delta)
        err = SE_INFLATION * jackknife_std(x, vx, vc, d1, dn1, delta)
        return scorer_attribution(scorer, values, empty, err)
