"""The attention lens: how much each target position attends to each input token.

Values ``(n_in, n_out)``: column ``j`` is the attention of the position that predicts target token
``j`` (the prompt's last token for ``j = 0``, target ``j - 1``'s slot after it; the same positions
whose logits the scorer reads) to each input token, taken from the model's own attention
probabilities (read with the ``eager`` attention implementation, whose softmax weights the model
returns with ``output_attentions``), averaged over the heads of the last layer. A column sums to at
most 1: the rest of the attention goes to the fixed context and to earlier target tokens.

``attention_rollout`` (or ``options={"rollout": True}`` for ``attention``) is attention rollout (Abnar & Zuidema
2020): every layer's head-averaged attention mixed with the residual stream, ``0.5 A + 0.5 I``,
multiplied through the layers from the first to the last; the same rows and columns are read.

These values are proportions of attention, not of the score: there is no base value (``base_values``
is 0) and no efficiency; they rank tokens by where the model looks, not by what they change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from ..models import model_device
from .base import Attribution, ExplainTask
from .registry import Estimator, NoOptions, register


@contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Run ``model`` (or a ``PeftModel``'s base model) with the eager attention implementation, then restore it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(base.config, "_attn_implementation", None) or "eager"
    if before != "eager":
        base.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            base.set_attn_implementation(before)


def attention_maps(model: PreTrainedModel, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """Each layer's attention probabilities ``(heads, L, L)`` for the token ids ``ids`` (one sequence)."""
    device = model_device(model)
    with eager_attention(model), torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long, device=device), output_attentions=True,
                    use_cache=False)
    return tuple(a[0].float() for a in out.attentions)


def rollout(maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Attention rollout ``(L, L)``: the product of ``0.5 * mean_heads(A_l) + 0.5 * I`` over the layers (last on the left)."""
    n = maps[0].shape[-1]
    eye = torch.eye(n, device=maps[0].device)
    out = eye
    for a in maps:
        mixed = 0.5 * a.mean(0) + 0.5 * eye
        out = (mixed / mixed.sum(-1, keepdim=True)) @ out
    return out


def predictor_slots(task: ExplainTask) -> np.ndarray:
    """Slots ``(n_out,)`` of the sequence ``prompt + target[:-1]`` whose logits predict each target token."""
    return len(task.prompt.ids) - 1 + np.arange(len(task.target_ids))


@dataclass(frozen=True)
class AttentionOptions:
    """``rollout``: attention rollout through every layer instead of the last layer's attention."""

    rollout: bool = False


@register
class AttentionLens(Estimator):
    """Last-layer attention, averaged over heads, from each target's predicting position to the input tokens."""

    name = "attention"
    is_shap = False
    deterministic = True
    Options = AttentionOptions
    budget = "ignored: one forward pass"
    uses_scorer = False
    needs_weights = True

    @property
    def rollout(self) -> bool:
        return bool(getattr(self.options, "rollout", False))

    def attribute(self, task: ExplainTask, scorer=None) -> Attribution:
        ids = list(task.prompt.ids) + list(task.target_ids[:-1])
        maps = attention_maps(task.model, ids)
        matrix = rollout(maps) if self.rollout else maps[-1].mean(0)
        start = len(task.prompt.prefix_ids)
        rows = matrix[torch.as_tensor(predictor_slots(task), device=matrix.device)]  # (n_out, L)
        values = task.pool(rows[:, start:start + task.n_tokens].double().cpu().numpy().T)  # a word: its tokens' sum
        return Attribution(values=values, base_values=np.zeros(len(task.target_ids)), n_evals=1,
                           n_forward_tokens=len(ids))


@register
class AttentionRolloutLens(AttentionLens):
    """Attention rollout through all layers (Abnar & Zuidema 2020), read like :class:`AttentionLens`."""

    name = "attention_rollout"
    Options = NoOptions

    @property
    def rollout(self) -> bool:
        return True
