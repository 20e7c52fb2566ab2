"""The top-k tier: log-probabilities read from the next-token distribution's top ``k`` (hosted chat APIs).

A target token's log-probability is read from the distribution after the coalition's prompt and the target's
earlier tokens: over ``/v1/completions`` (no echo) one request per target token per coalition, the prompt's
text followed by the target's earlier tokens; over ``/v1/chat/completions`` the reply's first token only (a
chat API does not continue a reply it did not write), so a chat target is a label or a reply's first word.

A target token outside the returned top ``k`` is **censored**: its log-probability is at most the ``k``-th's,
and that bound stands in for it. Censored scores are counted per example (:meth:`TopKScorer.diagnostics`);
an explanation with censored scores is a bound, not a value, where they fall.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ModelError
from ..remote.scorer import RemoteScorer
from ..scoring import scores_from_logprobs
from .api import TOP_K, ApiModel

log = logging.getLogger(__name__)


class TopKModel(ApiModel):
    """A model whose server returns the top ``k`` log-probabilities of each generated token."""

    backend = "topk"
    tier = "top_logprobs"

    def __init__(self, *args: Any, top_k: int = TOP_K, probe: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.top_k = int(top_k)
        self._tops: dict[tuple[int, ...], dict[str, float]] = {}
        if probe:
            self.probe()

    def forget(self) -> None:
        self._tops = {}

    def _declared(self) -> dict[str, Any]:
        chat = self.route == "chat"
        return {"per_target_token": not chat, "max_target_tokens": 1 if chat else None, "top_k": self.top_k}

    def probe(self) -> None:
        """One request: the server must return a top-k list of the first generated token."""
        ids = self.tokenizer("Count: 1, 2, 3, 4,", add_special_tokens=False)["input_ids"]
        top = self._top_of(self.probe_request(self.payload(ids, max_tokens=1, top_k=self.top_k)))
        if not top:
            raise ModelError(f"{self.base_url}{self.path} returned no top log-probabilities.")
        log.info("%s%s returns the top %d log-probabilities (asked %d)", self.base_url, self.path, len(top), self.top_k)

    def _top_of(self, answer: dict) -> dict[str, float]:
        """``{token text: log-prob}`` of the first generated token's top list, from an answer of either route."""
        try:
            lp = answer["choices"][0].get("logprobs") or {}
            if self.route == "chat":
                first = (lp.get("content") or [])[0]
                return {str(t["token"]): float(t["logprob"]) for t in first.get("top_logprobs") or []}
            return {str(k): float(v) for k, v in (lp.get("top_logprobs") or [{}])[0].items()}
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            raise ModelError(f"The server's answer has no top log-probabilities: {str(answer)[:300]}") from None

    def top_logprobs(self, rows: Sequence[Sequence[int]], n_last: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Log-probs ``(n_rows, n_last)`` (nats) of each row's last ``n_last`` tokens, whether each is censored,
        and the prompt tokens sent (local count). A context asked before (this model) is not sent again."""
        if self.route == "chat" and n_last > 1:
            raise ModelError(f"A chat API scores only a reply's first token; this target has {n_last}.",
                             "Explain a one-token target (a label), or use model.route=completions.")
        keys = [tuple(int(t) for t in r) for r in rows]
        contexts = [k[:len(k) - n_last + j] for k in keys for j in range(n_last)]
        todo = list(dict.fromkeys(c for c in contexts if c not in self._tops))
        answers = self.client.post_many(self.path, [self.payload(c, max_tokens=1, top_k=self.top_k) for c in todo])
        for c, a in zip(todo, answers):
            self._tops[c] = self._top_of(a)
        logp = np.empty((len(keys), n_last))
        censored = np.zeros((len(keys), n_last), dtype=bool)
        for i, k in enumerate(keys):
            for j in range(n_last):
                top = self._tops[k[:len(k) - n_last + j]]
                token = self.text_of([k[len(k) - n_last + j]])
                if token in top:
                    logp[i, j] = top[token]
                else:  # censored: at most the k-th log-probability
                    censored[i, j] = True
                    logp[i, j] = min(top.values()) if top else -np.inf
        return logp, censored, sum(len(c) for c in todo)

    def prompt_logprobs(self, rows: Sequence[Sequence[int]], n_last: int) -> tuple[np.ndarray, int]:
        """:meth:`top_logprobs` without the censoring flags (the echo tier's signature)."""
        logp, _, sent = self.top_logprobs(rows, n_last)
        return logp, sent

    def make_scorer(self, prompt: Any, target_ids: Sequence[int], **options: Any) -> TopKScorer:
        return TopKScorer(self, prompt, target_ids, **options)


class TopKScorer(RemoteScorer):
    """:class:`~shapshift.remote.scorer.RemoteScorer` over a :class:`TopKModel`, counting censored scores."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_scores = 0
        self.n_censored = 0
        self.n_requests_start = self.model.usage.requests

    def score_inputs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        head = list(self.prompt.prefix_ids)
        tail = list(self.prompt.suffix_ids) + self.target_ids
        logp, censored, sent = self.model.top_logprobs([head + [int(t) for t in r] + tail for r in inputs], self.n_out)
        self.n_evals += len(inputs)
        self.n_forward_tokens += sent
        self.n_scores += censored.size
        self.n_censored += int(censored.sum())
        return scores_from_logprobs(logp, self.score)

    def diagnostics(self) -> dict[str, float]:
        """Per example: target-token scores read, how many were censored (outside the top k), its share, requests."""
        return {"scores": float(self.n_scores), "censored_scores": float(self.n_censored),
                "censored_share": self.n_censored / self.n_scores if self.n_scores else 0.0,
                "top_k": float(self.model.top_k),
                "requests": float(self.model.usage.requests - self.n_requests_start)}
