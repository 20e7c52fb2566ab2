"""The notebook-02-style run (baseline, zero-shot, few-shot, compare, report) through a real llama-cpp-python
server, from the command line, with the demo config and a ``--set model.spec=openai-compatible:...`` change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: Small settings: 2 examples of 3 input tokens (exact Shapley values, 8 coalitions each), one-token targets, plain
#: prompts (llama-cpp-python's server spends about 0.1 s of Python per echoed prompt token on 2 cores), and a format
#: check of 2 rows with 1 demonstration (the demo's 8 rows with 4 demonstrations each cost most of this test's time through the
#: server; the check still runs through it, on every candidate format).
SMALL = ["data.n_explain=2", "data.max_input_tokens=3", 'data.chat="no"', "generation.max_new_tokens=1", "adapt.k_shot=1",
         "compare.n_bootstrap=100", "data.format_check_rows=2", "data.format_check_shots=1"]
SECRET = "sk-test-not-to-be-stored-0123456789"


def test_the_demo_runs_against_a_completions_server_from_the_cli(tmp_path, llama_server_spec):
    spec = llama_server_spec  # the session's server (conftest.py)
    # a notebook-02-style run (the demo's config without its finetuned condition: a remote model cannot be
    # fine-tuned); the model spec is the one change (explain.masking is auto: deletion for a remote model)
    config = tmp_path / "prompting.yaml"
    config.write_text((REPO / "configs" / "demo.yaml").read_text().replace(
        "conditions: [zero_shot, few_shot, finetuned]", "conditions: [zero_shot, few_shot]"))
    assert "finetuned]" not in config.read_text()
    sets = [a for s in [f"model.spec={spec}", *SMALL, f"output_dir={tmp_path / 'out'}"] for a in ("--set", s)]
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    done = subprocess.run([sys.executable, "-m", "shapshift.cli", "run", "--config", str(config), *sets],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "up to" in done.stderr and "requests and" in done.stderr  # the cost notice before each explain
    run_dir = tmp_path / "out" / "demo"
    for name in ("02_baseline.parquet", "03_zero_shot.parquet", "03_few_shot.parquet", "04_summary.csv", "report.html"):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    usage = manifest["remote_usage"]
    print(usage)
    assert manifest["config"]["explain"]["masking"] == "auto"
    assert usage["requests"] > 0 and usage["prompt_tokens"] > 0 and usage["prompts_as"] == "text"
    assert manifest["config"]["model"]["spec"] == spec
    # the API key is read from the environment and written nowhere in the run folder
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_finetuning_a_remote_model_is_refused_before_any_request(tmp_path):
    done = subprocess.run([sys.executable, "-m", "shapshift.cli", "run", "--config", "configs/demo.yaml",
                           "--set", "model.spec=openai-compatible:http://127.0.0.1:9/v1",
                           "--set", f"output_dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "cannot be fine-tuned" in done.stderr and "adapt.conditions=[zero_shot,few_shot]" in done.stderr
    assert not any(tmp_path.iterdir())
