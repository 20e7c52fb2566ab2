"""Shapley values of long inputs by levels, with a stated precision at each level (MExGen's multi-level idea).

Level 1: the input splits into at most ``fanout`` groups (sentences, merged into groups of similar
length; a single sentence splits into groups of words, a single word into its tokens:
:func:`~shapshift.explainers.hierarchical.split_span`), and the groups' Shapley values are computed
exactly, ``2^k`` evaluations (the empty and full input among them). Those values are exact for the
game of the groups: precision 1, standard error 0.

Level 2: inside each group, in order of the group's ``|value|`` (summed over output tokens), the
features' values in the group's own game ``v_g(S) = f(S + everything outside the group)`` (the
other groups present: what deleting words from the whole text does) are estimated by ``quadrature``
(exact for groups of up to 5 features), with its standard errors; they are then shifted to add up to
the group's level-1 value (the shift shared in proportion to ``|value|``), so efficiency holds:
``base + sum(values) = f(full)`` for every output token. The group's first ``2^k`` coalitions already
hold the sub-game's two ends, so a group of ``m`` features costs ``min(2^m, 4m + 2) - 2`` evaluations
at first; a larger budget is shared among the refined groups in proportion to their ``|value|``.

A group the budget does not reach spreads its value evenly over its features, with a standard error
of ``|value| * sqrt(m - 1) / m`` per feature (the spread of the values if one feature held all of it):
its features' values are not known, and the standard errors say so, so neither the shift verdicts
nor the predicted precision take them for measured. Sampling makes two seeds differ (the noise floor
re-runs this estimator); the predicted precision (:mod:`shapshift.explainers.precision`) sees the
sampling errors and the unrefined groups alike, so precision rounds refine groups until it is reached.

``Attribution.extras`` states per level: the evaluations spent (``level_evals``: groups, inside the
groups), the groups refined (``groups_refined`` of ``groups``) and the precision reached inside the
refined groups (``within_precision``: expected rank agreement of two runs over their features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..stats import expected_rank_agreement
from .base import Attribution, ExplainTask, scorer_attribution
from .exact import all_coalitions, shapley_from_table
from .hierarchical import share_residual, split_span
from .precision import CachingScorer
from .quadrature import QuadratureExplainer
from .registry import Estimator, register

#: Groups at the first level (``2^fanout`` evaluations).
DEFAULT_FANOUT = 5
#: ``auto``'s first round for a long input (then precision rounds grow it 1.5× at a time): the first level and
#: about two groups' first rounds on a 35-70-word paragraph; ContextCite's cost class (64 ablations).
AUTO_FIRST_ROUND = 128
#: Groups of more features are refined by a level more (their own groups first), not by ``quadrature`` directly.
QUADRATURE_MAX = 32
#: A group is refined with at least ``2m + 6`` new evaluations: its leave-one-in and -out and 3 pairs
#: (quadrature's fewest with a jackknife standard error).
MIN_EVALS_PER_FEATURE = 2


@dataclass
class Refined:
    """What refining a span gives: values, sampling and spread standard errors ``(m, n_out)``; its first level's
    coalitions (``level1``), groups and groups refined."""

    values: np.ndarray
    sampling: np.ndarray
    spread: np.ndarray
    level1: int
    groups: int
    refined: int


@dataclass
class GroupTask:
    """What ``quadrature`` reads of a task: the features of one group, a budget and a seed."""

    n_features: int
    max_evals: int
    seed: int


class GroupScorer:
    """Scores coalitions ``(b, m)`` of one group's features with everything outside the group present."""

    def __init__(self, scorer, members: np.ndarray, n: int) -> None:
        self.scorer, self.members = scorer, members
        self.context = np.ones(n, bool)

    def __call__(self, local: np.ndarray) -> np.ndarray:
        local = np.asarray(local, bool)
        masks = np.repeat(self.context[None], len(local), axis=0)
        masks[:, self.members] = local
        return self.scorer(masks)

    @property
    def n_evals(self) -> int:
        return self.scorer.n_evals


def first_level(features: list[str], fanout: int) -> list[tuple[int, int]]:
    """The first level's groups: :func:`split_span` of the whole input (sentences merged into ``<= fanout`` groups),
    then, while there are fewer than ``fanout``, the largest group halved at a word boundary (or a token)."""
    spans = split_span(features, 0, len(features), fanout)
    while len(spans) < min(fanout, len(features)):
        g = max(range(len(spans)), key=lambda i: spans[i][1] - spans[i][0])
        a, b = spans[g]
        words = [i for i in range(a + 1, b) if features[i][:1].isspace()] or list(range(a + 1, b))
        cut = min(words, key=lambda i: abs(2 * i - a - b))
        spans[g:g + 1] = [(a, cut), (cut, b)]
    return spans


def allocate(sizes: list[int], weights: np.ndarray, budget: int, fanout: int = DEFAULT_FANOUT) -> list[int]:
    """Evaluations per group (0: not refined) for ``budget`` new evaluations inside the groups.

    Groups in order of ``weights`` (largest first) get their first round, ``min(2^m, 4m + 2) - 2``
    (or what is left, if at least ``2m + 6``: the ends and 3 pairs, the fewest with a standard error;
    a group over :data:`QUADRATURE_MAX` features ``2^(fanout + 1)``: its own first level and as much again); what remains is shared among the refined groups in
    proportion to their weight, none past ``2^m - 2`` (then it is exact). Groups of one feature need nothing.
    """
    alloc = [0] * len(sizes)
    left = budget
    order = np.argsort(-np.asarray(weights), kind="stable")
    full = [2**m - 2 if m <= 20 else 1 << 40 for m in sizes]
    for g in order:
        m = sizes[g]
        if m == 1:
            continue
        if m > QUADRATURE_MAX:  # a level more: its own first level, 2^fanout - 2 new coalitions, and as much again
            first = least = 2 ** (fanout + 1)
        else:
            first, least = min(full[g], 4 * m), min(full[g], MIN_EVALS_PER_FEATURE * m + 6)
        take = first if left >= first else (left if left >= least else 0)
        alloc[g], left = take, left - take
    while left > 0:
        open_ = [g for g in range(len(sizes)) if 0 < alloc[g] < full[g]]
        if not open_:
            break
        w = np.asarray([max(float(weights[g]), 1e-12) for g in open_])
        shares = np.floor(left * w / w.sum()).astype(int)
        if shares.sum() == 0:
            shares[int(np.argmax(w))] = left
        for g, s in zip(open_, shares):
            s = min(int(s), full[g] - alloc[g])
            alloc[g], left = alloc[g] + s, left - s
        if all(alloc[g] >= full[g] for g in open_):
            break
    return alloc


@dataclass(frozen=True)
class LevelsOptions:
    """``fanout``: groups at the first level (2 or more; ``2^fanout`` evaluations)."""

    fanout: int = DEFAULT_FANOUT

    def __post_init__(self) -> None:
        if not 2 <= self.fanout <= 8:
            raise ConfigError(f"levels' fanout={self.fanout} must be between 2 and 8 (the first level costs "
                              "2^fanout evaluations).", f"Use e.g. fanout={DEFAULT_FANOUT} (the default).")


@register
class LevelsExplainer(Estimator):
    """Groups of sentences exactly, then the features inside the groups that matter by ``quadrature``."""

    name = "levels"
    deterministic = False
    Options = LevelsOptions
    budget = "evaluations, the empty and full input included; groups it does not reach keep their value spread evenly"
    rounds = True
    auto_order = 2  # auto: beyond quadrature's 32 features

    @classmethod
    def auto_budget(cls, n_features: int, max_evals: int) -> int:
        """``auto``'s first round: :data:`AUTO_FIRST_ROUND` evaluations (capped by ``max_evals``)."""
        return min(max_evals, AUTO_FIRST_ROUND)

    def attribute(self, task: ExplainTask, scorer) -> Attribution:
        n = task.n_features
        cache = scorer if isinstance(scorer, CachingScorer) else CachingScorer(scorer)
        ends = cache(np.stack([np.zeros(n, bool), np.ones(n, bool)]))
        out = self._refine(task.feature_strings, cache, ends[1] - ends[0], task.max_evals, task.seed)
        att = scorer_attribution(cache, out.values, ends[0], np.sqrt(out.sampling**2 + out.spread**2))
        att.sampling_std = out.sampling
        refined = out.sampling.any(axis=1) | (out.spread == 0).all(axis=1)
        within = (expected_rank_agreement(out.values[refined], out.sampling[refined], seed=task.seed)
                  if refined.any() else float("nan"))
        att.extras = {"level_evals": [out.level1, cache.n_evals - out.level1], "groups": out.groups,
                      "groups_refined": out.refined, "features_refined": int(refined.sum()),
                      "within_precision": round(float(within), 4)}
        return att

    def _refine(self, strings: list[str], scorer, total: np.ndarray, budget: int, seed: int) -> Refined:
        """Values ``(m, n_out)`` of the features ``strings`` in the game ``scorer`` scores (its ends differ by
        ``total``), summing to ``total``, within about ``budget`` evaluations (its two ends included)."""
        m = len(strings)
        spans = first_level(strings, max(2, min(self.options.fanout, int(np.log2(max(budget, 4))))))  # 2^k <= budget
        k = len(spans)
        member = np.zeros((k, m), bool)
        for g, (a, b) in enumerate(spans):
            member[g, a:b] = True
        coalitions = all_coalitions(k)
        table = scorer((coalitions.astype(np.int64) @ member.astype(np.int64)) > 0)
        group_values = share_residual(shapley_from_table(table, k), total)  # (k, n_out); exact for the groups
        sizes = [b - a for a, b in spans]
        alloc = allocate(sizes, np.abs(group_values).sum(axis=1), max(0, budget - len(coalitions)), self.options.fanout)
        out = Refined(np.zeros((m, len(total))), np.zeros((m, len(total))), np.zeros((m, len(total))),
                      len(coalitions), k, 0)
        for g, (a, b) in enumerate(spans):
            size, value = b - a, group_values[g]
            if size == 1:
                out.values[a] = value
            elif not alloc[g]:
                out.values[a:b] = value / size
                out.spread[a:b] = np.abs(value) * np.sqrt(size - 1) / size
            else:
                out.refined += 1
                inner = GroupScorer(scorer, np.arange(a, b), m)
                sub_seed = int(np.random.SeedSequence([seed, g]).generate_state(1)[0])
                if size > QUADRATURE_MAX:  # a level more: its own groups, then the features inside them
                    sub = self._refine(strings[a:b], inner, value, alloc[g] + 2, sub_seed)
                    out.values[a:b], out.sampling[a:b], out.spread[a:b] = sub.values, sub.sampling, sub.spread
                    continue
                att = QuadratureExplainer().attribute(GroupTask(size, alloc[g] + 2, sub_seed), inner)
                out.values[a:b] = share_residual(att.values, value)
                out.sampling[a:b] = att.error_std if att.error_std is not None else np.nan
        return out
