"""Hierarchical Shapley values for long inputs: sentences or chunks first, then the tokens that matter.

In the spirit of TextGenSHAP (Enouen et al. 2023) and of Owen values. The input is a tree of spans:
the whole text splits into at most ``fanout`` groups of sentences (or, inside one sentence, groups
of words; inside one word, its tokens). Refining a span means computing the exact Shapley values
of its ``k <= fanout`` children in the game

    v(S) = mean over contexts c of f(c + the tokens of the children in S),

where the contexts are the rest of the input absent and the rest present (the two ends of the Owen
expectation; the root has one context, nothing outside): ``2^k`` coalitions per context, one
batch. The children's values are then shifted so that they sum exactly to the span's own value
(the residual is shared in proportion to ``|value|``), so efficiency holds at every level:
``base + sum(values) = f(full)`` exactly, for every output token.

Spans are refined in order of ``|value|`` (the sum over output tokens), largest first, in waves
of about one scorer batch, while ``task.max_evals`` allows. A span that is never refined
spreads its value evenly over its tokens. A 1,000-token input at the default 512 evaluations
gets the 4 quarters, then about 16 of the most important sub-spans refined; short inputs are
refined down to every token (then the values are close to Owen values).
"""

from __future__ import annotations

import heapq
import itertools
import re
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .base import Attribution, ExplainTask, endpoints, scorer_attribution
from .exact import all_coalitions, shapley_from_table
from .registry import Estimator, register

#: Children per span (a span costs ``2^fanout`` evaluations per context).
DEFAULT_FANOUT = 4
_SENTENCE_END = re.compile(r"[.!?;:\n]\s*$")


@dataclass
class Span:
    """Tokens ``start:stop`` of the input, with their current value ``(n_out,)``."""

    start: int
    stop: int
    value: np.ndarray
    depth: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start


def _balanced_groups(units: list[tuple[int, int]], k: int) -> list[tuple[int, int]]:
    """Consecutive ``units`` (token ranges) merged into at most ``k`` groups of similar token counts."""
    if len(units) <= k:
        return units
    total = units[-1][1] - units[0][0]
    groups, cur_start, acc = [], units[0][0], 0
    for i, (a, b) in enumerate(units):
        acc += b - a
        left_units, left_groups = len(units) - i - 1, k - len(groups) - 1
        if (acc >= total * (len(groups) + 1) / k or left_units == left_groups) and left_groups > 0 and left_units > 0:
            groups.append((cur_start, b))
            cur_start = b
    groups.append((cur_start, units[-1][1]))
    return groups


def _units(tokens: list[str], start: int, stop: int, boundary) -> list[tuple[int, int]]:
    """Ranges of ``start:stop`` cut after every token where ``boundary(i)`` holds."""
    units, a = [], start
    for i in range(start, stop):
        if boundary(i) and i + 1 < stop:
            units.append((a, i + 1))
            a = i + 1
    units.append((a, stop))
    return units


def split_span(tokens: list[str], start: int, stop: int, fanout: int) -> list[tuple[int, int]]:
    """Children of ``start:stop``: sentences, else words, else tokens, merged into ``<= fanout`` groups."""
    if stop - start <= fanout:
        return [(i, i + 1) for i in range(start, stop)]
    sentences = _units(tokens, start, stop, lambda i: bool(_SENTENCE_END.search(tokens[i])))
    if len(sentences) > 1:
        return _balanced_groups(sentences, fanout)
    words = _units(tokens, start, stop, lambda i: i + 1 < stop and tokens[i + 1][:1].isspace())
    if len(words) > 1:
        return _balanced_groups(words, fanout)
    return _balanced_groups([(i, i + 1) for i in range(start, stop)], fanout)


def share_residual(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Shift children ``values`` ``(k, n_out)`` so they sum to ``target``, in proportion to ``|value|``."""
    residual = target - values.sum(axis=0)
    mag = np.abs(values)
    tot = mag.sum(axis=0)
    share = np.where(tot > 0, mag / np.where(tot > 0, tot, 1.0), 1.0 / len(values))
    return values + share * residual


@dataclass(frozen=True)
class HierarchicalOptions:
    """``fanout``: children per span (2 or more; a span costs ``2^fanout`` evaluations per context)."""

    fanout: int = DEFAULT_FANOUT

    def __post_init__(self) -> None:
        if not 2 <= self.fanout <= 12:
            raise ConfigError(f"hierarchical's fanout={self.fanout} must be between 2 and 12 "
                              "(a span costs 2^fanout evaluations).", f"Use e.g. fanout={DEFAULT_FANOUT} (the default).")


@register
class HierarchicalExplainer(Estimator):
    """Sentences/chunks, then tokens inside the chunks that matter, within ``task.max_evals``; exact efficiency."""

    name = "hierarchical"
    Options = HierarchicalOptions
    budget = "evaluations, the empty and full input included; spans beyond it keep their value spread evenly"

    def attribute(self, task: ExplainTask, scorer) -> Attribution:
        n = task.n_features
        fanout = self.options.fanout
        tokens = task.feature_strings
        empty, full = endpoints(task, scorer)
        known = {np.zeros(n, bool).tobytes(): empty, np.ones(n, bool).tobytes(): full}
        budget = max(0, task.max_evals - 2)
        root = Span(0, n, full - empty)
        leaves: list[Span] = []
        heap: list[tuple[float, int, Span]] = []
        counter = itertools.count()
        heapq.heappush(heap, (0.0, next(counter), root))
        wave_size = max(scorer.batch_size, 2 ** (fanout + 1))
        while heap:
            wave, cost, skipped = [], 0, []
            while heap:
                item = heapq.heappop(heap)
                span = item[2]
                if span.size == 1:
                    leaves.append(span)
                    continue
                plan = self._plan(span, tokens, fanout, n)
                new = {m.tobytes() for m in plan[1] if m.tobytes() not in known}
                if cost + len(new) > budget:
                    skipped.append(span)
                    continue
                wave.append((span, plan))
                cost += len(new)
                if cost >= wave_size:
                    break
            if not wave:
                leaves += skipped + [it[2] for it in heap]
                break
            for span in skipped:
                heapq.heappush(heap, (-float(np.abs(span.value.sum())), next(counter), span))
            todo = list({m.tobytes(): m for _, (_, masks) in wave for m in masks if m.tobytes() not in known}.values())
            if todo:
                for m, v in zip(todo, scorer(np.stack(todo))):
                    known[m.tobytes()] = v
            budget -= len(todo)
            for span, (children, masks) in wave:
                for child in self._refine(span, children, masks, known):
                    heapq.heappush(heap, (-float(np.abs(child.value.sum())), next(counter), child))
        values = np.zeros((n, len(full)))
        for span in leaves:
            values[span.start:span.stop] = span.value / span.size
        return scorer_attribution(scorer, values, empty)

    @staticmethod
    def _plan(span: Span, tokens: list[str], fanout: int, n: int) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
        """The children of ``span`` and the masks ``(contexts x 2^k)`` its refinement scores."""
        children = split_span(tokens, span.start, span.stop, fanout)
        k = len(children)
        outside = np.ones(n, bool)
        outside[span.start:span.stop] = False
        contexts = [np.zeros(n, bool)] if span.size == n else [np.zeros(n, bool), outside]
        masks = []
        for ctx in contexts:
            for coal in all_coalitions(k):
                m = ctx.copy()
                for (a, b), keep in zip(children, coal):
                    m[a:b] = keep
                masks.append(m)
        return children, masks

    @staticmethod
    def _refine(span: Span, children: list[tuple[int, int]], masks: list[np.ndarray], known: dict) -> list[Span]:
        k = len(children)
        v = np.stack([known[m.tobytes()] for m in masks]).reshape(-1, 2**k, len(span.value)).mean(axis=0)
        phi = share_residual(shapley_from_table(v, k), span.value)
        return [Span(a, b, phi[i], span.depth + 1) for i, (a, b) in enumerate(children)]
