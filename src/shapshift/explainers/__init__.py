"""SHAP estimators for text generation behind one ``explain()`` call.

``method`` names an estimator from :data:`REGISTRY` (:mod:`.registry`): ``exact``, ``sampling``,
``kernel``, ``quadrature``, ``regression``, ``levels``, ``hierarchical``, ``partition`` (the shap library's
path), or ``auto`` (:func:`choose_method`: exact for very short inputs, quadrature up to 32 features, levels
beyond). The cheaper lenses ``input_x_gradient``, ``integrated_gradients``, ``attention`` and
``attention_rollout`` return the same result type for the same features and targets, but their
values are not Shapley values (``REGISTRY[name].is_shap``).

Every module of this package is imported here, so an estimator is added by one new module holding
one registered class (:func:`register`): it is then accepted by ``explain.method(s)``,
:func:`explain` and listed by :func:`method_choices` (the notebooks' method lists).
"""

import importlib
import pkgutil

from .api import PrefixReuse, explain, explain_tasks, make_task
from .base import Attribution, ExplainTask
from .registry import (
    REGISTRY,
    Estimator,
    NoOptions,
    choose_method,
    lens_methods,
    method_choices,
    register,
    shap_methods,
)

for _module in pkgutil.iter_modules(__path__):  # every estimator module registers its class on import
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Attribution", "Estimator", "ExplainTask", "NoOptions", "PrefixReuse", "choose_method", "explain",
           "explain_tasks", "lens_methods", "make_task", "method_choices", "register", "shap_methods"]
