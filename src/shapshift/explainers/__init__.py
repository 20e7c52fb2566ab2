"""SHAP estimators for text generation behind one ``explain()`` call.

``method`` names an estimator from :data:`REGISTRY`: ``exact``, ``sampling``, ``kernel``,
``hierarchical``, ``partition`` (the shap library's path), or ``auto`` (exact for very short inputs,
kernel up to 64 tokens, hierarchical beyond).
"""

from . import exact, hierarchical, kernel, partition, quadrature, sampling  # noqa: F401  (register the estimators)
from .api import PrefixReuse, choose_method, explain, explain_tasks, make_task
from .base import REGISTRY, Attribution, Estimator, ExplainTask, register

__all__ = ["REGISTRY", "Attribution", "Estimator", "ExplainTask", "PrefixReuse", "choose_method", "explain", "explain_tasks",
           "make_task", "register"]
