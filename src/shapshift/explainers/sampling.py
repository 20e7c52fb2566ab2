"""Antithetic permutation sampling of Shapley values, with a standard error per value.

Each permutation adds features one at a time; the marginal contributions along it sum exactly to
``f(full) - f(empty)``, so efficiency holds for every sample, not only in expectation. Each
permutation is paired with its reverse (antithetic), which cancels much of the variance for the
near-additive games of text models. A permutation costs ``n - 1`` new evaluations, so the
smallest budget is one pair, ``2n`` evaluations (more than ``max_evals`` when that is smaller).
The standard error is the spread of the pair means over ``sqrt(n_pairs)`` (NaN with one pair).
"""

from __future__ import annotations

import logging

import numpy as np

from .base import Attribution, ExplainTask, endpoints, scorer_attribution, single_feature
from .registry import Estimator, register

log = logging.getLogger(__name__)


def permutation_masks(order: np.ndarray) -> np.ndarray:
    """Coalitions ``(n - 1, n)`` along ``order``: the first ``j`` features of the order kept, j = 1..n-1."""
    n = len(order)
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n)
    return ranks[None, :] < np.arange(1, n)[:, None]


@register
class SamplingExplainer(Estimator):
    """Antithetic permutation sampling within ``task.max_evals`` model evaluations."""

    name = "sampling"
    deterministic = False
    budget = "evaluations: whole antithetic pairs of permutations, 2(n - 1) each (one pair at least)"
    rounds = True

    def attribute(self, task: ExplainTask, scorer) -> Attribution:
        n = task.n_features
        rng = np.random.default_rng(task.seed)
        empty, full = endpoints(task, scorer)
        if n == 1:
            return single_feature(scorer, empty, full)
        n_pairs = max(1, (task.max_evals - 2) // (2 * (n - 1)))
        if 2 + 2 * (n - 1) > task.max_evals:
            log.warning("sampling needs at least %d evaluations for %d tokens (one antithetic pair); "
                        "max_evals=%d is exceeded", 2 * n, n, task.max_evals)
        orders = []
        for _ in range(n_pairs):
            order = rng.permutation(n)
            orders += [order, order[::-1]]
        masks = np.concatenate([permutation_masks(o) for o in orders])
        v = scorer(masks).reshape(len(orders), n - 1, -1)
        samples = np.empty((len(orders), n, v.shape[-1]))
        for p, order in enumerate(orders):
            chain = np.concatenate([empty[None], v[p], full[None]])  # values after 0..n features
            samples[p, order] = np.diff(chain, axis=0)
        pair_means = samples.reshape(n_pairs, 2, n, -1).mean(axis=1)
        values = pair_means.mean(axis=0)
        err = pair_means.std(axis=0, ddof=1) / np.sqrt(n_pairs) if n_pairs > 1 else np.full_like(values, np.nan)
        return scorer_attribution(scorer, values, empty, err)
