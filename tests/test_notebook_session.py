"""The helpers the Colab notebooks call (shapshift.form, .colab, .display), on synthetic run folders (fast, no model)."""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shap

from shapshift import colab, display, form, stages
from shapshift.config import RunConfig
from shapshift.errors import ArtifactError, ConfigError
from shapshift.store import RunStore, save_explanations, write_json
from shapshift.validation import load_config

REPO = Path(__file__).resolve().parents[1]
TOKENS = ["The", " plot", " was", " dull", " &", " <b>slow</b>", "."]


# -- form fields -> RunConfig -----------------------------------------------------------------------
def test_defaults_are_the_colab_run():
    cfg = form.config_from_form({})
    assert cfg.model.spec == "EleutherAI/gpt-neo-125m" and cfg.model.dtype == "float32"
    assert cfg.data.source == "stanfordnlp/sst2" and cfg.data.input_column == "sentence"
    assert cfg.data.label_names == {"0": "negative", "1": "positive"}
    assert cfg.data.template == "Review: {input}\nSentiment:"
    assert cfg.adapt.finetune.max_steps == 60 and cfg.adapt.finetune.r == 8
    assert cfg.compare.ks == [1, 3, 5]
    assert cfg.run_dir == Path("outputs") / "sst2_gpt-neo-125m"


def test_form_values_are_parsed():
    cfg = form.config_from_form({
        "data_template": "Q: {input}\\nA:", "data_label_names": "{'0': 'neg', 1: pos}", "data_target_column": "none",
        "data_label_column": "", "data_max_rows": 0, "adapt_finetune_max_steps": 0, "compare_ks": "2 4,8", "adapt_conditions": "zero_shot,finetuned",
        "extra_settings": "compare.n_bootstrap=50; data.chat=no\nexplain.noise_floor=false",
        "adapt_instruction": "Say it.\\n", "explain_seed": 3,
    }, runs_dir="/tmp/runs")
    assert cfg.data.template == "Q: {input}\nA:" and cfg.adapt.instruction == "Say it.\n"
    assert cfg.data.label_names == {"0": "neg", "1": "pos"}
    assert cfg.data.target_column is None and cfg.data.label_column is None
    assert cfg.data.max_rows is None and cfg.adapt.finetune.max_steps is None
    assert cfg.compare.ks == [2, 4, 8] and cfg.adapt.conditions == ["zero_shot", "finetuned"]
    assert cfg.compare.n_bootstrap == 50 and cfg.data.chat == "no" and cfg.explain.noise_floor is False
    assert cfg.explain.seed == 3 and cfg.data.seed == 0
    assert cfg.output_dir == "/tmp/runs"
    assert form.parse_mapping("", "data.label_names") is None
    assert form.parse_mapping({0: "a"}, "data.label_names") == {"0": "a"}


@pytest.mark.parametrize("fields, message", [
    ({"compare_ks": "1, three"}, "ks"),
    ({"data_label_names": "0 negative"}, "label_names"),
    ({"extra_settings": "compare.no_such_key=1"}, "no_such_key"),
    ({"data_template": "no slot"}, "{input}"),
    ({"explain_method": "magic"}, "magic"),
])
def test_bad_form_values_say_what_to_fix(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        form.config_from_form(fields)


def test_form_values_take_the_fields_from_a_namespace():
    values = form.form_values({"data_n_explain": 3, "unrelated": 1, "__name__": "__main__"})
    assert values["data_n_explain"] == 3 and "unrelated" not in values
    assert set(values) == set(form.FORM_DEFAULTS)


# -- settings from the run folder ---------------------------------------------------------------------
def _started_run(tmp_path, **fields) -> RunConfig:
    """A run folder whose manifest holds the config notebook 01 started it with."""
    cfg = form.config_from_form({"model_spec": "smollm2-135m", "data_n_explain": 2, "explain_max_evals": 64, **fields},
                                tmp_path)
    RunStore(cfg.run_dir).update_manifest(config=cfg.to_dict())
    return cfg


def test_later_stages_keep_the_run_folders_model_and_data(tmp_path, caplog):
    first = _started_run(tmp_path)
    given = form.config_from_form({"data_n_explain": 50, "explain_max_evals": 128, "adapt_k_shot": 1}, tmp_path)  # model: the default
    cfg, overridden = form.resolve_config(given, "explain")
    assert cfg.model.spec == "smollm2-135m" and cfg.data.n_explain == 2  # from the manifest
    assert cfg.explain.max_evals == 128  # stage 2's own section, from the form
    assert cfg.adapt.k_shot == first.adapt.k_shot  # not stage 2's: from the manifest
    keys = {k for k, _, _ in overridden}
    assert {"model.spec", "data.n_explain", "adapt.k_shot"} <= keys and "explain.max_evals" not in keys
    cfg, _ = form.resolve_config(given, "adapt")
    assert cfg.adapt.k_shot == 1 and cfg.explain.max_evals == 64
    # notebook 01 starts the run: the form wins
    cfg, overridden = form.resolve_config(given, "preprocess")
    assert cfg.model.spec == "EleutherAI/gpt-neo-125m" and overridden == []
    form.stage_config({"data_n_explain": 50, "explain_max_evals": 128}, "compare", tmp_path)
    out = caplog.text
    assert "not used" in out and "model.spec: run folder 'smollm2-135m'" in out


def test_without_a_manifest_the_form_is_used(tmp_path):
    given = form.config_from_form({"data_n_explain": 5}, tmp_path)
    cfg, overridden = form.resolve_config(given, "compare")
    assert cfg == given and overridden == []
    with pytest.raises(ConfigError):
        form.resolve_config(given, "nonsense")


def test_missing_earlier_results_name_the_notebook_to_run(tmp_path):
    cfg = _started_run(tmp_path)
    with pytest.raises(ArtifactError, match="01_preprocess.ipynb") as err:
        stages.require_inputs(cfg, "explain")
    assert "use_drive" in str(err.value)
    with pytest.raises(ArtifactError, match="02_baseline_shap.ipynb"):
        colab.run_stage(cfg, "compare")
    stages.require_inputs(cfg, "preprocess")  # needs nothing


# -- runtime ------------------------------------------------------------------------------------------
def _logged(caplog) -> str:
    """What shapshift logged since the last call (the notebooks show it as the cell's output)."""
    text = caplog.text
    caplog.clear()
    return text


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO, logger="shapshift")


def test_setup_runtime_outside_colab(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(REPO / "notebooks")
    assert colab.setup_runtime(True, "outputs", colab=False) == REPO / "outputs"  # the checkout, not notebooks/
    assert "Colab only" in _logged(caplog)
    assert colab.setup_runtime(False, str(tmp_path / "abs"), colab=False) == tmp_path / "abs"
    assert (tmp_path / "abs").is_dir()
    monkeypatch.chdir(tmp_path)
    assert colab.setup_runtime(False, "runs", colab=False) == tmp_path / "runs"


def test_setup_runtime_in_colab_mounts_drive(tmp_path, caplog):
    mounted = []

    def mount(point):
        mounted.append(point)
        (Path(point) / "MyDrive").mkdir(parents=True)

    drive = tmp_path / "drive"
    runs = colab.setup_runtime(True, "outputs", colab=True, mount=mount, drive_mountpoint=str(drive))
    assert mounted == [str(drive)] and runs == drive / "MyDrive" / "shapshift" / "outputs" and runs.is_dir()
    assert "Google Drive" in _logged(caplog)
    colab.setup_runtime(True, "outputs", colab=True, mount=mount, drive_mountpoint=str(drive))  # mounted: no 2nd call
    assert len(mounted) == 1
    with pytest.raises(ConfigError, match="did not mount"):
        colab.setup_runtime(True, "outputs", colab=True, mount=lambda p: None, drive_mountpoint=str(tmp_path / "x"))
    runs = colab.setup_runtime(False, "outputs", colab=True, colab_base=str(tmp_path / "content"))
    assert runs == tmp_path / "content" / "shapshift" / "outputs"
    assert "use_drive" in _logged(caplog)


def test_in_colab(monkeypatch):
    assert colab.in_colab() is False
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert colab.in_colab() is True


def test_gpu_summary(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    text = colab.gpu_summary()
    assert "No GPU" in text and "Runtime → Change runtime type" in text and "T4 GPU" in text
    assert "fine" in colab.gpu_summary(needed=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30))
    assert "Tesla T4 (15.0 GiB)" in colab.gpu_summary()


def test_setup_logging_adds_one_handler():
    import logging

    colab.setup_logging()
    colab.setup_logging()
    handlers = [h for h in logging.getLogger("shapshift").handlers if getattr(h, "_shapshift_notebook", False)]
    assert len(handlers) == 1


# -- a synthetic run folder ------------------------------------------------------------------------
def _explanation(rng, scale=1.0, base=None, n_out=2):
    values = (base if base is not None else rng.normal(size=(len(TOKENS), n_out))) + scale * rng.normal(size=(len(TOKENS), n_out))
    return shap.Explanation(values=values, base_values=np.zeros(n_out), data=np.array(TOKENS, dtype=object),
                            output_names=[" neg", "ative"][:n_out])


@pytest.fixture
def run(tmp_path):
    """What stages 1-3 write, with made-up values: 3 explained examples, 3 conditions, a fine-tuning log."""
    rng = np.random.default_rng(0)
    cfg = form.config_from_form({"data_n_explain": 3, "extra_settings": "compare.n_bootstrap=50", "compare_ks": "1, 2",
                               "compare_n_plot_examples": 2}, tmp_path)
    store = RunStore(cfg.run_dir)
    store.update_manifest(config=cfg.to_dict(), stages={"adapt:few_shot": {"demonstrations": [
        {"text": "Great fun.", "answer": " positive"}]}})
    ids = [4, 9, 17]
    data = pd.DataFrame({
        "example_id": ids + [20, 21], "split": ["explain"] * 3 + ["train"] * 2,
        "source_text": ["The plot was dull & <b>slow</b>."] * 5, "target_text": [" negative"] * 4 + [" positive"],
        "label": ["negative"] * 4 + ["positive"], "n_input_tokens": [7] * 5, "truncated": [False] * 4 + [True],
        "prompt_text": ["Review: The plot was dull & <b>slow</b>.\nSentiment:"] * 5,
    })
    store.write_parquet(data, "01_dataset.parquet")
    base = [_explanation(rng, 0.0) for _ in ids]
    save_explanations(store, "02_baseline", base, ids, "baseline")
    save_explanations(store, "02_baseline_rerun", [_explanation(rng, 0.1, e.values) for e in base], ids, "baseline_rerun")
    for cond, stem, scale in [("zero_shot", "03_zero_shot", 0.5), ("finetuned", "03_finetuned", 2.0)]:
        save_explanations(store, stem, [_explanation(rng, scale, e.values) for e in base], ids, cond)

    def gens(cond, texts):
        return pd.DataFrame({"example_id": ids, "condition": cond, "generated_text": texts, "label": "negative",
                             "label_match": [float(t.strip().startswith("negative")) for t in texts],
                             "explained_logprob": [-1.0, -2.0, -3.0]})

    store.write_parquet(gens("baseline", [" negative", " bad", " negative"]), "02_generations.parquet")
    store.write_parquet(pd.concat([gens("zero_shot", [" negative"] * 3), gens("finetuned", [" neg", " negative", "x"])]),
                        "03_generations.parquet")
    write_json({"before": {"accuracy": 0.5, "mean_target_logprob": -3.0, "n_rows": 3},
                "after": {"accuracy": 1.0, "mean_target_logprob": -0.5, "n_rows": 3},
                "losses": [2.0, 1.5, 1.0], "steps": 3, "seconds": 1.2, "method": "lora"}, store.path("03_finetune.json"))
    store.record("03_finetune.json")

    store.update_manifest(stages={s: {**stages.stage_record(cfg, s), "complete": True} for s in ("preprocess", "explain", "adapt")})
    return cfg


def test_dataset_tables(run):
    tables = display.dataset_tables(run.run_dir)
    counts = next(iter(tables.values()))
    assert counts.loc["explain", "examples"] == 3 and counts.loc["train", "truncated"] == 1
    shown = [v for k, v in tables.items() if k.startswith("The examples")][0]
    assert list(shown.index) == [4, 9, 17]
    assert any(isinstance(v, str) and "Sentiment:" in v for v in tables.values())


def test_generation_tables(run):
    table = display.generations_by_condition(run.run_dir)
    assert list(table.index) == [4, 9, 17]
    assert table.loc[9, "baseline: generated"] == "' bad' ✗" and table.loc[4, "zero-shot: generated"] == "' negative' ✓"
    only = display.generations_by_condition(run.run_dir, ["baseline"])
    assert [c for c in only.columns if "generated" in c] == ["baseline: generated"]
    acc = display.accuracy_table(run.run_dir)
    assert acc.loc["baseline", "label match (share)"] == pytest.approx(2 / 3, abs=1e-3)
    assert acc.loc["zero-shot", "label match (share)"] == 1.0
    assert len(display.generation_tables(run.run_dir, ["baseline"])) == 2


def _valid_colours(page: str) -> bool:
    colours = re.findall(r"rgba\([^)]*\)", page)
    return bool(colours) and all(re.fullmatch(r"rgba\(\s*[0-9.]+\s*,\s*[0-9.]+\s*,\s*[0-9.]+\s*,\s*[0-9.eE+-]+\s*\)", c)
                                 for c in colours)


def test_text_plots(run):
    page = display.text_plots_html(run.run_dir, n_examples=2)
    assert page.count("<h3>Example ") == 2 and "Example 4" in page and "Example 17" not in page
    for label in ("baseline", "zero-shot", "fine-tuned"):
        assert f"<h4>{label}</h4>" in page
    assert "noise floor" not in page  # the rerun is not a condition
    assert display.TEXT_PLOT_CLASS in page and "_tp_" in page and "np.float64" not in page and _valid_colours(page)
    assert "&lt;b&gt;slow" in page and "<b>slow</b>" not in page  # tokens are escaped
    compact = display.text_plots_html(run.run_dir, n_examples=2, per_token=False)
    assert len(compact) < len(page) / 1.5 and "summed over the generated tokens" in compact
    one = display.text_plots_html(run.run_dir, ["baseline"], example_ids=[17])
    assert "Example 17" in one and "zero-shot" not in one
    assert display.show_text_plots(run.run_dir, ["baseline"], 1).data.count("<h3>") == 1
    with pytest.raises(ArtifactError):
        display.text_plots_html(run.run_dir, ["few_shot"])


def test_top_tokens(run):
    table = display.top_tokens_table(run.run_dir, n_examples=1, top=2)
    assert list(table.index.get_level_values("condition")) == ["baseline", "zero-shot", "fine-tuned"]
    assert table.iloc[0, 0].count(",") == 1


def test_finetune_tables(run):
    tables = display.finetune_tables(run.run_dir)
    metrics = next(iter(tables.values()))
    assert metrics.loc["accuracy", "before"] == 0.5 and metrics.loc["accuracy", "after"] == 1.0
    images = [v for v in tables.values() if type(v).__name__ == "Image"]
    assert len(images) == 1 and images[0].data[:4] == b"\x89PNG"
    assert any(isinstance(v, pd.DataFrame) and "answer" in v.columns for v in tables.values())


def test_compare_stage_and_its_displays(run, caplog, monkeypatch):
    monkeypatch.setattr(colab, "load_model_for", lambda cfg: pytest.fail("compare needs no model"))
    colab.run_stage(run, "compare")
    assert "finished" in _logged(caplog)
    tables = display.overlap_tables(run.run_dir)
    head = next(iter(tables.values()))
    assert {"zero-shot", "fine-tuned"} <= set(head["condition"]) and "top-k overlap" in set(head["metric"])
    names = [p.name for p in display.figure_paths(run.run_dir)]
    assert names[:5] == ["movement.png", "overlap_at_k.png", "overlap_heatmap.png", "per_example.png",
                         "finetune_loss.png"]
    assert names[5:] == ["example_4_tokens.png", "example_9_tokens.png"]
    link = colab.report_link(run.run_dir, colab=False).data
    assert "report.html" in link and "MB" in link
    drive = colab.report_link(run.run_dir, colab=True).data
    assert "Download" in drive or "drive" in drive
    check_report_link(run.run_dir)
    display.show_figures(run.run_dir)  # displays without error
    colab.run_stage(run, "compare")  # done under the same settings: skipped
    assert "reused" in _logged(caplog)
    table = display.artifacts_table(run.run_dir, "compare")
    assert "report.html" in table.index and set(table["sha256"]) == {"ok", "(the index)"}


def test_artifacts_table_flags_changed_files(run):
    (run.run_dir / "02_baseline.parquet").write_bytes(b"truncated")
    table = display.artifacts_table(run.run_dir, "explain")
    assert table.loc["02_baseline.parquet", "sha256"] == "changed since written"
    assert table.loc["02_generations.parquet", "sha256"] == "ok"
    assert "01_dataset.parquet" not in table.index and "01_dataset.parquet" in display.artifacts_table(run.run_dir).index


def test_form_defaults_are_json_plain():
    """Form defaults are what a Colab #@param can hold: str, int, float or bool."""
    assert all(isinstance(v, (str, int, float, bool)) for v in form.FORM_DEFAULTS.values())
    json.dumps(form.FORM_DEFAULTS)


def test_run_stage_starts_afresh_when_the_settings_changed(run, monkeypatch, caplog):
    from shapshift import pipeline

    calls = []
    monkeypatch.setattr(colab, "load_model_for", lambda cfg: (None, None))
    monkeypatch.setattr(pipeline, "adapt_stage", lambda cfg, m, t, *, resume: calls.append(resume))
    RunStore(run.run_dir).update_manifest(stages={"adapt": {"fingerprint": "old-settings", "complete": True}})
    with pytest.raises(ArtifactError, match="would remove them"):  # finished results of other settings: never unasked
        colab.run_stage(run, "adapt", resume=True)
    assert calls == []
    RunStore(run.run_dir).update_manifest(stages={"adapt": {"fingerprint": "old-settings", "complete": False}})
    colab.run_stage(run, "adapt", resume=True)  # the stage discards unfinished results of other settings itself
    assert calls == [True] and "settings changed" in _logged(caplog)
    RunStore(run.run_dir).update_manifest(stages={"adapt": {"fingerprint": stages.stage_fingerprint(run, "adapt")}})
    colab.run_stage(run, "adapt", resume=True)  # interrupted under the same settings: resumed
    assert calls == [True, True] and "did not finish last time" in _logged(caplog)


def test_figures_come_in_numeric_example_order(tmp_path):
    """Item 6: example_2 before example_10 (not the string order)."""
    folder = tmp_path / "figures"
    folder.mkdir()
    for name in ("example_10_tokens.png", "example_2_tokens.png", "overlap_at_k.png", "example_1_tokens.png"):
        (folder / name).write_bytes(b"png")
    assert [p.name for p in display.figure_paths(tmp_path)] == [
        "overlap_at_k.png", "example_1_tokens.png", "example_2_tokens.png", "example_10_tokens.png"]


def check_report_link(run_dir) -> None:
    """Item 9: in Colab the report is a clickable link that carries the file (a click downloads it)."""
    import base64
    import re

    page = colab.report_link(run_dir, colab=True).data
    found = re.search(r"<a download='report.html' href='data:text/html;base64,([A-Za-z0-9+/=]+)'>", page)
    assert found, page[:500]
    assert base64.b64decode(found[1]) == (Path(run_dir) / "report.html").read_bytes()


def test_every_form_field_is_a_config_key_under_the_same_name():
    """A field is its config key with dots as underscores; --set with that key gives the same config."""
    from shapshift.config import config_keys

    for name, key in form.FIELD_KEYS.items():
        assert key in config_keys() and name == key.replace(".", "_")
    assert set(form.FORM_DEFAULTS) == set(form.FIELD_KEYS) | set(form.SESSION_FIELDS)
    fields = {"data_n_explain": 5, "adapt_finetune_max_steps": 7, "explain_unit": "word", "explain_precision": 0.9,
              "adapt_conditions": "few_shot"}
    by_form = form.config_from_form(fields, "/tmp/runs")
    by_set = form.config_from_form({}, "/tmp/runs").to_dict()
    from shapshift.config import apply_overrides

    by_set = load_config(apply_overrides(by_set, ["data.n_explain=5", "adapt.finetune.max_steps=7",
                                                          "explain.unit=word", "explain.precision=0.9",
                                                          "adapt.conditions=[few_shot]"]))
    assert by_form == by_set


def test_unknown_form_fields_are_refused():
    with pytest.raises(ConfigError, match="n_explain"):
        form.config_from_form({"n_explain": 3})
