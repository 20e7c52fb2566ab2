"""The pipeline end to end on the tiny GPT-Neo: artifacts, the contract across conditions, resume, safety."""

import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_DATA, REPO

from shapshift.config import RunConfig
from shapshift.errors import ArtifactError
from shapshift.pipeline import STAGES, load_condition, run
from shapshift.store import RunStore, load_explanations, sha256_file
from shapshift.validation import load_config


def tiny_config(tmp_path, name="run", **overrides) -> RunConfig:
    values = {
        "name": name, "output_dir": str(tmp_path),
        "model": {"spec": "tiny-gpt-neo"},
        # no prompt-format check (about 16 generation calls, 7-15 s a run): finished_run keeps it (FINISHED_RUN)
        "data": {"source": str(DEMO_DATA), "n_explain": 3, "max_input_tokens": 10, "max_rows": 40, "format_check_rows": 0},
        "generation": {"max_new_tokens": 2},
        "explain": {"method": "sampling", "max_evals": 24, "batch_size": 32},
        "adapt": {"k_shot": 2, "finetune": {"max_steps": 2, "batch_size": 4, "max_length": 48}},
        "compare": {"n_bootstrap": 100, "n_plot_examples": 1},
    }
    for key, value in overrides.items():
        section, field = key.split("__")
        values.setdefault(section, {})[field] = value
    return load_config(values)


#: finished_run's settings besides tiny_config's: log-odds, the score that is not the default, so that with
#: logprob_run (the default score) both units run end to end; and the prompt-format check at its default size (the
#: other tiny runs skip it: it is the same work in each, and tests/test_formats.py checks what it decides).
FINISHED_RUN = {"explain__score": "log_odds", "data__format_check_rows": 8}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("runs"), **FINISHED_RUN)
    run(cfg, STAGES)
    return cfg


def test_all_stages_write_their_artifacts(finished_run):
    store = RunStore(finished_run.run_dir)
    man = store.manifest()
    for name in ["01_dataset.parquet", "02_generations.parquet", "02_baseline.parquet", "02_baseline.pkl",
                 "02_baseline_rerun.parquet", "03_zero_shot.parquet", "03_few_shot.parquet", "03_finetuned.parquet",
                 "03_finetune.json", "03_generations.parquet", "04_overlap.parquet", "04_summary.csv"]:
        assert name in man["artifacts"], name
        assert sha256_file(store.path(name)) == man["artifacts"][name]["sha256"]
    assert (store.path("report.html")).stat().st_size > 1000
    assert all(man["stages"][s]["complete"] for s in STAGES)
    assert not store.path(".partial").exists() or not any(store.path(".partial").rglob("*.npz"))


def test_every_condition_explains_the_same_features_and_target(finished_run):
    base_ids, base = load_condition(finished_run.run_dir, "baseline")
    data = pd.read_parquet(finished_run.run_dir / "01_dataset.parquet").set_index("example_id")
    for condition in ("zero_shot", "few_shot", "finetuned", "baseline_rerun"):
        ids, exps = load_condition(finished_run.run_dir, condition)
        assert ids == base_ids
        for i, a, b in zip(ids, base, exps):
            assert list(a.data) == list(b.data) == list(data.loc[i, "input_tokens"])
            assert list(a.output_names) == list(b.output_names)  # the baseline's generation, by default
            assert b.values.shape == a.values.shape


def test_few_shot_demonstrations_exclude_explained_examples(finished_run):
    man = RunStore(finished_run.run_dir).manifest()
    demos = man["stages"]["adapt:few_shot"]["demonstrations"]
    data = pd.read_parquet(finished_run.run_dir / "01_dataset.parquet")
    explained = set(data.loc[data["split"] == "explain", "source_text"])
    assert len(demos) == 2 and not explained & {d["text"] for d in demos}


def test_finetuning_changed_the_model_and_reports_its_metric(finished_run):
    summary = json.loads((finished_run.run_dir / "03_finetune.json").read_text())
    assert len(summary["losses"]) == summary["steps"] == 2
    assert "accuracy" in summary["before"] and "accuracy" in summary["after"]
    gens = pd.read_parquet(finished_run.run_dir / "03_generations.parquet")
    base = pd.read_parquet(finished_run.run_dir / "02_generations.parquet")
    ft = gens[gens["condition"] == "finetuned"].sort_values("example_id")
    # the same target scored by the fine-tuned model: a different log-probability
    assert not np.allclose(ft["explained_logprob"].to_numpy(), base.sort_values("example_id")["explained_logprob"].to_numpy())


def _hashes(run_dir) -> dict[str, str]:
    return {n: v["sha256"] for n, v in RunStore(run_dir).manifest()["artifacts"].items()}


def _copy_run(cfg: RunConfig, tmp_path, **overrides) -> RunConfig:
    import shutil

    shutil.copytree(cfg.run_dir, tmp_path / cfg.name)
    values = cfg.to_dict()
    values["output_dir"] = str(tmp_path)
    for key, value in overrides.items():
        section, field = key.split("__")
        values[section][field] = value
    return load_config(values)


def test_plain_rerun_reuses_every_finished_stage(finished_run, tmp_path, caplog):
    """Item 1: a re-run of a finished run redoes nothing, deletes nothing, and says so."""
    cfg = _copy_run(finished_run, tmp_path)
    before = _hashes(cfg.run_dir)
    files = sorted(p.relative_to(cfg.run_dir) for p in cfg.run_dir.rglob("*"))
    caplog.set_level("INFO")
    run(cfg)
    for stage in STAGES:
        assert f"stage {stage}: reused (finished under the same settings, artifacts intact)" in caplog.text
    assert _hashes(cfg.run_dir) == before
    assert sorted(p.relative_to(cfg.run_dir) for p in cfg.run_dir.rglob("*")) == files


def test_one_stage_on_a_finished_run_keeps_the_later_stages(finished_run, tmp_path, caplog):
    """Item 1: `shapshift explain` on a finished run no longer deletes 03_*, 04_*, report, figures, adapters."""
    cfg = _copy_run(finished_run, tmp_path)
    caplog.set_level("INFO")
    run(cfg, ("explain",))
    assert "stage explain: reused" in caplog.text
    for name in ("03_zero_shot.parquet", "03_finetune.json", "04_summary.csv", "report.html", "figures", "adapters"):
        assert (cfg.run_dir / name).exists(), name


def test_changed_setting_redoes_its_stage_and_lists_what_goes(finished_run, tmp_path, caplog):
    """Item 1: the stage whose settings changed is redone with the changed keys named; the later
    stages' results are removed and listed; the earlier ones are reused."""
    cfg = _copy_run(finished_run, tmp_path, explain__seed=5)
    before = _hashes(cfg.run_dir)
    caplog.set_level("INFO")
    run(cfg, ("preprocess", "explain"), replace=True)  # without replace it is refused (the test below)
    assert "stage preprocess: reused" in caplog.text
    assert "stage explain: running (its settings changed: explain.seed)" in caplog.text
    removed = next(r.getMessage() for r in caplog.records if "results made from the old ones are removed" in r.getMessage())
    for name in ("03_zero_shot.parquet", "03_finetune.json", "04_summary.csv", "report.html", "figures/", "adapters/"):
        assert name in removed, name
        assert not (cfg.run_dir / name.rstrip("/")).exists()
    after = _hashes(cfg.run_dir)
    assert after["01_dataset.parquet"] == before["01_dataset.parquet"]
    assert after["02_baseline.parquet"] != before["02_baseline.parquet"]


def test_changed_setting_never_removes_finished_results_unasked(finished_run, tmp_path):
    """Issue 28 item 6: `shapshift run --set data.n_explain=4` on a finished demo removed its results (logged, not
    asked) and the README's next line, `shapshift compare`, then exited 2. Now the run is refused, nothing is
    removed, and the message names the changed setting and both ways on (another name, --replace)."""
    cfg = _copy_run(finished_run, tmp_path, data__n_explain=cfg_n(finished_run) + 1)
    before = _hashes(cfg.run_dir)
    with pytest.raises(ArtifactError, match=r"(?s)data\.n_explain.*would remove them") as err:
        run(cfg)
    assert "--name" in err.value.fix and "--replace" in err.value.fix
    assert _hashes(cfg.run_dir) == before
    original = _copy_run(finished_run, tmp_path / "again")
    run(original, ("compare",))  # the folder is still the finished run it was: the next line works on it


def cfg_n(cfg) -> int:
    return cfg.data.n_explain


def test_compare_setting_redoes_compare_only(finished_run, tmp_path, caplog):
    cfg = _copy_run(finished_run, tmp_path, compare__n_bootstrap=50)
    before = _hashes(cfg.run_dir)
    caplog.set_level("INFO")
    run(cfg)
    assert "stage adapt: reused" in caplog.text
    assert "stage compare: running (its settings changed: compare.n_bootstrap)" in caplog.text
    after = _hashes(cfg.run_dir)
    assert after["03_finetuned.parquet"] == before["03_finetuned.parquet"]


def test_fresh_starts_over_and_lists_what_goes(finished_run, tmp_path, caplog):
    cfg = _copy_run(finished_run, tmp_path)
    caplog.set_level("INFO")
    run(cfg, ("preprocess",), fresh=True)
    assert "--fresh: starting over from stage preprocess, so the results made from the old ones are removed" in caplog.text
    assert "stage preprocess: running (not run yet in this folder)" in caplog.text
    assert not (cfg.run_dir / "02_baseline.parquet").exists() and not (cfg.run_dir / "report.html").exists()


def test_compare_refuses_an_incomplete_run(finished_run, tmp_path):
    """Item 2: a run whose adapt stage did not finish is not summarised as if it were whole."""
    cfg = _copy_run(finished_run, tmp_path)
    store = RunStore(cfg.run_dir)
    man = store.manifest()
    man["stages"]["adapt"]["complete"] = False  # as when fine-tuning failed after two conditions
    man["stages"].pop("compare")
    (cfg.run_dir / "manifest.json").write_text(json.dumps(man))
    for name in ("03_finetuned.parquet", "03_finetuned.pkl"):
        (cfg.run_dir / name).unlink()
    with pytest.raises(ArtifactError) as err:
        run(cfg, ("compare",))
    message = " ".join(str(err.value).split())
    assert "incomplete" in message and "missing or stale: finetuned (stage adapt: it did not finish" in message
    done = subprocess.run([sys.executable, "-m", "shapshift.cli", "compare", "--config", str(_yaml(cfg, tmp_path))],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "missing or stale: finetuned" in " ".join(done.stderr.split()), done.stderr


def _yaml(cfg: RunConfig, tmp_path):
    import yaml

    path = tmp_path / f"{cfg.name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_corrupted_artifact_is_detected(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run.run_dir, copy)
    path = copy / "02_baseline.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated or edited"):
        RunStore(copy).read_parquet("02_baseline.parquet")


def test_tampered_pickle_is_refused_and_never_loaded(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run.run_dir, copy)
    marker = tmp_path / "pwned"
    evil = pickle.dumps(type("Evil", (), {"__reduce__": lambda self: (os.system, (f"touch {marker}",))})())
    (copy / "02_baseline.pkl").write_bytes(evil)
    with pytest.raises(ArtifactError, match="02_baseline.pkl"):
        load_explanations(RunStore(copy), "02_baseline")
    assert not marker.exists()


def test_damaged_parquet_is_caught_whichever_file_is_read(finished_run, tmp_path):
    """Item 5: three flipped bytes in 02_baseline.parquet stop the read of the baseline (whose pickle is
    intact) and `shapshift compare`, with a message that names the file."""
    import shutil

    copy = tmp_path / finished_run.name
    shutil.copytree(finished_run.run_dir, copy)
    path = copy / "02_baseline.parquet"
    data = bytearray(path.read_bytes())
    for i in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="02_baseline.parquet"):
        load_condition(copy, "baseline")
    cfg = _copy_run(finished_run, tmp_path / "cli")
    shutil.copy(path, cfg.run_dir / "02_baseline.parquet")
    done = subprocess.run([sys.executable, "-m", "shapshift.cli", "compare", "--config", str(_yaml(cfg, tmp_path))],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "02_baseline.parquet does not match the sha256" in " ".join(done.stderr.split())


def test_same_config_gives_identical_artifacts(finished_run, tmp_path):
    cfg = tiny_config(tmp_path, name=finished_run.name, **FINISHED_RUN)
    run(cfg, ("preprocess", "explain"))
    a = RunStore(finished_run.run_dir).manifest()["artifacts"]
    b = RunStore(cfg.run_dir).manifest()["artifacts"]
    for name in ("01_dataset.parquet", "02_generations.parquet", "02_baseline.parquet", "02_baseline.pkl",
                 "02_baseline_rerun.parquet", "02_baseline_rerun.pkl"):
        assert a[name]["sha256"] == b[name]["sha256"], name


def _wait_for(proc, folder, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and len(list(folder.glob("example-*.npz"))) < n:
        time.sleep(0.05)
    return len(list(folder.glob("example-*.npz")))


def test_killed_run_continues_on_a_plain_rerun(tmp_path, finished_run):
    """Item 1: Ctrl-C mid-explain says how to continue; a kill mid-adapt loses nothing either; plain
    re-runs (no flag) keep every finished example and end equal to an uninterrupted run."""
    import signal

    values = finished_run.to_dict()
    values.update(output_dir=str(tmp_path), name="killed")
    values["explain"]["max_evals"] = 1000  # seconds per example: slow enough to be caught mid-stage
    values["explain"]["noise_floor"] = False
    values["data"]["n_explain"] = 4
    values["adapt"]["conditions"] = ["zero_shot", "few_shot"]
    values["compare"]["n_bootstrap"] = 10
    values["data"]["format_check_rows"] = 0  # finished_run's format check: not what this test is about
    cfg = load_config(values)
    cmd = [sys.executable, "-m", "shapshift.cli", "run", "--config", str(_yaml(cfg, tmp_path))]
    partial = tmp_path / "killed" / ".partial"
    # 1. Ctrl-C after two baseline examples
    # SIGINT as Ctrl-C sends it (a child of a background job would otherwise inherit "ignore SIGINT")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert _wait_for(proc, partial / "02_baseline", 2) >= 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "To continue where it stopped, run the same command again" in err and "--fresh" in err
    done_before = len(list((partial / "02_baseline").glob("example-*.npz")))
    assert 2 <= done_before < 4, "the run was not caught mid-stage"
    assert not (tmp_path / "killed" / "02_baseline.parquet").exists()
    # 2. plain re-run, killed once few-shot has one example (zero-shot finished)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait_for(proc, partial / "03_few_shot", 1) >= 1
    proc.kill()
    _, err = proc.communicate()
    assert f"stage explain: running (it was interrupted last time ({done_before} finished example(s) kept))" in err
    assert f"baseline: resuming, {done_before} of 4 examples already explained" in err, err[-3000:]
    assert (tmp_path / "killed" / "02_baseline.parquet").exists()
    few_before = len(list((partial / "03_few_shot").glob("example-*.npz")))
    # 3. plain re-run to the end
    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stage explain: reused" in resumed.stderr
    assert "zero_shot: resuming, 4 of 4 examples already explained" in resumed.stderr
    assert f"few_shot: resuming, {few_before} of 4 examples already explained" in resumed.stderr
    assert not partial.exists() or not any(partial.rglob("*.npz"))
    # the uninterrupted twin
    values["name"] = "straight"
    straight = load_config(values)
    run(straight, ("preprocess", "explain", "adapt"))
    for name in ("02_baseline.parquet", "03_zero_shot.parquet", "03_few_shot.parquet"):
        a = RunStore(tmp_path / "killed").read_parquet(name)
        b = RunStore(straight.run_dir).read_parquet(name)
        pd.testing.assert_frame_equal(a, b)


def test_unfinished_results_of_other_settings_are_discarded(tmp_path, caplog):
    from shapshift.store import ExampleCheckpoint

    ckpt = ExampleCheckpoint(tmp_path / ".partial" / "x", "fingerprint-a")
    ckpt.start(resume=False)
    (ckpt.dir / "example-3.npz").write_bytes(b"x")
    caplog.set_level("INFO")
    assert ExampleCheckpoint(tmp_path / ".partial" / "x", "fingerprint-b").start(resume=True) == {}
    assert "1 unfinished example(s) were made with other settings" in caplog.text
    assert not (ckpt.dir / "example-3.npz").exists()


@pytest.fixture(scope="module")
def logprob_run(tmp_path_factory):
    """A finished run that explains the reference under log_prob (the default score, stated) with exact Shapley
    values, few-shot left out."""
    cfg = tiny_config(tmp_path_factory.mktemp("logprob"), explain__target="reference", explain__score="log_prob",
                      explain__method="exact", explain__noise_floor=False, data__max_input_tokens=6,
                      adapt__conditions=["zero_shot", "finetuned"], compare__n_plot_examples=3)
    run(cfg)
    return cfg


def test_explained_logprob_is_that_of_the_explained_text(logprob_run):
    """Item 3: with explain.target=reference, 02_generations' explained_logprob is the log-prob of the
    reference (not of the model's own output): equal to a direct forward pass, and to base value + Σ
    values of an exact log_prob explanation; 03_generations likewise per condition."""
    import torch

    from shapshift import load_model

    cfg = logprob_run
    gens = pd.read_parquet(cfg.run_dir / "02_generations.parquet")
    data = pd.read_parquet(cfg.run_dir / "01_dataset.parquet").set_index("example_id")
    model, tok = load_model("tiny-gpt-neo")
    ids, exps = load_condition(cfg.run_dir, "baseline")
    by_id = dict(zip(ids, exps))
    for r in gens.itertuples():
        ref = tok(data.loc[r.example_id, "target_text"], add_special_tokens=False)["input_ids"]
        assert list(r.explained_ids) == ref
        prompt = tok(data.loc[r.example_id, "prompt_text"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ref])).logits[0].log_softmax(-1)
        direct = sum(float(logits[len(prompt) - 1 + j, t]) for j, t in enumerate(ref))
        assert r.explained_logprob == pytest.approx(direct, abs=1e-4)
        exp = by_id[r.example_id]
        efficiency = float(np.sum(exp.base_values) + np.sum(exp.values))
        assert r.explained_logprob == pytest.approx(efficiency, abs=1e-4)
    cond = pd.read_parquet(cfg.run_dir / "03_generations.parquet")
    for _, g in cond.groupby("condition"):
        assert [list(x) for x in g["explained_ids"]] == [list(x) for x in gens["explained_ids"]]


def _png_text(path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return im.text.get("Description", "")


def test_units_follow_the_score(logprob_run, finished_run):
    """Item 4: under explain.score=log_prob the report and figures say log-probability, never log-odds; under
    log_odds they say log-odds."""
    text = (logprob_run.run_dir / "report.html").read_text()
    assert "log-probability" in text and "log-odds" not in text
    assert "an absent token is <b>left out of the text" in text  # the default masking, named
    assert "every <b>input token</b>" in text  # the run's features (explain.unit)
    figure = sorted((logprob_run.run_dir / "figures").glob("example_*_tokens.png"))[0]
    assert "SHAP value (log-probability" in _png_text(figure)
    assert "log-odds" in (finished_run.run_dir / "report.html").read_text()
    figure = sorted((finished_run.run_dir / "figures").glob("example_*_tokens.png"))[0]
    assert "SHAP value (log-odds" in _png_text(figure)


def test_report_shows_what_the_model_did(logprob_run):
    """Item 6: per condition the generations, label matches, mean log p of the explained text (the
    numbers of the generations tables), warnings when it is improbable, the fine-tuning loss and metric."""
    import html as html_mod

    from shapshift.report import REPORT_FILE

    store = RunStore(logprob_run.run_dir)
    text = (logprob_run.run_dir / REPORT_FILE).read_text()
    assert "<h2>What the model did</h2>" in text
    gens = pd.concat([store.read_parquet("02_generations.parquet"), store.read_parquet("03_generations.parquet")])
    for cond, label in (("baseline", "baseline"), ("zero_shot", "zero-shot"), ("finetuned", "fine-tuned")):
        g = gens[gens["condition"] == cond]
        row = (f"<tr><td class=l>{label}</td><td>{len(g)}</td><td>{int(g['label_match'].sum())} / {len(g)}</td>"
               f"<td>{g['explained_logprob'].mean():.2f}</td>")
        assert row in text, row
        for generated in g["generated_text"]:
            assert html_mod.escape(repr(generated)) in text
    # a random tiny model gives the reference a tiny probability: the report says so at the top
    assert text.index("the explained text is improbable") < text.index("<h2>What the model did</h2>")
    record = json.loads(store.verify("03_finetune.json").read_text())
    assert "<th class=l>task metric</th><th>before</th><th>after</th>" in text
    assert f"<td>{record['before']['mean_target_logprob']:.3f}</td><td>{record['after']['mean_target_logprob']:.3f}</td>" in text
    assert "fine-tuning loss" in text and "training loss" in _png_text(logprob_run.run_dir / "figures" / "finetune_loss.png")
    # few-shot was left out on purpose (adapt.conditions): no banner says it is missing (item 8)
    assert "Conditions without explanations" not in text


def test_bar_charts_carry_the_estimators_error_bars(tmp_path):
    """Item 6: the per-token bars show ±1 standard error from error_std, aggregated over the generated tokens by the
    one formula the verdicts use (the sum of the errors: the tokens' errors correlate under common random numbers),
    checked against a direct computation and against shift's; no bars without error_std."""
    import shap

    from shapshift.report_plots import aggregate_error, plot_example_tokens
    from shapshift.shift import aggregate_with_error

    rng = np.random.default_rng(0)
    values, err = rng.normal(size=(6, 3)), rng.uniform(0.01, 0.3, size=(6, 3))
    exp = shap.Explanation(values=values, base_values=np.zeros(3), data=np.array(list("abcdef"), dtype=object),
                           output_names=["x", "y", "z"], error_std=err)
    expected = [sum(err[i, j] for j in range(3)) for i in range(6)]
    np.testing.assert_allclose(aggregate_error(exp, "sum"), expected)
    np.testing.assert_allclose(aggregate_error(exp, "mean_abs"), np.asarray(expected) / 3)
    for how in ("sum", "mean_abs"):  # the error bars and the verdicts agree about one number
        np.testing.assert_allclose(aggregate_error(exp, how), aggregate_with_error(exp, how)[1])
    store = RunStore(tmp_path)
    assert "±1 standard error" in _png_text(plot_example_tokens({"baseline": exp}, 1, store))
    exact = shap.Explanation(values=values, base_values=np.zeros(3), data=exp.data, output_names=exp.output_names)
    assert aggregate_error(exact) is None
    assert "standard error" not in _png_text(plot_example_tokens({"baseline": exact}, 2, store))


def test_artifacts_honour_the_umask(finished_run, tmp_path):
    """Item 8: artifacts get the mode an ordinary open() gives (0644 under umask 022), not mkstemp's 0600:
    every file of a finished run (adapters and figures included), and a write under another umask."""
    import stat

    from shapshift.store import atomic_write_bytes, current_umask

    mask = current_umask()
    for path in finished_run.run_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666) & ~mask or path.name == finished_run.name, (path, oct(mode))
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(atomic_write_bytes(tmp_path / "a.json", b"{}").stat().st_mode) == 0o644
        os.umask(0o027)
        assert stat.S_IMODE(atomic_write_bytes(tmp_path / "b.json", b"{}").stat().st_mode) == 0o640
    finally:
        os.umask(old)
