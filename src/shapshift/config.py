"""One validated run configuration, read from YAML, CLI ``--set`` flags or notebook form fields.

Every section is a dataclass with defaults; :func:`RunConfig.from_dict` rejects unknown keys and
wrong types with a message that lists what is allowed, and ``validate()`` checks values in one place.
It is the schema: it imports the package's vocabulary (:mod:`shapshift.constants`), the coercion of typed values
(:mod:`shapshift.coerce`) and the conditions' declarations, nothing that runs a model. The checks of a config
against the estimators' registry live in :mod:`shapshift.validation`, above both.

Over 400 lines on purpose: every setting, its default and the check of its value live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import conditions as _conditions
from .aggregation import AGGREGATIONS
from .backends.capabilities import ACCESS, ROUTES, SCALARIZERS
from .coerce import build, parse_value
from .constants import (
    DEFAULT_SCORE,
    REMOTE_MASKINGS,
    SCORES,
    SPENDING_KEYS,
    TARGET_CASES,
    TARGETS,
    UNITS,
    is_remote,
    resolve_masking,
)
from .errors import ConfigError


@dataclass
class ModelConfig:
    """Which model to explain. ``spec``: a hub id, a local folder, ``smollm2-135m``, ``tiny-gpt-neo``,
    ``gpt-neo-125m-random`` or ``openai-compatible:http://HOST:PORT/v1`` (a completions server; then
    ``tokenizer``, ``served_name``, ``api_key_env`` and ``concurrency`` apply, :mod:`shapshift.remote`).
    """

    spec: str = "smollm2-135m"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    trust_remote_code: bool = False
    tokenizer: str | None = None  # remote: the served model's tokenizer (hub id or folder); None: SmolLM2's
    served_name: str | None = None  # remote: the request's "model" field; None: the server's first model
    api_key_env: str = "OPENAI_API_KEY"  # remote: the environment variable holding the API key (never the key)
    concurrency: int = 8  # remote: requests in flight at once
    access: str = "auto"  # remote: auto (the strongest tier the server offers) | prompt_logprobs | top_logprobs | text
    route: str = "auto"  # remote: auto | completions (/v1/completions) | chat (/v1/chat/completions, prompts as messages)
    top_k: int = 20  # remote, top_logprobs tier: log-probabilities asked per generated token (OpenAI allows 20)
    scalarizer: str = "auto"  # remote, text tier: auto | starts_with | token_f1 | rouge_l | embedding
    repeats: int = 2  # remote, text tier: extra answers of 3 coalitions per example, measuring the API's nondeterminism
    max_requests: int | None = None  # remote: hard cap on requests sent (the run stops before passing it)
    max_tokens: int | None = None  # remote: hard cap on prompt + completion tokens the server counts

    def validate(self) -> None:
        if not self.spec.strip():
            raise ConfigError("model.spec is empty.", "Set it to a hub id, a folder, or 'smollm2-135m'.")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ConfigError(f"model.dtype={self.dtype!r} is not supported.",
                              "Use auto, float32, float16 or bfloat16.")
        if self.concurrency < 1:
            raise ConfigError(f"model.concurrency={self.concurrency} must be at least 1.")
        for key, value, allowed in (("access", self.access, ACCESS), ("route", self.route, ROUTES),
                                    ("scalarizer", self.scalarizer, SCALARIZERS)):
            if value not in allowed:
                raise ConfigError(f"model.{key}={value!r} is unknown.", f"Use one of {', '.join(allowed)}.")
        if self.top_k < 1 or self.repeats < 0 or any(v is not None and v < 1 for v in (self.max_requests, self.max_tokens)):
            raise ConfigError(f"model.top_k={self.top_k} must be at least 1, model.repeats={self.repeats} at least 0, "
                              f"model.max_requests={self.max_requests} and model.max_tokens={self.max_tokens} at least 1.")


@dataclass
class DataConfig:
    """Where the examples come from and how each one becomes a prompt.

    ``template`` holds an ``{input}`` slot. The prompt format (:mod:`shapshift.formats`): ``chat`` (plain
    completion, or chat turns with the instruction as the system message and each demonstration a user and an
    assistant turn), ``target_prefix`` and ``target_case`` (how the reference is written). Each ``auto`` is
    decided by the format check on ``format_check_rows`` training rows (never the explained ones), which picks
    the format under which the model most often writes the reference; with the check off (0), ``auto`` is the
    chat template when the tokenizer has one, a leading space for plain prompts only, the label as written.
    """

    source: str = "data/demo_reviews.csv"  # hub name or local CSV/TSV/JSON/JSONL/Parquet path
    hub_split: str = "train"  # the split of a hub dataset to read
    input_column: str = "text"
    target_column: str | None = "label"  # reference output; None for none
    label_column: str | None = "label"  # class label for accuracy; None for none
    label_names: dict[str, str] | None = None  # e.g. {"0": "negative", "1": "positive"}
    template: str = "Review: {input}\nSentiment:"
    chat: str = "auto"  # auto | yes | no: chat turns in the tokenizer's chat template (auto: the format check picks)
    target_prefix: str = "auto"  # before the reference target text; auto: the format check picks " " or ""
    target_case: str = "auto"  # the reference's casing: auto (the format check picks) | as_written | lower | capitalized
    format_check_rows: int = 8  # training rows the prompt-format check measures each format on (0: no check)
    format_check_shots: int = 4  # demonstrations before each checked row in the check's second prompt (0: template only)
    max_rows: int | None = None  # read at most this many rows (after shuffling with the seed)
    max_input_tokens: int = 128
    on_too_long: str = "truncate"  # truncate (keep the end) | drop | error
    n_explain: int = 8
    seed: int = 0

    def validate(self) -> None:
        if "{input}" not in self.template:
            raise ConfigError(f"data.template {self.template!r} has no {{input}} slot.",
                              "Add {input} where the example's text goes, e.g. 'Review: {input}\\nSentiment:'.")
        if self.on_too_long not in ("truncate", "drop", "error"):
            raise ConfigError(f"data.on_too_long={self.on_too_long!r} is not one of truncate, drop, error.")
        if self.chat not in ("auto", "yes", "no"):
            raise ConfigError(f"data.chat={self.chat!r} is not one of auto, yes, no.")
        if self.target_case not in ("auto", *TARGET_CASES):
            raise ConfigError(f"data.target_case={self.target_case!r} is unknown.",
                              f"Use auto (the format check picks) or one of {', '.join(TARGET_CASES)}.")
        if self.format_check_rows < 0 or self.format_check_shots < 0:
            raise ConfigError("data.format_check_rows and data.format_check_shots must be 0 or more.",
                              "Set data.format_check_rows=0 to skip the prompt-format check.")
        if self.n_explain < 1:
            raise ConfigError("data.n_explain must be at least 1.")
        if self.max_input_tokens < 1:
            raise ConfigError("data.max_input_tokens must be at least 1.")


@dataclass
class GenerationConfig:
    """Greedy generation of the text that is explained."""

    max_new_tokens: int = 8
    stop_at_newline: bool = True
    batch_size: int = 8

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens={self.max_new_tokens}: at least one token must be generated "
                              "to have something to explain.", "Set it to 1 or more, or give the target text instead.")


@dataclass
class ExplainConfig:
    """The SHAP estimator and what it explains.

    ``score``: ``log_prob`` (the default, :data:`DEFAULT_SCORE`) or ``log_odds`` (as ``shap.models.TeacherForcing``)
    of each target token, in nats.
    ``target``: ``baseline`` (every condition explains the baseline's generation), ``own`` (each
    condition its own generation), ``reference`` (the dataset's target column) or ``contrastive``
    (``log p(reference) - log p(the other label the baseline finds most likely)``, one value per feature: why
    this label rather than that one; a labelled task and ``score: log_prob``).
    ``masking``: what "token absent" means (``attention``, ``delete``, ``replace``; :mod:`shapshift.scoring`);
    ``auto``: deletion, for every model (:func:`resolve_masking`); ``attention`` keeps the other tokens' positions.
    ``max_evals``: model evaluations (masked inputs) per example for the sampling estimators.
    ``batch_size``: coalitions per forward pass; ``None`` (the default) picks it from the device's free memory.
    ``options``: the estimators' settings (e.g. ``{fanout: 4}`` for ``hierarchical``, ``{n_steps: 64}`` for
    ``integrated_gradients``), checked against the ``Options`` of the run's methods (``auto``: of the
    estimators it may choose); each method takes the keys it declares.
    ``precision``: explain to this expected rank agreement of two independent runs (0 < p < 1; Spearman
    of ``|value|`` summed over outputs, from the standard errors), spending evaluations in rounds up to
    ``max_evals``; ``auto``, ``quadrature``, ``kernel`` and ``sampling``. ``None``: ``auto`` aims at its
    device default (:func:`shapshift.explainers.api.auto_precision`), the others spend ``max_evals``.

    These defaults are also :func:`shapshift.explain`'s keyword defaults (one source of truth).
    """

    method: str = "auto"
    max_evals: int = 512
    batch_size: int | None = None
    score: str = DEFAULT_SCORE
    masking: str = "auto"
    target: str = "baseline"
    seed: int = 0
    precision: float | None = None
    noise_floor: bool = True  # explain the baseline twice (second seed) to measure estimator noise
    unit: str = "token"  # token | word | sentence: the features (groups of the input's tokens, masked together)
    methods: list[str] | None = None  # [SHAP method, lens, ...]: every condition explained with each; None: [method]
    options: dict[str, Any] = field(default_factory=dict)  # estimator settings, e.g. {fanout: 4}; see the docstring

    @property
    def all_methods(self) -> list[str]:
        """The methods every condition is explained with: the SHAP ``method`` first, then the lenses."""
        return list(self.methods) if self.methods else [self.method]

    def validate(self) -> None:
        """The values alone; the methods, their options and maskings are checked against the estimators' registry
        by :func:`shapshift.validation.check_explain` (a layer above both)."""
        if self.score not in SCORES:
            raise ConfigError(f"explain.score={self.score!r} is unknown.", f"Use one of {', '.join(SCORES)}.")
        if self.unit not in UNITS:
            raise ConfigError(f"explain.unit={self.unit!r} is unknown.", f"Use one of {', '.join(UNITS)}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"explain.batch_size={self.batch_size} must be at least 1.",
                              "Leave it empty (null) to choose it from the device's memory.")
        if self.target not in TARGETS:
            raise ConfigError(f"explain.target={self.target!r} is unknown.", f"Use one of {', '.join(TARGETS)}.")
        if self.target == "contrastive" and self.score != "log_prob":
            raise ConfigError("explain.target=contrastive explains log p(reference) - log p(other label), a "
                              f"difference of log-probabilities, but explain.score is {self.score!r}.",
                              "Set explain.score to log_prob.")
        if self.max_evals < 2:
            raise ConfigError("explain.max_evals must be at least 2.")
        if self.precision is not None and not (isinstance(self.precision, int | float) and 0 < self.precision < 1):
            raise ConfigError(f"explain.precision={self.precision!r} must be a number between 0 and 1 (exclusive).",
                              "Use e.g. 0.95 (two runs would rank the tokens alike at Spearman 0.95), or null for "
                              "auto's default.")


@dataclass
class FinetuneConfig:
    """LoRA (peft) or full fine-tuning; loss on the target tokens only."""

    method: str = "lora"  # lora | full
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: chosen per architecture
    learning_rate: float = 1e-3
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 64
    n_eval: int = 16

    def validate(self) -> None:
        if self.method not in ("lora", "full"):
            raise ConfigError(f"adapt.finetune.method={self.method!r} is unknown.", "Use lora or full.")
        if self.r < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("adapt.finetune r, batch_size and epochs must be at least 1.")


@dataclass
class AdaptConfig:
    """The conditions compared with the baseline (:mod:`shapshift.conditions`).

    ``prompts``: your own prompting conditions, name → instruction put before the plain prompt;
    ``adapters``: your own weights, name → folder of a PEFT adapter (or of a whole fine-tuned model).
    List their names in ``conditions`` to explain them.
    """

    conditions: list[str] = field(default_factory=lambda: _conditions.stage3_names())
    instruction: str = "Decide whether the movie review is positive or negative."
    k_shot: int = 4
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    prompts: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        _conditions.check_names(self.conditions, self.prompts, self.adapters)
        if self.k_shot < 1:
            raise ConfigError("adapt.k_shot must be at least 1.")
        self.finetune.validate()


@dataclass
class CompareConfig:
    """Explanation overlap: which k, how to aggregate over output tokens, the bootstrap."""

    ks: list[int] = field(default_factory=lambda: [1, 3, 5])
    aggregate: str = "sum"  # sum | mean_abs over the generated tokens
    n_bootstrap: int = 1000
    n_plot_examples: int = 3
    top_fraction: float = 0.2  # also compare at k = ceil(top_fraction * n_features)
    rbo_p: float = 0.9  # persistence of rank-biased overlap
    seed: int = 0  # bootstrap seed
    fdr: float = 0.05  # false discovery rate of the per-feature change tests (over one example's features)
    min_change: float = 0.1  # smallest change counted, as a share of the example's largest |value|
    word_groups: dict[str, list[str]] = field(default_factory=dict)  # name -> words (e.g. a sentiment lexicon),
    # reported beside content and function words in how importance moved (shapshift.movement)

    def validate(self) -> None:
        if not 0 < self.fdr < 1 or not 0 <= self.min_change < 1:
            raise ConfigError("compare.fdr must be in (0, 1) and compare.min_change in [0, 1).",
                              "E.g. compare.fdr=0.05 and compare.min_change=0.1.")
        if any(k < 1 for k in self.ks):
            raise ConfigError("compare.ks must all be at least 1.")
        if not 0 < self.top_fraction <= 1 or not 0 < self.rbo_p < 1:
            raise ConfigError("compare.top_fraction must be in (0, 1] and compare.rbo_p in (0, 1).")
        if self.aggregate not in AGGREGATIONS:
            raise ConfigError(f"compare.aggregate={self.aggregate!r} is unknown.", f"Use {' or '.join(AGGREGATIONS)}.")


@dataclass
class RunConfig:
    """A whole run: its folder is ``output_dir/name``.

    ``validate()`` checks the values and how they fit together; :func:`shapshift.validation.validate` adds the
    checks against the estimators' registry (``shapshift.load_config`` and every runner call it).
    """

    name: str = "demo"
    output_dir: str = "outputs"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def validate(self) -> RunConfig:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name={self.name!r} is not a valid run folder name.", "Use a plain name such as 'demo'.")
        for section in (self.model, self.data, self.generation, self.explain, self.adapt, self.compare):
            section.validate()
        if self.explain.target == "contrastive" and not (self.data.label_column and self.data.target_column):
            raise ConfigError("explain.target=contrastive contrasts the reference label with the other labels, but "
                              "data.label_column or data.target_column is empty.",
                              "Name the label column in both (e.g. label), or use explain.target=reference.")
        if is_remote(self.model.spec):
            self._validate_remote()
        return self

    def _validate_remote(self) -> None:
        """A model behind an API: no weights to fine-tune, no attention mask (checked before any request)."""
        weights = [c for c in self.adapt.conditions if _conditions.get(c, self).needs_weights]
        if weights:
            keep = [c for c in self.adapt.conditions if c not in weights]
            raise ConfigError(f"adapt.conditions includes {', '.join(weights)}, but {self.model.spec} is a model behind "
                              "an API, whose weights cannot be fine-tuned or changed from here.",
                              f"Drop it: --set adapt.conditions=[{','.join(keep)}].")
        if resolve_masking(self.explain.masking) not in REMOTE_MASKINGS:
            raise ConfigError(f"explain.masking={self.explain.masking!r} is not possible for {self.model.spec}: "
                              "attention masking needs the model's attention mask, which an API does not expose.",
                              "Set --set explain.masking=delete (tokens left out of the prompt) or replace.")

    # -- reading -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> RunConfig:
        """Build and validate from a nested dict (YAML layout); unknown keys are an error (:func:`validate`'s checks;
        :func:`shapshift.validation.load_config` also checks the methods against the estimators' registry)."""
        return build(cls, values or {}, "").validate()

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"Config file {path} does not exist.", "Pass an existing YAML file, e.g. configs/demo.yaml.") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"Config file {path} is not valid YAML ({exc}).", "Fix the syntax and run again.") from None
        if not isinstance(values, dict):
            raise ConfigError(f"Config file {path} must hold a mapping of sections, not {type(values).__name__}.")
        return cls.from_dict(apply_overrides(values, overrides or []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """sha256 of the named sections (all when none): runs with equal fingerprints give equal results."""
        data = self.to_dict()
        for section, keys in SPENDING_KEYS.items():  # limits on spending, not on results: a capped run resumes
            data[section] = {k: v for k, v in data[section].items() if k not in keys}
        picked = {s: data[s] for s in sections} if sections else data
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def config_keys(cls: type = RunConfig, prefix: str = "") -> dict[str, Any]:
    """Every setting as ``{"section.key": default}`` (nested sections flattened with dots), in field order.

    The README's configuration table lists exactly these keys and defaults (a test checks it).
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            out.update(config_keys(type(default), f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = default
    return out


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict."""
    values = json.loads(json.dumps(values))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} has no '='.", "Write it as section.key=value, e.g. data.n_explain=4.")
        key, raw = item.split("=", 1)
        node = values
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {item!r}: {p} is not a section.")
        node[leaf] = parse_value(raw, text=key.strip() in text_keys())
    return values


def key_types(cls: type | None = None, prefix: str = "") -> dict[str, Any]:
    """Every setting's type as ``{"section.key": type}`` (nested sections flattened with dots)."""
    cls = cls or RunConfig
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out.update(key_types(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else {prefix + f.name: tp})
    return out


def text_keys() -> set[str]:
    """The ``section.key`` names of the settings that hold text (``str`` or ``str | None``)."""
    return {k for k, tp in key_types().items() if tp is str or set(typing.get_args(tp)) == {str, type(None)}}


def optional_keys() -> set[str]:
    """The ``section.key`` names of the settings that may be none (their type admits ``None``)."""
    return {k for k, tp in key_types().items() if type(None) in typing.get_args(tp)}


