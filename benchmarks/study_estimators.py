"""Error vs budget of every estimator on the recorded coalition tables, and coverage of their standard errors.

Replays the tables of ``benchmarks/tables/*.npz`` (``record_tables.py``: smollm2-135m, SST-2 dev,
every coalition scored, exact Shapley values stored beside) through each estimator of shapshift at
budgets ``c * n + 2`` for several seeds, without a model. Per table, budget, estimator and seed:

- ``rel_error``: ``||phi_hat - phi||_F / ||phi||_F`` over all (input, output) values;
- ``spearman_exact``: Spearman of the importance (``|value|`` summed over output tokens) with the exact one;
- ``spearman_seeds``: Spearman of the importance between this seed and the next (rerun agreement);
- ``coverage``: share of values whose interval ``value +- 1.96 SE`` holds the exact value;
- ``precision``: the rerun agreement the estimator predicts from its own standard errors
  (:func:`shapshift.stats.expected_rank_agreement`).

shapiq's approximators are run on the same tables by ``benchmarks/study_shapiq.py`` (Python 3.12
environment) and merged into the report when its CSV exists.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_estimators.py          # ~5 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_estimators.py --quick  # 2 tables, 2 seeds

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_estimators.py --tables benchmarks/tables_delete_log_prob

Writes ``benchmarks/study_estimators.csv`` and ``benchmarks/ESTIMATORS.md`` (tables of another masking or score:
``study_estimators_<masking>_<score>.csv``, ``ESTIMATORS_<masking>_<score>.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, spearman  # noqa: E402

from shapshift.constants import SCORE_UNITS  # noqa: E402
from shapshift.explainers import REGISTRY  # noqa: E402
from shapshift.explainers.base import ExplainTask  # noqa: E402
from shapshift.explainers.exact import all_coalitions  # noqa: E402
from shapshift.explainers.quadrature import middle_sizes, size_quadrature  # noqa: E402
from shapshift.scoring import TableScorer  # noqa: E402
from shapshift.stats import expected_rank_agreement, importance  # noqa: E402

HERE = Path(__file__).resolve().parent
PER_FEATURE = (2, 4, 8, 16)
METHODS = ("kernel", "quadrature", "sampling", "regression")


def load_tables(folder: Path) -> list[dict]:
    """The recorded tables, smallest first: ``name``, ``n``, ``table`` ``(2^n, k)`` float64, ``exact`` ``(n, k)``."""
    out = []
    for p in sorted(folder.glob("*.npz")):
        d = np.load(p)
        out.append({"name": p.stem, "n": int(d["n"]), "table": d["table"].astype(np.float64), "exact": d["exact"],
                    # tables recorded before record_tables.py stored them are log-odds under attention masking
                    "masking": str(d["masking"]) if "masking" in d else "attention",
                    "score": str(d["score"]) if "score" in d else "log_odds"})
    return sorted(out, key=lambda t: (t["n"], t["name"]))


def table_task(table: np.ndarray, budget: int, seed: int) -> ExplainTask:
    """A task of the table's features (no model, tokenizer or prompt needed by the estimators run here)."""
    return ExplainTask(model=None, tokenizer=None, parts=None, prompt=SimpleNamespace(input_ids=[0] * TableScorer(table).n_in),
                       target_ids=[], max_evals=budget, seed=seed)


def quadrature_bias_floor(t: dict) -> float:
    """Relative error of quadrature's rule with the exact ``D(t)`` at its sizes (1, the middle, n − 1): what it
    keeps at any budget, since only the middle size is sampled and the rest of ``D`` is a polynomial over sizes."""
    n, table = t["n"], t["table"]
    x = all_coalitions(n)
    sizes = x.sum(axis=1)
    nodes = [1, *middle_sizes(n), n - 1]
    d = [np.stack([table[(sizes == s) & x[:, i]].mean(0) - table[(sizes == s) & ~x[:, i]].mean(0) for i in range(n)])
         for s in nodes]
    phi = (table[-1] - table[0]) / n + sum(w * dk for w, dk in zip(size_quadrature(n, nodes), d)) / n
    return float(np.linalg.norm(phi - t["exact"]) / np.linalg.norm(t["exact"]))


def run(method: str, table: np.ndarray, budget: int, seed: int):
    """``method`` on the game ``table`` replays (its scorer, passed explicitly)."""
    return REGISTRY[method]().attribute(table_task(table, budget, seed), TableScorer(table))


def rows_for(t: dict, methods, per_feature, seeds: int) -> list[dict]:
    rows = []
    n, exact = t["n"], t["exact"]
    truth = importance(exact)
    for c in per_feature:
        budget = c * n + 2
        if budget >= 2**n:
            continue
        for method in methods:
            atts = []
            for seed in range(seeds + 1):  # one more run: the partner of the last seed's rerun agreement
                start = time.perf_counter()
                atts.append((run(method, t["table"], budget, seed), time.perf_counter() - start))
            for seed in range(seeds):
                att, secs = atts[seed]
                nxt = atts[seed + 1][0]
                se = att.error_std
                cov = (float(np.mean(np.abs(att.values - exact) <= 1.96 * se))
                       if se is not None and np.all(np.isfinite(se)) else float("nan"))
                rows.append({
                    "table": t["name"], "n": n, "per_feature": c, "budget": budget, "method": method, "seed": seed,
                    "evals": att.n_evals, "seconds": secs,
                    "rel_error": float(np.linalg.norm(att.values - exact) / np.linalg.norm(exact)),
                    "spearman_exact": spearman(importance(att.values), truth),
                    "spearman_seeds": spearman(importance(att.values), importance(nxt.values)),
                    "coverage": cov,
                    "precision": (expected_rank_agreement(att.values, se, seed=seed)
                                  if se is not None and np.all(np.isfinite(se)) else float("nan")),
                })
    return rows


def report(df: pd.DataFrame, shapiq: pd.DataFrame | None, args) -> str:
    both = pd.concat([df, shapiq]) if shapiq is not None else df
    err = both.pivot_table(index="per_feature", columns="method", values="rel_error", aggfunc="mean")
    rho = both.pivot_table(index="per_feature", columns="method", values="spearman_seeds", aggfunc="mean")
    cov = df.pivot_table(index="per_feature", columns="method", values="coverage", aggfunc="mean")
    prec = df.pivot_table(index="per_feature", columns="method", values="precision", aggfunc="mean")
    mean_err = df.groupby(["method", "per_feature"]).rel_error.mean()
    ratio = (mean_err["kernel"] / mean_err["quadrature"]).rename("kernel / quadrature")
    ratios = ratio.to_frame()
    if "regression" in df.method.unique():  # issue 27's regression-adjusted estimator against the same target
        ratios["kernel / regression"] = mean_err["kernel"] / mean_err["regression"]
        ratios["regression / quadrature"] = mean_err["regression"] / mean_err["quadrature"]
    by_n = df.pivot_table(index=["n"], columns=["method", "per_feature"], values="rel_error", aggfunc="mean")
    verdict = []
    for c, need in ((2, 1.0), (4, 2.0), (8, 2.0), (16, None)):
        if c not in ratio.index:
            continue
        r = ratio[c]
        text = f"- {c}n + 2: kernel's error is {r:.2f}× quadrature's"
        if need is not None:
            text += " (target met)" if r >= need - 1e-6 else f" (target {need:g}×: missed by {100 * (1 - r / need):.0f} %)"
        if shapiq is not None and c in err.index:
            others = err.loc[c, [m for m in err.columns if m.startswith("shapiq")]].dropna()
            if len(others):
                text += (f"; best shapiq approximator {others.idxmin()} {others.min():.3f} vs quadrature "
                         f"{err.loc[c, 'quadrature']:.3f}")
        verdict.append(text)
        if "kernel / regression" in ratios and need is not None:
            r = ratios.loc[c, "kernel / regression"]
            verdict.append(f"- {c}n + 2: kernel's error is {r:.2f}× regression's" + (
                " (target met)" if r >= need - 1e-6 else f" (target {need:g}×: missed by {100 * (1 - r / need):.0f} %)"))
    tables = df.groupby("table").n.first()
    kind = f"{SCORE_UNITS[args.score]}, {args.masking} masking"
    lines = [
        "# Estimators: error vs budget on recorded coalition tables", "",
        f"{len(tables)} tables (smollm2-135m, SST-2 dev, the model's greedy 6-token continuation, "
        f"{kind}; n = {', '.join(str(v) for v in sorted(tables))} input tokens), every coalition scored, "
        f"exact Shapley values as the reference; {args.seeds} seeds per budget. Budget = c·n + 2 evaluations.",
        "Made by:", "",
        "    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/record_tables.py ...   # the tables (see its docstring)",
        "    /work/venv312/bin/python benchmarks/study_shapiq.py                  # shapiq (Python 3.12 venv)",
        f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_estimators.py{' '.join([''] + sys.argv[1:])}",
        "", "`quadrature` (src/shapshift/explainers/quadrature.py): Shapley values as the sum over coalition sizes t of "
        "D_i(t) (mean value of the size-t coalitions with i minus those without); sizes 1 and n − 1 enumerated "
        "(exact), the middle size from complementary pairs chosen for a well-conditioned design and a ridge "
        "regression around the straight line between D(1) and D(n − 1) (exact for games of order ≤ 2), then a "
        "polynomial quadrature over sizes. Standard errors: delete-one-pair jackknife. `kernel`'s bootstrap "
        "standard errors are scaled by 0.7 (values unchanged). shapiq 1.8's approximators ran per output token "
        "on the same tables (study_shapiq.py, 5 seeds). `regression` (src/shapshift/explainers/regression.py, issue 27): "
        "the same exact ends, then complementary pairs spread over every middle size, a kernel-ridge proxy (linear "
        "effects varying smoothly with the size) whose Shapley values are exact, and a cross-fitted, unbiased Monte "
        "Carlo correction of its residual; standard errors from the stratified spread of the corrections.",
        "", "## Relative error of the values (mean over tables and seeds; lower is better)", "",
        markdown_table(err.reset_index()), "",
        "Error ratio kernel / quadrature (and kernel / regression) per budget (target ≥ 2 at 4n + 2 and 8n + 2, "
        "≥ 1 at 2n + 2):", "",
        markdown_table(ratios.reset_index()), "", *verdict, "",
        "## Rerun agreement: Spearman of |value| summed over outputs between seeds s and s + 1", "",
        markdown_table(rho.reset_index()), "",
        "## Coverage of the 95 % intervals (value ± 1.96 SE) of the exact values (target 0.90–0.98)", "",
        markdown_table(cov.reset_index()), "",
        "## Rerun agreement predicted from the standard errors (explain.precision's estimate)", "",
        markdown_table(prec.reset_index()), "",
        "## Relative error by input length", "", markdown_table(by_n.reset_index()), "",
        "## quadrature's bias floor", "",
        "Relative error of quadrature's rule over sizes given the exact D(t) at its sizes (1, the middle, n − 1), "
        "i.e. what it keeps at any budget short of every coalition: mean "
        f"{np.mean(list(args.bias_floor.values())):.4f} (per table: "
        f"{', '.join(f'{k} {v:.3f}' for k, v in args.bias_floor.items())}).", "",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 tables, 2 seeds")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--tables", type=Path, default=HERE / "tables")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tables = load_tables(args.tables)
    kinds = {(t["masking"], t["score"]) for t in tables}
    if len(kinds) != 1:
        raise SystemExit(f"{args.tables} mixes tables of different maskings or scores: {sorted(kinds)}")
    (args.masking, args.score), = kinds
    if args.quick:
        tables, args.seeds = tables[:2], 2
    args.bias_floor = {t["name"]: quadrature_bias_floor(t) for t in tables}
    rows = []
    for t in tables:
        rows += rows_for(t, args.methods.split(","), PER_FEATURE, args.seeds)
    df = pd.DataFrame(rows)
    # benchmarks/tables (log-odds, attention masking) writes the unsuffixed files; other tables are named by their kind
    kind = "" if (args.masking, args.score) == ("attention", "log_odds") else f"_{args.masking}_{args.score}"
    suffix = kind + ("_quick" if args.quick else "")
    df.to_csv(args.out / f"study_estimators{suffix}.csv", index=False)
    shapiq_csv = args.out / f"study_shapiq{kind}.csv"
    shapiq = pd.read_csv(shapiq_csv) if shapiq_csv.exists() else None
    if shapiq is not None:
        shapiq = shapiq[shapiq.table.isin(df.table.unique())]
    text = report(df, shapiq, args)
    (args.out / f"ESTIMATORS{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
