"""The conditions a run explains, declared once: their names, labels, colours and artifacts.

A *condition* is a way of running the model on the same explained examples: the ``baseline``
(the pre-trained model on the plain prompt, stage 2), its noise-floor rerun ``baseline_rerun``
(the same, explained again with another seed), and the conditions of stage 3 — ``zero_shot``
(an instruction before the prompt), ``few_shot`` (instruction and demonstrations), ``finetuned``
(the model after LoRA or full fine-tuning on the train split), and a user's own: a prompt given
in ``adapt.prompts`` (name → instruction) or an adapter or fine-tuned model in ``adapt.adapters``
(name → folder). The pipeline, the CLI, compare, the report and the notebooks read this registry.

**Adding a condition** is one :func:`register` call with its set-up function: it receives a
:class:`shapshift.adapt.Setup` (the run's config, model, tokenizer, dataset and explained rows) and returns the
model to explain and the prompts of the explained rows, whose input text must equal the baseline's (the
features are the same in every condition). Its explanations go to ``03_<name>.{parquet,pkl}``.

This module declares; :mod:`shapshift.adapt` sets the conditions up (prompts, demonstrations, fine-tuning,
adapters). It imports nothing of the package but its errors, so the config, the report and the figures read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .constants import SERVED_PREFIX
from .errors import ConfigError
from .registries import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .adapt import Setup
    from .config import RunConfig
    from .prompting import PromptParts

BASELINE = "baseline"
NOISE_FLOOR = "baseline_rerun"
#: Colours of conditions that have none of their own (a user's prompts and adapters), in turn.
PALETTE = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728")


@dataclass(frozen=True)
class Condition:
    """One condition: its name, how it is shown, where its explanations are stored, how it is set up.

    ``setup``: ``Setup -> (model, prompts)`` of a condition registered from outside (the built-in ones are set
    up by :mod:`shapshift.adapt`); ``train_rows``: the training rows it needs under a config; ``needs_weights``:
    it changes the weights, so a model behind an API cannot have it; ``stage``: 2 for the baseline and its
    rerun, 3 for the conditions compared with them.
    """

    name: str
    label: str
    color: str
    stem: str
    description: str = ""
    setup: Callable[[Setup], tuple[Any, list[PromptParts]]] | None = None
    train_rows: Callable[[RunConfig], int] = lambda cfg: 0
    needs_weights: bool = False
    stage: int = 3


REGISTRY: Registry[Condition] = Registry("condition")
#: Add a :class:`Condition` to the registry (its name must be new); returns it.
register = REGISTRY.register


def stage3_names() -> list[str]:
    """The registered conditions of stage 3, in registry order."""
    return [c.name for c in REGISTRY.values() if c.stage == 3]


def get(name: str, cfg: RunConfig | None = None) -> Condition:
    """The condition called ``name``: registered, or a user's prompt or adapter of ``cfg.adapt``.

    A name found in neither (e.g. a condition stored by a run with other settings) gets a generic
    entry, so that stored results can always be shown.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    adapt = cfg.adapt if cfg is not None else None
    described = name.replace("_", "-"), _color(name), f"03_{name}"
    if adapt is not None and name in adapt.prompts:
        return Condition(name, *described, f"your prompt: {adapt.prompts[name]!r} before the plain prompt")
    if adapt is not None and name in adapt.adapters:
        where = adapt.adapters[name]
        if where.startswith(SERVED_PREFIX):  # a fine-tuned model behind the same API: another model id (issue 26)
            return Condition(name, *described, f"the served model {where[len(SERVED_PREFIX):]}")
        return Condition(name, *described, f"the model with your adapter or weights from {where}", needs_weights=True)
    return Condition(name, *described)


def label(name: str) -> str:
    """A condition's display name (``zero_shot`` → ``zero-shot``)."""
    return get(name).label


def color(name: str) -> str:
    return get(name).color


def stem(name: str) -> str:
    """The artifact stem of a condition's explanations (``02_baseline``, ``03_zero_shot`` …)."""
    return get(name).stem


def order_key(name: str) -> tuple[int, str]:
    """Sort key: registered conditions in registry order, then the others by name."""
    names = list(REGISTRY)
    return (names.index(name), "") if name in names else (len(names), name)


def ordered(names) -> list[str]:
    """Distinct condition names in display order (:func:`order_key`)."""
    return sorted(set(names), key=order_key)


def _color(name: str) -> str:
    return PALETTE[sum(map(ord, name)) % len(PALETTE)]


def check_names(conditions: Sequence[str], prompts: dict[str, str], adapters: dict[str, str]) -> None:
    """Refuse unknown condition names and user conditions that clash with registered ones."""
    clash = sorted((set(prompts) | set(adapters)) & set(REGISTRY)) + sorted(set(prompts) & set(adapters))
    if clash:
        raise ConfigError(f"adapt.prompts / adapt.adapters reuse the name(s) {clash}.",
                          f"Give your conditions names other than {', '.join(REGISTRY)} and each other's.")
    bad_names = [n for n in [*prompts, *adapters] if not n.isidentifier()]
    if bad_names:
        raise ConfigError(f"Condition names {bad_names} are not plain names.",
                          "Use letters, digits and underscores, e.g. my_prompt.")
    known = set(stage3_names()) | set(prompts) | set(adapters)
    bad = [c for c in conditions if c not in known]
    if bad:
        raise ConfigError(f"adapt.conditions has unknown names {bad}.",
                          f"Use some of {stage3_names()}, or define your own under adapt.prompts "
                          "(name: instruction) or adapt.adapters (name: folder of a PEFT adapter or a model).")


register(Condition(BASELINE, "baseline", "#7f7f7f", "02_baseline", "the pre-trained model on the plain prompt",
                   stage=2))
register(Condition(NOISE_FLOOR, "noise floor (baseline rerun)", "#000000", "02_baseline_rerun",
                   "the baseline explained again with another seed: the estimator's own noise", stage=2))
register(Condition("zero_shot", "zero-shot", "#1f77b4", "03_zero_shot", "an instruction before the plain prompt"))
register(Condition("few_shot", "few-shot", "#ff7f0e", "03_few_shot",
                   "the instruction and adapt.k_shot demonstrations from the train split",
                   train_rows=lambda cfg: cfg.adapt.k_shot))
register(Condition("finetuned", "fine-tuned", "#2ca02c", "03_finetuned",
                   "the model fine-tuned (LoRA or full) on the train split",
                   train_rows=lambda cfg: 1, needs_weights=True))
