"""shapshift: SHAP explanations of LLM text generation, and how they shift under fine-tuning and prompting.

``load_model(spec)`` and ``explain(model, tokenizer, texts, ...)`` are the entry points; each explanation is an
:class:`Explanation`; ``load_config(path_or_dict)`` reads and checks a run configuration. The pipeline stages live in
:mod:`shapshift.pipeline` and the command line in :mod:`shapshift.cli`. Heavy modules (torch, transformers) load on
first use: the functions below import them when called (for start-up time; no import cycle is hidden there).
"""

from __future__ import annotations

import logging
from typing import Any

from .config import RunConfig
from .errors import ShapshiftError
from .explanation import Explanation

__version__ = "0.1.0"
__all__ = ["Explanation", "RunConfig", "ShapshiftError", "explain", "load_config", "load_model", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def load_model(*args: Any, **kwargs: Any):
    """A model and tokenizer ready for scoring and generation, its backend chosen from the spec (``access=`` forces a
    tier of a server); see :func:`shapshift.backends.load.load_model`."""
    from .backends.load import load_model as _load_model

    return _load_model(*args, **kwargs)


def explain(*args: Any, **kwargs: Any):
    """SHAP values of generated tokens w.r.t. input tokens; see :func:`shapshift.explainers.explain`."""
    from .explainers import explain as _explain

    return _explain(*args, **kwargs)


def load_config(*args: Any, **kwargs: Any) -> RunConfig:
    """A run configuration read and checked against the registries; see :func:`shapshift.validation.load_config`."""
    from .validation import load_config as _load_config

    return _load_config(*args, **kwargs)
