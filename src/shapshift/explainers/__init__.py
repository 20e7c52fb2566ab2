"""SHAP estimators for text generation behind one ``explain()`` call.

``method`` names an estimator from :data:`REGISTRY`: ``exact``, ``sampling``, ``kernel``,
``hierarchical``, ``partition`` (the shap library's path), or ``auto`` (exact for very short inputs,
kernel up to 64 tokens, hierarchical beyond). The cheaper lenses ``input_x_gradient``,
``integrated_gradients``, ``attention`` and ``attention_rollout`` return the same result type for
the same features and targets, but their values are not Shapley values (``REGISTRY[name].is_shap``).
"""

from . import attention, exact, gradients, hierarchical, kernel, partition, quadrature, sampling  # noqa: F401  (register them)
from .api import PrefixReuse, choose_method, explain, explain_tasks, make_task
from .base import REGISTRY, Attribution, Estimator, ExplainTask, register

__all__ = ["REGISTRY", "Attribution", "Estimator", "ExplainTask", "PrefixReuse", "choose_method", "explain", "explain_tasks",
           "make_task", "register"]
