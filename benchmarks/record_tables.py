"""Record full coalition tables (every one of the 2^n coalitions) of SST-2 inputs on smollm2-135m.

Each table holds the teacher-forced scores (``--score``, ``--masking``: by default the library's, log-probability
and deletion) of the model's own greedy continuation for every coalition of the input tokens, bit-indexed as :class:`shapshift.scoring.TableScorer`
expects. Estimator studies and tests replay them without a model (``benchmarks/study_estimators.py``,
``tests/test_quadrature.py``). Tables are stored as float32 in compressed ``.npz`` files with the exact Shapley
values of the stored table (float64) beside them: ``benchmarks/tables/`` holds those of log-odds under attention
masking (the defaults until the masking and score studies moved them), ``benchmarks/tables_<masking>_<score>/``
any other pair.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/record_tables.py --lo 8 --hi 11 --count 6 --seed 11 --masking attention --score log_odds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/record_tables.py --lo 12 --hi 14 --count 4 --seed 12 --masking attention --score log_odds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/record_tables.py --lo 15 --hi 16 --count 2 --seed 13 --masking attention --score log_odds
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/record_tables.py --lo 8 --hi 11 --count 6 --seed 11   # the defaults

Sentences are drawn from SST-2 dev in a seeded order; ``--exclude-from`` skips sentences already
recorded. The held-out precision benchmark (``bench_precision.py``) uses other sentences.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_sst2, pick_sentences, sst2_example  # noqa: E402

from shapshift.config import ExplainConfig  # noqa: E402
from shapshift.constants import resolve_masking
from shapshift.explainers.exact import all_coalitions, shapley_from_table  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.scoring import TeacherForcedScorer  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("record")


def recorded_rows(tables: Path) -> set[int]:
    """SST-2 dev rows that already have a table in ``tables``."""
    return {int(np.load(p)["row"]) for p in tables.glob("*.npz")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lo", type=int, default=8)
    ap.add_argument("--hi", type=int, default=11)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--masking", default=resolve_masking(ExplainConfig().masking))
    ap.add_argument("--score", default=ExplainConfig().score)
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/tables(_<masking>_<score>)")
    args = ap.parse_args(argv)
    if args.out is None:
        pair = (args.masking, args.score)
        args.out = HERE / ("tables" if pair == ("attention", "log_odds") else f"tables_{args.masking}_{args.score}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model("smollm2-135m")
    dev = load_sst2("dev")
    idx = pick_sentences(dev, tok, args.count, args.lo, args.hi, seed=args.seed, exclude=recorded_rows(args.out))
    for i in idx:
        e = sst2_example(tok, dev.sentence[i], f"dev{i}")
        target = generate(model, tok, [e.prompt.ids], max_new_tokens=args.max_new_tokens, progress=False)[0]
        scorer = TeacherForcedScorer(model, e.prompt, target, masking=args.masking, score=args.score)
        start = time.perf_counter()
        with torch.inference_mode():
            table = scorer(all_coalitions(e.n))
        seconds = time.perf_counter() - start
        path = args.out / f"sst2-dev{i}-n{e.n}.npz"
        table = table.astype(np.float32)  # what is stored is what replays: the exact values are of it
        np.savez_compressed(path, table=table, exact=shapley_from_table(table.astype(np.float64), e.n), row=i,
                            n=e.n, input_ids=np.array(e.prompt.input_ids), target_ids=np.array(target),
                            sentence=dev.sentence[i], seconds=seconds, masking=args.masking, score=args.score)
        log.info("%s n=%d n_out=%d %.0fs (%.1f coalitions/s) -> %s (%.0f kB)", e.name, e.n, len(target), seconds,
                 2**e.n / seconds, path.name, path.stat().st_size / 1024)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
