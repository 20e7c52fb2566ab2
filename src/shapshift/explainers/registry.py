"""The estimator registry: every estimator is one class that describes itself, and ``auto`` is a policy over them.

An estimator module defines a subclass of :class:`Estimator` decorated with :func:`register`; the
explainers package imports every module in it, so the new name is then accepted by the run
configuration (``explain.method`` / ``explain.methods``), by :func:`shapshift.explain`, by the
notebooks' method lists (:func:`method_choices`) and by the comparison stage (its
``deterministic`` flag). The class states:

- ``name``, ``is_shap`` (Shapley values, efficiency holds), ``deterministic`` (the seed changes nothing)
  and ``exact`` (the values are the exact Shapley values: precision 1 by construction);
- ``Options``: a dataclass of its settings with defaults, checked in ``__post_init__``; they come from
  ``explain.options`` / ``explain(options=...)`` and reach the constructor (``self.options``);
- ``budget``: what ``max_evals`` means for it, in one line;
- ``requires``: packages it imports beyond shapshift's dependencies (import name → pip requirement; the
  ``lenses`` extra installs them, :func:`check_installed` says what to install when one is missing);
- what ``auto`` and the checks need: ``max_features``, ``rounds`` (can be run to a precision),
  ``maskings`` (the maskings it can honour; None: every scorer masking), ``units``,
  ``uses_scorer`` and ``needs_weights``, and ``auto_order`` / ``auto_max_features`` /
  ``auto_evals_per_feature`` (where it sits in ``auto``'s ladder, :func:`choose_method`).

``attribute(task, scorer)`` gets the scoring function explicitly (the local teacher-forced scorer, a
table, a remote server's scorer); an estimator never builds one from the task.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from ..coerce import coerce
from ..config import ExplainConfig
from ..constants import MASKINGS, UNITS
from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of an estimator that has none."""


class Estimator:
    """Base class: one estimator with one ``attribute(task, scorer)`` entry point (see the module docstring)."""

    name: ClassVar[str] = ""
    is_shap: ClassVar[bool] = True
    deterministic: ClassVar[bool] = True
    exact: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    budget: ClassVar[str] = "ignored"
    max_features: ClassVar[int | None] = None
    rounds: ClassVar[bool] = False
    maskings: ClassVar[tuple[str, ...] | None] = None
    units: ClassVar[tuple[str, ...]] = UNITS
    uses_scorer: ClassVar[bool] = True
    needs_weights: ClassVar[bool] = False
    auto_order: ClassVar[int | None] = None
    auto_max_features: ClassVar[int | None] = None
    auto_evals_per_feature: ClassVar[int | None] = None
    #: Packages beyond shapshift's dependencies, import name → pip requirement (in the ``lenses`` extra).
    requires: ClassVar[dict[str, str]] = {}

    def __init__(self, options: Mapping[str, Any] | Any = None) -> None:
        self.options = options if isinstance(options, self.Options) else self.make_options(options or {})

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    def make_options(cls, values: Mapping[str, Any], *, strict: bool = True) -> Any:
        """The :attr:`Options` from ``values`` (text coerced to each field's type); ``strict``: unknown keys are an error."""
        names = cls.option_names()
        unknown = sorted(set(values) - set(names))
        if unknown and strict:
            raise ConfigError(f"method={cls.name!r} has no option(s) {', '.join(map(repr, unknown))}.",
                              f"Its options are: {describe_options(cls) or 'none'}.")
        hints = typing.get_type_hints(cls.Options)
        return cls.Options(**{k: coerce(hints[k], v, f"explain.options.{k}") for k, v in values.items() if k in names})

    @classmethod
    def auto_budget(cls, n_features: int, max_evals: int) -> int:
        """The evaluations ``auto`` gives it: ``auto_evals_per_feature * n + 2`` capped by ``max_evals``, else ``max_evals``."""
        if cls.auto_evals_per_feature is None:
            return max_evals
        return min(max_evals, cls.auto_evals_per_feature * n_features + 2)

    def attribute(self, task: Any, scorer: Any) -> Any:  # pragma: no cover - interface
        """The :class:`~shapshift.explainers.base.Attribution` of ``task``, scoring coalitions with ``scorer``."""
        raise NotImplementedError


REGISTRY: dict[str, type[Estimator]] = {}


def register(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: make an estimator selectable by ``method=cls.name`` (everywhere, see the module docstring)."""
    if not cls.name or cls.name == "auto":
        raise ValueError(f"{cls.__name__} needs a name other than '' and 'auto'")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    cls.make_options({})  # the defaults must be valid
    REGISTRY[cls.name] = cls
    return cls


def describe_options(cls: type[Estimator]) -> str:
    """``name=default, ...`` of an estimator's options."""
    return ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Options))


# -- the lists every entry point reads ------------------------------------------------------------
def shap_methods() -> tuple[str, ...]:
    """``auto`` and the registered SHAP estimators: ``explain.method``'s choices (and the notebooks' dropdown)."""
    return ("auto", *(n for n, c in REGISTRY.items() if c.is_shap))


def lens_methods() -> tuple[str, ...]:
    """The registered lenses (not Shapley values): what ``explain.methods`` may add after the SHAP method."""
    return tuple(n for n, c in REGISTRY.items() if not c.is_shap)


def method_choices() -> tuple[str, ...]:
    """Every ``method`` :func:`shapshift.explain` accepts: :func:`shap_methods` then :func:`lens_methods`."""
    return (*shap_methods(), *lens_methods())


def round_methods() -> tuple[str, ...]:
    """The estimators that can be run to a precision (``rounds``; :mod:`shapshift.explainers.precision`)."""
    return tuple(n for n, c in REGISTRY.items() if c.rounds)


def auto_candidates() -> list[type[Estimator]]:
    """The entries ``auto`` chooses among, in the order it tries them."""
    return sorted((c for c in REGISTRY.values() if c.auto_order is not None), key=lambda c: c.auto_order)


def expand(methods: Iterable[str]) -> list[type[Estimator]]:
    """The entries behind ``methods`` (``auto`` is every entry it may choose); unknown names are skipped."""
    out: list[type[Estimator]] = []
    for m in methods:
        for cls in auto_candidates() if m == "auto" else [REGISTRY[m]] if m in REGISTRY else []:
            if cls not in out:
                out.append(cls)
    return out


def is_deterministic(methods: Iterable[str]) -> bool | None:
    """Whether every one of ``methods`` gives seed-independent values; None when one is unknown (or none given)."""
    methods = list(methods)
    if not methods or any(m not in REGISTRY for m in methods):
        return None
    return all(REGISTRY[m].deterministic for m in methods)


# -- auto: a policy over the entries ----------------------------------------------------------------
def choose_method(n_features: int, method: str = "auto") -> str:
    """The estimator ``auto`` picks for ``n_features`` features (any other ``method`` is returned as is).

    The first entry in ``auto_order`` whose ``auto_max_features`` admits ``n_features`` (None: any):
    ``exact`` up to 5 features (``2^n`` evaluations are no more than the others' budget, and the values
    are exact), ``quadrature`` in precision rounds up to 32, ``levels`` beyond (groups of sentences first,
    then the features inside the groups that matter, in rounds from 128 evaluations). Why
    (``benchmarks/ESTIMATORS.md``, smollm2-135m on SST-2, exact Shapley values as the reference): at equal
    budgets from ``4n + 2`` on, ``quadrature``'s error is well below paired KernelSHAP's and below shapiq's
    approximators', with calibrated standard errors that the precision rounds need; past 32 features its
    ``2n + 2`` leave-one-in/out coalitions alone exceed a paragraph's budget, where ``levels`` reaches the
    same measured agreement of two seeds at about 128 evaluations (``benchmarks/PARAGRAPHS_heldout.md``).
    """
    if method != "auto":
        return method
    for cls in auto_candidates():
        if cls.auto_max_features is None or n_features <= cls.auto_max_features:
            return cls.name
    raise ConfigError(f"No estimator registered for auto accepts {n_features} features.")  # pragma: no cover


def auto_budget(name: str, n_features: int, max_evals: int) -> int:
    """Evaluations ``auto`` gives the estimator it chose (:meth:`Estimator.auto_budget`): kernel and quadrature
    ``4n + 2`` capped by ``max_evals`` (the first round when run to a precision), the others ``max_evals``."""
    return REGISTRY[name].auto_budget(n_features, max_evals)


# -- checks of a configuration against the entries ---------------------------------------------------
def validate_options(methods: Iterable[str], options: Mapping[str, Any]) -> None:
    """Raise a :class:`ConfigError` unless every key of ``options`` is an option of one of ``methods``
    (``auto``: of an estimator it may choose) and every value is valid for each method that has the key."""
    entries = expand(methods)
    known = {k for cls in entries for k in cls.option_names()}
    unknown = sorted(set(options) - known)
    if unknown:
        listed = "; ".join(f"{c.name}: {describe_options(c) or 'none'}" for c in entries)
        raise ConfigError(f"explain.options has {', '.join(map(repr, unknown))}, which no method of this run "
                          f"({', '.join(methods)}) takes.", f"The options by method are: {listed}.")
    for cls in entries:
        cls.make_options(options, strict=False)


def missing_requirements(methods: Iterable[str]) -> list[str]:
    """The pip requirements of ``methods`` (their ``requires``) whose package is not installed here."""
    import importlib.util

    out = []
    for cls in expand(methods):
        for module, requirement in cls.requires.items():
            if importlib.util.find_spec(module) is None and requirement not in out:
                out.append(requirement)
    return out


def check_installed(methods: Iterable[str]) -> None:
    """Raise a :class:`ConfigError` saying what to install when a method of ``methods`` needs a missing package."""
    missing = missing_requirements(methods)
    if missing:
        who = [c.name for c in expand(methods) if any(r in missing for r in c.requires.values())]
        raise ConfigError(f"method {' and '.join(who)} needs {', '.join(missing)}, which is not installed.",
                          f"Install it with: pip install {' '.join(repr(r) for r in missing)} "
                          "(or pip install 'shapshift[lenses]').")


def check_masking(methods: Iterable[str], masking: str) -> None:
    """Raise a :class:`ConfigError` when ``masking`` (not ``auto``) is one a method of ``methods`` cannot honour."""
    own = sorted({m for cls in expand(methods) for m in (cls.maskings or ())})
    if masking not in ("auto", *MASKINGS, *own):
        raise ConfigError(f"explain.masking={masking!r} is unknown.", f"Use one of {', '.join(('auto', *MASKINGS, *own))}.")
    for cls in expand(methods):
        allowed = cls.maskings or MASKINGS
        if masking != "auto" and masking not in allowed:
            raise ConfigError(f"explain.method={cls.name} cannot mask with {masking!r}: it masks with "
                              f"{', '.join(allowed)} only.", f"Set explain.masking=auto (or {allowed[0]}) with "
                              f"{cls.name}, or choose another method.")


def masking_used(method: str, masking: str) -> str:
    """The masking ``method`` really runs when asked for ``masking`` (``auto`` resolved already):
    its own first masking when it cannot honour the one asked for (``partition``: shap's Text masker)."""
    cls = REGISTRY.get(method)
    if cls is None or cls.maskings is None or masking in cls.maskings:
        return masking
    return cls.maskings[0]


def check_explain(ex: ExplainConfig) -> None:
    """Raise a :class:`ConfigError` unless ``explain``'s methods, lenses, masking, unit and options fit the registered
    estimators (the values alone: :meth:`ExplainConfig.validate`, run first)."""
    ex.validate()
    shaps, lenses = shap_methods(), lens_methods()
    if ex.method not in shaps:
        raise ConfigError(f"explain.method={ex.method!r} is unknown.",
                          f"Choose one of {', '.join(shaps)} (SHAP estimators); the lenses "
                          f"{', '.join(lenses)} go in explain.methods after it.")
    if ex.methods is not None:
        named = list(ex.methods[1:])
        bad = [m for m in named if m not in lenses]
        if not ex.methods or ex.methods[0] != ex.method or bad or len(set(named)) != len(named):
            raise ConfigError(
                f"explain.methods={ex.methods!r} must start with the SHAP method explain.method={ex.method!r} "
                f"and then name distinct lenses from {', '.join(lenses)}.",
                f"Write e.g. explain.methods=[{ex.method}, integrated_gradients, attention], or leave it null.")
    check_masking(ex.all_methods, ex.masking)
    for cls in expand(ex.all_methods):
        if ex.unit not in cls.units:
            raise ConfigError(f"explain.method={cls.name} explains {', '.join(u + 's' for u in cls.units)} only, "
                              f"not {ex.unit}s.", f"Use explain.unit={cls.units[0]} with {cls.name}, or another "
                              "method (auto, kernel, ...).")
    validate_options(ex.all_methods, ex.options)
    if ex.target == "contrastive":
        cannot = [c.name for c in expand(ex.all_methods) if c.needs_weights or not c.uses_scorer]
        if cannot:
            raise ConfigError(f"explain.target=contrastive cannot be explained by {', '.join(cannot)}: they score "
                              "the target tokens themselves.", "Use auto, exact, quadrature, kernel or sampling, "
                              "without lenses in explain.methods.")
