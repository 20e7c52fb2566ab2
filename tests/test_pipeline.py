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


def tiny_config(tmp_path, name="run", **overrides) -> RunConfig:
    values = {
        "name": name, "output_dir": str(tmp_path),
        "model": {"spec": "tiny-gpt-neo"},
        "data": {"source": str(DEMO_DATA), "n_explain": 3, "max_input_tokens": 10, "max_rows": 40},
        "generation": {"max_new_tokens": 2},
        "explain": {"method": "sampling", "max_evals": 24, "batch_size": 32},
        "adapt": {"k_shot": 2, "finetune": {"max_steps": 2, "batch_size": 4, "max_length": 48}},
        "compare": {"n_bootstrap": 100, "n_plot_examples": 1},
    }
    for key, value in overrides.items():
        section, field = key.split("__")
        values.setdefault(section, {})[field] = value
    return RunConfig.from_dict(values)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("runs"))
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


def test_resume_skips_finished_stages(finished_run, caplog):
    before = {n: v["sha256"] for n, v in RunStore(finished_run.run_dir).manifest()["artifacts"].items()}
    caplog.set_level("INFO")
    run(finished_run, ("preprocess", "explain"), resume=True)
    assert "stage explain: done under the same config, skipped" in caplog.text
    after = {n: v["sha256"] for n, v in RunStore(finished_run.run_dir).manifest()["artifacts"].items()}
    assert before == after


def test_corrupted_artifact_is_detected(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run.run_dir, copy)
    path = copy / "02_baseline.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="truncated or edited"):
        RunStore(copy).read_parquet("02_baseline.parquet")


def test_tampered_pickle_is_refused_and_parquet_used(finished_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished_run.run_dir, copy)
    marker = tmp_path / "pwned"
    evil = pickle.dumps(type("Evil", (), {"__reduce__": lambda self: (os.system, (f"touch {marker}",))})())
    (copy / "02_baseline.pkl").write_bytes(evil)
    ids, exps = load_explanations(RunStore(copy), "02_baseline")
    assert not marker.exists()
    ref_ids, ref = load_condition(finished_run.run_dir, "baseline")
    assert ids == ref_ids and np.array_equal(exps[0].values, ref[0].values)


def test_same_config_gives_identical_artifacts(finished_run, tmp_path):
    cfg = tiny_config(tmp_path, name=finished_run.name)
    run(cfg, ("preprocess", "explain"))
    a = RunStore(finished_run.run_dir).manifest()["artifacts"]
    b = RunStore(cfg.run_dir).manifest()["artifacts"]
    for name in ("01_dataset.parquet", "02_generations.parquet", "02_baseline.parquet", "02_baseline.pkl",
                 "02_baseline_rerun.parquet", "02_baseline_rerun.pkl"):
        assert a[name]["sha256"] == b[name]["sha256"], name


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, finished_run):
    """A subprocess is killed after k examples of stage 2; --resume completes it with equal values."""
    cfg_file = tmp_path / "cfg.yaml"
    values = finished_run.to_dict()
    values.update(output_dir=str(tmp_path), name="killed")
    values["explain"]["max_evals"] = 1000  # seconds per example: slow enough to be caught mid-stage
    values["explain"]["noise_floor"] = False
    values["data"]["n_explain"] = 4
    import yaml

    cfg_file.write_text(yaml.safe_dump(values))
    cmd = [sys.executable, "-m", "shapshift.cli", "run", "--config", str(cfg_file)]
    partial = tmp_path / "killed" / ".partial" / "02_baseline"
    proc = subprocess.Popen(cmd + ["--set", "adapt.conditions=[]"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(partial.glob("example-*.npz"))) < 2:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done_before = len(list(partial.glob("example-*.npz")))
    assert 2 <= done_before < 4, "the run was not caught mid-stage"
    assert not (tmp_path / "killed" / "02_baseline.parquet").exists()
    resumed = subprocess.run(cmd + ["--set", "adapt.conditions=[]", "--resume"] + ["--set", "compare.n_bootstrap=10"],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming, {done_before} of 4 examples already explained" in resumed.stderr
    # the uninterrupted twin
    values["name"] = "straight"
    values["adapt"]["conditions"] = []
    straight = RunConfig.from_dict(values)
    run(straight, ("preprocess", "explain"))
    a = RunStore(tmp_path / "killed").read_parquet("02_baseline.parquet")
    b = RunStore(straight.run_dir).read_parquet("02_baseline.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_resume_refuses_a_changed_config(tmp_path, finished_run):
    from shapshift.store import ExampleCheckpoint

    ckpt = ExampleCheckpoint(tmp_path / ".partial" / "x", "fingerprint-a")
    ckpt.start(resume=False)
    with pytest.raises(ArtifactError, match="different configuration"):
        ExampleCheckpoint(tmp_path / ".partial" / "x", "fingerprint-b").start(resume=True)
