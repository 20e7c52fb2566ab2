"""How each condition of stage 3 is set up: its prompts (instruction, demonstrations), its weights (fine-tuning,
a user's adapter), from the conditions declared in :mod:`shapshift.conditions`.

:func:`setup_of` gives a condition's set-up function ``Setup -> (model, prompts)``: the one registered with the
condition, a built-in one of :data:`BUILTIN_SETUPS`, or that of a user's prompt (``adapt.prompts``) or adapter
(``adapt.adapters``). The pipeline calls it; the prompts' input text must equal the baseline's.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import parallel
from .conditions import Condition
from .config import RunConfig
from .constants import SERVED_PREFIX
from .errors import ArtifactError, ConfigError, DataError
from .fewshot import shared_demonstrations
from .finetune import evaluate_task, finetune, load_finetuned
from .prompting import Demonstration, PromptParts, build_prompt, starts_with_special_token
from .stages import stage_fingerprint
from .store import RunStore, write_json

log = logging.getLogger(__name__)


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


SetupFunction = Callable[[Setup], tuple[Any, list[PromptParts]]]


# -- prompts --------------------------------------------------------------------------------------------
def base_parts(rows: pd.DataFrame) -> list[PromptParts]:
    """The baseline's prompts of the explained rows (as preprocessing split them)."""
    return [PromptParts(r.prompt_prefix, r.input_text, r.prompt_suffix) for r in rows.itertuples()]


def condition_parts(cfg: RunConfig, rows: pd.DataFrame, tokenizer: Any, *, instruction: str | None = None,
                    demonstrations: Sequence[Demonstration] = ()) -> list[PromptParts]:
    """Prompts of a prompting condition, in the run's prompt format (:func:`run_uses_chat`); the features (the
    text part) must equal the baseline's."""
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
    if "prompt_chat" in rows:
        return bool(len(rows)) and bool(rows["prompt_chat"].all())
    return bool(len(rows)) and starts_with_special_token(str(rows["prompt_prefix"].iloc[0]), tokenizer)


# -- the set-up of each stage-3 condition ------------------------------------------------------------------
def _zero_shot(s: Setup) -> tuple[Any, list[PromptParts]]:
    return s.model, condition_parts(s.cfg, s.rows, s.tokenizer, instruction=s.cfg.adapt.instruction)


def _few_shot(s: Setup) -> tuple[Any, list[PromptParts]]:
    demos = shared_demonstrations(s.data, s.cfg.adapt.k_shot, s.cfg.data.seed, balance=bool(s.cfg.data.label_column))
    s.info["demonstrations"] = [asdict(d) for d in demos]
    return s.model, condition_parts(s.cfg, s.rows, s.tokenizer, instruction=s.cfg.adapt.instruction,
                                    demonstrations=demos)


def _finetuned(s: Setup) -> tuple[Any, list[PromptParts]]:
    """Under ``accelerate launch`` the main process fine-tunes (as one process would) and saves the adapter,
    the others load it once saved: every process then explains its share with the same weights, those of
    a single-process run (see :mod:`shapshift.parallel`)."""
    if parallel.num_processes() == 1:
        return finetuned_model(s), base_parts(s.rows)
    model = None
    if parallel.is_main():
        with parallel.alone():  # Trainer must not see the other processes: they wait below
            model = finetuned_model(s)
    parallel.wait()
    if model is None:
        model = load_finetuned(s.model, s.store.path("adapters"), s.cfg.adapt.finetune)
    return model, base_parts(s.rows)


def finetuned_model(s: Setup) -> Any:
    """Fine-tune on the train split (or, resuming under the same settings, reload the saved adapter),
    measuring the task metric on the explained rows before and after; writes ``03_finetune.json``."""
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


def _prompt_setup(instruction: str) -> SetupFunction:
    def setup(s: Setup) -> tuple[Any, list[PromptParts]]:
        return s.model, condition_parts(s.cfg, s.rows, s.tokenizer, instruction=instruction)

    return setup


def _adapter_setup(folder: str) -> SetupFunction:
    def setup(s: Setup) -> tuple[Any, list[PromptParts]]:
        s.info["adapter"] = str(folder)
        if folder.startswith(SERVED_PREFIX):  # a fine-tuned model behind the same API: another model id
            return served_model(s.model, folder[len(SERVED_PREFIX):]), base_parts(s.rows)
        return load_adapter(s.model, folder), base_parts(s.rows)

    return setup


def served_model(model: Any, model_id: str) -> Any:
    """The model ``model_id`` behind the same API as ``model`` (hosted fine-tuning yields a model id, not weights)."""
    if not callable(getattr(model, "with_served_name", None)):
        raise ConfigError(f"adapt.adapters names the served model {model_id!r}, but the run's model is not behind an API.",
                          "Name a folder of an adapter or model, or set model.spec to the API (openai-compatible:URL).")
    return model.with_served_name(model_id)


def load_adapter(model: Any, folder: str | Path) -> Any:
    """The model with a PEFT adapter merged in (``folder`` holds ``adapter_config.json``), or the full
    model saved in ``folder`` (``config.json``) on the same device and dtype; the caller's model is untouched."""
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


#: The set-ups of the built-in conditions of stage 3, by name (their declarations: :mod:`shapshift.conditions`).
BUILTIN_SETUPS: dict[str, SetupFunction] = {"zero_shot": _zero_shot, "few_shot": _few_shot, "finetuned": _finetuned}


def setup_of(condition: Condition, cfg: RunConfig) -> SetupFunction:
    """The set-up function of ``condition`` under ``cfg``: its own, a built-in one, or a user's prompt or adapter."""
    if condition.setup is not None:
        return condition.setup
    if condition.name in BUILTIN_SETUPS:
        return BUILTIN_SETUPS[condition.name]
    if condition.name in cfg.adapt.prompts:
        return _prompt_setup(cfg.adapt.prompts[condition.name])
    if condition.name in cfg.adapt.adapters:
        return _adapter_setup(cfg.adapt.adapters[condition.name])
    raise ConfigError(f"Condition {condition.name!r} has no set-up: it is not registered with one, nor built in, nor "
                      "one of adapt.prompts or adapt.adapters.", "Register it with its set-up function "
                      "(conditions.register(Condition(..., setup=...))) or define it under adapt.prompts / adapt.adapters.")
