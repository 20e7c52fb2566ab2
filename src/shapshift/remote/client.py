"""An HTTP client for OpenAI-compatible servers: many requests in flight, retries, usage counters.

Requests run on an event loop of their own in a background thread, so the synchronous scorer can
send hundreds of coalitions at once (bounded by ``concurrency``) from anywhere, a Jupyter kernel's
running loop included. 429, 5xx, time-outs and dropped connections are retried with exponential
back-off (a ``Retry-After`` header is honoured); any other error status fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ModelError
from .answers import AnswerCache, RequestCap, request_key

log = logging.getLogger(__name__)

#: Seconds one request may take before it is retried.
TIMEOUT_S = 300.0
#: Attempts after the first one for a request that failed in a way worth retrying.
MAX_RETRIES = 5
#: The first back-off in seconds; it doubles with every retry.
BACKOFF_S = 0.5
#: Statuses retried besides every 5xx: rate limited, request timeout.
RETRY_STATUSES = (408, 429)


@dataclass
class Usage:
    """What a remote model was asked for: these are what a paid API bills.

    ``requests`` sent (retries included), ``retries``, ``prompt_tokens`` and ``completion_tokens`` as the
    server counted them, ``cache_hits``: prompts answered from the client's cache without a request.
    """

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class HTTPStatusError(ModelError):
    """The server answered with an error status that is not worth retrying (or still failed after retries)."""

    def __init__(self, status: int, body: str, url: str) -> None:
        self.status, self.body, self.url = status, body, url
        super().__init__(f"The server at {url} answered {status}: {body[:400]}",
                         "Check the server's log; the message above is the server's own.")


class CompletionsClient:
    """POSTs JSON to ``base_url + path`` with up to ``concurrency`` requests in flight.

    ``api_key``: sent as ``Authorization: Bearer``; never stored anywhere else. ``usage`` counts
    requests, retries and the tokens the server reports. ``cache``: answers kept on disk (a POST whose exact
    request was answered before is not sent again); ``cap``: a hard cap on requests and tokens.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = TIMEOUT_S, max_retries: int = MAX_RETRIES, backoff_s: float = BACKOFF_S,
                 cache: AnswerCache | None = None, cap: RequestCap | None = None) -> None:
        import httpx  # the optional extra shapshift[remote]

        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.concurrency = max(1, int(concurrency))
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.usage = Usage()
        self.cache, self.cap = cache, cap
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shapshift-http", daemon=True)
        self._thread.start()
        self._client: Any = None
        self._gate: asyncio.Semaphore | None = None

    # -- synchronous API -------------------------------------------------------------------------
    def post_many(self, path: str, payloads: Sequence[dict], *, max_retries: int | None = None) -> list[dict]:
        """The JSON answers to ``payloads``, in order; all are in flight together, ``concurrency`` at a time."""
        if not payloads:
            return []
        keys = [request_key(path, p) for p in payloads]
        found = {k: a for k in dict.fromkeys(keys) if self.cache is not None and (a := self.cache.get(k)) is not None}
        todo = {k: p for k, p in zip(keys, payloads) if k not in found}  # identical requests go once
        self._count(cache_hits=len(keys) - len(todo))
        if todo:
            if self.cap is not None:
                with self._lock:
                    self.cap.check(self.usage.requests, self.usage.prompt_tokens + self.usage.completion_tokens,
                                   len(todo))
            coro = self._gather(path, list(todo.values()), self.max_retries if max_retries is None else max_retries,
                                list(todo))
            answers = asyncio.run_coroutine_threadsafe(coro, self._loop).result()
            found.update(zip(todo, answers))
        return [found[k] for k in keys]

    def post(self, path: str, payload: dict, *, max_retries: int | None = None) -> dict:
        return self.post_many(path, [payload], max_retries=max_retries)[0]

    def get(self, path: str, *, max_retries: int = 1) -> dict:
        coro = self._request("GET", path, None, max_retries)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the connections and stop the loop's thread (the object is unusable afterwards)."""
        if not self._loop.is_running():
            return
        if self._client is not None:
            asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    # -- on the loop -----------------------------------------------------------------------------
    async def _gather(self, path: str, payloads: list[dict], max_retries: int, keys: list[str]) -> list[dict]:
        tasks = [asyncio.ensure_future(self._request("POST", path, p, max_retries, k)) for p, k in zip(payloads, keys)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            raise

    async def _request(self, method: str, path: str, payload: dict | None, max_retries: int,
                       key: str | None = None) -> dict:
        httpx = self._httpx
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers,
                                             limits=httpx.Limits(max_connections=self.concurrency))
            self._gate = asyncio.Semaphore(self.concurrency)
        url = self.base_url + path
        attempt = 0
        while True:
            wait = self.backoff_s * 2**attempt
            if attempt and self.cap is not None:
                with self._lock:
                    self.cap.check(self.usage.requests, 0, 1)  # a retry is a request too
            try:
                async with self._gate:
                    self._count(requests=1)
                    response = await self._client.request(method, url, json=payload)
                if response.status_code < 400:
                    answer = response.json()
                    self._count_tokens(answer)
                    if self.cache is not None and key is not None:  # kept as soon as it arrives
                        self.cache.put(key, answer)
                    return answer
                if response.status_code not in RETRY_STATUSES and response.status_code < 500 or attempt >= max_retries:
                    raise HTTPStatusError(response.status_code, response.text, url)
                wait = max(wait, _retry_after(response.headers.get("retry-after")))
                why = f"status {response.status_code}"
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= max_retries:
                    raise ModelError(f"No answer from {url} after {attempt + 1} attempts ({type(exc).__name__}: {exc}).",
                                     "Check that the server runs and is reachable, or raise the time-out.") from None
                why = type(exc).__name__
            attempt += 1
            self._count(retries=1)
            log.warning("%s %s: %s; retry %d of %d in %.1f s", method, path, why, attempt, max_retries, wait)
            await asyncio.sleep(wait)

    def _count(self, **fields: int) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self.usage, k, getattr(self.usage, k) + v)

    def _count_tokens(self, answer: Any) -> None:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if isinstance(usage, dict):
            self._count(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0))


def _retry_after(value: str | None) -> float:
    try:
        return min(60.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
