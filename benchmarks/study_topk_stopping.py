"""Stopping precision rounds on the top-k set (issue 27, item 2), measured on recorded coalition tables.

``auto`` runs ``quadrature`` in rounds until the expected Spearman of two runs' importances reaches its target
(0.95 on CPU). The reader of a comparison looks at overlap@k (``compare.ks``: 1, 3, 5). Per table and seed, this
replays the rounds (``explain_to_precision`` on a :class:`TableScorer`, no model) under three rules:

- ``spearman``: expected Spearman >= 0.95 (today's default);
- ``top_k``: expected overlap@k >= the target (:func:`shapshift.explainers.topk.expected_topk_agreement`);
- ``both``: the smaller of the two >= the target;

and records the evaluations spent, the agreement each rule predicted, and the agreement measured between seed
``s`` and ``s + 1`` under the same rule: Spearman and overlap@k of the importances, and the same against the exact
values. Every recorded table (``benchmarks/tables``, attention masking and log-odds; ``benchmarks/tables_delete_log_prob``,
deletion and log-probability); nothing here is tuned.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_topk_stopping.py      # ~2 min; writes TOPK_STOPPING.md/.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, spearman  # noqa: E402
from study_estimators import load_tables, table_task  # noqa: E402

from shapshift.explainers.precision import explain_to_precision  # noqa: E402
from shapshift.explainers.topk import stopping_rule  # noqa: E402
from shapshift.scoring import TableScorer  # noqa: E402
from shapshift.stats import importance  # noqa: E402

HERE = Path(__file__).resolve().parent


def overlap_at_k(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """``|T_a ∩ T_b| / k`` of the top-k sets of two importance vectors ``(n,)``."""
    top = lambda v: set(np.argsort(-v, kind="stable")[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--topk-target", type=float, default=0.9)
    ap.add_argument("--method", default="quadrature")
    ap.add_argument("--max-evals", type=int, default=512)
    args = ap.parse_args(argv)
    rules = {"spearman": (stopping_rule("spearman"), args.target),
             f"top_{args.k}": (stopping_rule("top_k", args.k), args.topk_target),
             "both": (stopping_rule("both", args.k), args.topk_target)}
    rows = []
    for folder in ("tables", "tables_delete_log_prob"):
        for t in load_tables(HERE / folder):
            truth = importance(t["exact"])
            cap = min(args.max_evals, 2 ** t["n"])
            for name, (rule, target) in rules.items():
                runs = []
                for seed in range(args.seeds + 1):
                    res = explain_to_precision(table_task(t["table"], cap, seed), TableScorer(t["table"]), args.method,
                                               target, cap, agreement=rule)
                    runs.append(res)
                for seed in range(args.seeds):
                    a, b = importance(runs[seed].attribution.values), importance(runs[seed + 1].attribution.values)
                    rows.append({"tables": folder, "table": t["name"], "n": t["n"], "rule": name, "seed": seed,
                                 "evals": runs[seed].attribution.n_evals, "predicted": runs[seed].precision,
                                 "spearman_seeds": spearman(a, b), "overlap_seeds": overlap_at_k(a, b, args.k),
                                 "spearman_exact": spearman(a, truth), "overlap_exact": overlap_at_k(a, truth, args.k)})
    df = pd.DataFrame(rows)
    df.to_csv(HERE / "TOPK_STOPPING.csv", index=False)
    cols = ["evals", "predicted", "spearman_seeds", "overlap_seeds", "spearman_exact", "overlap_exact"]
    table = df.groupby(["tables", "rule"])[cols].mean().reset_index()
    low = (df.groupby(["tables", "rule"]).overlap_seeds.apply(lambda s: float((s < 2 / 3 + 1e-9).mean()))
           .rename(f"share overlap@{args.k} <= 2/3").reset_index())
    table = table.merge(low, on=["tables", "rule"])
    text = "\n".join([
        f"# Stopping precision rounds on the top-{args.k} set", "",
        f"`{args.method}` in precision rounds on every recorded coalition table (no model), {args.seeds} seeds each; "
        f"rules: `spearman` (expected Spearman >= {args.target}, today's default), `top_{args.k}` (expected "
        f"overlap@{args.k} >= {args.topk_target}), `both` (the smaller of the two >= {args.topk_target}); at most "
        f"{args.max_evals} evaluations (or 2^n). Means over tables and seeds; `*_seeds`: seed s against s + 1 under "
        "the same rule, `*_exact`: against the exact values. Made by:", "",
        f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_topk_stopping.py{' '.join([''] + sys.argv[1:])}", "",
        markdown_table(table), "",
    ])
    (HERE / "TOPK_STOPPING.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
