"""shapiq's Shapley value approximators replayed on the recorded coalition tables (Python >= 3.12 only).

shapiq (>= 1.5) needs Python 3.12 and is not a shapshift dependency: run this in its own
environment, which needs only numpy, pandas, scipy and shapiq::

    $(pyenv root)/versions/3.12.1/bin/python -m venv /work/venv312
    /work/venv312/bin/pip install "shapiq>=1.5" pandas xgboost-cpu
    OMP_NUM_THREADS=1 /work/venv312/bin/python benchmarks/study_shapiq.py
    OMP_NUM_THREADS=1 /work/venv312/bin/python benchmarks/study_shapiq.py --tables benchmarks/tables_delete_log_prob --out benchmarks/study_shapiq_delete_log_prob.csv

Each output token of each table is one game (shapiq approximates one output at a time); the budget
``c * n + 2`` is the same as for shapshift's estimators (``study_estimators.py``, which merges the
CSV written here, ``benchmarks/study_shapiq.csv``, into ``ESTIMATORS.md``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
PER_FEATURE = (2, 4, 8, 16)


def approximators(n: int, seed: int) -> dict:
    from shapiq import approximator as a

    return {
        "shapiq KernelSHAP": a.KernelSHAP(n, pairing_trick=True, random_state=seed),
        "shapiq LeverageSHAP": a.LeverageSHAP(n, random_state=seed),
        "shapiq RegressionMSR": a.RegressionMSR(n, index="SV", random_state=seed),
        "shapiq OddSHAP": a.OddSHAP(n, random_state=seed),
        "shapiq PolySHAP": a.PolySHAP(n, max_order=2, random_state=seed),
        "shapiq SVARM": a.SVARM(n, random_state=seed),
        # issue 27: an XGBoost proxy (pip install xgboost-cpu; without it shapiq falls back to a decision tree),
        # alone and with the regression adjustment of its residual (Witter, Liu & Musco 2025). shapiq 1.8.0's
        # ShaplEIG cannot be built (an abstract class), so it is not here.
        "shapiq ProxySHAP": a.ProxySHAP(n, index="SV", max_order=1, random_state=seed),
        "shapiq ProxySHAP adjusted": a.ProxySHAP(n, index="SV", max_order=1, adjustment=True, random_state=seed),
    }


def first_order(iv, n: int) -> np.ndarray:
    return np.array([iv[(i,)] for i in range(n)], dtype=np.float64)


def importance(values: np.ndarray) -> np.ndarray:
    return np.abs(values).sum(axis=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tables", type=Path, default=HERE / "tables")
    ap.add_argument("--out", type=Path, default=HERE / "study_shapiq.csv")
    ap.add_argument("--only", default=None, help="comma-separated approximator names (without 'shapiq ')")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    old = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame(columns=["table"])
    rows = old.to_dict("records")  # (table, approximator) pairs already in the CSV are kept, not rerun
    done = set(zip(old["table"], old["method"])) if len(old) else set()
    for path in sorted(args.tables.glob("*.npz")):
        if all((path.stem, name) in done for name in approximators(2, 0)):
            continue
        d = np.load(path)
        n, table, exact = int(d["n"]), d["table"].astype(np.float64), d["exact"]
        weights = 1 << np.arange(n)
        for c in PER_FEATURE:
            budget = c * n + 2
            if budget >= 2**n:
                continue
            runs: dict[str, list] = {}
            for seed in range(args.seeds + 1):
                for name in approximators(n, seed):
                    if (args.only and name.removeprefix("shapiq ") not in args.only.split(",")) or (path.stem, name) in done:
                        continue
                    start = time.perf_counter()
                    values = np.zeros_like(exact)
                    for k in range(table.shape[1]):
                        approx = approximators(n, seed)[name]

                        def game(coalitions, k=k, table=table, weights=weights):
                            return table[np.asarray(coalitions, dtype=np.int64) @ weights, k]

                        try:
                            values[:, k] = first_order(approx.approximate(budget, game), n)
                        except Exception as exc:  # an approximator that cannot run at this budget
                            print(f"{name} n={n} budget={budget}: {type(exc).__name__}: {exc}")
                            values[:, k] = np.nan
                    runs.setdefault(name, []).append((values, time.perf_counter() - start))
            for name, res in runs.items():
                for seed in range(args.seeds):
                    values, secs = res[seed]
                    nxt = res[seed + 1][0]
                    rows.append({
                        "table": path.stem, "n": n, "per_feature": c, "budget": budget, "method": name, "seed": seed,
                        "seconds": secs,
                        "rel_error": float(np.linalg.norm(values - exact) / np.linalg.norm(exact)),
                        "spearman_exact": float(spearmanr(importance(values), importance(exact)).statistic),
                        "spearman_seeds": float(spearmanr(importance(values), importance(nxt)).statistic),
                    })
            print(path.stem, c, {k: round(float(np.mean([r["rel_error"] for r in rows[-args.seeds * len(runs):]
                                                        if r["method"] == k])), 3) for k in runs}, flush=True)
        pd.DataFrame(rows).to_csv(args.out, index=False)  # after every table: an interrupted run keeps its tables
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
