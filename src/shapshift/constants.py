"""The package's vocabulary: the settings' choices, their defaults and units, as constants (a leaf module).

Every module that names a masking, a score, a feature unit or a target reads it here; :mod:`shapshift.config`
(the schema) validates settings against these tuples. This module imports nothing of the package.
"""

from __future__ import annotations

#: What "token absent" means to the scorer (:mod:`shapshift.scoring`).
MASKINGS = ("attention", "delete", "replace")
#: What an absent feature is under each masking (and under partition's own, shap's ``Text`` masker), as the report says it.
MASKING_MEANINGS = {"delete": "left out of the text (the later tokens move up)",
                    "attention": "hidden from attention (the other tokens keep their positions)",
                    "replace": "replaced by a stand-in token", "shap_text": 'written as "..." (shap\'s Text masker)'}
#: The score explained per target token.
SCORES = ("log_odds", "log_prob")
#: The default score: the log-probability of each target token, so an output token's values sum (with the base
#: value) to its log-probability and a generation's to the log-probability of the whole continuation, the
#: quantity a deletion test and ContextCite measure (``benchmarks/CONTEXTCITE_*.md``). ``log_odds`` is
#: ``shap.models.TeacherForcing``'s convention.
DEFAULT_SCORE = "log_prob"
#: What "absent" means by default: the feature is deleted from the text (later tokens move up), as a reader
#: removes a word, and the same for a model in this process and one behind an API (``benchmarks/CONTEXTCITE_*.md``,
#: ``benchmarks/RESULTS.md``'s masking study).
DEFAULT_MASKING = "delete"
#: The unit of a SHAP value (and of the base value) under each score, as reports and figures name it.
SCORE_UNITS = {"log_odds": "log-odds", "log_prob": "log-probability"}
#: What one feature is: a token, a word (whitespace-delimited, punctuation attached) or a sentence.
UNITS = ("token", "word", "sentence")
#: How the reference's casing may be written (``data.target_case``; :mod:`shapshift.formats`).
TARGET_CASES = ("as_written", "lower", "capitalized")
#: What each condition explains (``explain.target``; :class:`ExplainConfig`).
TARGETS = ("baseline", "own", "reference", "contrastive")
#: The sections of a run configuration (YAML top-level keys besides ``name`` and ``output_dir``).
SECTIONS = ("model", "data", "generation", "explain", "adapt", "compare")
#: A model spec with this prefix names an OpenAI-compatible completions server: ``openai-compatible:http://HOST:PORT/v1``.
REMOTE_PREFIX = "openai-compatible:"
#: The maskings a model behind an API allows (attention masking needs the model's attention mask).
REMOTE_MASKINGS = ("delete", "replace")
#: ``explain.masking``'s choices: ``auto`` is :data:`DEFAULT_MASKING` for every model (and an estimator's own, e.g.
#: partition's ``shap_text``: ``maskings`` in :mod:`shapshift.explainers.registry`).
EXPLAIN_MASKINGS = ("auto", *MASKINGS)


def resolve_masking(masking: str) -> str:
    """The masking a scorer runs: ``auto`` becomes :data:`DEFAULT_MASKING` (deletion), for a model in this process
    and one behind an API alike."""
    return DEFAULT_MASKING if masking == "auto" else masking


def is_remote(spec: str) -> bool:
    """Whether a model spec names a completions server rather than weights."""
    return spec.strip().startswith(REMOTE_PREFIX)
#: ``adapt.adapters.<name>: "served:MODEL_ID"``: the same API's model ``MODEL_ID`` (e.g. an OpenAI ``ft:`` model).
SERVED_PREFIX = "served:"
#: Settings that bound what a run may spend, not what it computes: left out of its fingerprints (issue 26).
SPENDING_KEYS = {"model": ("max_requests", "max_tokens")}
