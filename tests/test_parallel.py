"""``accelerate launch --multi_gpu --num_processes 2 -m shapshift …`` on CPUs (gloo): the same artifacts as one process.

Each run is a real command in its own process group (the launcher and its two workers), on one
torch thread per process; the single-process reference is ``python -m shapshift`` under the same
config. Values are compared exactly (every field of the explanations' pickles byte for byte).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from conftest import DEMO_DATA, REPO

from shapshift.store import RunStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups")

#: Enough sampling evaluations that an example takes a visible fraction of a second (so a kill lands mid-stage).
CONFIG = {
    "model": {"spec": "tiny-gpt-neo"},
    # no prompt-format check: the same ~16 generation calls in every run, and not what these tests compare
    # (tests/test_formats.py checks it; tests/test_pipeline.py's finished_run runs it in a whole pipeline)
    "data": {"source": str(DEMO_DATA), "n_explain": 5, "max_input_tokens": 10, "max_rows": 40, "format_check_rows": 0},
    "generation": {"max_new_tokens": 2},
    "explain": {"method": "sampling", "max_evals": 300, "batch_size": 32, "unit": "word"},
    "adapt": {"k_shot": 2, "finetune": {"max_steps": 2, "batch_size": 4, "max_length": 48}},
    "compare": {"n_bootstrap": 100, "n_plot_examples": 1},
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(config: Path, verb: str, processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "shapshift", verb, "--config", str(config)]
    # accelerate's --cpu flag starts one process (several need mpirun); --multi_gpu starts them with
    # torch.distributed.run, and on a machine without a GPU shapshift.parallel joins them over gloo
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "shapshift", verb, "--config", str(config)]


def _config(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "name": name, "output_dir": str(tmp)}))
    return path


def _run(config: Path, verb: str = "run", processes: int = 2) -> str:
    """Run to the end; returns the log (stderr)."""
    done = subprocess.run(_command(config, verb, processes), capture_output=True, text=True, env=_env(),
                          timeout=600, cwd=config.parent)
    config.with_suffix(f".{verb}-{processes}.log").write_text(done.stderr)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


def _kill_after(config: Path, verb: str, folder: Path, n: int) -> int:
    """Start a 2-process run, kill its whole process group once ``folder`` holds ``n`` finished examples;
    returns how many it holds after the kill."""
    log = open(config.with_suffix(".killed.log"), "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(_command(config, verb, 2), stdout=log, stderr=log, env=_env(), cwd=config.parent,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while len(list(folder.glob("example-*.npz"))) < n:
            assert proc.poll() is None, f"the run ended before it was killed: {config.with_suffix('.killed.log')}"
            assert time.monotonic() < deadline, "no checkpoints appeared"
            time.sleep(0.02)
    finally:
        # the launcher and both workers at once, as a crash loses them (torch's launcher starts each worker in
        # a session of its own, so killing the launcher's process group alone would leave them running)
        tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        psutil.wait_procs([p for p in map(_process, tree) if p is not None], timeout=30)
        log.close()
    return len(list(folder.glob("example-*.npz")))


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def assert_same_pickles(a: Path, b: Path) -> None:
    """Two stored explanation pickles hold the same fields, each pickling to the same bytes (the files
    themselves may differ in pickle's back-references: which equal strings are one object in memory)."""
    x, y = (pickle.loads(p.read_bytes()) for p in (a, b))
    assert (x["condition"], x["example_ids"], x["meta"]) == (y["condition"], y["example_ids"], y["meta"]), a.name
    for e, f in zip(x["explanations"], y["explanations"], strict=True):
        assert e.__dict__.keys() == f.__dict__.keys(), a.name
        for key in e.__dict__:
            assert pickle.dumps(e.__dict__[key]) == pickle.dumps(f.__dict__[key]), (a.name, key)


def assert_same_artifacts(one: Path, many: Path, prefixes: tuple[str, ...] = ("0",)) -> None:
    """Every artifact of ``prefixes`` written by ``many`` processes equals the single-process one's."""
    def artifacts(run_dir: Path) -> list[str]:
        return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(prefixes) and p.suffix in (".parquet", ".pkl"))

    names = artifacts(one)
    assert len(names) >= 10 and artifacts(many) == names
    for name in names:
        if name.endswith(".pkl"):
            assert_same_pickles(one / name, many / name)
        else:
            pd.testing.assert_frame_equal(pd.read_parquet(one / name), pd.read_parquet(many / name),
                                          check_exact=True, obj=name)
    # the manifest records the same artifacts, and its hashes are those of the files on disk
    recorded = {n for n in RunStore(many).manifest()["artifacts"] if n.startswith(prefixes)}
    assert recorded == {n for n in RunStore(one).manifest()["artifacts"] if n.startswith(prefixes)}
    for n in recorded:
        RunStore(many).verify(n)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    _run(_config(tmp, "one"), processes=1)
    return tmp / "one"


def test_two_processes_write_what_one_process_writes(single, tmp_path):
    log = _run(_config(tmp_path, "two"))
    many = tmp_path / "two"
    assert_same_artifacts(single, many)
    assert "in_tokens" in pd.read_parquet(many / "02_baseline.parquet")  # word units survive the checkpoints
    ft_one, ft_two = (json.loads((d / "03_finetune.json").read_text()) for d in (single, many))
    assert (ft_one["losses"], ft_one["after"]) == (ft_two["losses"], ft_two["after"])
    man = RunStore(many).manifest()
    assert all(man["stages"][s]["complete"] for s in ("preprocess", "explain", "adapt", "compare"))
    assert not list(many.rglob("*.npz")) and not list(many.rglob("*.tmp"))
    # one process reports: one "stage … finished" line per stage, one result line
    assert len(re.findall(r"stage explain: finished", log)) == 1
    assert "explain baseline (2 processes)" in log
    assert "loaded tiny-gpt-neo on cpu (" in log  # "cpu" as one process names it (accelerate's "cpu:0" changes kernels)


def test_a_killed_two_process_run_resumes_where_it_stopped(single, tmp_path):
    config = _config(tmp_path, "killed")
    kept = _kill_after(config, "run", tmp_path / "killed" / ".partial" / "02_baseline", 2)
    assert 2 <= kept < CONFIG["data"]["n_explain"]
    log = _run(config)
    assert f"baseline: resuming, {kept} of 5 examples already explained" in log
    assert "stage preprocess: reused" in log
    assert_same_artifacts(single, tmp_path / "killed")


def test_a_two_process_run_resumes_with_one_process(single, tmp_path):
    config = _config(tmp_path, "switch")
    kept = _kill_after(config, "run", tmp_path / "switch" / ".partial" / "02_baseline", 2)
    log = _run(config, processes=1)
    assert f"baseline: resuming, {kept} of 5 examples already explained" in log
    assert_same_artifacts(single, tmp_path / "switch")
