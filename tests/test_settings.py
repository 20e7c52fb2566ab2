"""One source of truth for settings: the config defines every key; the README, the notebook forms,
``explain()`` and ``explain-text`` name the same keys with the same defaults, and the documented
settings work from YAML, ``--set`` and the forms."""

from __future__ import annotations

import inspect
import json
import re

import numpy as np
import pytest
from conftest import REPO
from test_pipeline import tiny_config

import shapshift
from shapshift import form
from shapshift.cli import build_parser
from shapshift.config import ExplainConfig, GenerationConfig, config_keys
from shapshift.constants import SECTIONS
from shapshift.pipeline import load_condition, run
from shapshift.validation import load_config

README = (REPO / "README.md").read_text()
#: form fields that set up the notebook itself, not the run (where the run folder lives, resume, free-form keys)
NOTEBOOK_ONLY = {"run_root", "use_drive", "resume", "extra_settings"}


def readme_table() -> dict[str, str]:
    """``{key: default cell}`` of the README's configuration table."""
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[2] for m in re.finditer(r"^\| `([\w.]+)` \| `(.*?)` \|", section, re.M)}


def test_the_readme_table_lists_exactly_the_config_keys_and_defaults():
    table, keys = readme_table(), config_keys()
    assert set(table) == set(keys), f"missing in README: {set(keys) - set(table)}; not in config: {set(table) - set(keys)}"
    for key, default in keys.items():
        assert json.loads(table[key]) == default, f"{key}: README says {table[key]}, config.py {default!r}"


def test_every_setting_the_readme_or_a_notebook_names_exists():
    keys = config_keys()
    texts = [README] + [p.read_text() for p in sorted((REPO / "notebooks").glob("*.ipynb"))]
    pattern = rf"\b((?:{'|'.join(SECTIONS)})\.[a-z_]+(?:\.[a-z_]+)?)\b"  # e.g. explain.masking, adapt.finetune.r
    named = {m for text in texts for m in re.findall(pattern, text)}
    assert {"explain.masking", "explain.batch_size", "data.template"} <= named
    unknown = {k for k in named if k not in keys}
    assert not unknown, f"the README or a notebook names settings the config does not have: {sorted(unknown)}"


def test_explain_and_explain_text_defaults_are_the_configs():
    ex, gen = ExplainConfig(), GenerationConfig()
    params = inspect.signature(shapshift.explainers.explain).parameters
    for name in ("method", "score", "masking", "max_evals", "batch_size", "seed"):
        assert params[name].default == getattr(ex, name), name
    for name in ("max_new_tokens", "stop_at_newline"):
        assert params[name].default == getattr(gen, name), name
    args = build_parser().parse_args(["explain-text", "--text", "x", "--out", "x.html"])
    assert (args.method, args.score, args.masking, args.max_evals, args.seed, args.max_new_tokens) == (
        ex.method, ex.score, ex.masking, ex.max_evals, ex.seed, gen.max_new_tokens)


def test_every_form_field_sets_a_config_key():
    """Changing one form field changes the config key(s) it stands for, and nothing else breaks."""
    probes = {str: "x-changed", int: 7, float: 0.125, bool: False}
    base = form.config_from_form(form.FORM_DEFAULTS).to_dict()
    choices = {"model_spec": "smollm2-135m", "model_dtype": "bfloat16", "explain_method": "kernel",
               "explain_masking": "attention", "explain_unit": "word", "explain_precision": 0.9,
               "adapt_conditions": "few_shot", "adapt_finetune_method": "full", "compare_ks": "2, 4",
               "data_label_names": "0: bad, 1: good", "data_template": "Text: {input} =>", "data_target_column": "other",
               "data_label_column": "other", "run_name": "another", "data_chat": "no", "data_target_case": "lower",
               "explain_target": "reference"}
    flat = form._flatten
    for field, default in form.FORM_DEFAULTS.items():
        if field in NOTEBOOK_ONLY - {"run_root"}:
            continue
        value = choices.get(field, probes[type(default)])
        changed = form.config_from_form({**form.FORM_DEFAULTS, field: value}).to_dict()
        assert changed != base, f"form field {field} changes no config key"
        if field in form.FIELD_KEYS:  # exactly its own key
            diff = {k for k, v in flat(changed).items() if flat(base).get(k) != v}
            assert diff == {form.FIELD_KEYS[field]}, (field, diff)


def test_the_form_defaults_are_the_colab_config():
    from_form = form.config_from_form(form.FORM_DEFAULTS).to_dict()
    from_yaml = load_config(REPO / "configs" / "colab_sst2.yaml").to_dict()
    assert from_form == from_yaml


@pytest.mark.parametrize("how", ["yaml", "set", "form"])
def test_masking_and_automatic_batch_size_work_from_every_entry_point(tmp_path, how):
    if how == "yaml":
        path = tmp_path / "run.yaml"
        path.write_text("explain:\n  masking: attention\n  batch_size: null\n")
        cfg = load_config(path)
    elif how == "set":
        cfg = load_config(REPO / "configs" / "demo.yaml", ["explain.masking=attention", "explain.batch_size=null"])
    else:
        cfg = form.config_from_form({**form.FORM_DEFAULTS, "explain_masking": "attention",
                                     "extra_settings": "explain.batch_size=null"})
    assert cfg.explain.masking == "attention" and cfg.explain.batch_size is None


def test_a_run_explains_with_the_configured_masking(tmp_path, one_thread):
    """The pipeline passes explain.masking to the scorer: its values are explain()'s with that masking (attention,
    not the default deletion)."""
    cfg = tiny_config(tmp_path, explain__masking="attention", explain__batch_size=None, explain__method="exact",
                      explain__noise_floor=False, data__n_explain=2)
    run(cfg, ("preprocess", "explain"))
    ids, exps = load_condition(cfg.run_dir, "baseline")
    import pandas as pd

    rows = pd.read_parquet(cfg.run_dir / "01_dataset.parquet").set_index("example_id").loc[ids]
    model, tok = shapshift.load_model("tiny-gpt-neo")
    from shapshift.prompting import PromptParts

    for exp, row in zip(exps, rows.itertuples()):
        parts = PromptParts(row.prompt_prefix, row.input_text, row.prompt_suffix)
        target = [tok.convert_tokens_to_ids(tok.tokenize(t))[0] for t in exp.output_names]
        for masking, same in (("attention", True), ("delete", False)):
            [again] = shapshift.explain(model, tok, [parts], targets=[target], method="exact", masking=masking,
                                        progress=False)
            assert np.allclose(again.values, exp.values, atol=1e-5) == same, masking
