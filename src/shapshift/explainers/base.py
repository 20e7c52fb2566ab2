"""What every estimator shares: the task it is given, its scorer, the attribution it returns.

The estimator classes and their registry are in :mod:`shapshift.explainers.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..constants import DEFAULT_MASKING, DEFAULT_SCORE
from ..errors import ConfigError
from ..prompting import EncodedPrompt, PromptParts, token_strings
from ..scoring import make_scorer


@dataclass
class ExplainTask:
    """One example to explain: the prompt split around its features, and the target token ids.

    ``max_evals`` is the budget in model evaluations (masked inputs) for sampling estimators;
    ``options`` holds the estimators' settings (e.g. ``fanout`` of ``hierarchical``), from which
    each estimator takes the ones it declares (:class:`~shapshift.explainers.registry.Estimator`).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    parts: PromptParts
    prompt: EncodedPrompt
    target_ids: list[int]
    score: str = DEFAULT_SCORE
    masking: str = DEFAULT_MASKING
    batch_size: int | None = None  # None: chosen for the device (scoring.auto_batch_size)
    max_evals: int = 512
    seed: int = 0
    precision: float | None = None  # explain to this expected rerun rank agreement (explainers.precision)
    use_cache: bool = True
    options: dict = field(default_factory=dict)
    prefix_cache: Any = None  # the prefix's key/value cache from an earlier task with the same model and prefix
    #: The features as groups of input token positions (words, sentences; masked together); None: one per token.
    groups: list[list[int]] | None = None
    #: A contrastive target's foil (``explain.target: contrastive``): the score is then one number per coalition,
    #: ``log p(target) - log p(contrast)`` summed over each one's tokens (:class:`ContrastScorer`); None: per token.
    contrast_ids: list[int] | None = None
    #: What one feature is (``token``, ``word``, ``sentence``): the groups above were made for it.
    unit: str = "token"

    @property
    def n_outputs(self) -> int:
        """Output columns of the values: one per target token, or 1 for a contrast."""
        return 1 if self.contrast_ids else len(self.target_ids)

    @property
    def output_names(self) -> list[str]:
        """Each output's name: the target tokens, or ``"positive vs negative"`` for a contrast."""
        if not self.contrast_ids:
            return token_strings(self.tokenizer, self.target_ids)
        decode = lambda ids: self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False).strip()  # noqa: E731
        return [f"{decode(self.target_ids)} vs {decode(self.contrast_ids)}"]

    @property
    def n_features(self) -> int:
        return len(self.groups) if self.groups is not None else len(self.prompt.input_ids)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt.input_ids)

    def pool(self, token_values: np.ndarray) -> np.ndarray:
        """Per-token values ``(n_tokens, k)`` summed into the features ``(n_features, k)`` (a word's tokens add up)."""
        token_values = np.asarray(token_values)
        if self.groups is None:
            return token_values
        return np.stack([token_values[g].sum(axis=0) for g in self.groups])

    @property
    def feature_strings(self) -> list[str]:
        """Each feature's text: its tokens decoded together (one token each when there are no groups)."""
        tokens = token_strings(self.tokenizer, self.prompt.input_ids)
        if self.groups is None:
            return tokens
        return ["".join(tokens[i] for i in g) for g in self.groups]

    @property
    def feature_tokens(self) -> list[list[str]] | None:
        """The tokens of each feature when features are groups (words, sentences); None for tokens."""
        if self.groups is None:
            return None
        tokens = token_strings(self.tokenizer, self.prompt.input_ids)
        return [[tokens[i] for i in g] for g in self.groups]

    def make_scorer(self) -> Any:
        """A new scorer of this task: scores ``(m, n_out)`` of coalitions ``(m, n_features)`` of the features.

        The local teacher-forced scorer (:class:`shapshift.scoring.TeacherForcedScorer`; a remote model's
        own), seen through the feature groups; it runs the fixed prefix once when it is built (or takes
        ``prefix_cache``). :func:`~shapshift.explainers.explain_tasks` builds one per task and passes it.
        """
        options = {"masking": self.masking, "batch_size": self.batch_size, "use_cache": self.use_cache}
        scorer = make_scorer(self.model, self.prompt, self.target_ids, score=self.score,
                             prefix_cache=self.prefix_cache, **options)
        if self.contrast_ids:
            if self.score != "log_prob":
                raise ConfigError(f"A contrastive target explains a difference of log-probabilities, not of {self.score}.",
                                  "Set explain.score to log_prob with explain.target: contrastive.")
            foil = make_scorer(self.model, self.prompt, self.contrast_ids, score="log_prob",
                               prefix_cache=getattr(scorer, "prefix_cache", None), **options)
            scorer = ContrastScorer(scorer, foil)
        return scorer if self.groups is None else GroupedScorer(scorer, self.groups, len(self.prompt.input_ids))


class ContrastScorer:
    """``log p(target) - log p(foil)`` of each coalition, ``(m, 1)``: why the target rather than the foil
    (contrastive explanations, Yin & Neubig 2022). Each side is its tokens' summed log-probability from its own
    teacher-forced scorer; the two share the prefix's key/value cache. Shapley values of the difference are the
    differences of the sides' values (linearity), so efficiency holds for the contrast.

    ``n_evals`` counts coalitions (the estimators' budget); ``n_forward_tokens`` both sides' tokens.
    """

    def __init__(self, target: Any, foil: Any) -> None:
        self.target, self.foil = target, foil
        self.prefix_cache = getattr(target, "prefix_cache", None)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        return (self.target(masks).sum(axis=1) - self.foil(masks).sum(axis=1))[:, None]

    @property
    def n_evals(self) -> int:
        return self.target.n_evals

    @property
    def n_forward_tokens(self) -> int:
        return getattr(self.target, "n_forward_tokens", 0) + getattr(self.foil, "n_forward_tokens", 0)


class GroupedScorer:
    """A token scorer seen through groups of tokens: a coalition of groups keeps every token of its groups.

    ``n_evals`` and ``n_forward_tokens`` (and any other attribute) are the token scorer's.
    """

    def __init__(self, scorer: Any, groups: list[list[int]], n_tokens: int) -> None:
        self.inner = scorer
        self.expand = np.zeros((len(groups), n_tokens), bool)  # (n_groups, n_tokens)
        for g, tokens in enumerate(groups):
            self.expand[g, tokens] = True
        if not (self.expand.sum(0) == 1).all():
            raise ValueError("feature groups must cover every input token exactly once")

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, bool)
        return self.inner((masks.astype(np.int64) @ self.expand.astype(np.int64)) > 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Attribution:
    """SHAP values of one example.

    ``values``: ``(n_in, n_out)`` in the score's units (log-odds or log-prob of each target token);
    ``base_values``: ``(n_out,)``, the score of the fully masked input; ``error_std``: ``(n_in, n_out)``
    standard errors of sampling estimators (None when exact); ``n_evals``: masked inputs scored.
    """

    values: np.ndarray
    base_values: np.ndarray
    error_std: np.ndarray | None = None
    n_evals: int = 0
    n_forward_tokens: int = 0
    data: list[str] | None = None  # feature strings, when the estimator tokenised the input itself
    extras: dict[str, Any] = field(default_factory=dict)  # per-method facts for the stats (e.g. completeness_gap)
    sampling_std: np.ndarray | None = None

    @property
    def rerun_std(self) -> np.ndarray | None:
        """The standard errors two runs with different seeds differ by (what the predicted precision simulates)."""
        return self.error_std if self.sampling_std is None else self.sampling_std


def scorer_attribution(scorer: Any, values: np.ndarray, base: np.ndarray, error_std: np.ndarray | None = None) -> Attribution:
    """An attribution that counts ``scorer``'s evaluations and forward tokens."""
    return Attribution(values=values, base_values=base, error_std=error_std, n_evals=scorer.n_evals,
                       n_forward_tokens=getattr(scorer, "n_forward_tokens", 0))


def endpoints(task: ExplainTask, scorer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``(n_out,)`` of the fully masked and the full input: the base value and efficiency's total."""
    n = task.n_features
    ends = scorer(np.stack([np.zeros(n, bool), np.ones(n, bool)]))
    return ends[0], ends[1]


def single_feature(scorer: Any, empty: np.ndarray, full: np.ndarray) -> Attribution:
    """One feature: its value is the whole difference, exactly."""
    return scorer_attribution(scorer, (full - empty)[None, :], empty, np.zeros((1, len(full))))
