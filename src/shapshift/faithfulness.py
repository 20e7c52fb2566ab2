"""Faithfulness of token attributions by real deletion from the text, independent of any masking.

A method's attributions rank the input tokens; the model is then shown the input with tokens
really removed from the text (the shortened text re-tokenised, prompt and target unchanged) and
the drop of the target's total log-probability (nats, summed over the target tokens) is measured.

- :func:`deletion_curve`: drop after deleting the top ``k`` tokens, ``k = 0..n``. Its mean over
  ``k = 1..n`` is the area over the perturbation curve (:func:`aopc`, Samek et al. 2017); higher is
  more faithful; compare with random orders (:func:`random_orders`).
- :func:`insertion_curve`: gain after keeping only the top ``k`` tokens, from the empty text; its
  mean over ``k`` (area under the curve) is higher for more faithful rankings.
- :func:`comprehensiveness` and :func:`sufficiency` (DeYoung et al. 2020, ERASER): the drop when the
  top ``q`` fraction is deleted / when only it is kept, averaged over ``q`` in
  :data:`ERASER_BINS`. Comprehensiveness: higher is better; sufficiency: lower is better.

Ranking (:func:`ranking`): values ``(n_in, n_out)`` are summed over the output tokens, then tokens
are ordered by the signed sum, most positive first (``by="signed"``, default: the tokens that
raise the target's score go first, so deletion should lower it fastest), or by ``|sum|``
(``by="abs"``). Ties break by position.

Everything takes a ``score_kept`` function: boolean ``(m, n_in)`` rows of kept tokens ->
``(m,)`` total log-probabilities; :func:`text_deletion_scorer` builds it for a model and prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .prompting import PromptParts, encode_prompt
from .scoring import TeacherForcedScorer

ScoreKept = Callable[[np.ndarray], np.ndarray]

#: Fractions of the tokens in ERASER's comprehensiveness and sufficiency (DeYoung et al. 2020).
ERASER_BINS = (0.01, 0.05, 0.10, 0.20, 0.50)


def text_deletion_scorer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, parts: PromptParts,
                         target_ids: Sequence[int], input_ids: Sequence[int] | None = None, *,
                         batch_size: int | None = None) -> tuple[ScoreKept, TeacherForcedScorer]:
    """``score_kept(masks)`` for one prompt: total target log-prob of the text with the unkept tokens deleted.

    ``masks``: ``(m, n_in)`` over ``input_ids`` (default: the text's own tokenisation). Each row's
    kept tokens are decoded to text, which is re-tokenised inside the same prefix and suffix, so
    what the model sees is a genuinely shorter text. Returns the function and the scorer it uses
    (its ``n_evals`` and ``n_forward_tokens`` count the cost).
    """
    prompt = encode_prompt(parts, tokenizer, input_ids=input_ids)
    ids = list(prompt.input_ids)
    scorer = TeacherForcedScorer(model, prompt, target_ids, score="log_prob", masking="delete", batch_size=batch_size)
    cache: dict[bytes, float] = {}

    def score_kept(masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool).reshape(-1, len(ids))
        keys = [m.tobytes() for m in masks]
        todo = {k: m for k, m in zip(keys, masks) if k not in cache}
        if todo:
            rows = []
            for m in todo.values():
                text = tokenizer.decode([t for t, k in zip(ids, m) if k], clean_up_tokenization_spaces=False)
                rows.append(tokenizer(text, add_special_tokens=False)["input_ids"] if text else [])
            for k, s in zip(todo, scorer.score_inputs(rows).sum(axis=1)):
                cache[k] = float(s)
        return np.array([cache[k] for k in keys])

    return score_kept, scorer


def ranking(values: np.ndarray, by: str = "signed") -> np.ndarray:
    """Token indices, most important first, from values ``(n_in,)`` or ``(n_in, n_out)`` (summed over outputs)."""
    v = np.asarray(values, dtype=np.float64)
    v = v.sum(axis=1) if v.ndim == 2 else v
    if by == "abs":
        v = np.abs(v)
    elif by != "signed":
        raise ValueError(f"by must be 'signed' or 'abs', got {by!r}")
    return np.argsort(-v, kind="stable")


def random_orders(n: int, n_orders: int, seed: int = 0) -> list[np.ndarray]:
    """``n_orders`` seeded random rankings of ``n`` tokens (the chance baseline)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(n_orders)]


def _top_masks(order: np.ndarray, ks: Sequence[int], keep_top: bool) -> np.ndarray:
    n = len(order)
    masks = np.zeros((len(ks), n), dtype=bool) if keep_top else np.ones((len(ks), n), dtype=bool)
    for row, k in enumerate(ks):
        masks[row, order[:k]] = keep_top
    return masks


def deletion_curve(score_kept: ScoreKept, order: np.ndarray) -> np.ndarray:
    """Drops ``(n + 1,)``: ``f(full) - f(full without the top k)``, ``k = 0..n`` (nats; ``[0] = 0``)."""
    n = len(order)
    s = score_kept(_top_masks(np.asarray(order), range(n + 1), keep_top=False))
    return s[0] - s


def insertion_curve(score_kept: ScoreKept, order: np.ndarray) -> np.ndarray:
    """Gains ``(n + 1,)``: ``f(only the top k) - f(empty)``, ``k = 0..n`` (nats; ``[0] = 0``)."""
    n = len(order)
    s = score_kept(_top_masks(np.asarray(order), range(n + 1), keep_top=True))
    return s - s[0]


def aopc(curve: np.ndarray) -> float:
    """Mean of a deletion (or insertion) curve over ``k = 1..n``: the area over (under) it, per token."""
    curve = np.asarray(curve, dtype=np.float64)
    return float(curve[1:].mean()) if len(curve) > 1 else 0.0


def _bin_sizes(n: int, bins: Sequence[float]) -> list[int]:
    return [max(1, min(n, int(round(q * n)))) for q in bins]


def comprehensiveness(score_kept: ScoreKept, order: np.ndarray, bins: Sequence[float] = ERASER_BINS) -> float:
    """ERASER comprehensiveness: mean over bins of ``f(full) - f(full without the top q)``; higher is better."""
    n = len(order)
    ks = _bin_sizes(n, bins)
    s = score_kept(np.concatenate([np.ones((1, n), bool), _top_masks(np.asarray(order), ks, keep_top=False)]))
    return float((s[0] - s[1:]).mean())


def sufficiency(score_kept: ScoreKept, order: np.ndarray, bins: Sequence[float] = ERASER_BINS) -> float:
    """ERASER sufficiency: mean over bins of ``f(full) - f(only the top q)``; lower is better."""
    n = len(order)
    ks = _bin_sizes(n, bins)
    s = score_kept(np.concatenate([np.ones((1, n), bool), _top_masks(np.asarray(order), ks, keep_top=True)]))
    return float((s[0] - s[1:]).mean())


def faithfulness_report(score_kept: ScoreKept, values: np.ndarray, *, by: str = "signed", n_random: int = 8,
                        seed: int = 0) -> dict[str, float]:
    """All metrics for one attribution ``values`` ``(n_in, n_out)``, with the random-order baseline.

    Keys: ``deletion_aopc``, ``deletion_aopc_random`` (mean over ``n_random`` orders),
    ``insertion_auc``, ``comprehensiveness``, ``sufficiency`` (nats of target log-probability).
    """
    order = ranking(values, by)
    n = len(order)
    rand = [aopc(deletion_curve(score_kept, o)) for o in random_orders(n, n_random, seed)]
    return {
        "deletion_aopc": aopc(deletion_curve(score_kept, order)),
        "deletion_aopc_random": float(np.mean(rand)),
        "insertion_auc": aopc(insertion_curve(score_kept, order)),
        "comprehensiveness": comprehensiveness(score_kept, order),
        "sufficiency": sufficiency(score_kept, order),
    }
