"""Examples explained per minute with 1 and 2 processes (``accelerate launch``), and whether the values agree.

Each row runs ``shapshift run`` on ``configs/demo.yaml`` (SmolLM2-135M-Instruct, the offline demo)
as its own command into a fresh folder: one process (``python -m shapshift run``) or N processes
(``accelerate launch --multi_gpu --num_processes N -m shapshift run``; on a machine without a GPU
the processes join over gloo), each process on ``--threads`` torch threads. The stage seconds come
from the run's manifest; "explained" counts every example explained (baseline, noise-floor rerun and
each condition). Every artifact's values are compared with the first row's.

    .venv/bin/python benchmarks/bench_processes.py                      # 1x1, 2x1, 1x2 (~12 min on 2 cores)
    .venv/bin/python benchmarks/bench_processes.py --rows 1x1 2x1 --set data.n_explain=4

Writes ``benchmarks/PROCESSES.md`` (and ``benchmarks/processes.csv``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info, markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int, config: Path, overrides: list[str]) -> list[str]:
    sets = [a for o in overrides for a in ("--set", o)]
    if processes == 1:
        return [sys.executable, "-m", "shapshift", "run", "--config", str(config), *sets]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "shapshift", "run", "--config", str(config), *sets]


def time_run(processes: int, threads: int, out: Path, overrides: list[str], gpu: bool) -> tuple[dict, Path]:
    name = f"p{processes}t{threads}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = command(processes, REPO / "configs" / "demo.yaml",
                  [f"output_dir={out}", f"name={name}", f"data.source={REPO / 'data' / 'demo_reviews.csv'}", *overrides])
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    run_dir = out / name
    man = json.loads((run_dir / "manifest.json").read_text())
    stages = man["stages"]
    explained = sum(len(v) for v in man.get("explain_stats", {}).values())
    work = stages["explain"]["seconds"] + stages["adapt"]["seconds"]
    finetune = json.loads((run_dir / "03_finetune.json").read_text())["seconds"] \
        if (run_dir / "03_finetune.json").exists() else float("nan")
    return {
        "processes × threads": f"{processes} × {threads}", "explained": explained,
        "whole command s": wall, "explain s": stages["explain"]["seconds"], "adapt s": stages["adapt"]["seconds"],
        "of which fine-tune s": finetune,
        "start-up and other s": wall - sum(s["seconds"] for k, s in stages.items() if ":" not in k),
        "examples / min (explain+adapt)": explained / work * 60, "examples / min (whole command)": explained / wall * 60,
    }, run_dir


def compare(a: Path, b: Path) -> tuple[bool, float]:
    """(every artifact table and explanation pickle identical, largest |Δ| of an explanation value)."""
    same, worst = True, 0.0
    for path in sorted(a.glob("0*.parquet")):
        x, y = pd.read_parquet(path), pd.read_parquet(b / path.name)
        try:
            pd.testing.assert_frame_equal(x, y, check_exact=True)
        except AssertionError:
            same = False
        if "value" in x and "in_pos" in x and len(x) == len(y):
            worst = max(worst, float(np.nanmax(np.abs(x["value"].to_numpy() - y["value"].to_numpy()), initial=0.0)))
    for path in sorted(a.glob("0*.pkl")):  # every field of every explanation, pickled alone, byte for byte
        x, y = pickle.loads(path.read_bytes()), pickle.loads((b / path.name).read_bytes())
        same &= x["example_ids"] == y["example_ids"] and x["meta"] == y["meta"] and all(
            e.__dict__.keys() == f.__dict__.keys()
            and all(pickle.dumps(e.__dict__[k]) == pickle.dumps(f.__dict__[k]) for k in e.__dict__)
            for e, f in zip(x["explanations"], y["explanations"], strict=True))
    return same, worst


NOTES = """\
Columns: "explained" counts every example explained (the baseline, its noise-floor rerun and each condition
of adapt.conditions); "examples / min (explain+adapt)" divides it by the two stages' seconds from the
manifest, "(whole command)" by the command's wall time (start-up, model loading, preprocess and compare
included). "identical to row 1": every `0*.parquet` table equal and every field of every stored
explanation pickling to the same bytes; "max abs Δ value": the largest difference of an explanation value from row 1's.

What limits scaling, read from the columns: fine-tuning runs on the main process alone while the others
wait (a fixed part of the adapt stage); so do the generations (batched, on the main process, then sent to
the others) and preprocess and compare. Each process loads its own model (in parallel: start-up does not
grow with N, memory does). Shares are equal in count, not in cost, so the slowest share sets the stage's
time. The merge is one read of every example's `.npz` per condition (milliseconds here). On a shared
2-core machine two processes also compete with whatever else runs: the load average above says how
busy it was; one run, so the ratio is indicative, not precise."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=["1x1", "2x1", "1x2"], help="PROCESSESxTHREADS per row")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    ap.add_argument("--gpu", action="store_true", help="let the processes use the GPUs (one each)")
    ap.add_argument("--out", type=Path, default=HERE / "PROCESSES.md")
    args = ap.parse_args(argv)
    overrides = args.overrides or ["data.n_explain=8"]
    load0 = load_average()
    rows, dirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.rows:
            p, t = (int(x) for x in spec.split("x"))
            row, run_dir = time_run(p, t, Path(tmp), overrides, args.gpu)
            rows.append(row)
            dirs.append(run_dir)
            print(row, flush=True)
        for row, run_dir in zip(rows, dirs):
            row["identical to row 1"], row["max abs Δ value vs row 1"] = compare(dirs[0], run_dir)
    df = pd.DataFrame(rows)
    first = df["examples / min (explain+adapt)"].iloc[0]
    df["× row 1 (explain+adapt)"] = df["examples / min (explain+adapt)"] / first
    df.to_csv(args.out.with_name("processes.csv"), index=False)
    cmd = "python benchmarks/bench_processes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "# Explaining across processes: examples per minute", "",
        f"Command: `{cmd}` (config overrides: {', '.join(overrides)}; load average at start / end: "
        f"{load0} / {load_average()}).", "",
        "Machine and versions: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()) + ".", "",
        markdown_table(df), "", NOTES, ""])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
