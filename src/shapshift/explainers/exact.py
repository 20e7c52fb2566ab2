"""Exact Shapley values by enumerating all 2^n coalitions of the input tokens (n up to about 14)."""

from __future__ import annotations

import math

import numpy as np

from .base import Attribution, ExplainTask, scorer_attribution
from .registry import Estimator, register

#: The most features ``exact`` explains (``2^16`` evaluations).
MAX_EXACT_FEATURES = 16


def all_coalitions(n: int) -> np.ndarray:
    """Boolean matrix ``(2^n, n)``; row ``s`` keeps feature ``i`` when bit ``i`` of ``s`` is set."""
    codes = np.arange(2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)


def shapley_from_table(v: np.ndarray, n: int) -> np.ndarray:
    """Shapley values ``(n, n_out)`` from the value of every coalition ``v``: ``(2^n, n_out)``, bit-indexed."""
    codes = np.arange(2**n, dtype=np.int64)
    sizes = np.array([bin(c).count("1") for c in codes])
    weight = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) if s < n else 0.0
                       for s in range(n + 1)])
    phi = np.zeros((n, v.shape[1]))
    for i in range(n):
        without = codes[(codes >> i) & 1 == 0]
        phi[i] = (weight[sizes[without], None] * (v[without | (1 << i)] - v[without])).sum(axis=0)
    return phi


@register
class ExactExplainer(Estimator):
    """Every coalition scored once: ``2^n`` masked inputs. Deterministic; the reference for the others."""

    name = "exact"
    exact = True
    budget = "ignored: 2^n evaluations, always"
    max_features = MAX_EXACT_FEATURES
    auto_order, auto_max_features = 0, 5  # auto: up to 5 features, 2^n is no more than the others' budget

    def attribute(self, task: ExplainTask, scorer) -> Attribution:
        n = task.n_features
        if n > MAX_EXACT_FEATURES:
            raise ValueError(f"exact Shapley values need 2^{n} model evaluations; use method='sampling' "
                             f"for inputs over {MAX_EXACT_FEATURES} tokens")
        v = scorer(all_coalitions(n))
        return scorer_attribution(scorer, shapley_from_table(v, n), v[0])
