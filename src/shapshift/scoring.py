"""The teacher-forced scorer that every estimator shares.

``TeacherForcedScorer(model, prompt, target_ids)(masks)`` returns, for each coalition (a boolean row
over the input tokens, True = kept), the score of every target token given the masked prompt:
``log_odds`` (``log p - log(1 - p)``, as ``shap.models.TeacherForcing``) or ``log_prob``, shape
``(n_masks, n_targets)``, float64.

It is fast because it
- scores all target tokens of a coalition in one forward pass, many coalitions per batch;
- runs the fixed prefix (template, instruction, few-shot demonstrations) once and reuses its
  key/value cache for every coalition;
- computes logits only at the target positions (``logits_to_keep``);
- halves the batch and retries when the device runs out of memory.

Masking (``masking=``):
- ``attention`` (default): masked tokens stay in place but nothing attends to them; positions of
  the other tokens do not move.
- ``delete``: masked tokens are removed, later tokens move up (what a shortened text would be).
- ``replace``: masked tokens are replaced by ``mask_token_id`` (the pad token by default).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from .prompting import EncodedPrompt

log = logging.getLogger(__name__)

MASKINGS = ("attention", "delete", "replace")


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of CUDA or of a CPU allocation."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def token_scores(logits: torch.Tensor, targets: torch.Tensor, score: str = "log_odds") -> torch.Tensor:
    """Per-token scores from logits ``(..., vocab)`` and target ids ``(...)``, in float32.

    ``log_odds`` = ``log p - log(1 - p)`` computed stably from ``log p``; ``log_prob`` = ``log p``.
    """
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if score == "log_prob":
        return logp
    # log(1 - p) = log(-expm1(log p)); clamp keeps p == 1 finite
    return logp - torch.log(-torch.expm1(logp.clamp(max=-1e-7)))


class TeacherForcedScorer:
    """Scores of the target tokens for batches of masked inputs of one example.

    Parameters
    ----------
    model: a causal LM (any ``AutoModelForCausalLM``; a ``PeftModel`` works too).
    prompt: the encoded prompt; only ``prompt.input_ids`` are masked.
    target_ids: the explained continuation, ``n_out`` tokens.
    score: ``log_odds`` or ``log_prob`` per target token.
    batch_size: coalitions per forward pass (halved on out-of-memory).
    use_cache: run the prefix once and reuse its key/value cache (``False``: the whole prompt each time).
    """

    def __init__(self, model: PreTrainedModel, prompt: EncodedPrompt, target_ids: Sequence[int], *,
                 score: str = "log_odds", masking: str = "attention", batch_size: int = 64,
                 use_cache: bool = True, mask_token_id: int | None = None) -> None:
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
        if len(target_ids) == 0:
            raise ValueError("target_ids is empty: there is nothing to explain")
        self.model = model
        self.device = next(model.parameters()).device
        self.prompt = prompt
        self.target_ids = list(int(t) for t in target_ids)
        self.score = score
        self.masking = masking
        self.batch_size = max(1, int(batch_size))
        self.use_cache = use_cache and len(prompt.prefix_ids) > 0
        pad = getattr(model.config, "pad_token_id", None)
        self.mask_token_id = mask_token_id if mask_token_id is not None else (pad if pad is not None else 0)
        self.n_in = len(prompt.input_ids)
        self.n_out = len(self.target_ids)
        self.n_evals = 0  # coalitions scored
        self.n_forward_tokens = 0  # tokens run through the model, prefix included
        self._tail = torch.tensor(prompt.suffix_ids + self.target_ids[:-1], dtype=torch.long, device=self.device)
        self._inputs = torch.tensor(prompt.input_ids, dtype=torch.long, device=self.device)
        self._targets = torch.tensor(self.target_ids, dtype=torch.long, device=self.device)
        self._prefix_cache = None
        if self.use_cache:
            self._prefix_cache = self._run_prefix()

    # -- public ---------------------------------------------------------------------------------
    def __call__(self, masks: np.ndarray) -> np.ndarray:
        """Scores ``(n_masks, n_out)`` for boolean ``masks`` ``(n_masks, n_in)`` (True = token kept)."""
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.n_in)
        out = np.empty((len(masks), self.n_out), dtype=np.float64)
        start = 0
        while start < len(masks):
            stop = min(start + self.batch_size, len(masks))
            try:
                out[start:stop] = self._score_batch(masks[start:stop])
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if not is_oom(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory; scoring with batch size %d", self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = stop
        self.n_evals += len(masks)
        return out

    def full(self) -> np.ndarray:
        """Scores ``(n_out,)`` of the unmasked input."""
        return self(np.ones((1, self.n_in), dtype=bool))[0]

    def empty(self) -> np.ndarray:
        """Scores ``(n_out,)`` of the fully masked input (the SHAP base value)."""
        return self(np.zeros((1, self.n_in), dtype=bool))[0]

    # -- internals ------------------------------------------------------------------------------
    @torch.no_grad()
    def _run_prefix(self):
        ids = torch.tensor([self.prompt.prefix_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        self.n_forward_tokens += ids.shape[1]
        return out.past_key_values

    def _batched_cache(self, batch: int):
        cache = copy.deepcopy(self._prefix_cache)
        cache.batch_repeat_interleave(batch)
        return cache

    @torch.no_grad()
    def _score_batch(self, masks: np.ndarray) -> np.ndarray:
        b = len(masks)
        keep = torch.from_numpy(masks).to(self.device)
        n_prefix = len(self.prompt.prefix_ids)
        tail = self._tail.unsqueeze(0).expand(b, -1)
        if self.masking == "delete":
            ids, body_mask, positions = self._deleted_rows(masks)
        else:
            inputs = self._inputs.unsqueeze(0).expand(b, -1)
            if self.masking == "replace":
                inputs = torch.where(keep, inputs, torch.full_like(inputs, self.mask_token_id))
                in_mask = torch.ones_like(keep, dtype=torch.long)
            else:
                in_mask = keep.long()
            ids = torch.cat([inputs, tail], dim=1)
            body_mask = torch.cat([in_mask, torch.ones_like(tail)], dim=1)
            positions = torch.arange(ids.shape[1], device=self.device).unsqueeze(0).expand(b, -1)
        if self.use_cache:
            prefix_mask = torch.ones((b, n_prefix), dtype=torch.long, device=self.device)
            attn = torch.cat([prefix_mask, body_mask], dim=1)
            kwargs = {"past_key_values": self._batched_cache(b)}
            self.n_forward_tokens += ids.numel()
        else:
            prefix = torch.tensor(self.prompt.prefix_ids, dtype=torch.long, device=self.device).unsqueeze(0).expand(b, -1)
            ids = torch.cat([prefix, ids], dim=1)
            attn = torch.cat([torch.ones_like(prefix), body_mask], dim=1)
            positions = torch.cat([torch.arange(n_prefix, device=self.device).unsqueeze(0).expand(b, -1),
                                   positions + n_prefix], dim=1)
            kwargs = {}
            self.n_forward_tokens += ids.numel()
        if self.use_cache:
            positions = positions + n_prefix
        logits = self._forward(ids, attn, positions, kwargs)
        targets = self._targets.unsqueeze(0).expand(b, -1)
        return token_scores(logits, targets, self.score).double().cpu().numpy()

    def _forward(self, ids, attn, positions, kwargs) -> torch.Tensor:
        try:
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=self.use_cache,
                             logits_to_keep=self.n_out, **kwargs)
            logits = out.logits
        except TypeError:  # older models without logits_to_keep
            out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=self.use_cache, **kwargs)
            logits = out.logits
        return logits[:, -self.n_out:, :]

    def _deleted_rows(self, masks: np.ndarray):
        """Kept tokens + tail, left-padded between prefix and body so the targets end every row."""
        tail = self._tail.tolist()
        rows = [[t for t, k in zip(self.prompt.input_ids, m) if k] + tail for m in masks]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.mask_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            attn[i, width - len(r):] = 1
            pos[i, width - len(r):] = torch.arange(len(r))
        return ids.to(self.device), attn.to(self.device), pos.to(self.device)
