"""Precision where the reader looks: the expected agreement of two runs' top-k sets, as a stopping rule.

:func:`shapshift.stats.expected_rank_agreement` predicts the Spearman correlation of two independent runs'
importances over every feature; overlap@k (``shapshift.overlap``) compares only the ``k`` most important.
:func:`expected_topk_agreement` predicts that instead, the same way: both runs simulated as the values plus
independent normal errors of the reported standard errors, importance ``|value|`` summed over the output
tokens, and the mean share ``|T_a ∩ T_b| / k`` of their top-k sets.

:func:`stopping_rule` builds the ``agreement`` that :func:`shapshift.explainers.precision.explain_to_precision`
stops on: the Spearman rule (the default there), the top-k one, or both (the smaller of the two must reach
the target). It is measured by ``benchmarks/study_topk_stopping.py`` (``benchmarks/TOPK_STOPPING.md``); no
default uses it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..stats import N_SIMULATIONS, expected_rank_agreement, importance_batch

#: The rules :func:`stopping_rule` knows.
RULES = ("spearman", "top_k", "both")

Agreement = Callable[[np.ndarray, "np.ndarray | None", int], float]


def expected_topk_agreement(values: np.ndarray, error_std: np.ndarray | None, k: int, n_sim: int = N_SIMULATIONS,
                            seed: int = 0) -> float:
    """Expected overlap@k (share of common features in the two top-k sets, in [0, 1]) of two independent runs.

    ``values``, ``error_std``: ``(n_in, n_out)`` (or ``(n_in,)``). 1.0 when ``k >= n_in`` or every standard error
    is 0; NaN when one is unknown (NaN) or missing. Deterministic for a given ``seed``.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k >= n:
        return 1.0
    if error_std is None or not np.all(np.isfinite(error_std)):
        return float("nan")
    err = np.asarray(error_std, dtype=np.float64)
    if not np.any(err > 0):
        return 1.0
    rng = np.random.default_rng(seed)
    tops = []
    for _ in range(2):
        imp = importance_batch(values + rng.standard_normal((n_sim, *values.shape)) * err)  # (n_sim, n)
        top = np.zeros((n_sim, n), bool)
        np.put_along_axis(top, np.argsort(-imp, axis=1, kind="stable")[:, :k], True, axis=1)
        tops.append(top)
    return float((tops[0] & tops[1]).sum(axis=1).mean() / k)


def stopping_rule(rule: str = "spearman", k: int = 3) -> Agreement:
    """The predicted agreement ``(values, error_std, seed) -> float`` that precision rounds stop on.

    ``spearman``: :func:`~shapshift.stats.expected_rank_agreement` (the whole ranking); ``top_k``:
    :func:`expected_topk_agreement` at ``k``; ``both``: the smaller of the two (NaN if either is NaN).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "spearman":
        return lambda values, err, seed: expected_rank_agreement(values, err, seed=seed)
    if rule == "top_k":
        return lambda values, err, seed: expected_topk_agreement(values, err, k, seed=seed)
    return lambda values, err, seed: float(np.minimum(expected_rank_agreement(values, err, seed=seed),
                                                      expected_topk_agreement(values, err, k, seed=seed)))
