"""What a remote run will ask of the server, said before it starts: remote calls cost money."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Above this many prompt tokens the estimate is logged as a warning (below it, as information).
NOTICE_TOKENS = 100_000


def estimate_cost(tasks: Sequence[Any], method: str) -> dict[str, int]:
    """Upper bounds on the requests and prompt tokens of explaining ``tasks`` with ``method``.

    Each example costs its estimator's budget in coalitions (``2^n`` for exact, :func:`auto_budget`
    under ``auto``, else ``max_evals``) plus the two endpoints, each a prompt of the whole prompt's
    length at most; prompts the model's cache already holds, or that repeat, are not sent, so the
    real count (``RemoteModel.usage``) is lower.
    """
    from ..explainers.registry import REGISTRY, choose_method

    requests = tokens = 0
    for task in tasks:
        name = choose_method(task.n_features, method)
        cls = REGISTRY[name]
        budget = 2**task.n_features if cls.exact else (
            cls.auto_budget(task.n_features, task.max_evals) if method == "auto" else task.max_evals)
        n = budget + 2
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
