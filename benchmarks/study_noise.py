"""What sampling noise costs in deletion faithfulness, on the SST-2 inputs too long for exact values.

``bench_explainers.py`` compares one seed of each estimator with shap's Partition explainer. On the
11-24-token SST-2 sentences exact Shapley values are out of reach, so two questions stay open there:
how faithful the Shapley values of shapshift's masking themselves are (a near-exact reference:
KernelSHAP with ``32n + 2`` evaluations), and how much of that the default budget (``4n + 2``) loses
to sampling noise. A noisy ranking deletes the wrong tokens first, so noise lowers deletion AOPC on
average, whatever its sign on one example.

For the same medium sentences and targets as the benchmark (smollm2-135m, one torch thread): shap
Partition once (deterministic), ``kernel`` and ``sampling`` at ``c * n + 2`` evaluations for several
``c`` and seeds, and the reference. Each example's values are judged together by real deletion from
the text (``bench_explainers.faithfulness``). Reported per (method, c): deletion AOPC minus
Partition's, averaged over seeds per example, with a 95 % bootstrap CI over examples; Spearman
correlation with the reference; seconds per example.

    .venv/bin/python benchmarks/study_noise.py --threads 1    # ~60 min on one CPU core
    .venv/bin/python benchmarks/study_noise.py --quick        # tiny-gpt-neo smoke run

Writes ``benchmarks/NOISE.md`` and ``benchmarks/study_noise.csv`` (``--quick``: ``*_quick``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explainers import EXACT_MAX, build_examples, faithfulness, run_ours, run_partition  # noqa: E402
from common import Timer, bootstrap_mean_ci, load_average, machine_info, markdown_table, spearman  # noqa: E402

from shapshift.models import load_model  # noqa: E402

HERE = Path(__file__).resolve().parent
REFERENCE_C = 32
log = logging.getLogger("study")


def runs(per_feature: list[int], seeds: int) -> list[tuple[str, int, int]]:
    """(method, c, seed) of every estimate; the reference (kernel at ``REFERENCE_C``) comes first."""
    out = [("kernel", REFERENCE_C, 0)]
    for c in per_feature:
        out += [(m, c, s) for m in ("kernel", "sampling") for s in range(seeds)]
    return out


def summarise(df: pd.DataFrame, n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Per (method, c): AOPC − Partition (seeds averaged per example) with a bootstrap CI over examples."""
    part = df[df.method == "shap-partition"].set_index("example")["deletion_aopc"]
    rows = []
    for (method, c), g in df[df.method != "shap-partition"].groupby(["method", "c"], sort=False):
        per_ex = g.groupby("example")["deletion_aopc"].mean()
        d = (per_ex - part.reindex(per_ex.index)).to_numpy()
        lo, hi = bootstrap_mean_ci(d, n_boot, seed)
        rows.append({"method": method, "evals per feature c": c, "seeds": g.seed.nunique(), "examples": len(d),
                     "s / example": g.seconds.mean(), "deletion AOPC": g.deletion_aopc.mean(),
                     "AOPC − partition": d.mean(), "95 % CI low": lo, "95 % CI high": hi,
                     "seed-to-seed sd": g.groupby("example")["deletion_aopc"].std().mean(),
                     "Spearman vs reference": g.spearman_vs_reference.mean()})
    p = df[df.method == "shap-partition"]
    rows.append({"method": "shap-partition", "evals per feature c": float("nan"), "seeds": 1, "examples": len(p),
                 "s / example": p.seconds.mean(), "deletion AOPC": p.deletion_aopc.mean(), "AOPC − partition": 0.0,
                 "Spearman vs reference": p.spearman_vs_reference.mean()})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-gpt-neo, 1 medium sentence, 2 seeds: a smoke run")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-sst2", type=int, default=16, help="as bench_explainers: half of them are the medium ones")
    ap.add_argument("--max-new-tokens", type=int, default=10)
    ap.add_argument("--per-feature", default="4,8", help="budgets c (c * n + 2 evaluations), comma-separated")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-random", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("shapshift").setLevel(logging.WARNING)
    if args.quick:
        args.model, args.n_sst2, args.seeds = "tiny-gpt-neo", 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/study_noise.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t_start, load0 = time.perf_counter(), load_average()
    model, tok = load_model(args.model)
    args.n_fewshot, args.long_tokens, args.min_context = 0, 0, 0
    examples = [e for e in build_examples(model, tok, args) if e.n > EXACT_MAX]
    per_feature = [int(c) for c in args.per_feature.split(",")]
    rows = []
    for ex in examples:
        values, ex_rows = {}, []
        with Timer() as t:
            values["shap-partition"], evals, *_ = run_partition(model, tok, ex)
        ex_rows.append({"method": "shap-partition", "c": float("nan"), "seed": 0, "seconds": t.seconds, "evals": evals})
        for method, c, seed in runs(per_feature, args.seeds):
            with Timer() as t:
                values[f"{method}-{c}-{seed}"], evals, *_ = run_ours(model, tok, ex, method, c * ex.n + 2, seed)
            ex_rows.append({"method": method, "c": c, "seed": seed, "seconds": t.seconds, "evals": evals})
        reference = values[f"kernel-{REFERENCE_C}-0"].sum(1)
        faith, _ = faithfulness(model, tok, ex, values, args.n_random)
        for key, r in zip(values, ex_rows):
            r.update({"example": ex.name, "n": ex.n, "spearman_vs_reference": spearman(values[key].sum(1), reference),
                      **faith[key]})
        rows += ex_rows
        log.info("%s n=%d done", ex.name, ex.n)
    df = pd.DataFrame(rows)
    ref_mask = (df.method == "kernel") & (df.c == REFERENCE_C)
    df.loc[ref_mask, "method"] = "kernel (reference)"
    summary = summarise(df)
    wall = time.perf_counter() - t_start
    suffix = "_quick" if args.quick else ""
    df.to_csv(args.out / f"study_noise{suffix}.csv", index=False)
    lines = [
        "# Sampling noise and deletion faithfulness on 11-24-token SST-2 inputs", "",
        f"Command: `{command}` — {wall / 60:.1f} min (load average at start / end: {load0} / {load_average()}).", "",
        "Machine and versions: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()) + ".", "",
        f"Model: {args.model}; the {len(examples)} medium sentences of `bench_explainers.py` with the same targets. "
        f"`kernel (reference)`: KernelSHAP with {REFERENCE_C}n + 2 evaluations, the stand-in for exact Shapley values of "
        "attention masking. Deletion AOPC as in RESULTS.md (real deletion from the text, nats, higher is better); "
        "`AOPC − partition`: per example, seeds averaged, then the mean over examples with a 95 % bootstrap CI "
        "(examples resampled); `seed-to-seed sd`: the standard deviation of one example's AOPC across seeds, "
        "averaged over examples.", "",
        markdown_table(summary), ""]
    (args.out / f"NOISE{suffix}.md").write_text("\n".join(lines))
    print(markdown_table(summary))
    log.info("done in %.1f min", wall / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
