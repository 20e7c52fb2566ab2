"""Estimator error against budget on 20–30-token inputs, against a near-exact reference.

The recorded coalition tables (``benchmarks/tables*``) hold every coalition of inputs of 8–12 tokens, so their
exact Shapley values are known; inputs of 20–30 tokens have 2^20+ coalitions. Here the reference is the mean of
two ``kernel`` runs at ``64n + 2`` evaluations each (seeds 100 and 101; its own standard error, from the two runs'
difference, is reported beside it), on held-out SST-2 dev sentences (``Review: {input}\\nSentiment:``, chat
template, smollm2-135m on CPU, one thread, the defaults: deletion, log-probability), the model's own 4-token greedy
continuation as the target. ``kernel`` and ``quadrature`` then run at ``4n + 2`` and ``8n + 2`` with seeds 0–3;
the error is ``||values - reference|| / ||reference||`` over features and target tokens, averaged over seeds.
Every coalition is scored once per sentence (one caching scorer).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_long_tables.py --n 3

Writes ``benchmarks/LONG_TABLES.md`` and ``benchmarks/study_long_tables.csv``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_sst2, machine_info, markdown_table, pick_sentences, sst2_example  # noqa: E402
from record_tables import recorded_rows  # noqa: E402

from shapshift.explainers import REGISTRY, make_task  # noqa: E402
from shapshift.explainers.precision import CachingScorer  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("long_tables")
REFERENCE_PER_FEATURE = 64


def run(method: str, task, scorer, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    t = copy.copy(task)
    t.max_evals, t.seed = budget, seed
    att = REGISTRY[method]().attribute(t, scorer)
    return np.asarray(att.values), att.error_std


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--lo", type=int, default=20)
    ap.add_argument("--hi", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--selection-seed", type=int, default=27)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    model, tok = load_model("smollm2-135m")
    dev = load_sst2("dev")
    exclude = recorded_rows(HERE / "tables") | recorded_rows(HERE / "tables_delete_log_prob")
    rows_idx = pick_sentences(dev, tok, args.n, args.lo, args.hi, seed=args.selection_seed, exclude=exclude)
    examples = [sst2_example(tok, dev.sentence[i], f"dev{i}") for i in rows_idx]
    targets = generate(model, tok, [e.prompt.ids for e in examples], max_new_tokens=4, progress=False)
    rows = []
    for e, target in zip(examples, targets):
        task = make_task(model, tok, e.parts, target, input_ids=e.prompt.input_ids)
        n = task.n_features
        scorer = CachingScorer(task.make_scorer())
        refs = [run("kernel", task, scorer, REFERENCE_PER_FEATURE * n + 2, s)[0] for s in (100, 101)]
        ref = (refs[0] + refs[1]) / 2
        ref_rel_se = float(np.linalg.norm(refs[0] - refs[1]) / 2 / np.linalg.norm(ref))
        for per in (4, 8):
            for method in ("kernel", "quadrature"):
                errs = [np.linalg.norm(run(method, task, scorer, per * n + 2, s)[0] - ref) / np.linalg.norm(ref)
                        for s in range(args.seeds)]
                rows.append({"example": e.name, "n": n, "budget": f"{per}n+2", "method": method,
                             "error": float(np.mean(errs)), "reference_rel_se": ref_rel_se,
                             "evals_scored": scorer.n_evals})
                log.info("%s", rows[-1])
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "study_long_tables.csv", index=False)
    wide = df.pivot_table(index=["budget"], columns="method", values="error", aggfunc="mean")
    wide["kernel / quadrature"] = wide["kernel"] / wide["quadrature"]
    per_example = df.pivot_table(index=["example", "n", "budget"], columns="method", values="error").reset_index()
    per_example["kernel / quadrature"] = per_example["kernel"] / per_example["quadrature"]
    lines = ["# Estimator error on 20–30-token inputs against a near-exact reference", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "Made by:", "",
             f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_long_tables.py {' '.join(sys.argv[1:])}", "",
             "## Mean relative error over the sentences", "", markdown_table(wide.reset_index()), "",
             "## Per sentence", "", markdown_table(per_example), "",
             "Reference's own relative standard error (half the two runs' distance): "
             + ", ".join(f"{r.example} {r.reference_rel_se:.3f}" for r in df.drop_duplicates("example").itertuples()), "",
             f"Machine: {machine_info()}", ""]
    (args.out / "LONG_TABLES.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
