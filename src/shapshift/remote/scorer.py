"""The scorer of a remote model: the same interface as :class:`shapshift.scoring.TeacherForcedScorer`.

A coalition becomes one prompt ``prefix + input tokens (masked) + suffix + target`` whose echoed
log-probabilities give the target tokens' scores; all coalitions of a call are in flight at once
(the client's ``concurrency``), and a prompt already scored by this model is not sent again.

Masking a black box allows: ``delete`` (masked tokens are left out and later ones move up, as the
local ``delete``) and ``replace`` (masked tokens become ``mask_token_id``, the pad token by
default). ``attention`` needs the attention mask, which an API does not expose: it is refused.

Scores: ``log_prob`` and ``log_odds``; both come from the target token's own log-probability
(``log_odds = log p - log(1 - p)`` needs nothing else, since ``1 - p`` is the mass of all other
tokens), so no top-k list is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..constants import DEFAULT_MASKING, DEFAULT_SCORE, MASKINGS, REMOTE_MASKINGS, SCORES
from ..errors import ConfigError
from ..scoring import scores_from_logprobs


class RemoteScorer:
    """Scores ``(n_masks, n_out)`` of the target tokens for boolean ``masks`` ``(n_masks, n_in)`` (True = kept).

    ``use_cache`` and ``prefix_cache`` are accepted for the local scorer's signature and not used;
    ``batch_size`` (default: the client's ``concurrency``) only sizes the estimators' waves, since the
    client bounds what is in flight. Counters: ``n_evals`` (coalitions scored),
    ``n_forward_tokens`` (prompt tokens sent to the server; prompts answered from the cache count 0).
    """

    def __init__(self, model: Any, prompt: Any, target_ids: Sequence[int], *, score: str = DEFAULT_SCORE,
                 masking: str = DEFAULT_MASKING, batch_size: int | None = None, use_cache: bool = True,
                 mask_token_id: int | None = None, prefix_cache: Any = None) -> None:
        if masking not in MASKINGS or score not in SCORES:
            raise ValueError(f"masking must be one of {MASKINGS} and score one of {SCORES}, got {masking!r}, {score!r}")
        if masking not in REMOTE_MASKINGS:
            raise ConfigError(
                f"masking={masking!r} is not possible for a model behind an API ({model.spec}): attention masking "
                "needs the model's attention mask, which a completions server does not expose.",
                f"Use masking {' or '.join(repr(m) for m in REMOTE_MASKINGS)} (explain.masking=delete in a run config).")
        if len(target_ids) == 0:
            raise ValueError("target_ids is empty: there is nothing to explain")
        if len(prompt.prefix_ids) == 0:
            raise ValueError("prompt.prefix_ids is empty; build the prompt with shapshift.prompting.encode_prompt")
        self.model = model
        self.prompt = prompt
        self.target_ids = [int(t) for t in target_ids]
        self.score, self.masking = score, masking
        pad = model.tokenizer.pad_token_id
        self.mask_token_id = mask_token_id if mask_token_id is not None else (pad if pad is not None else 0)
        self.n_in, self.n_out = len(prompt.input_ids), len(self.target_ids)
        # coalitions the estimators hand over at once (hierarchical's waves): what the client keeps in flight
        self.batch_size = batch_size or model.client.concurrency
        self.prefix_cache = None
        self.n_evals = 0
        self.n_forward_tokens = 0

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.n_in)
        ids = self.prompt.input_ids
        if self.masking == "delete":
            rows = [[t for t, k in zip(ids, m) if k] for m in masks]
        else:
            rows = [[t if k else self.mask_token_id for t, k in zip(ids, m)] for m in masks]
        return self.score_inputs(rows)

    def score_inputs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores ``(n_rows, n_out)`` with the input tokens replaced by each row of ``inputs`` (any length)."""
        head = list(self.prompt.prefix_ids)
        tail = list(self.prompt.suffix_ids) + self.target_ids
        logp, sent = self.model.prompt_logprobs([head + [int(t) for t in r] + tail for r in inputs], self.n_out)
        self.n_evals += len(inputs)
        self.n_forward_tokens += sent
        return scores_from_logprobs(logp, self.score)

    def full(self) -> np.ndarray:
        """Scores ``(n_out,)`` of the unmasked input."""
        return self(np.ones((1, self.n_in), dtype=bool))[0]

    def empty(self) -> np.ndarray:
        """Scores ``(n_out,)`` of the fully masked input (the SHAP base value)."""
        return self(np.zeros((1, self.n_in), dtype=bool))[0]
