"""shapshift: SHAP explanations of LLM text generation, and how they shift under fine-tuning and prompting.

``load_model(spec)`` and ``explain(model, tokenizer, texts, ...)`` are the entry points; the pipeline
stages live in :mod:`shapshift.pipeline` and the command line in :mod:`shapshift.cli`. Heavy modules
(torch, transformers, shap) load on first use.
"""

from __future__ import annotations

import logging
from typing import Any

from .config import RunConfig
from .errors import ShapshiftError

__version__ = "0.1.0"
__all__ = ["RunConfig", "ShapshiftError", "explain", "load_model", "__version__"]

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
