"""Explain to a precision: spend evaluations in rounds until two independent runs would agree.

The precision of an explanation is the expected Spearman correlation between the importances
(``|value|`` summed over the output tokens, per input token) of two independent runs of the
estimator, predicted from the values and their standard errors: both runs are simulated as the
values plus independent normal errors of the reported standard errors
(:func:`shapshift.stats.expected_rank_agreement`). An estimator whose standard errors are calibrated
(``benchmarks/ESTIMATORS.md``) makes this a prediction of the measured rerun agreement.

:func:`explain_to_precision` runs a sampling estimator at a first budget, then at budgets growing by
:data:`GROWTH` until the predicted precision reaches the target or ``max_evals`` is spent. Every
coalition scored in an earlier round is looked up, not scored again (:class:`CachingScorer`); the
estimators that support rounds (``rounds`` in their registry entry,
:func:`~shapshift.explainers.registry.round_methods`) draw the same coalitions first for the same
seed, so a round costs only the coalitions it adds.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stats import expected_rank_agreement
from .base import Attribution, ExplainTask
from .registry import REGISTRY, Estimator, round_methods

log = logging.getLogger(__name__)

#: Each round's budget is the previous one times this (at least :data:`MIN_STEP` ``* n`` more evaluations). Smaller
#: steps overshoot the target less (the last round scores what it needed and at most a quarter more) and cost only
#: the re-run of the estimator per round (milliseconds): replayed on the real model's rounds (benchmarks/STOPPING_MODEL.md)
#: 1.25 reached about the same measured agreement as 1.5 with 2-11 % fewer evaluations.
GROWTH = 1.25
#: The least a round adds, in evaluations per feature.
MIN_STEP = 2


def next_budget(budget: int, n: int, cap: int, growth: float = GROWTH) -> int:
    """The budget of the round after one of ``budget`` evaluations (``n`` features, at most ``cap``)."""
    return min(cap, max(int(budget * growth), budget + MIN_STEP * n))


class CachingScorer:
    """A scorer that scores each coalition once and looks repeats up (across the rounds of one example).

    ``n_evals`` counts distinct coalitions scored by the wrapped scorer; ``n_forward_tokens`` is its.
    """

    def __init__(self, scorer) -> None:
        self.scorer = scorer
        self.memo: dict[bytes, np.ndarray] = {}

    @property
    def n_evals(self) -> int:
        return len(self.memo)

    @property
    def n_forward_tokens(self) -> int:
        return getattr(self.scorer, "n_forward_tokens", 0)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        keys = [np.packbits(m).tobytes() for m in masks]
        new, new_rows = {}, []
        for k, m in zip(keys, masks):
            if k not in self.memo and k not in new:
                new[k] = len(new_rows)
                new_rows.append(m)
        if new_rows:
            scores = self.scorer(np.stack(new_rows))
            for k, i in new.items():
                self.memo[k] = scores[i]
        return np.stack([self.memo[k] for k in keys])


@dataclass
class PrecisionResult:
    """What :func:`explain_to_precision` returns: the last round's attribution and what it reached."""

    attribution: Attribution
    precision: float
    rounds: int
    budget: int


def _rank_agreement(values: np.ndarray, error_std: np.ndarray | None, seed: int) -> float:
    return expected_rank_agreement(values, error_std, seed=seed)


def explain_to_precision(task: ExplainTask, scorer: Any, method: str | Estimator, target: float, max_evals: int,
                         first_budget: int | None = None,
                         agreement: Callable[[np.ndarray, np.ndarray | None, int], float] | None = None,
                         growth: float = GROWTH) -> PrecisionResult:
    """Run ``method`` (a name or a built estimator) in rounds of growing budget, scoring with ``scorer``, until
    its predicted precision reaches ``target`` or ``max_evals``.

    ``first_budget``: the first round's evaluations (default ``4n + 2``, at most ``max_evals``).
    ``agreement``: the predicted precision ``(values, error_std, seed) -> float`` (default: the expected rank
    agreement; :func:`shapshift.explainers.topk.stopping_rule` gives the top-k one).
    ``growth``: each round's budget is the previous one times this (default :data:`GROWTH`; :func:`next_budget`).
    The attribution's ``n_evals`` counts every distinct coalition scored over all rounds.
    """
    estimator = REGISTRY[method]() if isinstance(method, str) and method in REGISTRY else method
    if not isinstance(estimator, Estimator) or not estimator.rounds:
        raise ValueError(f"{method!r} cannot be run to a precision; use one of {', '.join(round_methods())}")
    n = task.n_features
    cache = CachingScorer(scorer)
    budget = min(max_evals, first_budget or 4 * n + 2)
    rounds = 0
    while True:
        rounds += 1
        run = copy.copy(task)
        run.max_evals = budget
        att = estimator.attribute(run, cache)
        att.n_evals = cache.n_evals
        precision = (agreement or _rank_agreement)(att.values, att.rerun_std, task.seed)
        log.debug("round %d: %d evaluations, precision %.3f", rounds, cache.n_evals, precision)
        exhausted = budget >= max_evals or (n <= 16 and budget >= 2**n)
        if (not math.isnan(precision) and precision >= target) or exhausted:
            return PrecisionResult(att, precision, rounds, budget)
        budget = next_budget(budget, n, max_evals, growth)
