"""The text-only tier: each coalition's prompt is answered, and a scalarizer scores the reply against the reference.

Any chat API reaches it (Anthropic's included). Replies are greedy (temperature 0, a seed), yet hosted APIs are
not deterministic at temperature 0, while Shapley's axioms assume a fixed game: the scorer repeats a few
coalitions (:data:`REPEAT_COALITIONS`, ``repeats`` more times each) and measures the API's own spread of the
score, which :func:`shapshift.backends.diagnostics.finish_attribution` folds into the standard errors. A
scalar per reply is spread evenly over the target's tokens, so their values sum to the scalarizer's score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..constants import DEFAULT_MASKING, DEFAULT_SCORE
from ..errors import ConfigError
from . import scalarizers
from .api import ApiModel

log = logging.getLogger(__name__)

#: Coalitions repeated per example to measure the API's nondeterminism: the full input, the empty one, the first masked.
REPEAT_COALITIONS = 3
#: Tokens a reply may have beyond the reference's (its words are what the scalarizer reads).
REPLY_EXTRA_TOKENS = 4


class TextModel(ApiModel):
    """A model whose server returns only text; ``scalarizer`` names the score (:mod:`~shapshift.backends.scalarizers`),
    ``repeats``: extra answers of each repeated coalition (0: nondeterminism not measured)."""

    backend = "text"
    tier = "text"

    def __init__(self, *args: Any, scalarizer: str = "auto", repeats: int = 2, probe: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scalarizer, self.repeats = scalarizer, int(repeats)
        if probe:
            self.probe()

    def _declared(self) -> dict[str, Any]:
        return {"deterministic": False, "extra": {"scalarizer": self.scalarizer, "repeats": self.repeats}}

    def probe(self) -> None:
        ids = self.tokenizer("Say hello.", add_special_tokens=False)["input_ids"]
        text, _ = self.reply_text(self.probe_request(self.payload(ids, max_tokens=2)))
        log.info("%s%s answers text (probe reply %r)", self.base_url, self.path, text[:40])

    def extra_requests(self) -> int:
        """Requests per example beyond one per coalition: the repeats that measure nondeterminism."""
        return REPEAT_COALITIONS * self.repeats

    def make_scorer(self, prompt: Any, target_ids: Sequence[int], **options: Any) -> TextScorer:
        return TextScorer(self, prompt, target_ids, **options)


class TextScorer:
    """Scores ``(n_masks, n_out)`` of boolean ``masks`` ``(n_masks, n_in)``: the scalarizer's score of each
    coalition's reply, divided evenly over the ``n_out`` target tokens (unitless, in ``[0, 1]`` summed).

    The local scorer's options are accepted; ``score`` is not used (the scalarizer is the score). Counters as the
    other scorers': ``n_evals``, ``n_forward_tokens``; :meth:`diagnostics` adds the measured nondeterminism.
    """

    def __init__(self, model: TextModel, prompt: Any, target_ids: Sequence[int], *, score: str = DEFAULT_SCORE,
                 masking: str = DEFAULT_MASKING, batch_size: int | None = None, mask_token_id: int | None = None,
                 **_: Any) -> None:
        if masking not in model.capabilities.maskings:
            raise ConfigError(f"masking={masking!r} is not possible for a model behind an API ({model.spec}).",
                              "Use explain.masking=delete (or replace).")
        self.model, self.prompt = model, prompt
        self.target_ids = [int(t) for t in target_ids]
        self.reference = model.text_of(self.target_ids).strip()
        self.scalarize = scalarizers.get(model.scalarizer, self.reference)
        self.masking = masking
        pad = model.tokenizer.pad_token_id
        self.mask_token_id = mask_token_id if mask_token_id is not None else (pad if pad is not None else 0)
        self.n_in, self.n_out = len(prompt.input_ids), len(self.target_ids)
        self.batch_size = batch_size or model.client.concurrency
        self.max_tokens = self.n_out + REPLY_EXTRA_TOKENS
        self.prefix_cache = None
        self.n_evals = self.n_forward_tokens = 0
        self.noise_sd: float | None = None  # of the summed score, over the repeated coalitions
        self.n_repeats_sent = 0
        self._start = model.usage.requests

    def _rows(self, masks: np.ndarray) -> list[list[int]]:
        ids, head, tail = self.prompt.input_ids, list(self.prompt.prefix_ids), list(self.prompt.suffix_ids)
        if self.masking == "delete":
            return [head + [t for t, k in zip(ids, m) if k] + tail for m in masks]
        return [head + [t if k else self.mask_token_id for t, k in zip(ids, m)] + tail for m in masks]

    def _scores(self, rows: list[list[int]], tag: str | None = None) -> np.ndarray:
        replies = self.model.replies(rows, max_tokens=self.max_tokens, tag=tag)
        return np.array([self.scalarize(r, self.reference) for r in replies], dtype=np.float64)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.n_in)
        rows = self._rows(masks)
        s = self._scores(rows)
        self.n_evals += len(rows)
        self.n_forward_tokens += sum(map(len, rows))
        if self.noise_sd is None and self.model.repeats > 0:
            self._measure_noise()
        return np.repeat(s[:, None] / self.n_out, self.n_out, axis=1)

    def _measure_noise(self) -> None:
        """Answer :data:`REPEAT_COALITIONS` coalitions ``repeats`` more times; the pooled spread of their scores."""
        masks = np.ones((REPEAT_COALITIONS, self.n_in), dtype=bool)
        masks[1] = False
        if REPEAT_COALITIONS > 2 and self.n_in > 1:
            masks[2, 0] = False
        rows = self._rows(masks)
        runs = [self._scores(rows)] + [self._scores(rows, tag=f"shapshift-repeat-{r + 1}")
                                       for r in range(self.model.repeats)]
        self.n_repeats_sent += len(rows) * self.model.repeats
        table = np.stack(runs)  # (1 + repeats, coalitions)
        self.noise_sd = float(np.sqrt(np.mean(np.var(table, axis=0, ddof=1))))
        if self.noise_sd > 0:
            log.info("the API answered the same prompt differently: score spread %.3f", self.noise_sd)

    def full(self) -> np.ndarray:
        return self(np.ones((1, self.n_in), dtype=bool))[0]

    def empty(self) -> np.ndarray:
        return self(np.zeros((1, self.n_in), dtype=bool))[0]

    def output_noise_sd(self) -> float:
        """The API's own spread of one output token's score (0 if not measured)."""
        return (self.noise_sd or 0.0) / self.n_out

    def diagnostics(self) -> dict[str, float]:
        return {"requests": float(self.model.usage.requests - self._start),
                "repeat_requests": float(self.n_repeats_sent),
                "api_noise_sd": float(self.noise_sd) if self.noise_sd is not None else float("nan")}
