"""Precision where the reader looks: the expected agreement of two runs' top-k sets, as a stopping rule.

:func:`shapshift.stats.expected_rank_agreement` predicts the Spearman correlation of two independent runs'
importances over every feature; overlap@k (``shapshift.overlap``) compares only the ``k`` most important.
:func:`shapshift.stats.expected_topk_agreement` predicts that instead, the same way: both runs simulated as the values plus
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

from ..stats import expected_rank_agreement, expected_topk_agreement

#: The rules :func:`stopping_rule` knows.
RULES = ("spearman", "top_k", "both")

Agreement = Callable[[np.ndarray, "np.ndarray | None", int], float]


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
