"""Which masking measures better, and which sampling estimator is better at equal budgets.

For short SST-2 sentences (smollm2-135m, chat template, the model's greedy continuation as the
target) every coalition is scored once under each masking (attention, delete, replace). Then:

1. masking: the exact Shapley values of each masking are judged by real deletion from the text
   (shapshift.faithfulness; independent of every masking): deletion AOPC (higher is better),
   comprehensiveness (higher), sufficiency (lower), against random orders; and the cost.
2. estimators: kernel, sampling and hierarchical are run on the recorded attention-masking tables
   (no model calls) at budgets ``c * n + 2`` for several seeds; error against the exact values.

    .venv/bin/python benchmarks/study_masking.py            # ~10-15 min on 2 CPU cores
    .venv/bin/python benchmarks/study_masking.py --quick    # tiny-gpt-neo smoke run

Writes ``benchmarks/study_masking.csv`` and ``benchmarks/study_budget.csv``; bench_explainers.py
puts them into RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Timer,
    load_sst2,
    machine_info,
    markdown_table,
    pick_sentences,
    spearman,
    sst2_example,
    top_k_overlap,
)

from shapshift.explainers import REGISTRY, make_task  # noqa: E402
from shapshift.explainers.exact import all_coalitions, shapley_from_table  # noqa: E402
from shapshift.faithfulness import (  # noqa: E402
    aopc,
    comprehensiveness,
    deletion_curve,
    random_orders,
    ranking,
    sufficiency,
    text_deletion_scorer,
)
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.scoring import MASKINGS, TableScorer, TeacherForcedScorer  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("study")


def budget_rows(ex_name, n, task_factory, table, exact, per_feature, seeds):
    rows = []
    for c in per_feature:
        budget = c * n + 2
        if budget >= 2**n:
            continue
        for method in ("kernel", "sampling", "hierarchical"):
            for seed in range(seeds if method != "hierarchical" else 1):
                att = REGISTRY[method]().attribute(task_factory(budget, seed), TableScorer(table))
                a, b = att.values.sum(1), exact.sum(1)
                rows.append({"example": ex_name, "n": n, "per_feature": c, "budget": budget, "method": method,
                             "seed": seed, "evals": att.n_evals,
                             "rel_error": float(np.linalg.norm(att.values - exact) / np.linalg.norm(exact)),
                             "spearman": spearman(a, b), "top3": top_k_overlap(a, b)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-gpt-neo, 2 sentences: a smoke run")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-sentences", type=int, default=8)
    ap.add_argument("--min-tokens", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--extra-long", type=int, default=2, help="sentences of 10 tokens added to the budget study")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--tables", type=Path, default=None, help="cache the coalition tables here (.npz) and reuse them")
    ap.add_argument("--maskings", default=",".join(MASKINGS), help="maskings to compare (attention always included)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the sentence selection")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n_sentences, args.extra_long, args.seeds = 2, 0, 2
    model, tok = load_model(args.model or ("tiny-gpt-neo" if args.quick else "smollm2-135m"))
    dev = load_sst2("dev")
    idx = pick_sentences(dev, tok, args.n_sentences, args.min_tokens, args.max_tokens, seed=args.seed)
    long_idx = (pick_sentences(dev, tok, args.extra_long, 10, 10, seed=args.seed, exclude=set(idx))
                if args.extra_long else [])
    maskings = ["attention"] + [m for m in args.maskings.split(",") if m in MASKINGS and m != "attention"]
    examples = [sst2_example(tok, dev.sentence[i], f"dev{i}") for i in idx + long_idx]
    targets = generate(model, tok, [e.prompt.ids for e in examples], max_new_tokens=10, progress=False)
    masking_rows, budget = [], []
    per_feature = [2, 3, 4, 6, 8, 12, 16, 24]
    for e, target in zip(examples, targets):
        e.target_ids = target
        is_long = e.name in {f"dev{i}" for i in long_idx}
        score_kept, _ = text_deletion_scorer(model, tok, e.parts, target, e.prompt.input_ids)
        rand = [aopc(deletion_curve(score_kept, o)) for o in random_orders(e.n, 8, seed=0)]
        tables = {}
        for masking in (["attention"] if is_long else maskings):
            scorer = TeacherForcedScorer(model, e.prompt, target, masking=masking)
            cached = args.tables / f"{args.model or 'smollm2-135m'}-{e.name}-{masking}.npz" if args.tables else None
            with Timer() as t:
                if cached is not None and cached.exists():
                    table = np.load(cached)["table"]
                else:
                    table = scorer(all_coalitions(e.n))
                    if cached is not None:
                        cached.parent.mkdir(parents=True, exist_ok=True)
                        np.savez(cached, table=table, target=np.array(target), input_ids=np.array(e.prompt.input_ids))
            tables[masking] = table
            values = shapley_from_table(table, e.n)
            order = ranking(values)
            masking_rows.append({
                "example": e.name, "n": e.n, "n_out": len(target), "masking": masking, "seconds": t.seconds,
                "forward_tokens": scorer.n_forward_tokens, "deletion_aopc": aopc(deletion_curve(score_kept, order)),
                "deletion_aopc_random": float(np.mean(rand)), "comprehensiveness": comprehensiveness(score_kept, order),
                "sufficiency": sufficiency(score_kept, order)})
            log.info("%s n=%d %s %.1fs aopc=%.3f (random %.3f)", e.name, e.n, masking, t.seconds,
                     masking_rows[-1]["deletion_aopc"], masking_rows[-1]["deletion_aopc_random"])
        exact = shapley_from_table(tables["attention"], e.n)
        if not is_long:
            for j, m in enumerate(maskings[1:]):
                other = shapley_from_table(tables[m], e.n)
                masking_rows[-(len(maskings) - 1 - j)]["spearman_vs_attention"] = spearman(other.sum(1), exact.sum(1))

        def factory(b, seed, e=e, target=target):
            return make_task(model, tok, e.parts, target, input_ids=e.prompt.input_ids, max_evals=b, seed=seed)

        budget += budget_rows(e.name, e.n, factory, tables["attention"], exact, per_feature, args.seeds)
    suffix = "_quick" if args.quick else ""
    pd.DataFrame(masking_rows).to_csv(args.out / f"study_masking{suffix}.csv", index=False)
    pd.DataFrame(budget).to_csv(args.out / f"study_budget{suffix}.csv", index=False)
    info = machine_info()
    log.info("machine: %s", info)
    print(markdown_table(pd.DataFrame(masking_rows).groupby("masking")[[
        "seconds", "forward_tokens", "deletion_aopc", "deletion_aopc_random", "comprehensiveness",
        "sufficiency"]].mean()))
    print(markdown_table(pd.DataFrame(budget).groupby(["per_feature", "method"])[["rel_error", "spearman", "top3"]]
                         .mean()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
