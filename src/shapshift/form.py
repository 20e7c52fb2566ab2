"""The notebooks' form → the run configuration the CLI uses, under the same names.

Each form field is a config key with its dots written as underscores (``explain_method`` is
``explain.method``, ``adapt_finetune_max_steps`` is ``adapt.finetune.max_steps``), so what a form sets
is what ``--set`` sets; a few fields belong to the notebook session (:data:`SESSION_FIELDS`: where the
run folders live, whether finished stages are reused, any further ``section.key=value`` settings).
Values are read as the config's types: a list from ``"a, b"``, a mapping from ``"0: negative, 1: positive"``,
text with ``\\n`` as a new line, and ``0`` or an empty field as "none" for settings that may be none.

Each notebook takes the settings of the stages before it from the run folder's manifest, so every
stage explains the same model and data the same way (:func:`resolve_config`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from . import stages
from .coerce import unescape
from .config import RunConfig, apply_overrides, config_keys, optional_keys, text_keys
from .errors import ConfigError
from .store import RunStore
from .validation import validate

log = logging.getLogger(__name__)

#: The config keys of the notebooks' form, in form order (the field name: dots → underscores).
FORM_KEYS: tuple[str, ...] = (
    "model.spec", "model.dtype",
    "data.source", "data.hub_split", "data.input_column", "data.target_column", "data.label_column",
    "data.label_names", "data.template", "data.chat", "data.target_case", "data.format_check_rows", "data.max_rows",
    "data.max_input_tokens", "data.n_explain",
    "generation.max_new_tokens",
    "explain.method", "explain.target", "explain.unit", "explain.masking", "explain.precision", "explain.max_evals", "explain.seed",
    "adapt.conditions", "adapt.instruction", "adapt.k_shot", "adapt.finetune.method", "adapt.finetune.r",
    "adapt.finetune.alpha", "adapt.finetune.learning_rate", "adapt.finetune.max_steps",
    "compare.ks", "compare.n_plot_examples",
)
#: The fields of the notebook session, with their defaults.
SESSION_FIELDS: dict[str, Any] = {"run_root": "outputs", "run_name": "sst2_gpt-neo-125m", "use_drive": True,
                                  "resume": True, "extra_settings": ""}


def field_name(key: str) -> str:
    """The form field of a config key: ``adapt.finetune.max_steps`` → ``adapt_finetune_max_steps``."""
    return key.replace(".", "_")


#: Field name → config key.
FIELD_KEYS: dict[str, str] = {field_name(k): k for k in FORM_KEYS}
#: The form's defaults (the Colab defaults: GPT-Neo 125M from the hub on SST-2), as the notebooks carry
#: them; they make ``configs/colab_sst2.yaml`` (tests check both).
FORM_DEFAULTS: dict[str, Any] = {
    "model_spec": "EleutherAI/gpt-neo-125m",
    "model_dtype": "float32",
    "data_source": "stanfordnlp/sst2",
    "data_hub_split": "train",
    "data_input_column": "sentence",
    "data_target_column": "label",
    "data_label_column": "label",
    "data_label_names": "0: negative, 1: positive",
    "data_template": "Review: {input}\nSentiment:",
    "data_chat": "auto",
    "data_target_case": "auto",
    "data_format_check_rows": 8,
    "data_max_rows": 2000,
    "data_max_input_tokens": 48,
    "data_n_explain": 8,
    "generation_max_new_tokens": 3,
    "explain_method": "auto",
    "explain_target": "baseline",
    "explain_unit": "token",
    "explain_masking": "auto",
    "explain_precision": 0.0,
    "explain_max_evals": 512,
    "explain_seed": 0,
    "adapt_conditions": "zero_shot, few_shot, finetuned",
    "adapt_instruction": "Decide whether the movie review is positive or negative.",
    "adapt_k_shot": 4,
    "adapt_finetune_method": "lora",
    "adapt_finetune_r": 8,
    "adapt_finetune_alpha": 16,
    "adapt_finetune_learning_rate": 0.001,
    "adapt_finetune_max_steps": 60,
    "compare_ks": "1, 3, 5",
    "compare_n_plot_examples": 3,
    **SESSION_FIELDS,
}


def form_values(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The form fields from a notebook's namespace (``globals()``); a field not defined keeps its default."""
    return {k: namespace.get(k, v) for k, v in FORM_DEFAULTS.items()}


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def parse_list(value: Any) -> list[str]:
    """``"a, b c"`` → ``["a", "b", "c"]`` (commas or spaces); a list passes through."""
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v for v in _text(value).replace(",", " ").split() if v]


def parse_mapping(value: Any, key: str) -> dict[str, str] | None:
    """``"0: negative, 1: positive"`` (or a dict) → ``{"0": "negative", "1": "positive"}``; empty → None."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()} or None
    text = _text(value).strip("{}")
    if not text:
        return None
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if ":" not in item:
            raise ConfigError(f"Form field {field_name(key)}={value!r}: {item.strip()!r} has no ':'.",
                              "Write key: value pairs, e.g. 0: negative, 1: positive (or leave it empty).")
        k, v = item.split(":", 1)
        out[k.strip().strip("'\"")] = v.strip().strip("'\"")
    return out


_YAML_WORDS = re.compile(r"(?i)(yes|no|on|off|y|n)")


def parse_overrides(value: Any) -> list[str]:
    """``extra_settings``: ``section.key=value`` items separated by ``;`` or new lines.

    A bare yes/no/on/off is kept as text (YAML would read it as a boolean, and ``data.chat=no``
    would become ``"False"``); boolean keys still read ``yes``/``no`` as true/false.
    """
    items = [item.strip() for line in _text(value).splitlines() for item in line.split(";") if item.strip()]
    out = []
    for item in items:
        key, eq, raw = item.partition("=")
        out.append(f'{key}="{raw.strip()}"' if eq and _YAML_WORDS.fullmatch(raw.strip()) else item)
    return out


def field_value(key: str, value: Any) -> Any:
    """A form value as the config key's type (see the module's docstring)."""
    default, optional = config_keys()[key], key in optional_keys()
    if optional and (value is None or (not isinstance(value, bool) and value == 0)
                     or _text(value).lower() in ("", "none", "null")):
        return None
    if isinstance(default, list):
        items = parse_list(value)
        return [int(v) for v in items] if default and isinstance(default[0], int) and all(
            v.lstrip("-").isdigit() for v in items) else items
    if isinstance(default, dict) or key == "data.label_names":
        return parse_mapping(value, key)
    if key in text_keys():
        return unescape(str(value)) if value is not None else ""
    return value


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def config_from_form(form: Mapping[str, Any], runs_dir: str | os.PathLike | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from the form fields (missing ones take :data:`FORM_DEFAULTS`).

    ``runs_dir`` (from :func:`shapshift.colab.setup_runtime`) replaces ``run_root`` as the folder of the
    run folders. ``extra_settings`` may set any other key (``compare.n_bootstrap=200; data.chat=no``).
    """
    unknown = sorted(k for k in form if k not in FORM_DEFAULTS)
    if unknown:
        raise ConfigError(f"Unknown form field(s) {unknown}.",
                          f"The form's fields are {', '.join(FORM_DEFAULTS)}; set other keys in extra_settings.")
    f = {**FORM_DEFAULTS, **form}
    values = _nest({key: field_value(key, f[name]) for name, key in FIELD_KEYS.items()})
    values["name"] = _text(f["run_name"])
    values["output_dir"] = str(runs_dir if runs_dir is not None else _text(f["run_root"]))
    return validate(RunConfig.from_dict(apply_overrides(values, parse_overrides(f["extra_settings"]))))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and f"{prefix}{k}" not in config_keys():  # a section, not a setting
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolve_config(form_cfg: RunConfig, stage: str) -> tuple[RunConfig, list[tuple[str, Any, Any]]]:
    """The config a stage runs with, and the form values it overrode: ``[(key, form value, used value)]``.

    Notebook 01 (``preprocess``) uses the form. Later stages start from the config in the run
    folder's manifest (written by the earlier stages) and take from the form only their own
    sections (:attr:`shapshift.stages.Stage.form_sections`), the run folder and the device. Without a
    manifest the form is used.
    """
    own = stages.get(stage).form_sections
    stored = RunStore(form_cfg.run_dir).manifest().get("config") if own is not None else None
    if own is None or not stored:
        return form_cfg, []
    try:
        base = RunConfig.from_dict(stored).to_dict()
    except ConfigError as exc:
        log.warning("the run folder's manifest holds a config this version cannot read (%s); using the form", exc)
        return form_cfg, []
    form = form_cfg.to_dict()
    for section in own:
        base[section] = form[section]
    base["name"], base["output_dir"] = form["name"], form["output_dir"]
    base["model"]["device"] = form["model"]["device"]
    cfg = validate(RunConfig.from_dict(base))
    used, given = _flatten(cfg.to_dict()), _flatten(form)
    overridden = [(k, given[k], used[k]) for k in given if given[k] != used.get(k)]
    return cfg, overridden


def stage_config(namespace: Mapping[str, Any], stage: str, runs_dir: str | os.PathLike | None = None) -> RunConfig:
    """The notebook's :class:`RunConfig` for ``stage``, from its form fields and the run folder; logs a summary."""
    form_cfg = config_from_form(form_values(namespace), runs_dir)
    cfg, overridden = resolve_config(form_cfg, stage)
    log.info("settings of stage %s:\n%s", stage, config_summary(cfg, stage, overridden))
    return cfg


def config_summary(cfg: RunConfig, stage: str, overridden: Sequence[tuple[str, Any, Any]] = ()) -> str:
    """Plain text: the run folder, the settings this stage uses, and form values that were not used."""
    d = cfg.to_dict()
    lines = [f"Run folder: {cfg.run_dir}", f"Model: {cfg.model.spec} (dtype {cfg.model.dtype})",
             f"Data: {cfg.data.source} [{cfg.data.input_column} -> {cfg.data.target_column}], "
             f"{cfg.data.n_explain} examples explained"]
    for s in stages.get(stage).form_sections or ("data",):
        items = ", ".join(f"{k}={v!r}" for k, v in _flatten(d[s], f"{s}.").items())
        lines.append(f"{s}: {items}")
    if overridden:
        lines.append("\nThe run folder already fixes these settings (the earlier notebooks chose them); "
                     "this form's values for them are not used:")
        lines += [f"  {k}: run folder {u!r} (form: {g!r})" for k, g, u in overridden]
        lines.append("To change them, rerun the earlier notebooks, or give this run a new run_name.")
    return "\n".join(lines)


# -- the form cell of the notebooks --------------------------------------------------------------------
#: Choices offered for a field (a dropdown; ``allow-input``: the user may type another value).
FIELD_CHOICES: dict[str, tuple[list[str], bool]] = {
    "model_spec": (["EleutherAI/gpt-neo-125m", "EleutherAI/gpt-neo-1.3B", "gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct",
                    "smollm2-135m"], True),
    "model_dtype": (["auto", "float32", "float16", "bfloat16"], False),
    "adapt_finetune_method": (["lora", "full"], False),
}
#: The form's paragraphs: each is written before the first field it names.
FIELD_HELP: dict[str, str] = {
    "model_spec": "**Model** (`model.*`): a Hugging Face hub id of any causal LM, a local folder, or `smollm2-135m` "
                  "(bundled, works offline). `float32` keeps SHAP values precise; `float16` halves the memory of large "
                  "models.",
    "data_source": "**Dataset** (`data.*`): a hub name (with its split) or a CSV/TSV/JSON/JSONL/Parquet path; the "
                   "columns with the input text, the reference output and the class label (leave empty for none); "
                   "names for label values (`0: negative, 1: positive`, empty to use them as they are); the prompt "
                   "template (`{input}` is the text, `\\n` a new line); the prompt format: plain completion or chat "
                   "turns (`data_chat`) and the label's casing (`data_target_case`), `auto` = the one under which the "
                   "model writes the reference most often on `data_format_check_rows` training rows (0 = no check). "
                   "`data_max_rows`: rows read (0 = all).",
    "generation_max_new_tokens": "**Explanations** (`generation.*`, `explain.*`): how many tokens are generated and "
                                 "explained; what is explained (`baseline`: the baseline's generation under every "
                                 "condition, `own`, `reference`, or `contrastive`: the reference label against the "
                                 "other label); the SHAP estimator (`auto`: exact Shapley values for short inputs, "
                                 "otherwise rounds of evaluations until the stated precision); the features (`token`, "
                                 "`word` or `sentence`); `explain_precision`: the expected rank agreement of two runs "
                                 "to reach (0 = the device's default); `explain_max_evals`: the cap on model "
                                 "evaluations per example.",
    "adapt_conditions": "**Conditions** (`adapt.*`, notebook 03): a zero-shot instruction, few-shot prompts with "
                        "`adapt_k_shot` demonstrations, and fine-tuning (LoRA rank `r`, scale `alpha`; `max_steps` "
                        "optimiser steps at `learning_rate`).",
    "compare_ks": "**Overlap** (`compare.*`, notebook 04): the k of top-k overlap, and how many examples get text plots.",
    "run_root": "**Run folder** `run_root/run_name`: on Google Drive when `use_drive` is ticked, which the four "
                "notebooks need to share results (in Colab each notebook runs on its own machine) and which keeps them "
                "through a disconnect. `resume` reuses stages already finished with the same settings. "
                "`extra_settings`: any other config key, e.g. `compare.n_bootstrap=200; data.on_too_long=drop`.",
}
FORM_TITLE = "#@title Settings (the same form in all four notebooks; a field is the config key with _ for .) " \
             '{ display-mode: "form" }'


def _param(name: str, value: Any) -> str:
    from .constants import EXPLAIN_MASKINGS, TARGET_CASES, TARGETS, UNITS
    from .explainers import shap_methods

    choices = {**FIELD_CHOICES, "explain_method": (list(shap_methods()), False),
               "explain_target": (list(TARGETS), False), "data_chat": (["auto", "yes", "no"], False),
               "data_target_case": (["auto", *TARGET_CASES], False),
               "explain_masking": (list(EXPLAIN_MASKINGS), False), "explain_unit": (list(UNITS), False)}
    if name in choices:
        options, free = choices[name]
        kind = "[" + ", ".join(f'"{o}"' for o in options) + "]" + (" {allow-input: true}" if free else "")
    else:
        kind = "{type:%s}" % ('"boolean"' if isinstance(value, bool) else '"integer"' if isinstance(value, int)
                            else '"number"' if isinstance(value, float) else '"string"')
    text = '"' + value.replace("\n", "\\n").replace('"', '\\"') + '"' if isinstance(value, str) else repr(value)
    return f"{name} = {text}  #@param {kind}"


def form_cell_source() -> str:
    """The source of the notebooks' form cell: every field of :data:`FORM_DEFAULTS` as a Colab ``#@param``."""
    lines = [FORM_TITLE]
    for name, value in FORM_DEFAULTS.items():
        if name in FIELD_HELP:
            lines.append(f"#@markdown {FIELD_HELP[name]}")
        lines.append(_param(name, value))
    return "\n".join(lines)


def write_form_cells(paths: Sequence[str | os.PathLike]) -> None:
    """Replace the form cell (tagged ``parameters``) of each notebook with :func:`form_cell_source`."""
    import nbformat

    for path in paths:
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
        cell.source = form_cell_source()
        nbformat.write(nb, path)


if __name__ == "__main__":  # python -m shapshift.form notebooks/*.ipynb
    import sys

    write_form_cells(sys.argv[1:])
