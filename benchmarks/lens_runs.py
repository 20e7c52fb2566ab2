"""Whole runs with the lenses: do the cheap methods see the shift SHAP sees? Tables for LENSES.md.

Runs (or, with ``--resume``, reuses the finished stages of) ``shapshift run`` for one config with
``explain.methods`` set, then writes the run's lens tables as a markdown section: per condition and
lens, Spearman ρ with SHAP's explanation and with SHAP's shift from the baseline, top-k overlap of
the tokens that moved most (k = 20 % of the input), each with its 95 % bootstrap interval and SHAP's
own noise floor; SHAP's shift size over its re-estimation noise; seconds per example per method.

    .venv/bin/python benchmarks/lens_runs.py --name demo --config configs/demo.yaml \\
        --set 'explain.methods=[auto,integrated_gradients,attention]'
    .venv/bin/python benchmarks/lens_runs.py --name sst2 --config configs/demo.yaml \\
        --set data.source=../shared/datasets/sst2/dev.tsv --set data.input_column=sentence \\
        --set 'data.label_names={"0": negative, "1": positive}' --set data.n_explain=4 \\
        --set 'explain.methods=[auto,integrated_gradients,attention]'

Writes ``benchmarks/lens_runs/<name>.md`` (and prints it); the run folder is ``outputs/lenses_<name>``
(``--output-dir``, ``--run-name``; with ``--resume`` a run folder finished under the same config is reused).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from shapshift.lens_views import LENS_LABELS, _timing, completeness_gaps
from shapshift.lenses import read_lens_summary
from shapshift.pipeline import STAGES, run
from shapshift.store import RunStore
from shapshift.validation import load_config

HERE = Path(__file__).resolve().parent


def _cell(r) -> str:
    if pd.isna(r["mean"]):
        return "–"
    ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
    return f"{r['mean']:.2f}{ci}"


def _pick(g: pd.DataFrame, kind: str, metric: str, spec: str):
    m = g[(g["kind"] == kind) & (g["metric"] == metric) & (g["k_spec"] == spec)]
    return m.iloc[0] if len(m) else None


def tables(run_dir: Path) -> str:
    s = read_lens_summary(run_dir)
    if s is None:
        raise SystemExit(f"{run_dir} has no 04_lenses_summary.csv: did the run set explain.methods?")
    rows = []
    lens_rows = s[s["method"] != "shap"]
    for (cond, lens), g in lens_rows.groupby(["condition", "method"], sort=False):
        agree, shift, moved = _pick(g, "agreement", "spearman", "all"), _pick(g, "shift", "spearman", "all"), \
            _pick(g, "shift", "feature_agreement", "20%")
        rows.append({"condition": cond, "lens": LENS_LABELS.get(lens, lens), "n": int(agree["n"]),
                     "ρ with SHAP": _cell(agree), "floor (SHAP vs rerun)": f"{agree['floor_mean']:.2f}",
                     "shift ρ with SHAP's shift": "–" if shift is None else _cell(shift),
                     "floor": "–" if shift is None else f"{shift['floor_mean']:.2f}",
                     "top-20 % movers overlap": "–" if moved is None else _cell(moved),
                     "floor ": "–" if moved is None else f"{moved['floor_mean']:.2f}"})
    table = pd.DataFrame(rows)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in table.itertuples(index=False)]
    noise = s[(s["method"] == "shap") & (s["metric"] == "shift_to_noise")]
    store = RunStore(run_dir)
    timing = _timing(store)
    out = ["\n".join(lines), "",
           "SHAP's shift over its re-estimation noise (‖Δ_SHAP‖ / ‖rerun − baseline‖, mean over examples): "
           + ", ".join(f"{c} {m:.1f}" for c, m in zip(noise["condition"], noise["mean"])) + ".", "",
           "Seconds per example (every condition): "
           + ", ".join(f"{'lens ' if r.lens else 'SHAP '}{r.method} {r.mean:.2f} (n={int(r.count)})"
                       for r in timing.itertuples()) + ".", "",
           "Median completeness gap of the gradient lenses (Σ|gap| / Σ|f(x) − f(reference)|): "
           + ", ".join(f"{LENS_LABELS.get(m, m)} {g:.3f}" for m, g in completeness_gaps(store).items()) + "."]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--output-dir", default="outputs")
    ap.add_argument("--run-name", default=None, help="run folder name (default: lenses_<name>)")
    ap.add_argument("--resume", action="store_true", help="reuse stages finished under the same config")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.overrides, f"name={args.run_name or 'lenses_' + args.name}",
                                            f"output_dir={args.output_dir}"])
    start = time.perf_counter()
    run(cfg, STAGES, resume=args.resume)
    wall = time.perf_counter() - start
    stages = RunStore(cfg.run_dir).manifest().get("stages", {})
    recorded = sum(float(stages.get(st, {}).get("seconds") or 0) for st in STAGES)
    cmd = "python benchmarks/lens_runs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([f"## {args.name}: {cfg.model.spec}, {cfg.data.source}, {cfg.data.n_explain} examples", "",
                      f"Command: `{cmd}` ({wall / 60:.1f} min wall here; the run's stages took {recorded / 60:.1f} min, "
                      f"{args.threads} torch thread(s)); SHAP method "
                      f"`{cfg.explain.method}`, max_evals {cfg.explain.max_evals}, target `{cfg.explain.target}`, "
                      f"aggregate `{cfg.compare.aggregate}` over the generated tokens.", "", tables(cfg.run_dir), ""])
    out = HERE / "lens_runs"
    out.mkdir(exist_ok=True)
    (out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
