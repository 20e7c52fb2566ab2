"""How early can ``auto``'s precision rounds stop at the same measured seed-to-seed agreement? (issue 27)

Replays ``explain_to_precision`` with ``quadrature`` on every recorded coalition table (``benchmarks/tables``,
``benchmarks/tables_delete_log_prob``; a :class:`TableScorer`, no model) under variants of the stopping rule:
the precision target, the growth of the budget from round to round, the first round's budget and the predictor
of the precision. Per table and seed it records the evaluations, the predicted precision at the stop and the
Spearman correlation of the importances of seed ``s`` and ``s + 1`` under the same rule (and against the exact
values).

Predictors: ``plain`` (:func:`shapshift.stats.expected_rank_agreement`: two runs simulated around the estimate)
and ``shrunk`` (the same around the estimate shrunk toward 0 per output token by ``sqrt(1 - sum se^2 / sum v^2)``,
so the simulated runs' spread matches the true values' and not the noisier estimate's).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_stopping.py      # writes STOPPING.md/.csv

``--trajectories benchmarks/stopping_trajectories.npz`` replays the rules instead on the real model's rounds of
``study_stopping_model.py`` (12-30-token tuning sentences; budgets on its grid ``4n + 2 + k n``: a rule's next budget
is the first grid budget at or above ``max(growth * budget, budget + step * n)``), writing STOPPING_MODEL.md/.csv.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, spearman  # noqa: E402
from study_estimators import load_tables, table_task  # noqa: E402

from shapshift.explainers.precision import explain_to_precision  # noqa: E402
from shapshift.scoring import TableScorer  # noqa: E402
from shapshift.stats import expected_rank_agreement, importance  # noqa: E402

HERE = Path(__file__).resolve().parent


def shrunk(values, err, seed):
    if err is None or not np.all(np.isfinite(err)):
        return float("nan")
    v = np.asarray(values, float)
    lam = np.sqrt(np.clip(1 - (np.asarray(err) ** 2).sum(0) / np.maximum((v**2).sum(0), 1e-300), 0, 1))
    return expected_rank_agreement(v * lam, err, seed=seed)


PREDICTORS = {"plain": None, "shrunk": shrunk}


def replay(traj, key: str, target: float, growth: float, step: float, predictor) -> tuple[int, np.ndarray, float, float]:
    """The stop of one rule on one recorded trajectory: (grid index, values, predicted precision, seconds)."""
    budgets, values, err = traj[key + "_budgets"], traj[key + "_values"], traj[key + "_err"]
    n = values.shape[1]
    i = 0
    while True:
        pred = float(traj[key + "_pred"][i]) if predictor is None else predictor(values[i], err[i], 0)
        if pred >= target or i == len(budgets) - 1:
            return i, values[i], pred, float(traj[key + "_seconds"][i])
        want = max(growth * budgets[i], budgets[i] + step * n)
        i = int(min(np.searchsorted(budgets, want - 1e-9), len(budgets) - 1))


def main_trajectories(args) -> int:
    traj = {}
    for path in args.trajectories:
        traj.update(np.load(path))
    names = list(dict.fromkeys(k.rsplit("_s", 1)[0] for k in traj if k.endswith("_values")))
    seeds = min(int(traj["seeds"]), *(sum(k.startswith(f"{x}_s") and k.endswith("_values") for k in traj) for x in names))
    rows = []
    for pred, growth, target, step in itertools.product(args.predictors.split(","), map(float, args.growths.split(",")),
                                                        map(float, args.targets.split(",")), map(float, args.steps.split(","))):
        for name in names:
            stops = [replay(traj, f"{name}_s{s}", target, growth, step, PREDICTORS[pred]) for s in range(seeds)]
            for s in range(seeds):
                for s2 in range(s + 1, seeds):
                    i, v, p, sec = stops[s]
                    rows.append({"example": name, "n": v.shape[0], "inputs": "12-18" if v.shape[0] <= 18 else "19-30",
                                 "predictor": pred, "growth": growth, "target": target,
                                 "step": step, "seeds": f"{s}-{s2}",
                                 "evals": (traj[f"{name}_s{s}_evals"][i] + traj[f"{name}_s{s2}_evals"][stops[s2][0]]) / 2,
                                 "seconds": (sec + stops[s2][3]) / 2, "predicted": (p + stops[s2][2]) / 2,
                                 "spearman_seeds": spearman(importance(v), importance(stops[s2][1]))})
    df = pd.DataFrame(rows)
    df.to_csv(HERE / f"{args.out}_MODEL.csv", index=False)
    keys = ["inputs", "predictor", "growth", "target", "step"]
    g = df.groupby(keys)
    table = g[["evals", "predicted", "spearman_seeds"]].mean()
    table["lowest_seeds"] = g.spearman_seeds.min()
    table["lowest_example_mean"] = df.groupby(keys + ["example"]).spearman_seeds.mean().groupby(keys).min()
    text = "\n".join([
        "# Stopping precision rounds earlier: replayed on the real model's rounds", "",
        f"{len(names)} tuning SST-2 dev sentences (n = {', '.join(str(traj[f'{x}_s0_values'].shape[1]) for x in names)}; "
        f"none held out for bench_precision.py), {seeds} seeds each, every pair of seeds compared; "
        "`quadrature`'s rounds recorded by study_stopping_model.py and replayed per rule. Made by:", "",
        "    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_stopping_model.py",
        f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_stopping.py{' '.join([''] + sys.argv[1:])}", "",
        markdown_table(table.reset_index()), "",
    ])
    (HERE / f"{args.out}_MODEL.md").write_text(text)
    print(text)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--targets", default="0.9,0.92,0.95")
    ap.add_argument("--growths", default="1.5,1.25")
    ap.add_argument("--predictors", default="plain,shrunk")
    ap.add_argument("--first", default="4", help="first round's evaluations per feature (+2)")
    ap.add_argument("--max-evals", type=int, default=512)
    ap.add_argument("--out", default="STOPPING")
    ap.add_argument("--trajectories", type=Path, nargs="+", help="replay on study_stopping_model.py's recorded rounds")
    ap.add_argument("--steps", default="2", help="with --trajectories: the least step per round, in n evaluations")
    args = ap.parse_args(argv)
    if args.trajectories:
        return main_trajectories(args)
    grid = list(itertools.product(args.predictors.split(","), map(float, args.growths.split(",")),
                                  map(float, args.targets.split(",")), map(int, args.first.split(","))))
    rows = []
    for folder in ("tables", "tables_delete_log_prob"):
        for t in load_tables(HERE / folder):
            truth = importance(t["exact"])
            cap = min(args.max_evals, 2 ** t["n"])
            for pred, growth, target, first in grid:
                runs = [explain_to_precision(table_task(t["table"], cap, seed), TableScorer(t["table"]), "quadrature",
                                             target, cap, first_budget=first * t["n"] + 2,
                                             agreement=PREDICTORS[pred], growth=growth)
                        for seed in range(args.seeds + 1)]
                for seed in range(args.seeds):
                    a, b = importance(runs[seed].attribution.values), importance(runs[seed + 1].attribution.values)
                    rows.append({"tables": folder, "table": t["name"], "n": t["n"], "predictor": pred, "growth": growth,
                                 "target": target, "first": first, "seed": seed,
                                 "evals": runs[seed].attribution.n_evals, "predicted": runs[seed].precision,
                                 "spearman_seeds": spearman(a, b), "spearman_exact": spearman(a, truth)})
    df = pd.DataFrame(rows)
    df.to_csv(HERE / f"{args.out}.csv", index=False)
    keys = ["tables", "predictor", "growth", "target", "first"]
    g = df.groupby(keys)
    table = g[["evals", "predicted", "spearman_seeds", "spearman_exact"]].mean()
    table["lowest_seeds"] = g.spearman_seeds.min()
    table["share_below_0.9"] = g.spearman_seeds.apply(lambda s: float((s < 0.9).mean()))
    text = "\n".join([
        "# Stopping precision rounds earlier at the same measured agreement", "",
        f"`quadrature` in precision rounds on every recorded coalition table (no model), {args.seeds} seed pairs each, "
        f"at most {args.max_evals} evaluations (or 2^n). Means over tables and seeds; `spearman_seeds`: seed s against "
        "s + 1 under the same rule; `spearman_exact`: against the exact values. Made by:", "",
        f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_stopping.py{' '.join([''] + sys.argv[1:])}", "",
        markdown_table(table.reset_index()), "",
    ])
    (HERE / f"{args.out}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
