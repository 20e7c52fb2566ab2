"""Aggregations over the generated tokens, declared once: each one's value and how its standard error propagates.

An explanation's values are ``(n_features, n_outputs)`` (one column per explained token, in the score's units);
compare, the verdicts of change, the movement table and the report's error bars read one value per feature through
an :class:`Aggregation` of :data:`AGGREGATIONS` (``compare.aggregate``). A new aggregation is one :func:`register`
call. This module imports nothing of the package but the shape of its registries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registries import Registry


@dataclass(frozen=True)
class Aggregation:
    """One way to reduce ``(n_in, n_out)`` values to ``(n_in,)``, and their standard errors with them.

    ``values``: ``(n_in, n_out)`` → ``(n_in,)`` in the score's units; ``error``: the per-value standard errors
    ``(n_in, n_out)`` → the aggregate's standard error ``(n_in,)`` (NaN entries propagate: an unknown error stays
    unknown); ``label``: how figures name it.
    """

    name: str
    label: str
    values: Callable[[np.ndarray], np.ndarray]
    error: Callable[[np.ndarray], np.ndarray]


AGGREGATIONS: Registry[Aggregation] = Registry("aggregation")
#: Add an :class:`Aggregation` (its name must be new); returns it.
register = AGGREGATIONS.register


def get(how: str) -> Aggregation:
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregate how={how!r} is not one of {', '.join(AGGREGATIONS)}.")
    return AGGREGATIONS[how]


def explanation_values(exp: Any) -> np.ndarray:
    """The ``(n_in, n_out)`` float64 value matrix of an explanation (or an array); 1-D becomes ``(n_in, 1)``."""
    values = np.asarray(getattr(exp, "values", exp), dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"explanation values must be (n_in, n_out), got shape {values.shape}.")
    return values


def aggregate(values: Any, how: str = "sum") -> np.ndarray:
    """One value per input feature from a ``(n_in, n_out)`` matrix (or an explanation): shape ``(n_in,)``."""
    return get(how).values(explanation_values(values))


def aggregate_error(error_std: Any, how: str = "sum") -> np.ndarray:
    """The standard error of :func:`aggregate` per input feature, ``(n_in,)``, from the per-value errors."""
    return get(how).error(explanation_values(error_std))


# The errors of one feature's values for the different generated tokens are NOT independent: every estimator scores
# all generated tokens on the same coalitions (common random numbers), so a coalition draw that pushes the estimate
# of one token's value up pushes the next token's the same way, and their errors correlate positively, often near
# one. The root of the sum of squares, sqrt(Σ se²), assumes independence and would understate the error of the sum
# (and so declare changes the estimator's own noise can make); the sum of the errors, Σ se, is exact when the
# correlation is one and an upper bound for any correlation (the standard deviation of a sum is at most the sum of
# the standard deviations). The verdicts and the error bars both use it. For the mean |value|, ||x| - |y|| <= |x - y|,
# so |·| enlarges no error and the mean of the errors bounds the mean's error the same way.
register(Aggregation("sum", "sum over generated tokens", lambda v: v.sum(axis=1), lambda e: e.sum(axis=1)))
register(Aggregation("mean_abs", "mean |value| over generated tokens", lambda v: np.abs(v).mean(axis=1),
                     lambda e: e.mean(axis=1)))
