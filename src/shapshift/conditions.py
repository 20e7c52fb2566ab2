"""The conditions a run explains, defined once: their names, labels, colours, artifacts and set-up.

A *condition* is a way of running the model on the same explained examples: the ``baseline``
(the pre-trained model on the plain prompt, stage 2), its noise-floor rerun ``baseline_rerun``
(the same, explained again with another seed), and the conditions of stage 3 — ``zero_shot``
(an instruction before the prompt), ``few_shot`` (instruction and demonstrations), ``finetuned``
(the model after LoRA or full fine-tuning on the train split), and a user's own: a prompt given
in ``adapt.prompts`` (name → instruction) or an adapter or fine-tuned model in ``adapt.adapters``
(name → folder). The pipeline, the CLI, compare, the report and the notebooks read this registry.

**Adding a condition** is one :func:`register` call with its set-up function: it receives a
:class:`Setup` (the run's config, model, tokenizer, dataset and explained rows) and returns the model
to explain and the prompts of the explained rows, whose input text must equal the baseline's (the
features are the same in every condition). Its explanations go to ``03_<name>.{parquet,pkl}``.

This module imports no model code at import time (the config validation reads it).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .config import RunConfig
    from .prompting import Demonstration, PromptParts
    from .store import RunStore

log = logging.getLogger(__name__)

BASELINE = "baseline"
NOISE_FLOOR = "baseline_rerun"
#: ``adapt.adapters.<name>: "served:MODEL_ID"``: the same API's model ``MODEL_ID`` (e.g. an OpenAI ``ft:`` model).
SERVED_PREFIX = "served:"
#: Colours of conditions that have none of their own (a user's prompts and adapters), in turn.
PALETTE = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728")


@dataclass
class Setup:
    """What a condition's set-up function gets: the run and the rows it explains.

    ``info`` is the condition's record in the manifest (``stages["adapt:<name>"]``): a set-up may add
    what a reader needs to know (the demonstrations shown, the task metric after fine-tuning).
    """

    cfg: RunConfig
    store: RunStore
    model: Any
    tokenizer: Any
    data: pd.DataFrame  # the whole dataset (01_dataset.parquet)
    rows: pd.DataFrame  # the explained rows, in order
    info: dict[str, Any] = field(default_factory=dict)
    resume: bool = True


@dataclass(frozen=True)
class Condition:
    """One condition: its name, how it is shown, where its explanations are stored, how it is set up.

    ``setup``: ``Setup -> (model, prompts)`` (None for the baseline and its rerun, which stage 2
    explains); ``train_rows``: the training rows it needs under a config; ``needs_weights``: it
    changes the weights, so a model behind an API cannot have it.
    """

    name: str
    label: str
    color: str
    stem: str
    description: str = ""
    setup: Callable[[Setup], tuple[Any, list[PromptParts]]] | None = None
    train_rows: Callable[[RunConfig], int] = lambda cfg: 0
    needs_weights: bool = False


REGISTRY: dict[str, Condition] = {}


def register(condition: Condition) -> Condition:
    """Add ``condition`` to the registry (its name must be new); returns it."""
    if condition.name in REGISTRY:
        raise ValueError(f"condition {condition.name!r} is registered already")
    REGISTRY[condition.name] = condition
    return condition


def stage3_names() -> list[str]:
    """The registered conditions of stage 3 (those with a set-up), in registry order."""
    return [c.name for c in REGISTRY.values() if c.setup is not None]


def get(name: str, cfg: RunConfig | None = None) -> Condition:
    """The condition called ``name``: registered, or a user's prompt or adapter of ``cfg.adapt``.

    A name found in neither (e.g. a condition stored by a run with other settings) gets a generic
    entry, so that stored results can always be shown.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    adapt = cfg.adapt if cfg is not None else None
    if adapt is not None and name in adapt.prompts:
        return _user_prompt(name, adapt.prompts[name])
    if adapt is not None and name in adapt.adapters:
        return _user_adapter(name, adapt.adapters[name])
    return Condition(name, name.replace("_", "-"), _color(name), f"03_{name}")


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


# -- prompts --------------------------------------------------------------------------------------------
def base_parts(rows: pd.DataFrame) -> list[PromptParts]:
    """The baseline's prompts of the explained rows (as preprocessing split them)."""
    from .prompting import PromptParts

    return [PromptParts(r.prompt_prefix, r.input_text, r.prompt_suffix) for r in rows.itertuples()]


def condition_parts(cfg: RunConfig, rows: pd.DataFrame, tokenizer: Any, *, instruction: str | None = None,
                    demonstrations: Sequence[Demonstration] = ()) -> list[PromptParts]:
    """Prompts of a prompting condition, in the run's prompt format (:func:`run_uses_chat`); the features (the
    text part) must equal the baseline's."""
    from .prompting import build_prompt

    chat = run_uses_chat(rows, tokenizer)
    parts = [build_prompt(r.source_text, cfg.data.template, tokenizer, chat=chat, instruction=instruction,
                          demonstrations=demonstrations) for r in rows.itertuples()]
    for p, r in zip(parts, rows.itertuples()):
        if p.text != r.input_text:
            raise DataError(f"Example {r.example_id}: the condition's input text {p.text!r} differs from the "
                            f"baseline's {r.input_text!r}.", "The template must place {input} the same way in every "
                            "condition.")
    return parts


def run_uses_chat(rows: pd.DataFrame, tokenizer: Any) -> bool:
    """Whether the run's prompts are chat turns (``prompt_chat``, the format preprocessing chose), so that every
    condition is prompted in the same format; a table from before that column: chat when its prompts start
    with a special token, as a chat template writes them."""
    from .prompting import starts_with_special_token

    if "prompt_chat" in rows:
        return bool(len(rows)) and bool(rows["prompt_chat"].all())
    return bool(len(rows)) and starts_with_special_token(str(rows["prompt_prefix"].iloc[0]), tokenizer)


# -- the set-up of each stage-3 condition ------------------------------------------------------------------
def _zero_shot(s: Setup) -> tuple[Any, list[PromptParts]]:
    return s.model, condition_parts(s.cfg, s.rows, s.tokenizer, instruction=s.cfg.adapt.instruction)


def _few_shot(s: Setup) -> tuple[Any, list[PromptParts]]:
    from .fewshot import shared_demonstrations

    demos = shared_demonstrations(s.data, s.cfg.adapt.k_shot, s.cfg.data.seed, balance=bool(s.cfg.data.label_column))
    s.info["demonstrations"] = [asdict(d) for d in demos]
    return s.model, condition_parts(s.cfg, s.rows, s.tokenizer, instruction=s.cfg.adapt.instruction,
                                    demonstrations=demos)


def _finetuned(s: Setup) -> tuple[Any, list[PromptParts]]:
    """Under ``accelerate launch`` the main process fine-tunes (as one process would) and saves the adapter,
    the others load it once saved: every process then explains its share with the same weights, those of
    a single-process run (see :mod:`shapshift.parallel`)."""
    from . import parallel

    if parallel.num_processes() == 1:
        return finetuned_model(s), base_parts(s.rows)
    model = None
    if parallel.is_main():
        with parallel.alone():  # Trainer must not see the other processes: they wait below
            model = finetuned_model(s)
    parallel.wait()
    if model is None:
        from .finetune import load_finetuned

        model = load_finetuned(s.model, s.store.path("adapters"), s.cfg.adapt.finetune)
    return model, base_parts(s.rows)


def finetuned_model(s: Setup) -> Any:
    """Fine-tune on the train split (or, resuming under the same settings, reload the saved adapter),
    measuring the task metric on the explained rows before and after; writes ``03_finetune.json``."""
    import json

    from .finetune import evaluate_task, finetune, load_finetuned
    from .stages import stage_fingerprint
    from .store import write_json

    cfg, store, model, tokenizer = s.cfg, s.store, s.model, s.tokenizer
    train = s.data[s.data["split"] == "train"].reset_index(drop=True)
    labels = sorted(set(train["target_text"].dropna())) if cfg.data.label_column else None
    summary_file = store.path("03_finetune.json")
    fingerprint = stage_fingerprint(cfg, "adapt")
    if s.resume and summary_file.exists():
        summary = json.loads(store.verify("03_finetune.json").read_text())
        if summary.get("fingerprint") == fingerprint:
            for name in [n for n in store.manifest().get("artifacts", {}) if n.startswith("adapters/")]:
                store.verify(name)
            s.info.update(task_metric_before=summary["before"], task_metric_after=summary["after"], reloaded=True)
            return load_finetuned(model, store.path("adapters"), cfg.adapt.finetune)
    before = evaluate_task(model, tokenizer, s.rows, labels=labels)
    result = finetune(model, tokenizer, train, cfg.adapt.finetune, seed=cfg.data.seed, out_dir=store.path("adapters"))
    store.record(*sorted(str(p.relative_to(store.dir)) for p in store.path("adapters").rglob("*") if p.is_file()))
    after = evaluate_task(result.model, tokenizer, s.rows, labels=labels)
    summary = {"before": before, "after": after, "losses": result.losses, "steps": result.steps,
               "seconds": result.seconds, "method": cfg.adapt.finetune.method, "fingerprint": fingerprint,
               "evaluated_on": "the explain split (held out from training)"}
    write_json(summary, summary_file)
    store.record("03_finetune.json")
    s.info.update(task_metric_before=before, task_metric_after=after, steps=result.steps)
    log.info("fine-tuning: task metric before %s, after %s", before, after)
    return result.model


def _user_prompt(name: str, instruction: str) -> Condition:
    def setup(s: Setup) -> tuple[Any, list[PromptParts]]:
        return s.model, condition_parts(s.cfg, s.rows, s.tokenizer, instruction=instruction)

    return Condition(name, name.replace("_", "-"), _color(name), f"03_{name}",
                     f"your prompt: {instruction!r} before the plain prompt", setup)


def _user_adapter(name: str, folder: str) -> Condition:
    if folder.startswith(SERVED_PREFIX):  # a fine-tuned model behind the same API: another model id (issue 26)
        return Condition(name, name.replace("_", "-"), _color(name), f"03_{name}", f"the served model {folder[7:]}",
                         lambda s: (_served(s.model, folder[len(SERVED_PREFIX):]), base_parts(s.rows)))

    def setup(s: Setup) -> tuple[Any, list[PromptParts]]:
        s.info["adapter"] = str(folder)
        return load_adapter(s.model, folder), base_parts(s.rows)

    return Condition(name, name.replace("_", "-"), _color(name), f"03_{name}",
                     f"the model with your adapter or weights from {folder}", setup, needs_weights=True)


def _served(model: Any, model_id: str) -> Any:
    if not callable(getattr(model, "with_served_name", None)):
        raise ConfigError(f"adapt.adapters names the served model {model_id!r}, but the run's model is not behind an API.",
                          "Name a folder of an adapter or model, or set model.spec to the API (openai-compatible:URL).")
    return model.with_served_name(model_id)


def load_adapter(model: Any, folder: str | Path) -> Any:
    """The model with a PEFT adapter merged in (``folder`` holds ``adapter_config.json``), or the full
    model saved in ``folder`` (``config.json``) on the same device and dtype; the caller's model is untouched."""
    from .errors import ArtifactError

    folder = Path(folder).expanduser()
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        merged = PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).merge_and_unload()
        return merged.eval()
    if (folder / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        p = next(model.parameters())
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=p.dtype).to(p.device).eval()
    raise ArtifactError(f"{folder} holds neither a PEFT adapter (adapter_config.json) nor a model (config.json).",
                        "Point adapt.adapters.<name> at the folder that `save_pretrained` wrote.")


register(Condition(BASELINE, "baseline", "#7f7f7f", "02_baseline", "the pre-trained model on the plain prompt"))
register(Condition(NOISE_FLOOR, "noise floor (baseline rerun)", "#000000", "02_baseline_rerun",
                   "the baseline explained again with another seed: the estimator's own noise"))
register(Condition("zero_shot", "zero-shot", "#1f77b4", "03_zero_shot", "an instruction before the plain prompt",
                   _zero_shot))
register(Condition("few_shot", "few-shot", "#ff7f0e", "03_few_shot",
                   "the instruction and adapt.k_shot demonstrations from the train split", _few_shot,
                   train_rows=lambda cfg: cfg.adapt.k_shot))
register(Condition("finetuned", "fine-tuned", "#2ca02c", "03_finetuned",
                   "the model fine-tuned (LoRA or full) on the train split", _finetuned,
                   train_rows=lambda cfg: 1, needs_weights=True))
