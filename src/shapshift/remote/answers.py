"""Answers kept on disk, and a hard cap on what is sent: a paid run never pays twice, and never more than allowed.

:class:`AnswerCache` keeps every answer of a server in one SQLite file in the run folder (keyed by the
route and the exact JSON request), so a resumed or repeated run sends only what it has not asked before.
:class:`RequestCap` stops a run cleanly (:class:`BudgetExhausted`, before the request that would pass it)
once ``max_requests`` requests or ``max_tokens`` prompt + completion tokens are spent; the examples explained
before it are kept in the run folder's checkpoints, and a re-run completes the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..errors import ModelError

log = logging.getLogger(__name__)


class BudgetExhausted(ModelError):
    """The run reached ``model.max_requests`` or ``model.max_tokens``; nothing past the cap was sent."""


def request_key(path: str, payload: dict | None) -> str:
    """A stable key of one request: the route and its JSON (sorted keys), hashed."""
    text = json.dumps([path, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class AnswerCache:
    """Every JSON answer under its :func:`request_key`, in the SQLite file ``path`` (created with its folder)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, answer: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, json.dumps(answer)))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RequestCap:
    """At most ``max_requests`` requests (retries included) and ``max_tokens`` prompt + completion tokens.

    ``None``: no cap on that count. :meth:`check` is called before each batch is sent, with the requests it
    would add; the token cap is checked against what was counted so far (a request's tokens are known only
    after its answer), so it can be passed by at most one batch's tokens.
    """

    def __init__(self, max_requests: int | None = None, max_tokens: int | None = None) -> None:
        self.max_requests, self.max_tokens = max_requests, max_tokens

    def check(self, requests_so_far: int, tokens_so_far: int, adding: int) -> None:
        if self.max_requests is not None and requests_so_far + adding > self.max_requests:
            raise BudgetExhausted(
                f"The next {adding} requests would pass model.max_requests={self.max_requests} "
                f"({requests_so_far} sent); stopped before sending them.",
                "The examples explained so far are kept: raise model.max_requests and run again; answers already "
                "received are read from the run folder's cache, not sent again.")
        if self.max_tokens is not None and tokens_so_far >= self.max_tokens:
            raise BudgetExhausted(
                f"{tokens_so_far} tokens spent, model.max_tokens={self.max_tokens}; stopped before sending more.",
                "The examples explained so far are kept: raise model.max_tokens and run again.")
