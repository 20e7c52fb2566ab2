"""Few-shot runs with one shared demonstration set: the prefix pass run once per run versus once per example.

The pipeline shows every example the same demonstrations (``shapshift.fewshot``), so every task of a
few-shot condition starts with the same few hundred prefix tokens. ``explain_tasks`` keeps the last
prefix's key/value cache (:class:`shapshift.explainers.PrefixReuse`) and later tasks skip that pass.
This script explains SST-2 dev sentences under one fixed few-shot context both ways, in one run,
alternating the order, and checks that the values are the same.

    .venv/bin/python benchmarks/bench_prefix_reuse.py --threads 1      # ~5 min, 1 CPU core

Writes ``benchmarks/PREFIX_REUSE.md``.
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
from common import ANSWERS, TEMPLATE, load_average, load_sst2, machine_info, pick_sentences  # noqa: E402

from shapshift.explainers import explain_tasks, make_task  # noqa: E402
from shapshift.fewshot import select_demonstrations  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.prompting import build_prompt  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench_prefix_reuse")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=8, help="examples")
    ap.add_argument("--k", type=int, default=8, help="demonstrations")
    ap.add_argument("--method", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (shared, per example) timings, order alternating")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=HERE / "PREFIX_REUSE.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    dev, train = load_sst2("dev"), load_sst2("train")
    rows = pick_sentences(dev, tok, args.n, 6, 12, seed=3)
    pool = train.assign(example_id=range(len(train)), target_text=train["label"].map(ANSWERS))
    demos = select_demonstrations(pool, args.k, seed=7, text_column="sentence")
    parts = [build_prompt(dev.sentence[i], TEMPLATE, tok, chat=True, demonstrations=demos) for i in rows]
    targets = generate(model, tok, [make_task(model, tok, p, [0]).prompt.ids for p in parts], max_new_tokens=10,
                       progress=False)

    def tasks():
        return [make_task(model, tok, p, t, max_evals=512, seed=0) for p, t in zip(parts, targets)]

    def shared():
        return explain_tasks(tasks(), args.method, progress=False)

    def per_example():
        out = [explain_tasks([t], args.method, progress=False) for t in tasks()]
        return [e for es, _ in out for e in es], [s for _, ss in out for s in ss]

    per_example()  # warm-up, not timed
    seconds = {"shared": 0.0, "per example": 0.0}
    results = {}
    for r in range(args.repeats):
        for name in (["shared", "per example"] if r % 2 == 0 else ["per example", "shared"]):
            start = time.perf_counter()
            results[name] = (shared if name == "shared" else per_example)()
            seconds[name] += time.perf_counter() - start
            log.info("round %d %s: %.1f s", r, name, time.perf_counter() - start)
    diff = max(float(np.abs(a.values - b.values).max()) for a, b in zip(results["shared"][0], results["per example"][0]))
    tokens = {k: sum(s["n_forward_tokens"] for s in v[1]) for k, v in results.items()}
    n_prefix = len(make_task(model, tok, parts[0], targets[0]).prompt.prefix_ids)
    ratio = seconds["per example"] / seconds["shared"]
    lines = [
        "# Few-shot prefix reuse", "",
        f"Command: `python benchmarks/bench_prefix_reuse.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"(load average at the end: {load_average()}).", "",
        "Machine and versions: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()) + ".", "",
        f"Model {args.model}; {args.n} SST-2 dev sentences under one fixed context of {args.k} demonstrations "
        f"({n_prefix} prefix tokens); method `{args.method}`; {args.repeats} rounds, order alternating.", "",
        "| prefix pass | seconds per example | forward tokens per example |", "|---|---|---|",
        f"| once per example | {seconds['per example'] / args.repeats / args.n:.2f} | {tokens['per example'] / args.n:.0f} |",
        f"| once per run (PrefixReuse) | {seconds['shared'] / args.repeats / args.n:.2f} | {tokens['shared'] / args.n:.0f} |",
        "", f"Reusing the prefix is {ratio:.2f}× faster; largest difference of any value between the two: {diff:.2e}.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
