"""Gradient lenses through Captum: input × gradient and integrated gradients on the input tokens' embeddings.

Both attribute the same score as the SHAP estimators (:func:`shapshift.scoring.token_scores`:
log-odds or log-prob of each target token, teacher-forced) to the same features (the input
tokens; the fixed prefix/suffix context and the target tokens are held constant and get no value).
A feature's value is the sum over the embedding dimension of Captum's attribution of its
embedding vector, one column per target token: ``values`` ``(n_in, n_out)`` in the score's units.

Why Captum's ``IntegratedGradients`` / ``InputXGradient`` on the feature embeddings and not
``captum.attr.LLMGradientAttribution`` (read in ``captum/attr/_core/llm_attr.py``, Captum 0.9):
its ``GradientForwardFunc`` returns the log-probability only (shapshift's default score is
log-odds), it runs one ``attribute`` call and one full forward pass per target token, and its
``TextTokenInput`` can leave context out only by token *id* (``skip_tokens``), so a template token
that also occurs in the input would lose its value too. Here one forward function takes the
feature embeddings ``(b, n_in, d)`` of ``b`` rows and returns every target's score ``(b, n_out)``;
the rows are the example repeated once per target token with Captum's ``target`` picking each row's
own column, so all targets are attributed in one Captum call (one backward pass for input ×
gradient, ``n_steps`` interpolation points for integrated gradients), and the fixed prefix runs
once, its key/value cache shared by every row (as in the scorer). Attributing the output of the
embedding layer with ``LayerIntegratedGradients`` would give the same numbers; feeding the
embeddings directly lets the baseline be any vector and keeps the prefix cache.

Efficiency does not hold for either. Integrated gradients satisfies completeness against its
baseline instead, ``Σ_i values[i, j] = f_j(x) - f_j(baseline)`` up to the path integral's error;
``base_values`` is ``f(baseline)`` (the score with every input token's embedding replaced by the pad
token's, :data:`IG_BASELINE`; ``zero`` and ``mean`` are options) and :attr:`Attribution.extras` reports
the gap ``f(x) - f(baseline) - Σ values`` per target token. Input × gradient, ``x · ∇f(x)``, is a
first-order Taylor estimate of ``f(x) - f(0)`` (exact for a linear model); its ``base_values`` is
``f(0)``, the score with every input embedding set to zero, and its ``completeness_gap`` that estimate's error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..scoring import token_scores
from .base import Attribution, ExplainTask
from .registry import Estimator, register

log = logging.getLogger(__name__)

#: Integrated gradients' default number of interpolation points (Gauss–Legendre, as Captum's default method).
IG_STEPS = 32
#: Integrated gradients' default reference input (option ``baseline``): every input token's embedding
#: replaced by the pad token's. The all-zero embedding converges far more slowly on models that normalise their
#: input (RMSNorm is scale-invariant, so the path from zero bends sharply near it): on two SST-2 prompts with
#: SmolLM2 the gap at 32 steps was 125-480 % of |f(x) - f(baseline)| from zero and 23-44 % from the pad token.
IG_BASELINE = "pad"
#: Integrated gradients doubles its steps from ``n_steps`` until the completeness gap (Captum's convergence delta) is at
#: most this share of ``|f(x) - f(baseline)|`` (option ``tolerance``), up to :data:`IG_MAX_STEPS` (option ``max_steps``);
#: a gap still larger is a warning. On the README's lens example the sign of a token flipped between 32 and 64 steps.
IG_TOLERANCE = 0.05
IG_MAX_STEPS = 256
#: The smallest ``|f(x) - f(baseline)|`` (nats) the gap is measured against (a near-zero difference has no share).
IG_GAP_FLOOR = 0.1
#: The gradient lenses' one dependency beyond shapshift's (the ``lenses`` extra of pyproject.toml lists it).
CAPTUM = "captum>=0.7"
#: Rows (interpolation points × target tokens) per forward/backward pass on the CPU.
CPU_GRAD_ROWS = 32


class EmbeddingScore(torch.nn.Module):
    """``forward(features)``: scores ``(b, n_out)`` of the target tokens for feature embeddings ``(b, n_in, d)``.

    The prompt is ``prefix + input + suffix`` followed by the target tokens but the last (teacher
    forcing); everything except the ``n_in`` input embeddings is fixed. The prefix but its last token
    runs once, without gradients, and its key/value cache is broadcast to the rows (the scorer's own
    cache, :class:`shapshift.scoring.TeacherForcedScorer`).
    """

    def __init__(self, task: ExplainTask, scorer: Any) -> None:
        super().__init__()
        # the task's teacher-forced scorer holds the prefix cache (and the model's forward conventions)
        self.task, self.scorer = task, scorer
        self.model = task.model
        device = scorer.device
        body = list(task.prompt.prefix_ids[scorer.n_cached:]) + list(task.prompt.input_ids) \
            + list(task.prompt.suffix_ids) + list(task.target_ids[:-1])
        embed = self.model.get_input_embeddings()
        with torch.no_grad():
            self.body = embed(torch.tensor([body], dtype=torch.long, device=device))  # (1, width, d)
        self.start = len(task.prompt.prefix_ids) - scorer.n_cached  # first feature slot in the body
        self.stop = self.start + task.n_tokens
        self.targets = torch.tensor(task.target_ids, dtype=torch.long, device=device)
        self.n_out = len(task.target_ids)
        self.n_forward_tokens = 0

    @property
    def features(self) -> torch.Tensor:
        """The input tokens' embeddings ``(1, n_in, d)``."""
        return self.body[:, self.start:self.stop]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, width = features.shape[0], self.body.shape[1]
        body = self.body.to(features.dtype).expand(b, -1, -1)
        emb = torch.cat([body[:, :self.start], features, body[:, self.stop:]], dim=1)
        n_cached = self.scorer.n_cached
        kwargs = {}
        if self.scorer.use_cache:
            kwargs[self.scorer._cache_name] = self.scorer._batched_cache(b)  # noqa: SLF001 - the scorer's own cache
        if self.scorer._logits_to_keep:  # noqa: SLF001
            kwargs["logits_to_keep"] = self.n_out
        mask = torch.ones((b, n_cached + width), dtype=torch.long, device=emb.device)
        positions = (n_cached + torch.arange(width, device=emb.device)).unsqueeze(0).expand(b, -1)
        self.n_forward_tokens += b * width
        logits = self.model(inputs_embeds=emb, attention_mask=mask, position_ids=positions,
                            use_cache=self.scorer.use_cache, **kwargs).logits[:, -self.n_out:]
        # target j is predicted at the slot of target j - 1 (the prompt's last token for j = 0): the last n_out slots
        return token_scores(logits, self.targets.unsqueeze(0).expand(b, -1), self.task.score)


def baseline_embeddings(f: EmbeddingScore, kind: str) -> torch.Tensor:
    """The reference input ``(1, n_in, d)``: ``zero``, ``pad`` (every input token replaced by the pad token's
    embedding, the token of ``replace`` masking) or ``mean`` (the mean token embedding)."""
    if kind == "zero":
        return torch.zeros_like(f.features)
    table = f.model.get_input_embeddings().weight.detach()
    if kind == "mean":
        row = table.mean(0)
    elif kind == "pad":
        row = table[f.scorer.mask_token_id]
    else:
        raise ValueError(f"options['baseline']={kind!r} is not zero, pad or mean")
    return row.to(f.features.dtype).expand_as(f.features).clone()


def grad_rows(task: ExplainTask, n_out: int) -> int:
    """Rows per Captum pass: the task's ``batch_size`` (else :data:`CPU_GRAD_ROWS`), at least one per target."""
    return max(n_out, int(task.batch_size or CPU_GRAD_ROWS))


def _endpoints(f: EmbeddingScore, baseline: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(n_out,)`` at the baseline and at the input."""
    with torch.no_grad():
        both = f(torch.cat([baseline, f.features], dim=0)).double().cpu().numpy()
    return both[0], both[1]


def _per_target(attr: torch.Tensor) -> np.ndarray:
    """Captum's ``(n_out, n_in, d)`` attributions (row j for target j) as values ``(n_in, n_out)``."""
    return attr.detach().sum(-1).double().cpu().numpy().T


class _GradientLens(Estimator):
    is_shap = False
    deterministic = True
    needs_weights = True
    requires = {"captum": CAPTUM}
    facts: dict[str, Any] = {}  # what the last run adds to the stats (integrated gradients: its steps and gap)

    def _run(self, task: ExplainTask, f: EmbeddingScore, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def baseline(self) -> str:
        """Input × gradient is a first-order expansion around the zero embedding: its reference is always zero."""
        return "zero"

    def attribute(self, task: ExplainTask, scorer: Any) -> Attribution:
        with torch.enable_grad():
            f = EmbeddingScore(task, scorer)
            baseline = baseline_embeddings(f, self.baseline())
            x = f.features.detach().repeat(f.n_out, 1, 1).requires_grad_()  # one row per target token
            attr = self._run(task, f, x, baseline)
        base, full = _endpoints(f, baseline)
        values = task.pool(_per_target(attr))  # words/sentences: the sum of their tokens' attributions
        gap = full - base - values.sum(axis=0)
        extras = {"completeness_gap": gap, "score_full": full, "score_baseline": base, **self.facts}
        return Attribution(values=values, base_values=base, n_evals=self.n_evals(task, f.n_out),
                           n_forward_tokens=f.n_forward_tokens + scorer.n_forward_tokens, extras=extras)

    def n_evals(self, task: ExplainTask, n_out: int) -> int:
        return n_out


@register
class InputXGradientLens(_GradientLens):
    """Input × gradient (Captum ``InputXGradient``) of each target's score w.r.t. the input embeddings."""

    name = "input_x_gradient"
    budget = "ignored: one forward and backward pass per target token"

    def _run(self, task, f, x, baseline):
        from captum.attr import InputXGradient

        return InputXGradient(f).attribute(x, target=list(range(f.n_out)))


@dataclass(frozen=True)
class IntegratedGradientsOptions:
    """``n_steps``: interpolation points (Gauss–Legendre) of the first try, doubled up to ``max_steps`` until the
    completeness gap is at most ``tolerance`` of ``|f(x) - f(baseline)|`` (``max_steps = n_steps``: one try);
    ``baseline``: the reference, ``pad``, ``zero`` or ``mean``."""

    n_steps: int = IG_STEPS
    baseline: str = IG_BASELINE
    max_steps: int = IG_MAX_STEPS
    tolerance: float = IG_TOLERANCE

    def __post_init__(self) -> None:
        if self.n_steps < 1:
            raise ConfigError(f"integrated_gradients' n_steps={self.n_steps} must be at least 1.",
                              f"Use e.g. n_steps={IG_STEPS} (the default); more steps, a smaller completeness gap.")
        if self.baseline not in ("pad", "zero", "mean"):
            raise ConfigError(f"integrated_gradients' baseline={self.baseline!r} is not pad, zero or mean.",
                              f"Use baseline={IG_BASELINE} (the default: the pad token's embedding at every input slot).")
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"integrated_gradients' tolerance={self.tolerance} must be between 0 and 1.",
                              f"Use e.g. tolerance={IG_TOLERANCE} (the gap at most 5 % of f(x) - f(baseline)).")


@register
class IntegratedGradientsLens(_GradientLens):
    """Integrated gradients (Captum ``IntegratedGradients``) from a reference to the input embeddings.

    Options: ``n_steps`` interpolation points (default :data:`IG_STEPS`), Gauss–Legendre; ``baseline``:
    ``pad`` (default, :data:`IG_BASELINE`), ``zero`` or ``mean``.
    """

    name = "integrated_gradients"
    Options = IntegratedGradientsOptions
    budget = "ignored: n_steps forward and backward passes per target token"

    def baseline(self) -> str:
        return self.options.baseline

    def _run(self, task, f, x, baseline):
        from captum.attr import IntegratedGradients

        base, full = _endpoints(f, baseline)
        scale = np.maximum(np.abs(full - base), IG_GAP_FLOOR)
        ig, steps, tried = IntegratedGradients(f), self.options.n_steps, 0
        while True:
            attr, delta = ig.attribute(x, baselines=baseline.expand_as(x), target=list(range(f.n_out)), n_steps=steps,
                                       internal_batch_size=grad_rows(task, f.n_out), return_convergence_delta=True)
            tried += steps
            share = float(np.max(np.abs(delta.detach().double().cpu().numpy()) / scale))
            if share <= self.options.tolerance or steps * 2 > self.options.max_steps:
                break
            steps *= 2
        self.facts = {"n_steps": steps, "steps_tried": tried, "relative_gap": share}
        if share > self.options.tolerance:
            log.warning("integrated gradients did not converge: its completeness gap is %.0f %% of |f(x) - f(baseline)| "
                        "at %d steps (tolerance %.0f %%); its ranking may change with more steps: raise max_steps "
                        "(options={'max_steps': %d}) or read it with that gap in mind.", 100 * share, steps,
                        100 * self.options.tolerance, 4 * steps)
        return attr

    def n_evals(self, task: ExplainTask, n_out: int) -> int:
        return n_out * self.facts.get("steps_tried", self.options.n_steps)
