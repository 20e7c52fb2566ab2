"""The offline demo run (configs/demo.yaml) with each SHAP estimator: wall time per stage.

Runs ``shapshift run`` in-process once per method into a temporary folder (the model is loaded
once per run, as the CLI does) and reads each stage's seconds from the run's ``manifest.json``.

    .venv/bin/python benchmarks/bench_demo.py --methods auto         # what `make demo` runs (~4 min on 2 cores)
    .venv/bin/python benchmarks/bench_demo.py                        # auto vs partition (partition: ~40 min)
    .venv/bin/python benchmarks/bench_demo.py --methods auto kernel partition

Writes ``benchmarks/DEMO_TIMING.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info, markdown_table  # noqa: E402

from shapshift.behaviour import condition_summary, generations  # noqa: E402
from shapshift.pipeline import STAGES, run  # noqa: E402
from shapshift.store import RunStore  # noqa: E402
from shapshift.validation import load_config  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def time_demo(method: str, out: Path, overrides: list[str]) -> dict:
    cfg = load_config(REPO / "configs" / "demo.yaml",
                              [f"explain.method={method}", f"output_dir={out}", f"name=demo-{method}", *overrides])
    start = time.perf_counter()
    run(cfg, STAGES)
    wall = time.perf_counter() - start
    run_dir = out / f"demo-{method}"
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    row = {"method": method, "n_explain": cfg.data.n_explain, "whole run s": wall}
    for name in STAGES:
        row[f"{name} s"] = stages.get(name, {}).get("seconds")
    # the format check runs before the preprocess stage's record is opened (an error there leaves the folder as it was)
    row["preprocess s"] = (row["preprocess s"] or 0) + stages.get("preprocess", {}).get("format_check_seconds", 0)
    # precision beside the speed: the noise floor (baseline vs its rerun with another seed) and the answer
    verdicts = pd.read_csv(run_dir / "04_verdicts.csv").set_index("condition_b")
    if "baseline_rerun" in verdicts.index:
        row["floor Spearman"] = round(float(verdicts.loc["baseline_rerun", "spearman"]), 3)
    for cond in [c for c in verdicts.index if c != "baseline_rerun"]:
        row[f"{cond} changed"] = f"{int(verdicts.loc[cond, 'n_changed'])}/{int(verdicts.loc[cond, 'n'])}"
        if "n_ranking_changed" in verdicts:
            row[f"{cond} changed"] += f" ({int(verdicts.loc[cond, 'n_ranking_changed'])} in ranking)"
    # what the comparison is between: does the model write the explained label under each condition?
    store = RunStore(run_dir)
    row["format"] = stages.get("preprocess", {}).get("format", {}).get("name")
    for r in condition_summary(generations(store)).itertuples():
        row[f"{r.condition} label match"] = f"{int(r.label_matches)}/{r.n_with_reference}"
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["auto", "partition"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as `make demo` runs)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    ap.add_argument("--out", type=Path, default=HERE / "DEMO_TIMING.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [time_demo(m, Path(tmp), args.overrides) for m in args.methods]
    df = pd.DataFrame(rows)
    base = df.set_index("method")["whole run s"]
    if "partition" in base.index:
        df["explain+adapt × faster than partition"] = [
            (df.loc[df.method == "partition", ["explain s", "adapt s"]].sum(axis=1).iloc[0]
             / r[["explain s", "adapt s"]].sum()) for _, r in df.iterrows()]
    command = "python benchmarks/bench_demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "# The offline demo run per SHAP estimator", "",
        f"Command: `{command}` ({torch.get_num_threads()} torch thread(s); load average at start / end: {load0} / "
        f"{load_average()}).",
        "", "Machine and versions: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()) + ".", "",
        "`configs/demo.yaml` (what `make demo` runs: smollm2-135m, `n_explain` examples, 3 conditions + the "
        "noise-floor rerun) with `explain.method` set per row; seconds per stage from the run's manifest (preprocess: with the prompt-format check). The adapt "
        "stage includes the LoRA steps, which no estimator changes. `floor Spearman`: Spearman of the |value| rankings of the baseline against "
        "its rerun with another seed (mean over examples; the precision of the run); `<condition> changed`: examples "
        "changed beyond the estimator's noise (`04_verdicts.csv`; in ranking: the order of the features changed, not only "
        "their scale); `format`: the prompt format the format check chose; `<condition> label match`: examples whose "
        "generation starts with the reference label (the report's behaviour table).", "",
        markdown_table(df), ""])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
