"""Exact Shapley values by enumerating all 2^n coalitions of the input tokens (n up to about 14)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .base import Attribution, ExplainTask, scorer_attribution
from .registry import Estimator, register

#: The most features ``exact`` can explain (``2^16`` evaluations).
MAX_EXACT_FEATURES = 16
#: The most features ``exact`` explains unless asked for more (option ``max_features``): ``2^12 = 4,096``
#: evaluations, seconds to minutes; 16 features are 65,536 (an hour on a CPU for a long prompt).
EXACT_LIMIT = 12


@dataclass(frozen=True)
class ExactOptions:
    """``max_features``: explain inputs of up to this many features (default :data:`EXACT_LIMIT`, at most 16)."""

    max_features: int = EXACT_LIMIT

    def __post_init__(self) -> None:
        if not 1 <= self.max_features <= MAX_EXACT_FEATURES:
            raise ConfigError(f"exact's max_features={self.max_features} must be between 1 and {MAX_EXACT_FEATURES}.",
                              f"Use e.g. max_features={EXACT_LIMIT} (the default); for more features, method=auto.")


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
    Options = ExactOptions
    auto_order, auto_max_features = 0, 5  # auto: up to 5 features, 2^n is no more than the others' budget

    def attribute(self, task: ExplainTask, scorer) -> Attribution:
        n = task.n_features
        if n > self.options.max_features:
            raise ConfigError(f"method='exact' on {n} features needs 2^{n} = {2**n:,} model evaluations, over its limit of "
                              f"{self.options.max_features} features ({2**self.options.max_features:,} evaluations).",
                              f"Use method='auto' (it samples to a precision), or ask for it with "
                              f"options={{'max_features': {n}}} (explain.options={{max_features: {n}}}; at most "
                              f"{MAX_EXACT_FEATURES}).")
        v = scorer(all_coalitions(n))
        return scorer_attribution(scorer, shapley_from_table(v, n), v[0])
