"""A long explanation says what it costs before it runs, shows progress within the example, and warns when
what it explains or what it reached is not what was asked.

:class:`ProgressScorer` wraps a task's scorer: coalitions are scored in chunks of :data:`CHUNK`, a bar
(``tqdm.auto``) counts the evaluations of the example, and once the first :data:`TIMING_EVALS` are scored
the example's planned evaluations and their estimated time are logged (a warning above
:data:`LONG_CALL_S`, so a call of an hour never starts silently). :func:`warn_blank_targets` and
:func:`warn_precision` are the two warnings of :func:`shapshift.explain`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: Coalitions per call of the wrapped scorer (the bar moves after each; the scorer batches inside).
CHUNK = 256
#: Evaluations timed before the example's cost is estimated (or whatever is scored in the first 2 s).
TIMING_EVALS = 32
#: An example estimated to take longer than this (seconds) is announced with a warning; shorter ones at debug.
LONG_CALL_S = 60.0


def planned_evals(n_features: int, budget: int, exact: bool) -> int:
    """The evaluations an example will take at most: ``2^n`` for exact values, else the budget."""
    return 2**n_features if exact else budget


def describe_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class ProgressScorer:
    """A scorer that scores in chunks, moves a bar per chunk, and estimates the example's time from the first ones.

    Every other attribute (``n_evals``, ``n_forward_tokens``, ``device``…) is the wrapped scorer's.
    """

    def __init__(self, scorer: Any, total: int, *, what: str, progress: bool = True) -> None:
        self.inner, self.total, self.what = scorer, int(total), what
        self.bar = tqdm(total=self.total, desc="evaluations", unit="eval", leave=False, disable=not progress)
        self._timed, self._seconds, self.estimate = 0, 0.0, None

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, bool)
        out = []
        for start in range(0, len(masks), CHUNK):
            chunk = masks[start:start + CHUNK]
            began = time.perf_counter()
            out.append(self.inner(chunk))
            self.bar.update(len(chunk))
            if self.estimate is None:
                self._timed += len(chunk)
                self._seconds += time.perf_counter() - began
                if self._timed >= min(TIMING_EVALS, self.total) or self._seconds >= 2.0:
                    self._announce()
        return np.concatenate(out) if out else self.inner(masks)

    def _announce(self) -> None:
        self.estimate = self._seconds / max(self._timed, 1) * self.total
        level = logging.WARNING if self.estimate > LONG_CALL_S else logging.DEBUG
        log.log(level, "%s: up to %s evaluations, about %s at the speed of the first %d (%.3f s each)",
                self.what, f"{self.total:,}", describe_seconds(self.estimate), self._timed,
                self._seconds / max(self._timed, 1))

    def close(self) -> None:
        self.bar.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def warn_blank_targets(tokenizer: Any, target_ids: list[list[int]], texts: list[Any]) -> None:
    """Warn for each target that is only whitespace (a generated line break): its values explain no answer."""
    for text, ids in zip(texts, target_ids):
        shown = tokenizer.decode(ids, skip_special_tokens=True)
        if not shown.strip():
            log.warning("The target of %r is only whitespace (%r): its SHAP values explain that, not an answer. Pass "
                        "targets=[...], or a context that asks for one (generation stops at a line break by default).",
                        str(getattr(text, "text", text))[:60], shown)


def warn_precision(what: str, reached: float, target: float, n_evals: int, cap: int) -> None:
    """Warn when explaining to a precision stopped at ``max_evals`` short of the target."""
    if not reached >= target:  # NaN (unknown) included
        log.warning("%s: precision %.3f reached of the %g asked, after %s evaluations (max_evals=%s): raise max_evals, "
                    "or read the values with their standard errors (error_std).", what, reached, target,
                    f"{n_evals:,}", f"{cap:,}")
