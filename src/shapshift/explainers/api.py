"""``explain()``: texts in, one :class:`~shapshift.explanation.Explanation` per text out, whichever estimator runs."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..backends.capabilities import capabilities
from ..backends.checks import check_task
from ..backends.diagnostics import finish_attribution
from ..config import ExplainConfig, GenerationConfig
from ..constants import resolve_masking
from ..errors import ConfigError, ShapshiftError
from ..explanation import Explanation
from ..generation import generate
from ..models import check_fits_context, model_device
from ..prompting import (
    PromptParts,
    build_prompt,
    encode_prompt,
    encode_targets,
    feature_groups,
)
from ..stats import expected_rank_agreement
from .base import Attribution, ExplainTask
from .costs import announce_cost
from .precision import explain_to_precision
from .progress import ProgressScorer, planned_evals, warn_blank_targets, warn_precision
from .registry import (
    REGISTRY,
    auto_budget,  # noqa: F401  (auto's policy lives in the registry; read from here too)
    check_explain,
    check_installed,
    choose_method,
    lens_methods,
    method_choices,
    validate_options,
)

log = logging.getLogger(__name__)

#: ``auto``'s default precision (expected Spearman of two runs' token rankings): on CPU, and on a GPU. On CPU 0.9,
#: the agreement issue 27 asks of 12-30-token inputs: replayed on the real model's rounds for 8 tuning sentences
#: (benchmarks/STOPPING_MODEL.md) the measured seed-to-seed Spearman at a predicted 0.9 was 0.93 on average (the
#: prediction is conservative in the early rounds of longer inputs), with 40 % fewer evaluations than at 0.95.
AUTO_PRECISION, AUTO_PRECISION_GPU = 0.9, 0.98

Context = str | tuple[str, str] | PromptParts | None
# explain()'s keyword defaults are the run configuration's (one source of truth for every setting)
_EX, _GEN = ExplainConfig(), GenerationConfig()


def auto_precision(model: PreTrainedModel | None = None) -> float:
    """``auto``'s precision target when ``explain.precision`` is unset: :data:`AUTO_PRECISION`, higher on a GPU."""
    on_gpu = model is not None and model_device(model).type == "cuda"
    return AUTO_PRECISION_GPU if on_gpu else AUTO_PRECISION


def to_parts(text: str | PromptParts, context: Context, tokenizer: PreTrainedTokenizerBase, chat: bool) -> PromptParts:
    """The prompt of one text: a template with ``{input}``, a ``(prefix, suffix)`` pair, or none."""
    if isinstance(text, PromptParts):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ShapshiftError(f"Cannot explain an empty input text ({text!r}).", "Pass a non-empty text.")
    if context is None:
        return build_prompt(text, "{input}", tokenizer, chat=chat)
    if isinstance(context, str):
        return build_prompt(text, context, tokenizer, chat=chat)
    if isinstance(context, tuple) and len(context) == 2:
        return build_prompt(text, context[0] + "{input}" + context[1], tokenizer, chat=chat)
    raise ConfigError(f"context={context!r} is not understood.",
                      "Pass a template with an {input} slot, a (prefix, suffix) pair, or None.")


def make_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, parts: PromptParts,
              target_ids: Sequence[int], *, input_ids: Sequence[int] | None = None, **options: Any) -> ExplainTask:
    """An :class:`ExplainTask` for one prompt and target.

    ``options``: score, masking, batch_size, max_evals, seed, and ``unit`` (``token``, ``word`` or
    ``sentence``: the features, :func:`shapshift.prompting.feature_groups`).
    """
    prompt = encode_prompt(parts, tokenizer, input_ids=input_ids)
    if not prompt.input_ids:
        raise ShapshiftError(f"The input text {parts.text!r} has no tokens to explain.", "Pass a non-empty text.")
    check_fits_context(model, len(prompt.ids), len(target_ids), f"The prompt of the input {parts.text[:60]!r}")
    unit = options.pop("unit", "token")
    options["masking"] = resolve_masking(options.get("masking", "auto"))
    groups = None if unit == "token" else feature_groups(tokenizer, prompt.input_ids, unit)
    return ExplainTask(model=model, tokenizer=tokenizer, parts=parts, prompt=prompt,
                       target_ids=[int(t) for t in target_ids], groups=groups, unit=unit, **options)


def to_explanation(task: ExplainTask, att: Attribution, *, method: str, precision: float, seconds: float,
                   requested: str, target: float | None, max_evals: int,
                   diagnostics: dict[str, float] | None = None) -> Explanation:
    """The :class:`Explanation` of one task: ``att``'s values with the task's features and outputs, the estimator
    that ran (``method``; ``requested``: the name asked for, e.g. ``auto``), the precision it reached and the
    settings that made it (``target``: the precision asked for, None for one run of the budget; ``max_evals``: the
    budget's cap)."""
    features = att.data if att.data is not None else task.feature_strings
    settings = {"method": requested, "score": task.score, "masking": task.masking, "unit": task.unit,
                "seed": task.seed, "max_evals": max_evals, "precision": target, "options": dict(task.options),
                "contrast": task.contrast_ids is not None}
    return Explanation(values=att.values, base_values=att.base_values, features=[str(f) for f in features],
                       outputs=task.output_names, error_std=att.error_std, feature_tokens=task.feature_tokens,
                       method=method, n_evals=att.n_evals, precision=precision, settings=settings,
                       diagnostics=dict(diagnostics or {}), seconds=seconds)


class PrefixReuse:
    """The last prefix key/value cache seen, so consecutive tasks under one fixed context run it once.

    Few-shot runs show every example the same demonstrations: hundreds of tokens that every task
    would otherwise run through the model before its first coalition. One object serves one model
    whose weights do not change while it is in use (a condition of a run).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._cache: Any = None

    def attach(self, task: ExplainTask) -> tuple:
        """Give ``task`` the kept cache when its model and prefix match (before its scorer is built); returns its key."""
        # the model itself, not its id: a freed model's id can be reused by another one
        key = (task.model, tuple(task.prompt.prefix_ids), task.use_cache)
        if key == self._key and task.prefix_cache is None:
            task.prefix_cache = self._cache
        return key

    def keep(self, key: tuple, scorer: Any) -> None:
        """Keep the prefix cache ``scorer`` used (if it has one)."""
        cache = getattr(scorer, "prefix_cache", None)
        if cache is not None:
            self._key, self._cache = key, cache


def explain_tasks(tasks: Sequence[ExplainTask], method: str = "auto", *, progress: bool = True,
                  desc: str = "explain", reuse: PrefixReuse | None = None,
                  scorers: Sequence[Any] | None = None) -> tuple[list[Explanation], list[dict[str, Any]]]:
    """Explain prepared tasks; returns the :class:`Explanation` of each and per-example stats (method, evals, seconds).

    Each task's estimator is built with the task's ``options`` (those it declares) and given a scorer:
    ``scorers[i]`` when passed (a :class:`~shapshift.scoring.TableScorer`, a recording wrapper...), else
    one built here (:meth:`ExplainTask.make_scorer`). Consecutive tasks with the same model and fixed
    prefix run that prefix once (``reuse``: pass one :class:`PrefixReuse` to several calls to share it).
    """
    explanations, stats = [], []
    reuse = reuse if reuse is not None else PrefixReuse()
    if scorers is not None and len(scorers) != len(tasks):
        raise ValueError(f"{len(scorers)} scorers for {len(tasks)} tasks")
    for i, task in enumerate(tqdm(tasks, desc=desc, disable=not progress, leave=False)):
        # a copy runs: the caller's task keeps its budget and its prefix cache afterwards
        task = copy.copy(task)
        name = choose_method(task.n_features, method)
        if name not in REGISTRY:
            raise ConfigError(f"Unknown explanation method {name!r}.", f"Choose one of {', '.join(method_choices())}.")
        cls = REGISTRY[name]
        check_installed([name])
        cap = task.max_evals
        if method == "auto":
            task.max_evals = cls.auto_budget(task.n_features, task.max_evals)
        if cls.max_features is not None and task.n_features > cls.max_features:
            raise ConfigError(f"method={name!r} cannot explain {task.n_features} features (at most {cls.max_features}; "
                              f"its budget: {cls.budget}).", f"Use method='auto' or 'quadrature' for inputs over "
                              f"{cls.max_features} features.")
        if task.contrast_ids and (cls.needs_weights or not cls.uses_scorer):
            raise ConfigError(f"method={name!r} cannot explain a contrastive target: it scores the target tokens "
                              "itself rather than through the shared scorer.",
                              "Use a SHAP estimator that scores through it (auto, exact, quadrature, kernel, sampling).")
        caps = capabilities(task.model)
        check_task(caps, unit="token" if task.groups is None else task.unit, n_outputs=len(task.target_ids), masking=task.masking, spec=str(caps.backend))
        if cls.needs_weights and not caps.weights:
            raise ConfigError(f"method={name!r} needs the model's weights (gradients, attention, shap's own model "
                              "wrapper), which a model behind an API does not expose.",
                              "Use a SHAP method (auto, quadrature, kernel, ...) for a remote model.")
        estimator = cls(cls.make_options(task.options, strict=False))
        target = task.precision if task.precision is not None else (auto_precision(task.model) if method == "auto"
                                                                    else None)
        start = time.perf_counter()
        if scorers is not None:
            scorer = scorers[i]
        else:
            key = reuse.attach(task)
            scorer = task.make_scorer() if cls.uses_scorer else None
        rounds = target is not None and cls.rounds
        counted = None
        if cls.is_shap and scorer is not None:  # a bar within the example, and its cost said from the first batch
            what = f"{desc} example {i + 1} of {len(tasks)} ({name}, {task.n_features} features)"
            counted = ProgressScorer(scorer, planned_evals(task.n_features, cap if rounds else task.max_evals,
                                                           cls.exact), what=what, progress=progress)
        try:
            if rounds:
                res = explain_to_precision(task, counted or scorer, estimator, target, cap,
                                           first_budget=task.max_evals if method == "auto" else None)
                att, reached = res.attribution, res.precision
                warn_precision(f"{desc} example {i + 1}", reached, target, att.n_evals, cap)
            else:
                att = estimator.attribute(task, counted or scorer)
                reached = expected_rank_agreement(att.values, att.rerun_std, seed=task.seed) \
                    if att.error_std is not None else (1.0 if cls.exact else float("nan"))
        finally:
            if counted is not None:
                counted.close()
        seconds = time.perf_counter() - start
        if scorers is None:
            reuse.keep(key, scorer)
        diagnostics = finish_attribution(att, scorer)  # an API's counts; its own noise folded into the errors
        # the expected rank agreement of two runs (explainers.precision), the evaluations it took, the method that ran
        explanations.append(to_explanation(task, att, method=name, precision=reached, seconds=seconds,
                                           requested=method, target=target, max_evals=cap, diagnostics=diagnostics))
        stats.append({"method": name, "n_features": task.n_features, "n_outputs": task.n_outputs,
                      "n_evals": att.n_evals, "n_forward_tokens": att.n_forward_tokens, "seconds": round(seconds, 4),
                      "precision": round(reached, 4),
                      **{k: np.asarray(v).tolist() for k, v in att.extras.items()},
                      **({"diagnostics": diagnostics} if diagnostics else {})})
    return explanations, stats


def explain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | PromptParts], *,
            targets: Sequence[str | Sequence[int]] | None = None, context: Context | Sequence[Context] = None,
            method: str = _EX.method, score: str = _EX.score, masking: str = _EX.masking, max_evals: int = _EX.max_evals,
            batch_size: int | None = _EX.batch_size, seed: int = _EX.seed, precision: float | None = _EX.precision,
            unit: str = _EX.unit, max_new_tokens: int = _GEN.max_new_tokens, stop_at_newline: bool = _GEN.stop_at_newline,
            chat: bool = False, progress: bool = True, options: dict[str, Any] | None = None,
            contrasts: Sequence[str] | None = None) -> list[Explanation]:
    """SHAP values of every target token with respect to the tokens of each input text.

    Parameters
    ----------
    texts: the inputs; their tokens are the features (or ready :class:`PromptParts`).
    targets: the continuations to explain, as text or token ids; ``None`` generates them greedily.
    context: fixed text around each input, never masked: a template with ``{input}``, a
        ``(prefix, suffix)`` pair, or one of those per text.
    method: any name of :func:`~shapshift.explainers.registry.method_choices`: ``auto``
        (:func:`choose_method`), ``exact``, ``sampling`` (antithetic permutations), ``kernel`` (paired
        KernelSHAP), ``quadrature``, ``regression``, ``levels`` (groups of sentences, then the words inside the
        ones that matter), ``hierarchical`` (chunks, then tokens) or ``partition`` (the shap
        library's path, kept as the reference); or a cheaper lens that is not SHAP:
        ``input_x_gradient``, ``integrated_gradients`` (Captum, on the input embeddings, w.r.t. the
        same score), ``attention`` (last layer, mean over heads) or ``attention_rollout``; or any
        estimator registered since (:mod:`shapshift.explainers.registry`).
    score: ``log_prob`` (default) or ``log_odds`` (as shap's TeacherForcing) of each target token, in nats.
    masking: ``auto`` (default: ``delete``, the text without the feature, for every model), ``delete``,
        ``attention`` (the other tokens keep their positions; local models only) or ``replace``; ``partition``
        masks only with shap's ``Text`` masker (``shap_text``: ``...`` for masked tokens), so with it
        ``masking`` must be ``auto`` or ``shap_text``.
    max_evals: budget of masked inputs per text for the sampling estimators; with ``auto`` a cap
        (:func:`auto_budget`: the first round uses ``4n + 2`` when that is less).
    precision: explain until two independent runs would rank the tokens alike at this expected
        Spearman (``explain.precision``; rounds up to ``max_evals``); ``None``: :func:`auto_precision`
        for ``auto``, one run of ``max_evals`` for the others. Each Explanation's ``precision``
        attribute holds the precision reached.
    batch_size: coalitions per forward pass; ``None`` picks one for the device (scoring.auto_batch_size).
    unit: the features: ``token`` (default), ``word`` (whitespace-delimited, punctuation attached) or
        ``sentence``; a word or sentence is masked as a whole, and ``exp.feature_tokens`` lists its tokens.
    max_new_tokens, stop_at_newline: the greedy generation when ``targets`` is ``None``.
    contrasts: one foil per text (e.g. ``" negative"`` against the target ``" positive"``): each explanation then has
        one output, ``log p(target) - log p(contrast)``, summed over each one's tokens ("why this rather than that",
        contrastive explanations; needs ``score="log_prob"`` and an estimator that scores through the shared scorer).
    options: method settings, e.g. ``{"n_steps": 64}`` for ``integrated_gradients``, ``{"rollout": True}``
        for ``attention``, ``{"fanout": 4}`` for ``hierarchical`` (each estimator's ``Options``; a key
        no method of the call takes is an error that lists them).

    Every default is the run configuration's (:class:`shapshift.config.ExplainConfig` and
    :class:`~shapshift.config.GenerationConfig`), and the arguments are checked by the same validation.
    When no text precedes an input (no context, or a template starting with ``{input}``), the
    prompt starts with the model's start token (:func:`shapshift.prompting.start_token_id`).

    Returns
    -------
    One :class:`~shapshift.explanation.Explanation` per text: ``values`` ``(n_in, n_out)``, ``base_values``
    ``(n_out,)`` (the fully masked score), ``error_std`` their standard errors, ``features`` the input features
    (``data`` in shap's name), ``outputs`` the target tokens (``output_names``), ``method``, ``n_evals``,
    ``precision`` and the ``settings`` that made it; ``base_values + values.sum(0)`` is the score of the full input.
    In a notebook it shows its text plot; ``exp.save(path)`` / ``Explanation.load(path)`` keep it;
    ``shap.plots.text(exp.to_shap())`` draws it with shap.
    """
    # the run configuration's validation; a lens's options are checked against the lens alone
    lens = method in lens_methods()
    check_explain(ExplainConfig(method=_EX.method if lens else method, score=score, masking=masking,
                                max_evals=max_evals, batch_size=batch_size, seed=seed, precision=precision, unit=unit,
                                options={} if lens else dict(options or {})))
    if lens:
        validate_options([method], dict(options or {}))
        check_installed([method])
    if targets is None:
        GenerationConfig(max_new_tokens=max_new_tokens, stop_at_newline=stop_at_newline).validate()
    if isinstance(texts, str | PromptParts):  # one text given alone
        texts, targets = [texts], [targets] if isinstance(targets, str) else targets
    contexts = list(context) if isinstance(context, list) else [context] * len(texts)
    if len(contexts) != len(texts):
        raise ConfigError(f"{len(contexts)} contexts for {len(texts)} texts.", "Pass one context, or one per text.")
    parts = [to_parts(t, c, tokenizer, chat) for t, c in zip(texts, contexts)]
    prompts = [encode_prompt(p, tokenizer) for p in parts]
    if targets is None:
        target_ids = generate(model, tokenizer, [p.ids for p in prompts], max_new_tokens=max_new_tokens,
                              stop_at_newline=stop_at_newline, progress=progress)
    else:
        if len(targets) != len(texts):
            raise ConfigError(f"{len(targets)} targets for {len(texts)} texts.", "Pass one target per text, or None.")
        texts_given = [t if isinstance(t, str) else None for t in targets]
        encoded = encode_targets(tokenizer, texts_given, [p.ids for p in prompts])
        target_ids = [e if e is not None else list(t) for e, t in zip(encoded, targets)]
        for t, ids in zip(targets, target_ids):
            if not ids:
                raise ShapshiftError(f"The target {t!r} has no tokens.", "Pass a non-empty target or None to generate one.")
    warn_blank_targets(tokenizer, target_ids, texts)
    if contrasts is not None and len(contrasts) != len(texts):
        raise ConfigError(f"{len(contrasts)} contrasts for {len(texts)} texts.", "Pass one contrast per text, or None.")
    if contrasts is not None:
        check_explain(ExplainConfig(method=method, score=score, target="contrastive"))
    foils = [None] * len(texts) if contrasts is None else \
        [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in contrasts]
    tasks = [make_task(model, tokenizer, p, t, input_ids=e.input_ids, score=score, masking=masking, batch_size=batch_size,
                       max_evals=max_evals, seed=seed, precision=precision, unit=unit, options=dict(options or {}),
                       contrast_ids=f)
             for p, e, t, f in zip(parts, prompts, target_ids, foils)]
    if capabilities(model).remote:
        announce_cost(tasks, method)
    return explain_tasks(tasks, method, progress=progress)[0]
