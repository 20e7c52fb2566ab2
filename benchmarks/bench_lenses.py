"""What the cheap lenses cost per example, and how far they agree with SHAP.

The same SST-2 inputs and targets as ``bench_explainers.py``'s ``sst2`` set (the SmolLM2 chat
template around ``Review: {input}\\nSentiment:``; half the sentences 6-10 tokens, half 11-24; the
target is the model's greedy continuation, up to 10 tokens), explained in one run by

- SHAP: ``auto`` (what a run uses: exact up to 5 tokens, then paired KernelSHAP with ``4n + 2``
  evaluations) and, with ``--exact``, ``exact`` (all ``2^n`` coalitions, n <= 10: a second reference);
- the lenses ``input_x_gradient``, ``integrated_gradients`` (``--ig-steps`` Gauss-Legendre points),
  ``attention`` (last layer, mean over heads) and ``attention_rollout``.

Per example and method: wall seconds (one torch thread by default), Spearman ρ of |value| summed over
the generated tokens with ``auto`` and with ``exact``, top-3 overlap with them, and for integrated
gradients its completeness gap relative to ``|f(x) - f(reference)|`` (for input × gradient the same
number is how far its first-order sum is from ``f(x) - f(0)``). Speeds are compared as ratios to
``auto`` on the same example in the same run, with bootstrap 95 % intervals over examples.

    # the committed run: the first 3 short and 3 medium sentences of bench_explainers' 16, their first
    # 3 generated tokens (integrated gradients' cost grows with the number of generated tokens)
    .venv/bin/python benchmarks/bench_lenses.py --threads 1 --n-sst2 6 --max-new-tokens 3
    .venv/bin/python benchmarks/bench_lenses.py --quick         # tiny-gpt-neo smoke run (seconds)

Writes ``benchmarks/LENSES.md`` and ``benchmarks/lenses.csv`` (``--quick``: ``*_quick`` files).
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
from common import (  # noqa: E402
    bootstrap_mean_ci,
    load_average,
    load_sst2,
    machine_info,
    markdown_table,
    pick_sentences,
    spearman,
    sst2_example,
    top_k_overlap,
)

from shapshift.explainers import explain_tasks, make_task  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench_lenses")
EXACT_MAX = 10
LENSES = ("input_x_gradient", "integrated_gradients", "attention", "attention_rollout")


def build_examples(model, tok, n_sst2: int, max_new_tokens: int):
    """``bench_explainers.py``'s sst2 set: the same seeded picks, the same greedy targets."""
    dev = load_sst2("dev")
    half = (n_sst2 + 1) // 2
    short = pick_sentences(dev, tok, half, 6, EXACT_MAX, seed=0)
    medium = pick_sentences(dev, tok, n_sst2 - half, 11, 24, seed=0, exclude=set(short))
    examples = [sst2_example(tok, dev.sentence[i], f"dev{i}") for i in short + medium]
    targets = generate(model, tok, [e.prompt.ids for e in examples], max_new_tokens=max_new_tokens,
                       batch_size=4, progress=False)
    for e, t in zip(examples, targets):
        e.target_ids = t
    return examples


def explain_one(model, tok, ex, method: str, ig_steps: int):
    task = make_task(model, tok, ex.parts, ex.target_ids, input_ids=ex.prompt.input_ids,
                     options={"n_steps": ig_steps})
    start = time.perf_counter()
    [exp], [stats] = explain_tasks([task], method, progress=False)
    return exp, stats, time.perf_counter() - start


def run(args) -> pd.DataFrame:
    model, tok = load_model(args.model, device="cpu", dtype="float32")
    examples = build_examples(model, tok, args.n_sst2, args.max_new_tokens)
    warm = examples[0]
    for m in ("auto", *LENSES):  # first calls fill caches: not timed
        explain_one(model, tok, warm, m, 2)
    rows = []
    for ex in examples:
        methods = ["auto", *(["exact"] if args.exact and ex.n <= EXACT_MAX else []), *LENSES]
        values, seconds, gaps = {}, {}, {}
        for m in methods:
            exp, stats, sec = explain_one(model, tok, ex, m, args.ig_steps)
            values[m] = np.asarray(exp.values).sum(axis=1)
            seconds[m] = sec
            if "completeness_gap" in stats:
                span = np.abs(np.asarray(stats["score_full"]) - np.asarray(exp.base_values))
                gaps[m] = float(np.abs(stats["completeness_gap"]).sum() / max(span.sum(), 1e-12))
        for m in methods:
            row = {"example": ex.name, "n_tokens": ex.n, "n_out": len(ex.target_ids), "method": m,
                   "seconds": seconds[m], "ratio_to_auto": seconds[m] / seconds["auto"],
                   "rho_auto": spearman(np.abs(values[m]), np.abs(values["auto"])),
                   "top3_auto": top_k_overlap(values[m], values["auto"]),
                   "ig_gap": gaps.get(m, np.nan)}
            if "exact" in values:
                row.update(rho_exact=spearman(np.abs(values[m]), np.abs(values["exact"])),
                           top3_exact=top_k_overlap(values[m], values["exact"]))
            rows.append(row)
        log.info("%s (%d tokens, %d out): %s", ex.name, ex.n, len(ex.target_ids),
                 ", ".join(f"{m} {seconds[m]:.2f}s" for m in methods))
    return pd.DataFrame(rows)


def _mean_ci(x: pd.Series) -> str:
    x = x.dropna().to_numpy(float)
    if len(x) == 0:
        return "–"
    if len(x) == 1:
        return f"{x[0]:.3g}"
    lo, hi = bootstrap_mean_ci(x)
    return f"{x.mean():.3g} [{lo:.3g}, {hi:.3g}]"


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    order = ["auto", "exact", *LENSES]
    out = []
    for m in [m for m in order if m in set(df["method"])]:
        g = df[df["method"] == m]
        out.append({"method": m, "n": len(g), "s / example": f"{g['seconds'].mean():.3g}",
                    "time / auto": _mean_ci(g["ratio_to_auto"]),
                    "ρ with auto": _mean_ci(g["rho_auto"]), "top-3 with auto": _mean_ci(g["top3_auto"]),
                    "ρ with exact (n ≤ 10)": _mean_ci(g.get("rho_exact", pd.Series(dtype=float))),
                    "top-3 with exact": _mean_ci(g.get("top3_exact", pd.Series(dtype=float))),
                    "relative gap": _mean_ci(g["ig_gap"])})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-gpt-neo, 2 sentences: a smoke run")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-sst2", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=10)
    ap.add_argument("--ig-steps", type=int, default=32)
    ap.add_argument("--exact", action="store_true", help="also exact Shapley values (n <= 10) as a second reference")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.n_sst2 = "tiny-gpt-neo", 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_before = load_average()
    df = run(args)
    wall = time.perf_counter() - start
    suffix = "_quick" if args.quick else ""
    df.to_csv(args.out / f"lenses{suffix}.csv", index=False)
    info = machine_info()
    cmd = "python benchmarks/bench_lenses.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = [f"# The cheap lenses against SHAP: cost and agreement ({args.model})", "",
            f"Command: `{cmd.strip()}` — {wall / 60:.1f} min wall, {args.threads} torch thread(s), "
            f"load average {load_before} at the start, {load_average()} at the end.", "",
            f"Machine: {info}", "",
            f"{df['example'].nunique()} SST-2 dev sentences ({df['n_tokens'].min()}–{df['n_tokens'].max()} tokens; "
            f"the `sst2` set of `bench_explainers.py`), each explaining the model's greedy continuation "
            f"({df['n_out'].min()}–{df['n_out'].max()} tokens). Values are summed over the generated tokens; "
            "ρ is Spearman's of |value|; intervals are bootstrap 95 % over examples; `time / auto` is the "
            "ratio to `auto` on the same example in the same run. Integrated gradients uses "
            f"{args.ig_steps} Gauss–Legendre points from its default reference (the pad token's embedding at every "
            "input position); `relative gap` is |f(x) - f(ref) - Σ values| / |f(x) - f(ref)| summed over the generated tokens "
            "(integrated gradients: its completeness gap against that reference; input × gradient: how far its "
            "first-order sum is from f(x) - f(0), its reference being the zero embedding).", "",
            markdown_table(summarise(df)), ""]
    (args.out / f"LENSES{suffix}.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
