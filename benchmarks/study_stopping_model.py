"""Precision rounds' trajectories on tuning sentences with the real model (issue 27: stop earlier at the same agreement).

For tuning SST-2 dev sentences of 12-30 tokens (none of the recorded tables' sentences and none of the
first ``--skip`` held-out sentences of ``bench_precision.py``, which measure the result), the model's 8-token greedy
continuation as the target, smollm2-135m on CPU (one thread): ``quadrature`` with seeds 0..S-1, re-run on one caching
scorer at budgets ``4n + 2, 4n + 2 + n, ...`` up to ``--max-evals`` (a larger budget scores only the pairs it adds).
Writes per sentence, seed and budget the values, standard errors and predicted precision to
``benchmarks/stopping_trajectories.npz``; ``study_stopping.py --trajectories`` replays stopping rules on them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_stopping_model.py
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_sst2, pick_sentences, sst2_example  # noqa: E402
from record_tables import recorded_rows  # noqa: E402

from shapshift.explainers import make_task  # noqa: E402
from shapshift.explainers.precision import CachingScorer  # noqa: E402
from shapshift.explainers.quadrature import QuadratureExplainer  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.stats import expected_rank_agreement  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("stopping")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="tuning sentences")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--skip", type=int, default=12, help="held-out sentences of bench_precision.py left out")
    ap.add_argument("--max-evals", type=int, default=512)
    ap.add_argument("--lo", type=int, default=12)
    ap.add_argument("--hi", type=int, default=30)
    ap.add_argument("--pick-seed", type=int, default=101, help="seed of the tuning sentences' selection")
    ap.add_argument("--out", type=Path, default=HERE / "stopping_trajectories.npz")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    model, tok = load_model("smollm2-135m")
    dev = load_sst2("dev")
    recorded = recorded_rows(HERE / "tables")
    held_out = pick_sentences(dev, tok, args.skip, 12, 30, seed=7, exclude=recorded)  # bench_precision.py's
    rows = pick_sentences(dev, tok, args.n, args.lo, args.hi, seed=args.pick_seed, exclude=set(recorded) | set(held_out))
    examples = [sst2_example(tok, dev.sentence[i], f"dev{i}") for i in rows]
    targets = generate(model, tok, [e.prompt.ids for e in examples], max_new_tokens=8, progress=False)
    out = {}
    for e, t in zip(examples, targets):
        for seed in range(args.seeds):
            task = make_task(model, tok, e.parts, t, input_ids=e.prompt.input_ids, max_evals=args.max_evals, seed=seed)
            n = task.n_features
            cache = CachingScorer(task.make_scorer())
            budgets = list(range(4 * n + 2, args.max_evals, n)) + [args.max_evals]
            vals, errs, preds, evals, secs = [], [], [], [], []
            start = time.perf_counter()
            for b in budgets:
                run = copy.copy(task)
                run.max_evals = b
                att = QuadratureExplainer().attribute(run, cache)
                vals.append(att.values), errs.append(att.error_std), evals.append(cache.n_evals)
                preds.append(expected_rank_agreement(att.values, att.error_std, seed=seed))
                secs.append(time.perf_counter() - start)
            log.info("%s n=%d seed %d: %d evals %.1f s, precision %.3f", e.name, n, seed, evals[-1], secs[-1], preds[-1])
            key = f"{e.name}_s{seed}"
            out[key + "_values"], out[key + "_err"] = np.stack(vals), np.stack(errs)
            out[key + "_pred"], out[key + "_evals"], out[key + "_budgets"] = np.array(preds), np.array(evals), np.array(budgets)
            out[key + "_seconds"] = np.array(secs)
        np.savez(args.out, names=np.array([x.name for x in examples]), seeds=args.seeds, **out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
