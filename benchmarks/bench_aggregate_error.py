"""Which standard error of a value summed over the generated tokens is right? Measured against reruns.

The estimators score every generated token on the same coalitions (common random numbers), so one feature's
per-token errors correlate. Two formulas turn the per-token standard errors into the error of their sum: the sum of
the errors (exact at correlation one, an upper bound for any correlation) and the root of the sum of squares (right
only for independent errors). This benchmark explains held-out SST-2 dev sentences with ``kernel`` at a small budget
under many seeds, on smollm2-135m with the model's own greedy continuation as the target (several tokens), and
compares each feature's measured standard deviation of the summed value over the seeds with the two formulas'
predictions (averaged over the seeds).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_aggregate_error.py     # about a minute on 1 core

Writes ``benchmarks/AGGREGATE_ERROR.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_sst2, machine_info, markdown_table, pick_sentences, sst2_example  # noqa: E402

from shapshift.explainers import explain_tasks, make_task  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="held-out sentences")
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--max-evals", type=int, default=48)
    ap.add_argument("--method", default="kernel")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, tok = load_model("smollm2-135m")
    dev = load_sst2("dev")
    rows, start = [], time.perf_counter()
    for i in pick_sentences(dev, tok, args.n, 8, 16, seed=7):
        ex = sst2_example(tok, dev.sentence[i], f"dev{i}")
        [target] = generate(model, tok, [ex.prompt.ids], max_new_tokens=6, stop_at_newline=False, progress=False)
        sums, errors = [], []
        for seed in range(args.seeds):
            task = make_task(model, tok, ex.parts, target, input_ids=ex.prompt.input_ids, max_evals=args.max_evals,
                             seed=seed)
            [exp], _ = explain_tasks([task], args.method, progress=False)
            sums.append(exp.values.sum(axis=1))
            errors.append(exp.error_std)
        sums, errors = np.asarray(sums), np.asarray(errors)  # (seeds, n_in), (seeds, n_in, n_out)
        measured = sums.std(axis=0, ddof=1)
        for name, predicted in (("sum of errors", errors.sum(axis=2).mean(axis=0)),
                                ("root sum of squares", np.sqrt((errors ** 2).sum(axis=2)).mean(axis=0))):
            rows.append({"sentence": f"dev {i}", "n_features": sums.shape[1], "n_outputs": errors.shape[2],
                         "formula": name, "measured / predicted (mean over features)": float(np.mean(measured / predicted)),
                         "features under-covered (measured > predicted)": float(np.mean(measured > predicted))})
    table = pd.DataFrame(rows)
    seconds = time.perf_counter() - start
    text = ["# The standard error of a value summed over the generated tokens", "",
            f"`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_aggregate_error.py` — {args.method}, "
            f"`max_evals={args.max_evals}`, {args.seeds} seeds per sentence, smollm2-135m, the model's 6-token greedy "
            f"continuation as the target; {seconds:.0f} s. A ratio above 1 means the formula understates the "
            "measured seed-to-seed standard deviation of the summed value.", "", markdown_table(table), "",
            "Overall, measured / predicted: " + ", ".join(
                f"{f} {g['measured / predicted (mean over features)'].mean():.2f}" for f, g in table.groupby("formula")),
            "", f"Machine: {machine_info()}", ""]
    (HERE / "AGGREGATE_ERROR.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
