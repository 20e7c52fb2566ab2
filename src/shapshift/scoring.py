"""The teacher-forced scorer that every estimator shares.

``TeacherForcedScorer(model, prompt, target_ids)(masks)`` returns, for each coalition (a boolean row
over the input tokens, True = kept), the score of every target token given the masked prompt:
``log_odds`` (``log p - log(1 - p)``, as ``shap.models.TeacherForcing``) or ``log_prob``, shape
``(n_masks, n_targets)``, float64, in nats.

It is fast because it
- scores all target tokens of a coalition in one forward pass (teacher forcing), many coalitions
  per batch;
- runs the fixed prefix (system prompt, instruction, few-shot demonstrations) once per example and
  reuses its key/value cache for every coalition (broadcast to the batch, never recomputed); the
  prefix's last token starts every row, so no row is ever empty;
- computes logits only at the ``n_out`` target positions (``logits_to_keep``), so the
  ``vocab``-wide head runs on ``n_out`` rows, not on the whole sequence;
- picks the batch size from the device: on CUDA from the free memory and the sequence length
  (:func:`auto_batch_size`), on CPU a fixed :data:`CPU_BATCH_SIZE`; it halves the batch and retries
  when the device runs out of memory anyway;
- leaves masked tokens out of the forward pass (``attention`` and ``delete`` masking) and groups
  coalitions of similar length into a batch, so little is padded.

Every prompt's prefix holds at least one token (:func:`shapshift.prompting.encode_prompt` puts the
model's start token there when no text precedes the input), so the first target token always has a
token to be predicted from, the fully masked input included.

Masking (``masking=``), i.e. what "feature absent" means:
- ``attention``: nothing attends to masked tokens; the other tokens keep their positions,
  so the model sees a gap, and the first target token is predicted at the last token the model
  sees (a masked last input token's own hidden state is never read: it would carry the token).
  The masked tokens are left out of the forward pass altogether (each row holds only its kept
  tokens, with their original ``position_ids``), which gives the same scores for fewer tokens;
  models with local/sliding-window attention, whose windows count sequence slots rather than
  positions, keep the masked tokens in place, hidden by the attention mask.
- ``delete`` (the default, :data:`shapshift.constants.DEFAULT_MASKING`): masked tokens are removed and later
  tokens move up, as in a shortened text (rows are right-padded, so no real token sees a pad, and each
  row's target logits are gathered where it ends).
- ``replace``: masked tokens are replaced by ``mask_token_id`` (the pad token by default).

``tests/test_scorer_reference.py`` checks all of this against a naive scorer (one coalition at a
time, the whole sequence built by hand) on random prompt shapes and architectures.

Which one measures better was decided by the fidelity numbers of ``benchmarks/RESULTS.md``
(deletion AOPC of exact Shapley values under each masking, real text deletion as the yardstick,
smollm2-135m; deletion a little ahead) and ``benchmarks/CONTEXTCITE*.md`` (on 18 SST-2 sentences, ``auto``'s
values under deletion and the log-prob score tie ContextCite under word deletion, those under attention masking and
log-odds do not): ``delete`` is the default, and the same for a model in this process and one behind an API.

Over 400 lines on purpose: batching, the cached prefix, compaction and the three maskings are one
algorithm, checked as a whole against a naive scorer (tests/test_scorer_reference.py).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from .backends.capabilities import capabilities
from .backoff import is_oom, smaller
from .constants import DEFAULT_MASKING, DEFAULT_SCORE, MASKINGS, SCORES
from .models import model_device
from .prompting import EncodedPrompt

log = logging.getLogger(__name__)

#: Coalitions per forward pass on CPU. Measured on 2 AMD EPYC cores with smollm2-135m: throughput
#: is flat from 16 to 64 rows (the GEMMs are already large); 32 keeps memory small.
CPU_BATCH_SIZE = 32
#: Upper bound of the automatic batch size on accelerators.
MAX_AUTO_BATCH_SIZE = 512


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(target)`` from logits ``(..., vocab)`` and target ids ``(...)``: float32 ``(...)``, nats.

    The one place a target log-probability is computed: the scorer (:func:`token_scores`), task
    evaluation (:func:`shapshift.finetune.sequence_logprobs`) and the lenses all call it.
    """
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_scores(logits: torch.Tensor, targets: torch.Tensor, score: str = DEFAULT_SCORE) -> torch.Tensor:
    """Per-token scores from logits ``(..., vocab)`` and target ids ``(...)``, in float32.

    ``log_odds`` = ``log p - log(1 - p)`` computed stably from ``log p``; ``log_prob`` = ``log p``
    (:func:`token_logprobs`).
    """
    logp = token_logprobs(logits, targets)
    if score == "log_prob":
        return logp
    # log(1 - p) = log(-expm1(log p)); clamp keeps p == 1 finite
    return logp - torch.log(-torch.expm1(logp.clamp(max=-1e-7)))


def scores_from_logprobs(logp: np.ndarray, score: str = DEFAULT_SCORE) -> np.ndarray:
    """:func:`token_scores` from the target tokens' log-probabilities ``logp`` (any shape, nats), float64.

    ``log_odds`` needs only ``log p``: ``1 - p`` is the mass of every other token.
    """
    logp = np.asarray(logp, dtype=np.float64)
    if score == "log_prob":
        return logp
    return logp - np.log(-np.expm1(np.minimum(logp, -1e-7)))


def make_scorer(model, prompt: EncodedPrompt, target_ids: Sequence[int], **options):
    """The scorer of ``model`` (a remote model builds its own, :mod:`shapshift.remote`), else a :class:`TeacherForcedScorer`."""
    build = getattr(model, "make_scorer", None)
    if callable(build) and not capabilities(model).weights:
        return build(prompt, target_ids, **options)
    return TeacherForcedScorer(model, prompt, target_ids, **options)


def row_bytes(model: PreTrainedModel, n_prefix: int, n_body: int, n_out: int) -> int:
    """Rough bytes one coalition needs in a forward pass: its key/value cache, activations, logits."""
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    cfg = get() if callable(get) else cfg
    hidden = int(getattr(cfg, "hidden_size", 768))
    layers = int(getattr(cfg, "num_hidden_layers", getattr(cfg, "num_layers", 12)))
    heads = int(getattr(cfg, "num_attention_heads", getattr(cfg, "num_heads", 12)))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    vocab = int(getattr(cfg, "vocab_size", 50000))
    elem = next(model.parameters()).element_size()
    seq = n_prefix + n_body
    kv = 2 * layers * kv_heads * head_dim * seq * elem * 2  # the cache and its concatenated copy
    act = n_body * (4 * hidden + 2 * inter) * elem + heads * n_body * seq * 4  # one layer live + scores
    logits = n_out * vocab * 4 * 3  # logits, log-softmax, float copy
    return kv + act + logits


def auto_batch_size(model: PreTrainedModel, n_prefix: int, n_body: int, n_out: int,
                    device: torch.device | None = None) -> int:
    """Coalitions per forward pass for this device and sequence length.

    CUDA: 60 % of the free memory divided by :func:`row_bytes`, between 1 and
    :data:`MAX_AUTO_BATCH_SIZE`. CPU (and others): :data:`CPU_BATCH_SIZE`.
    """
    device = device or model_device(model)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(MAX_AUTO_BATCH_SIZE, 0.6 * free // row_bytes(model, n_prefix, n_body, n_out))))


def has_windowed_attention(model: PreTrainedModel) -> bool:
    """Whether some layer attends within a window of sequence slots (GPT-Neo's local layers, sliding windows)."""
    config = model.config
    types = getattr(config, "attention_layers", None) or getattr(config, "layer_types", None) or []
    return "local" in types or "sliding_attention" in types or bool(getattr(config, "sliding_window", None))


def forward_params(model: torch.nn.Module) -> set[str]:
    """Argument names of ``model.forward`` (of the base model for wrappers such as ``PeftModel``)."""
    names: set[str] = set()
    for m in (model, getattr(model, "get_base_model", lambda: None)()):
        if m is not None:
            names |= set(inspect.signature(m.forward).parameters)
    return names


def batched_cache(cache, batch: int):
    """A fresh copy of a one-row key/value ``cache`` for ``batch`` rows: its keys/values are broadcast views (no copy)."""
    cache = copy.deepcopy(cache)
    layers = getattr(cache, "layers", None)
    if layers and all(isinstance(getattr(la, "keys", None), torch.Tensor) for la in layers):
        for la in layers:
            la.keys = la.keys.expand(batch, *la.keys.shape[1:])
            la.values = la.values.expand(batch, *la.values.shape[1:])
    else:  # older cache classes
        cache.batch_repeat_interleave(batch)
    return cache


class TeacherForcedScorer:
    """Scores of the target tokens for batches of masked inputs of one example.

    Parameters
    ----------
    model: a causal LM (any ``AutoModelForCausalLM``; a ``PeftModel`` works too).
    prompt: the encoded prompt; only ``prompt.input_ids`` (``n_in`` tokens) are masked. Its prefix must
        hold at least one token (:func:`shapshift.prompting.encode_prompt` starts a prompt with the
        model's start token when no text precedes the input), so that every target token, the first
        one of the fully masked input included, has a token to be predicted from.
    target_ids: the explained continuation, ``n_out`` tokens.
    score: ``log_odds`` or ``log_prob`` per target token.
    masking: ``attention``, ``delete`` or ``replace`` (module docstring).
    batch_size: coalitions per forward pass; ``None``: :func:`auto_batch_size` (halved on out-of-memory).
    use_cache: run the prefix once and reuse its key/value cache (``False``: the whole prompt each time).
    prefix_cache: the one-row key/value cache of ``prompt.prefix_ids[:-1]`` from another scorer of the same
        model (:attr:`prefix_cache`), e.g. of the previous example under the same few-shot context; it is
        read, never changed, and its prefix is then not run again.
    mask_token_id: the replacement token of ``replace`` masking (default: the pad token, else 0).

    Every row of a batch is ``head + kept input tokens [+ pads] + tail`` after the cached part of the
    prefix, where ``head`` is the prefix's last token (the whole prefix without a cache) and ``tail``
    is ``suffix + target[:-1]``: a row is never empty, and the logit of the first target token is
    always the one at the row's last token before the tail.

    Counters: ``n_evals`` (coalitions scored), ``n_forward_tokens`` (token positions run through the
    model, padding and the one prefix pass included).
    """

    def __init__(self, model: PreTrainedModel, prompt: EncodedPrompt, target_ids: Sequence[int], *,
                 score: str = DEFAULT_SCORE, masking: str = DEFAULT_MASKING, batch_size: int | None = None,
                 use_cache: bool = True, mask_token_id: int | None = None, prefix_cache=None) -> None:
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if len(target_ids) == 0:
            raise ValueError("target_ids is empty: there is nothing to explain")
        if len(prompt.prefix_ids) == 0:
            raise ValueError("prompt.prefix_ids is empty, so nothing precedes the first target token when every "
                             "input token is masked; build the prompt with shapshift.prompting.encode_prompt, which "
                             "starts it with the model's start token (BOS) when no text precedes the input")
        self.model = model
        self.device = model_device(model)
        self.prompt = prompt
        self.target_ids = [int(t) for t in target_ids]
        self.score = score
        self.masking = masking
        pad = getattr(model.config, "pad_token_id", None)
        self.mask_token_id = mask_token_id if mask_token_id is not None else (pad if pad is not None else 0)
        self.n_in = len(prompt.input_ids)
        self.n_out = len(self.target_ids)
        self.n_prefix = len(prompt.prefix_ids)
        # the cache holds the prefix but its last token, which starts every row (so no row is ever empty)
        self.use_cache = use_cache and self.n_prefix > 1
        self.n_cached = self.n_prefix - 1 if self.use_cache else 0
        if batch_size is None:
            n_body = self.n_prefix - self.n_cached + self.n_in + len(prompt.suffix_ids) + self.n_out
            batch_size = auto_batch_size(model, self.n_cached, n_body, self.n_out, self.device)
        self.batch_size = max(1, int(batch_size))
        self.n_evals = 0
        self.n_forward_tokens = 0
        params = forward_params(model)
        # transformers 5 renamed past_key_values to cache
        self._cache_name = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        self._head = list(prompt.prefix_ids[self.n_cached:])
        self._tail = list(prompt.suffix_ids) + self.target_ids[:-1]
        self._inputs = torch.tensor(prompt.input_ids, dtype=torch.long, device=self.device)
        self._targets = torch.tensor(self.target_ids, dtype=torch.long, device=self.device)
        if not self.use_cache:
            prefix_cache = None
        elif prefix_cache is None:
            prefix_cache = self._run_prefix()
        self.prefix_cache = prefix_cache
        # models with local/sliding-window attention count sequence slots, not positions: there masked
        # tokens stay in place (hidden) and rows are padded at the end, so every token keeps its slot
        self.windowed = has_windowed_attention(model)
        # attention masking by leaving masked tokens out (same scores, fewer tokens)
        self.compact = masking == "attention" and not self.windowed

    # -- public ---------------------------------------------------------------------------------
    def __call__(self, masks: np.ndarray) -> np.ndarray:
        """Scores ``(n_masks, n_out)`` for boolean ``masks`` ``(n_masks, n_in)`` (True = token kept)."""
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.n_in)
        if self.masking == "delete":
            rows = [[t for t, k in zip(self.prompt.input_ids, m) if k] for m in masks]
            return self.score_inputs(rows)
        if self.compact:
            kept = [np.flatnonzero(m) for m in masks]
            ids = [[self.prompt.input_ids[i] for i in k] for k in kept]
            return self._by_length(ids, [k.tolist() for k in kept])
        return self._batched(masks, self._masked_batch)

    def score_inputs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores ``(n_rows, n_out)`` with the input tokens replaced by each row of ``inputs``.

        Rows may have any length (empty included); prefix, suffix and target stay as they are.
        This is how real deletion from the text is scored (re-tokenised shortened inputs). Rows are
        batched by length, so a batch is padded little.
        """
        return self._by_length([list(map(int, r)) for r in inputs])

    def _by_length(self, rows: list[list[int]], positions: list[list[int]] | None = None) -> np.ndarray:
        """Score variable-length rows (optionally at given input positions), batched shortest first."""
        order = np.argsort([len(r) for r in rows], kind="stable")
        items = [(rows[i], positions[i] if positions is not None else None) for i in order]
        out = np.empty((len(rows), self.n_out), dtype=np.float64)
        out[order] = self._batched(items, self._row_batch)
        return out

    def full(self) -> np.ndarray:
        """Scores ``(n_out,)`` of the unmasked input."""
        return self(np.ones((1, self.n_in), dtype=bool))[0]

    def empty(self) -> np.ndarray:
        """Scores ``(n_out,)`` of the fully masked input (the SHAP base value)."""
        return self(np.zeros((1, self.n_in), dtype=bool))[0]

    # -- internals ------------------------------------------------------------------------------
    def _batched(self, items, score_batch) -> np.ndarray:
        out = np.empty((len(items), self.n_out), dtype=np.float64)
        start = 0
        while start < len(items):
            stop = min(start + self.batch_size, len(items))
            try:
                out[start:stop] = score_batch(items[start:stop])
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                # a plain loop, not accelerate's find_executable_batch_size: see shapshift.backoff
                if not is_oom(exc) or self.batch_size == 1:
                    raise
                self.batch_size = smaller(self.batch_size)
                log.warning("out of memory; scoring with batch size %d", self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = stop
        self.n_evals += len(items)
        return out

    @torch.no_grad()
    def _run_prefix(self):
        ids = torch.tensor([self.prompt.prefix_ids[:self.n_cached]], dtype=torch.long, device=self.device)
        # only the cache is wanted: no logits over the prefix (the head would run on every prefix position)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self.model(input_ids=ids, use_cache=True, **extra)
        self.n_forward_tokens += ids.shape[1]
        cache = getattr(out, "cache", None)
        return cache if cache is not None else out.past_key_values

    def _batched_cache(self, batch: int):
        return batched_cache(self.prefix_cache, batch)

    def _masked_batch(self, masks: np.ndarray) -> np.ndarray:
        """Attention or replacement masking: ``head + inputs + tail``, every row the same, positions unchanged."""
        b = len(masks)
        keep = torch.from_numpy(np.ascontiguousarray(masks)).to(self.device)
        inputs = self._inputs.unsqueeze(0).expand(b, -1)
        if self.masking == "replace":
            inputs = torch.where(keep, inputs, torch.full_like(inputs, self.mask_token_id))
            in_mask = torch.ones_like(keep, dtype=torch.long)
        else:
            in_mask = keep.long()
        head = torch.tensor(self._head, dtype=torch.long, device=self.device).unsqueeze(0).expand(b, -1)
        tail = torch.tensor(self._tail, dtype=torch.long, device=self.device).unsqueeze(0).expand(b, -1)
        ids = torch.cat([head, inputs, tail], dim=1)
        body_mask = torch.cat([torch.ones_like(head), in_mask, torch.ones_like(tail)], dim=1)
        positions = self.n_cached + torch.arange(ids.shape[1], device=self.device).unsqueeze(0).expand(b, -1)
        first = ids.shape[1] - self.n_out + 1  # slot of the first target token
        return self._score_body(ids, body_mask, positions, self._predictors(body_mask, torch.full((b,), first)))

    def _predictors(self, body_mask: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Slots ``(b, n_out)`` whose logits predict each target token; ``first``: ``(b,)`` slot of the first one.

        Target ``j > 0`` is predicted at the slot of target ``j - 1``; the first target at the last slot the
        model sees before it (with attention masking and no suffix, a masked last input token's own hidden
        state would carry that token: it is skipped, so a masked token never reaches the scores).
        """
        slots = torch.arange(body_mask.shape[1], device=body_mask.device)
        seen = (body_mask.bool() & (slots[None, :] < first.to(body_mask.device)[:, None])).long()
        last_seen = (seen * (slots + 1)[None, :]).amax(dim=1) - 1
        later = first.to(body_mask.device)[:, None] - 1 + torch.arange(1, self.n_out, device=body_mask.device)[None, :]
        return torch.cat([last_seen[:, None], later], dim=1)

    def _row_batch(self, items: list[tuple[list[int], list[int] | None]]) -> np.ndarray:
        """Rows ``head + input ids + tail``, the inputs at their given positions or, with ``None``, consecutive.

        ``None`` positions: the row's tokens stand where they are (deletion: later tokens move up);
        given positions (compacted attention masking): the kept tokens keep their original positions
        and the tail follows at ``n_in``.

        Rows shorter than the batch's longest are padded between the input tokens and the tail, so
        every row's targets end it and logits are computed for little more than the target positions;
        every pad sees the head, hidden from all real tokens. Models with windowed attention (which
        counts slots) are padded after the tail instead.
        """
        head, tail, start = self._head, self._tail, self.n_prefix
        head_pos = list(range(self.n_cached, self.n_prefix))
        n_fixed = len(head) + len(tail)
        width = n_fixed + max(len(r) for r, _ in items)
        middle = not self.windowed
        ids = torch.full((len(items), width), self.mask_token_id, dtype=torch.long)
        attn = torch.zeros((len(items), width), dtype=torch.long)
        pos = torch.zeros((len(items), width), dtype=torch.long)
        first = torch.zeros(len(items), dtype=torch.long)
        n_suffix = len(self.prompt.suffix_ids)
        for i, (row, at) in enumerate(items):
            n_row = len(row)
            n_pad = width - n_fixed - n_row
            in_pos = [start + j for j in range(n_row)] if at is None else [start + j for j in at]
            tail_from = start + (n_row if at is None else self.n_in)
            tail_pos = list(range(tail_from, tail_from + len(tail)))
            split = len(head) + n_row  # where the tail begins in the unpadded row
            tail_slot = split + (n_pad if middle else 0)
            slots = list(range(split)) + list(range(tail_slot, tail_slot + len(tail)))
            ids[i, slots] = torch.tensor(head + row + tail, dtype=torch.long)
            attn[i, slots] = 1
            pos[i, slots] = torch.tensor(head_pos + in_pos + tail_pos, dtype=torch.long)
            # pads: hidden, at the position of the token before them
            pad_from = split if middle else split + len(tail)
            pos[i, pad_from:pad_from + n_pad] = pos[i, pad_from - 1]
            first[i] = tail_slot + n_suffix
        attn = attn.to(self.device)
        return self._score_body(ids.to(self.device), attn, pos.to(self.device), self._predictors(attn, first))

    @torch.no_grad()
    def _score_body(self, ids: torch.Tensor, body_mask: torch.Tensor, positions: torch.Tensor,
                    predictors: torch.Tensor) -> np.ndarray:
        """Scores ``(b, n_out)`` of body rows ``ids`` ``(b, width)`` after the cached part of the prefix.

        ``positions`` are absolute (the cached tokens hold ``0..n_cached - 1``); ``predictors``
        ``(b, n_out)``: the slot whose logits predict each target token (:meth:`_predictors`).
        """
        b, width = ids.shape
        kwargs = {}
        if self.use_cache:
            kwargs[self._cache_name] = self._batched_cache(b)
            cached = torch.ones((b, self.n_cached), dtype=torch.long, device=self.device)
            body_mask = torch.cat([cached, body_mask], dim=1)
        self.n_forward_tokens += ids.numel()
        # logits of the last `keep` positions only: every predictor lies there
        keep = width - int(predictors.min())
        logits = self._forward(ids, body_mask, positions, kwargs, keep)
        logits = logits[torch.arange(b, device=self.device)[:, None], predictors - (width - keep)]
        targets = self._targets.unsqueeze(0).expand(b, -1)
        return token_scores(logits, targets, self.score).double().cpu().numpy()

    def _forward(self, ids, attn, positions, kwargs, keep: int) -> torch.Tensor:
        """Logits ``(b, keep, vocab)`` of the last ``keep`` positions."""
        if self._logits_to_keep:  # older models compute every position's logits
            kwargs["logits_to_keep"] = keep
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=self.use_cache,
                            **kwargs).logits
        return logits[:, -keep:, :]


class TableScorer:
    """A scorer that looks coalition values up in a table instead of running a model.

    ``table``: ``(2^n_in, n_out)`` values of every coalition, bit-indexed (row ``s`` keeps input ``i``
    when bit ``i`` of ``s`` is set), e.g. recorded from a :class:`TeacherForcedScorer` by the exact
    estimator. Estimators run on it unchanged, so their error against the exact Shapley values can
    be measured at many budgets and seeds without model calls. Same interface as the real scorer.
    """

    def __init__(self, table: np.ndarray, batch_size: int = CPU_BATCH_SIZE) -> None:
        self.table = np.asarray(table, dtype=np.float64)
        self.n_in = int(round(np.log2(len(self.table))))
        if 2**self.n_in != len(self.table):
            raise ValueError(f"a table needs 2^n rows, got {len(self.table)}")
        self.n_out = self.table.shape[1]
        self.batch_size = batch_size
        self.n_evals = 0
        self.n_forward_tokens = 0

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool).reshape(-1, self.n_in)
        self.n_evals += len(masks)
        codes = (masks.astype(np.int64) << np.arange(self.n_in)).sum(axis=1)
        return self.table[codes]

    def full(self) -> np.ndarray:
        return self.table[-1]

    def empty(self) -> np.ndarray:
        return self.table[0]
