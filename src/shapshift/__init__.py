"""shapshift: SHAP explanations of LLM text generation, and how they shift under fine-tuning and prompting."""

from __future__ import annotations

import logging

from .config import RunConfig
from .errors import ShapshiftError
from .models import load_model

__version__ = "0.1.0"
__all__ = ["RunConfig", "ShapshiftError", "explain", "load_model", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def explain(*args, **kwargs):
    """SHAP values of generated tokens w.r.t. input tokens; see :func:`shapshift.explainers.explain`."""
    from .explainers import explain as _explain

    return _explain(*args, **kwargs)
