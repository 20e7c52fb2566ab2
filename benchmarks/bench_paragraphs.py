"""Paragraphs at ContextCite's cost: precision, evaluations and faithfulness of the long-input path.

35–70-word paragraphs as the context of a question (``Context: {input}\\n\\nQuery: {query}``, chat template,
ContextCite's own template), smollm2-135m on CPU with one torch thread, the model's greedy continuation of at most
6 tokens as the target, words as features (``unit=word``; ContextCite per whitespace word, the same words). Each
paragraph is explained by shapshift (``--method``, default ``auto``; ``--max-evals``, ``--precision``) with seeds 0
and 1, and by ContextCite 0.0.4 (64 ablations, Lasso) with its ablation seeds 0 and 1, one example after the other.
Reported per example: the seed-to-seed Spearman of each tool's word importances (``|value|`` summed over target
tokens, as ``PRECISION.md`` and the predicted precision; ``_signed``: of the values summed over target tokens), model
evaluations, seconds, and deletion AOPC (seed 0; ``bench_contextcite.deletion_aopc``: mean drop of the target's
log-probability after deleting the top 1..5 words), with a paired bootstrap CI of the AOPC difference.

Sets: ``heldout`` (default) is the Alpaca sample's *outputs* of 35–70 words, each as the context of its own
instruction; ``tune`` is the Alpaca *inputs* of 35–70 words with their instruction (the paragraphs of
``CONTEXTCITE_delete_log_prob_short18_long6.md``, which the long-input path was developed on).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_paragraphs.py --n 8            # held-out paragraphs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_paragraphs.py --set tune --n 4 --no-contextcite

Needs ``pip install context-cite``. Writes ``benchmarks/bench_paragraphs[_<tag>].csv`` and ``benchmarks/PARAGRAPHS[_<tag>].md``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_contextcite import (  # noqa: E402
    ALPACA,
    QA_TEMPLATE,
    Case,
    deletion_aopc,
    run_contextcite,
    word_deletion_scorer,
    word_order,
    words_of,
)
from common import bootstrap_mean_ci, load_average, machine_info, markdown_table, spearman  # noqa: E402

from shapshift.explainers import explain_tasks, make_task  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.prompting import build_prompt, encode_prompt  # noqa: E402
from shapshift.stats import importance  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("paragraphs")


def paragraph_cases(model, tok, which: str, n: int, max_new_tokens: int) -> list[Case]:
    """Up to ``n`` Alpaca paragraphs of 35–70 words (``which``: ``heldout`` outputs, ``tune`` inputs) with their targets."""
    field = "output" if which == "heldout" else "input"
    records = json.loads(ALPACA.read_text())
    picked = [(j, r) for j, r in enumerate(records) if 35 <= len(r[field].split()) <= 70][:n]
    cases = []
    for j, r in picked:
        template = QA_TEMPLATE.replace("{query}", r["instruction"].strip())
        cases.append(Case(f"alpaca{j}-{field}", which, template, build_prompt(r[field].strip(), template, tok, chat=True), []))
    targets = generate(model, tok, [encode_prompt(c.parts, tok).ids for c in cases], max_new_tokens=max_new_tokens,
                       progress=False)
    for c, t in zip(cases, targets):
        c.target_ids = list(t)
    return cases


def run_shapshift(model, tok, case: Case, method: str, seed: int, max_evals: int, precision: float | None,
                  options: dict) -> tuple[np.ndarray, dict, float]:
    """Word values ``(n_words, n_out)``, the call's stats and seconds."""
    prompt = encode_prompt(case.parts, tok)
    task = make_task(model, tok, case.parts, case.target_ids, input_ids=prompt.input_ids, unit="word", seed=seed,
                     max_evals=max_evals, precision=precision, options=options)
    start = time.perf_counter()
    [exp], [stats] = explain_tasks([task], method, progress=False)
    return np.asarray(exp.values, float), stats, time.perf_counter() - start


def run_contextcite_seeded(model, cc_tok, case: Case, seed: int, ablations: int, batch: int) -> tuple[np.ndarray, float]:
    """ContextCite with its ablation masks drawn from ``seed`` (its ``base_seed``; 0 is its own default)."""
    import context_cite.context_citer as cc_module
    from context_cite.utils import get_masks_and_logit_probs

    cc_module.get_masks_and_logit_probs = functools.partial(get_masks_and_logit_probs, base_seed=seed * 100_000)
    try:
        return run_contextcite(model, cc_tok, case, ablations, batch)
    finally:
        cc_module.get_masks_and_logit_probs = get_masks_and_logit_probs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["heldout", "tune"], default="heldout")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--method", default="auto")
    ap.add_argument("--max-evals", type=int, default=512)
    ap.add_argument("--precision", type=float, default=None, help="default: auto's (0.95 on CPU)")
    ap.add_argument("--options", default="{}", help="the estimator's options as JSON, e.g. '{\"fanout\": 4}'")
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--ablations", type=int, default=64)
    ap.add_argument("--cc-batch", type=int, default=16)
    ap.add_argument("--no-contextcite", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    load_start = load_average()
    model, tok = load_model("smollm2-135m")
    cc_tok = copy.deepcopy(tok)
    cc_tok.padding_side = "left"
    options = json.loads(args.options)
    rows = []
    for case in paragraph_cases(model, tok, args.set, args.n, args.max_new_tokens):
        n_words = len(words_of(case.parts.text)[0])
        runs = [run_shapshift(model, tok, case, args.method, s, args.max_evals, args.precision, options) for s in (0, 1)]
        score = word_deletion_scorer(model, tok, case)
        (v0, st0, s0), (v1, st1, s1) = runs
        row = {"example": case.name, "n_words": n_words, "n_out": len(case.target_ids),
               "method": st0["method"], "spearman_seeds": spearman(importance(v0), importance(v1)),
               "spearman_seeds_signed": spearman(v0.sum(axis=1), v1.sum(axis=1)),
               "evals": (st0["n_evals"] + st1["n_evals"]) / 2, "precision": st0["precision"],
               "groups_refined": f"{st0.get('groups_refined', '')}/{st0.get('groups', '')}",
               "seconds": (s0 + s1) / 2, "aopc": deletion_aopc(score, word_order(v0.sum(axis=1)), n_words)}
        if not args.no_contextcite:
            (c0, t0), (c1, t1) = (run_contextcite_seeded(model, cc_tok, case, s, args.ablations, args.cc_batch)
                                  for s in (0, 1))
            row.update({"spearman_seeds_cc": spearman(importance(c0), importance(c1)),
                        "spearman_seeds_signed_cc": spearman(c0, c1), "seconds_cc": (t0 + t1) / 2,
                        "aopc_cc": deletion_aopc(score, word_order(c0), n_words)})
        row["load"] = load_average()
        rows.append(row)
        log.info("%s", row)
    df = pd.DataFrame(rows)
    suffix = f"_{args.tag}" if args.tag else ""
    df.to_csv(args.out / f"bench_paragraphs{suffix}.csv", index=False)
    write_note(df, args, suffix, load_start)
    return 0


def write_note(df: pd.DataFrame, args, suffix: str, load_start: str) -> None:
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_paragraphs.py " + " ".join(sys.argv[1:])
    lines = [f"# Paragraphs: {args.method} beside ContextCite ({args.set} set)", "",
             f"smollm2-135m on CPU, one torch thread; {len(df)} Alpaca paragraphs of 35–70 words as context "
             f"(set `{args.set}`), word features, the model's greedy target of at most {args.max_new_tokens} tokens; "
             f"shapshift `{args.method}` (max_evals {args.max_evals}, precision {args.precision or 'default'}, "
             f"options {args.options}) with seeds 0 and 1; ContextCite {args.ablations} ablations with seeds 0 and 1. "
             "Made by:", "", f"    {cmd}", "", markdown_table(df), ""]
    lines.append(f"Means: seed-to-seed Spearman {df.spearman_seeds.mean():.3f} (lowest {df.spearman_seeds.min():.3f}), "
                 f"evaluations {df.evals.mean():.1f}, seconds {df.seconds.mean():.1f}, AOPC {df.aopc.mean():.2f} nats.")
    if "aopc_cc" in df:
        d = (df.aopc - df.aopc_cc).to_numpy()
        lo, hi = bootstrap_mean_ci(d)
        lines.append(f"ContextCite: seed-to-seed Spearman {df.spearman_seeds_cc.mean():.3f} (lowest "
                     f"{df.spearman_seeds_cc.min():.3f}), seconds {df.seconds_cc.mean():.1f}, AOPC {df.aopc_cc.mean():.2f}. "
                     f"Paired bootstrap of the AOPC difference shapshift − ContextCite: {d.mean():+.2f} nats, "
                     f"95 % CI [{lo:+.2f}, {hi:+.2f}].")
    lines += ["", f"Load average at the start {load_start}, at the end {load_average()} (2 cores, shared).", "",
              f"Machine: {machine_info()}", ""]
    (args.out / f"PARAGRAPHS{suffix}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
