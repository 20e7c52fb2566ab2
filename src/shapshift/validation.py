"""A run configuration checked against the registries: the layer above the schema and the estimators.

:mod:`shapshift.config` checks each value and how values fit together; this module adds what needs the
registered estimators (:func:`shapshift.explainers.registry.check_explain`: methods, lenses, maskings, units,
options) and what a model behind an API cannot do. :func:`load_config` reads and checks a configuration in one
call; the pipeline, the CLI and the notebook form call :func:`validate` before they run anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends.checks import check_config
from .config import RunConfig, apply_overrides
from .constants import is_remote
from .errors import ConfigError
from .explainers import registry


def validate(cfg: RunConfig) -> RunConfig:
    """``cfg`` checked in full (its values, then against the registered estimators and conditions); returns it."""
    cfg.validate()
    registry.check_explain(cfg.explain)
    if is_remote(cfg.model.spec):
        _check_remote(cfg)
        check_config(cfg)  # what the backend's tier can explain, before its server is probed
    return cfg


def load_config(source: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A checked run configuration from a YAML file, a nested dict (the YAML layout) or nothing (the defaults),
    with ``section.key=value`` overrides applied."""
    if source is None or isinstance(source, dict):
        return validate(RunConfig.from_dict(apply_overrides(source or {}, overrides or [])))
    return validate(RunConfig.from_yaml(source, overrides))


def _check_remote(cfg: RunConfig) -> None:
    """A model behind an API has no weights: the methods may not need them (its conditions: ``RunConfig.validate``)."""
    weighted = [m for m in cfg.explain.all_methods if m in registry.REGISTRY and registry.REGISTRY[m].needs_weights]
    if weighted:
        raise ConfigError(f"explain.method(s) includes {', '.join(weighted)}, but {cfg.model.spec} is a model behind "
                          "an API: gradients, attention maps and shap's own model wrapper need its weights.",
                          "Leave explain.methods empty (null) and use a SHAP method such as auto for a remote "
                          "model; SHAP needs only its scores.")
