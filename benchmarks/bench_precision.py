"""Does ``auto``'s default precision hold on held-out text, and what does it cost beside shap's Partition?

Held-out SST-2 dev sentences of 12-30 tokens (none of the recorded tables' sentences, which chose
the estimator and its settings), in the chat template ``Review: {input}\\nSentiment:``, the model's
own 8-token greedy continuation as the target, smollm2-135m on CPU with one torch thread. Each
sentence is explained by ``auto`` (its default precision) with seeds 0 and 1, and by shap's
Partition explainer (``max_evals=500``) in the same run. Reported per sentence: the Spearman
correlation of the two seeds' importances (``|value|`` summed over output tokens), the precision
``auto`` predicted, its evaluations and seconds, Partition's seconds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_precision.py           # 4 sentences
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_precision.py --quick   # 1 sentence, no Partition

Writes ``benchmarks/bench_precision.csv`` and ``benchmarks/PRECISION.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_explainers import run_partition  # noqa: E402
from common import load_sst2, machine_info, markdown_table, pick_sentences, spearman, sst2_example  # noqa: E402
from record_tables import recorded_rows  # noqa: E402

from shapshift.config import ExplainConfig  # noqa: E402
from shapshift.constants import resolve_masking
from shapshift.explainers import explain_tasks, make_task  # noqa: E402
from shapshift.explainers.api import auto_precision  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.stats import importance  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("precision")


def run_auto(model, tok, ex, seed: int, max_evals: int):
    task = make_task(model, tok, ex.parts, ex.target_ids, input_ids=ex.prompt.input_ids, max_evals=max_evals, seed=seed)
    start = time.perf_counter()
    [exp], [stats] = explain_tasks([task], "auto", progress=False)
    return np.asarray(exp.values), stats, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 sentence, no Partition")
    ap.add_argument("--n", type=int, default=4, help="held-out sentences")
    ap.add_argument("--lo", type=int, default=12)
    ap.add_argument("--hi", type=int, default=30)
    ap.add_argument("--max-evals", type=int, default=512)
    ap.add_argument("--no-partition", action="store_true")
    ap.add_argument("--seed", type=int, default=7, help="seed of the sentence selection")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    if args.quick:
        args.n, args.no_partition = 1, True
    model, tok = load_model("smollm2-135m")
    dev = load_sst2("dev")
    held_out = pick_sentences(dev, tok, args.n, args.lo, args.hi, seed=args.seed, exclude=recorded_rows(HERE / "tables"))
    examples = [sst2_example(tok, dev.sentence[i], f"dev{i}") for i in held_out]
    targets = generate(model, tok, [e.prompt.ids for e in examples], max_new_tokens=8, progress=False)
    for e, t in zip(examples, targets):
        e.target_ids = t
    run_auto(model, tok, examples[0], 0, 8)  # warm-up (not timed)
    rows = []
    for e, t in zip(examples, targets):
        v0, s0, sec0 = run_auto(model, tok, e, 0, args.max_evals)
        v1, s1, sec1 = run_auto(model, tok, e, 1, args.max_evals)
        row = {"example": e.name, "n": e.n, "n_out": len(t), "method": s0["method"],
               "spearman_seeds": spearman(importance(v0), importance(v1)),
               "precision_seed0": s0["precision"], "precision_seed1": s1["precision"],
               "evals_seed0": s0["n_evals"], "evals_seed1": s1["n_evals"],
               "seconds_auto": (sec0 + sec1) / 2,
               "s_per_eval_auto": (sec0 + sec1) / (s0["n_evals"] + s1["n_evals"])}
        if not args.no_partition:
            start = time.perf_counter()
            pv, p_evals, _, _ = run_partition(model, tok, e)
            row["seconds_partition"] = time.perf_counter() - start
            row["evals_partition"] = p_evals
            row["s_per_eval_partition"] = row["seconds_partition"] / p_evals
            row["spearman_auto_partition"] = spearman(importance(v0), importance(pv))
            row["x_faster"] = row["seconds_partition"] / row["seconds_auto"]
        rows.append(row)
        log.info("%s", row)
    df = pd.DataFrame(rows)
    suffix = "_quick" if args.quick else ""
    df.to_csv(args.out / f"bench_precision{suffix}.csv", index=False)
    lines = [
        "# auto's default precision on held-out text", "",
        f"smollm2-135m on CPU, one torch thread; {len(df)} held-out SST-2 dev sentences of {args.lo}-{args.hi} tokens "
        f"(not among the recorded tables' sentences), the model's 8-token greedy continuation as the target; "
        f"auto's default precision target {auto_precision():g} (CPU), max_evals {args.max_evals}; the library's default "
        f"score ({ExplainConfig().score}) and masking ({resolve_masking(ExplainConfig().masking)}; Partition: shap's Text "
        "masker). Made by:", "",
        f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_precision.py{' --quick' if args.quick else ''}", "",
        markdown_table(df), "",
        f"Mean Spearman of the two seeds' importances: {df.spearman_seeds.mean():.3f} (lowest "
        f"{df.spearman_seeds.min():.3f}); mean seconds per example for auto: {df.seconds_auto.mean():.1f}"
        + (f"; shap Partition {df.seconds_partition.mean():.1f} s per example, auto "
           f"{np.exp(np.log(df.x_faster).mean()):.1f}× faster (geometric mean, same run)."
           if "seconds_partition" in df else "."), "",
        f"Machine: {machine_info()}", "",
    ]
    (args.out / f"PRECISION{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
