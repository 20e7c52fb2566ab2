"""What a run will ask of a model behind an API, said before it starts: remote calls cost money.

:func:`estimate_cost` is a true upper bound: it follows the precision rounds (:mod:`.precision`) to their cap,
counts the two endpoints of every round, the requests one coalition costs at the backend's tier (one per
target token over a top-k completions route) and the text tier's repeats; a test checks the requests a
server counts against it. A hard cap (``model.max_requests``) stops a run before it passes a limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..backends.capabilities import capabilities
from .precision import next_budget
from .registry import REGISTRY, choose_method

log = logging.getLogger(__name__)

#: Above this many prompt tokens the estimate is logged as a warning (below it, as information).
NOTICE_TOKENS = 100_000


def round_budgets(n: int, first: int, cap: int) -> list[int]:
    """The budgets of :func:`~.precision.explain_to_precision`'s rounds when none reaches its target."""
    budgets, budget = [], min(cap, first)
    while True:
        budgets.append(budget)
        if budget >= cap or (n <= 16 and budget >= 2**n):
            return budgets
        budget = next_budget(budget, n, cap)


def coalition_bound(n: int, method: str, max_evals: int, precision: float | None) -> int:
    """Most distinct coalitions one example of ``n`` features can score (endpoints included), as
    :func:`~.api.explain_tasks` runs ``method`` (rounds when ``precision`` is set or ``method`` is ``auto``)."""
    cls = REGISTRY[choose_method(n, method)]
    if cls.exact:
        return 2**n
    first = cls.auto_budget(n, max_evals) if method == "auto" else max_evals
    rounds = cls.rounds and (precision is not None or method == "auto")
    budgets = round_budgets(n, first if method == "auto" else 4 * n + 2, max_evals) if rounds else [first]
    return min(2**n, sum(b + 2 for b in budgets))


def estimate_cost(tasks: Sequence[Any], method: str) -> dict[str, int]:
    """Upper bounds on the requests and prompt tokens of explaining ``tasks`` with ``method``.

    Per example: :func:`coalition_bound` coalitions, each :meth:`Capabilities.requests` requests at the model's
    tier, plus the text tier's repeats; each request a prompt of the whole prompt and target at most. Prompts
    answered before (the model's memory, the run folder's answer cache) are not sent, so the real count
    (``model.usage``) is lower.
    """
    requests = tokens = 0
    for task in tasks:
        caps = capabilities(task.model)
        evals = coalition_bound(task.n_features, method, task.max_evals, task.precision)
        extra = getattr(task.model, "extra_requests", None)
        n = caps.requests(evals, len(task.target_ids)) + (extra() if callable(extra) else 0)
        requests += n
        tokens += n * (len(task.prompt.ids) + len(task.target_ids))
    return {"examples": len(tasks), "requests": requests, "prompt_tokens": tokens}


def announce_cost(tasks: Sequence[Any], method: str, what: str = "explain") -> dict[str, int]:
    """Log :func:`estimate_cost` before a remote run (a warning above :data:`NOTICE_TOKENS`); returns it."""
    est = estimate_cost(tasks, method)
    level = logging.WARNING if est["prompt_tokens"] > NOTICE_TOKENS else logging.INFO
    log.log(level, "%s: up to %d requests and %d prompt tokens to the remote model for %d examples",
            what, est["requests"], est["prompt_tokens"], est["examples"])
    return est
