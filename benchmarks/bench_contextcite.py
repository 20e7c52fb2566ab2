"""ContextCite beside ``auto``: seconds per example and faithfulness under word deletion.

The same SmolLM2 weights (``smollm2-135m``, CPU, one torch thread) and the same prompts explain
each input three ways in one run:

- ``auto`` with ``unit=word`` at the default precision (``explain.precision`` unset: 0.95 on CPU) and the
  library's default masking and score (deletion, log-probability; ``--masking``, ``--score`` to change),
- ``auto`` with tokens (its values summed over the tokens of each word to rank words),
- ContextCite 0.0.4 (``context-cite`` on PyPI: a Lasso surrogate fitted on 64 random ablations,
  keep probability 0.5) with one source per word. Its own word splitter needs spaCy and its
  sentence splitter an NLTK data download, so a partitioner splitting on whitespace gives it the
  very words shapshift's ``unit=word`` uses (``shapshift.prompting.feature_groups``).

Inputs: short SST-2 dev sentences in ``Review: {input}\\nSentiment:`` and Alpaca paragraphs with
their instruction as the query (``Context: {input}\\n\\nQuery: {instruction}``, ContextCite's own
template), both in the chat template; the target is the model's own greedy continuation of at
most 6 tokens, the same for every method (ContextCite is handed it instead of generating).

Faithfulness: words are ranked by their attribution summed over the target tokens (most positive
first); the top ``k = 1..5`` words are deleted from the text (the shortened text re-tokenised,
prompt and target unchanged) and the drop of the target's total log-probability (nats) is
measured by a plain forward pass; deletion AOPC is its mean over ``k``. Random word orders (mean
of 16) are the chance reference. A paired bootstrap over examples gives the 95 % CI of the AOPC
difference ``auto(word) − ContextCite``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_contextcite.py            # 6 + 3 inputs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_contextcite.py --quick    # 1 + 1 inputs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_contextcite.py --n-short 18 --n-long 6 --tag short18_long6
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_contextcite.py --n-long 0 --masking attention --score log_odds

Needs ``pip install context-cite`` (it pulls spaCy and NLTK; neither is used for splitting here).
Writes ``benchmarks/bench_contextcite_<masking>_<score>[_<tag>].csv`` and ``benchmarks/CONTEXTCITE_<masking>_<score>[_<tag>].md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
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
)

from shapshift.config import ExplainConfig  # noqa: E402
from shapshift.constants import resolve_masking
from shapshift.explainers import explain_tasks, make_task  # noqa: E402
from shapshift.explainers.api import auto_precision  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.prompting import PromptParts, build_prompt, encode_prompt, feature_groups  # noqa: E402
from shapshift.scoring import TeacherForcedScorer  # noqa: E402

HERE = Path(__file__).resolve().parent
ALPACA = Path("/work/shared/datasets/alpaca/alpaca_sample.json")
SST2_TEMPLATE = "Review: {input}\nSentiment:"
QA_TEMPLATE = "Context: {input}\n\nQuery: {query}"
K_MAX = 5
log = logging.getLogger("contextcite")


@dataclass
class Case:
    name: str
    set: str
    template: str  # with {input}; the query, if any, already filled in
    parts: PromptParts
    target_ids: list[int]


def words_of(text: str) -> tuple[list[str], list[str]]:
    """Whitespace-delimited words of ``text`` and the whitespace before each one."""
    words, seps, pos = [], [], 0
    for m in re.finditer(r"\S+", text):
        words.append(m.group())
        seps.append(text[pos:m.start()])
        pos = m.end()
    return words, seps


def join_kept(text: str, keep: np.ndarray) -> str:
    """``text`` with the unkept words deleted (each kept word keeps the whitespace before it)."""
    words, seps = words_of(text)
    lead = text[: len(text) - len(text.lstrip())]
    out = ""
    for sep, word, k in zip(seps, words, keep):
        if k:
            out += (sep if out else "") + word
    return lead + out + text[len(text.rstrip()):]


def word_deletion_scorer(model, tok, case: Case):
    """``score(masks)``: total target log-prob (nats) with the unkept words deleted from the text; cached."""
    prompt = encode_prompt(case.parts, tok)
    scorer = TeacherForcedScorer(model, prompt, case.target_ids, score="log_prob", masking="delete")
    cache: dict[bytes, float] = {}

    def score(masks: np.ndarray) -> np.ndarray:
        masks = np.atleast_2d(np.asarray(masks, bool))
        todo = {m.tobytes(): m for m in masks if m.tobytes() not in cache}
        if todo:
            rows = [tok(join_kept(case.parts.text, m), add_special_tokens=False)["input_ids"] for m in todo.values()]
            for key, s in zip(todo, scorer.score_inputs(rows).sum(axis=1)):
                cache[key] = float(s)
        return np.array([cache[m.tobytes()] for m in masks])

    return score


def deletion_aopc(score, order: np.ndarray, n: int) -> float:
    """Mean drop of the target's log-prob after deleting the top ``k = 1..min(5, n)`` words (nats)."""
    ks = range(1, min(K_MAX, n) + 1)
    masks = np.ones((len(ks) + 1, n), bool)
    for row, k in enumerate(ks, start=1):
        masks[row, order[:k]] = False
    s = score(masks)
    return float((s[0] - s[1:]).mean())


def word_order(word_values: np.ndarray) -> np.ndarray:
    return np.argsort(-np.asarray(word_values, float), kind="stable")


def run_auto(model, tok, case: Case, unit: str, masking: str, score: str) -> tuple[np.ndarray, dict, float]:
    """Word importances ``(n_words,)`` (values summed over target tokens, and over a word's tokens), stats, seconds."""
    prompt = encode_prompt(case.parts, tok)
    task = make_task(model, tok, case.parts, case.target_ids, input_ids=prompt.input_ids, unit=unit, seed=0,
                     masking=masking, score=score)
    start = time.perf_counter()
    [exp], [stats] = explain_tasks([task], "auto", progress=False)
    seconds = time.perf_counter() - start
    values = np.asarray(exp.values, float).sum(axis=1)
    if unit == "token":
        groups = feature_groups(tok, prompt.input_ids, "word")
        values = np.array([values[g].sum() for g in groups])
    return values, stats, seconds


def run_contextcite(model, cc_tok, case: Case, n_ablations: int, batch_size: int) -> tuple[np.ndarray, float]:
    """ContextCite's per-word attributions ``(n_words,)`` for the fixed target, and its seconds."""
    from context_cite import ContextCiter
    from context_cite.context_partitioner import BaseContextPartitioner

    class WordPartitioner(BaseContextPartitioner):
        """One source per whitespace-delimited word (the words of ``unit=word``)."""

        def __init__(self, context: str) -> None:
            super().__init__(context)
            self.words, self.seps = words_of(context)

        @property
        def num_sources(self) -> int:
            return len(self.words)

        def split_context(self) -> None:  # done in __init__
            pass

        def get_source(self, index: int) -> str:
            return self.words[index]

        def get_context(self, mask=None) -> str:
            keep = np.ones(self.num_sources, bool) if mask is None else np.asarray(mask, bool)
            return join_kept(self.context, keep)

    context = case.parts.text.strip()
    start = time.perf_counter()
    cc = ContextCiter(model, cc_tok, context, "", prompt_template=case.template.replace("{input}", "{context}"),
                      partitioner=WordPartitioner(context), num_ablations=n_ablations, batch_size=batch_size)
    cc.logger.setLevel(logging.WARNING)
    prompt_ids, prompt = cc._get_prompt_ids(return_prompt=True)
    if prompt != case.parts.prompt:
        raise RuntimeError(f"ContextCite's prompt differs from shapshift's: {prompt!r} vs {case.parts.prompt!r}")
    # hand it the same target instead of letting it generate its own (ContextCite caches the full output text)
    cc._cache["output"] = prompt + cc_tok.decode(case.target_ids)
    if list(cc._response_ids) != list(case.target_ids):
        log.warning("%s: ContextCite re-tokenised the target as %s, not %s", case.name, cc._response_ids, case.target_ids)
    values = np.asarray(cc.get_attributions(verbose=False), float)
    return values, time.perf_counter() - start


def build_cases(model, tok, n_short: int, n_long: int, max_new_tokens: int, lo: int, hi: int) -> list[Case]:
    dev = load_sst2("dev")
    cases = []
    for i in pick_sentences(dev, tok, n_short, lo, hi, seed=3):
        cases.append(Case(f"dev{i}", "short", SST2_TEMPLATE, build_prompt(dev.sentence[i], SST2_TEMPLATE, tok, chat=True), []))
    alpaca = json.loads(ALPACA.read_text())
    paras = [(j, r) for j, r in enumerate(alpaca) if r.get("input") and 35 <= len(r["input"].split()) <= 70]
    for j, r in paras[:n_long]:
        template = QA_TEMPLATE.replace("{query}", r["instruction"].strip())
        cases.append(Case(f"alpaca{j}", "paragraph", template, build_prompt(r["input"].strip(), template, tok, chat=True), []))
    targets = generate(model, tok, [encode_prompt(c.parts, tok).ids for c in cases], max_new_tokens=max_new_tokens,
                       progress=False)
    for c, t in zip(cases, targets):
        c.target_ids = list(t)
    return cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 short + 1 paragraph input")
    ap.add_argument("--n-short", type=int, default=6)
    ap.add_argument("--n-long", type=int, default=3)
    ap.add_argument("--lo", type=int, default=8, help="fewest tokens of a short sentence")
    ap.add_argument("--hi", type=int, default=12, help="most tokens of a short sentence")
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--ablations", type=int, default=64, help="ContextCite's ablations per example")
    ap.add_argument("--cc-batch", type=int, default=16, help="ContextCite's batch size (left padding)")
    ap.add_argument("--n-random", type=int, default=16)
    ap.add_argument("--masking", default=resolve_masking(ExplainConfig().masking),
                    help="auto's masking (default: the library's, delete); the output files are named by masking and score")
    ap.add_argument("--score", default=ExplainConfig().score,
                    help="auto's score (default: the library's, log_prob: the deletion test's own quantity)")
    ap.add_argument("--tag", default="", help="appended to the output files' names (e.g. short18)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    if args.quick:
        args.n_short, args.n_long = 1, 1
    load_start = load_average()
    model, tok = load_model("smollm2-135m")
    cc_tok = copy.deepcopy(tok)
    cc_tok.padding_side = "left"  # ContextCite batches with left padding
    cases = build_cases(model, tok, args.n_short, args.n_long, args.max_new_tokens, args.lo, args.hi)
    rows = []
    for case in cases:
        n_words = len(words_of(case.parts.text)[0])
        groups = feature_groups(tok, encode_prompt(case.parts, tok).input_ids, "word")
        if len(groups) != n_words:
            raise RuntimeError(f"{case.name}: {len(groups)} word groups vs {n_words} words")
        vw, sw, secw = run_auto(model, tok, case, "word", args.masking, args.score)
        if all(len(g) == 1 for g in groups):  # every word one token: the token run is the word run, reused
            vt, st, sect = vw, sw, secw
        else:
            vt, st, sect = run_auto(model, tok, case, "token", args.masking, args.score)
        vc, secc = run_contextcite(model, cc_tok, case, args.ablations, args.cc_batch)
        score = word_deletion_scorer(model, tok, case)
        rand = float(np.mean([deletion_aopc(score, np.random.default_rng(s).permutation(n_words), n_words)
                              for s in range(args.n_random)]))
        row = {"example": case.name, "set": case.set, "n_tokens": len(encode_prompt(case.parts, tok).input_ids),
               "n_words": n_words, "n_out": len(case.target_ids),
               "target": tok.decode(case.target_ids).replace("\n", " "),
               "aopc_auto_word": deletion_aopc(score, word_order(vw), n_words),
               "aopc_auto_token": deletion_aopc(score, word_order(vt), n_words),
               "aopc_contextcite": deletion_aopc(score, word_order(vc), n_words),
               "aopc_random": rand,
               "s_auto_word": secw, "s_auto_token": sect, "s_contextcite": secc,
               "method_word": sw["method"], "precision_word": sw.get("precision", float("nan")),
               "evals_word": sw["n_evals"],
               "method_token": st["method"], "precision_token": st.get("precision", float("nan")),
               "evals_token": st["n_evals"], "evals_contextcite": args.ablations,
               "spearman_word_cc": spearman(vw, vc), "load": load_average()}
        rows.append(row)
        log.info("%s", row)
    df = pd.DataFrame(rows)
    suffix = ("_quick" if args.quick else "") + f"_{args.masking}_{args.score}" + (f"_{args.tag}" if args.tag else "")
    df.to_csv(args.out / f"bench_contextcite{suffix}.csv", index=False)
    write_note(df, args, suffix, load_start)
    return 0


def write_note(df: pd.DataFrame, args, suffix: str, load_start: str) -> None:
    d = (df.aopc_auto_word - df.aopc_contextcite).to_numpy()
    dt = (df.aopc_auto_token - df.aopc_contextcite).to_numpy()
    lo, hi = bootstrap_mean_ci(d)
    tlo, thi = bootstrap_mean_ci(dt)
    summary = df.groupby("set", sort=False).agg(
        n=("example", "size"), words=("n_words", "mean"),
        aopc_auto_word=("aopc_auto_word", "mean"), aopc_auto_token=("aopc_auto_token", "mean"),
        aopc_contextcite=("aopc_contextcite", "mean"), aopc_random=("aopc_random", "mean"),
        s_auto_word=("s_auto_word", "mean"), s_auto_token=("s_auto_token", "mean"),
        s_contextcite=("s_contextcite", "mean"), evals_word=("evals_word", "mean"),
        precision_word=("precision_word", "mean"))
    cols = ["example", "set", "n_tokens", "n_words", "n_out", "aopc_auto_word", "aopc_auto_token", "aopc_contextcite",
            "aopc_random", "s_auto_word", "s_auto_token", "s_contextcite", "method_word", "precision_word",
            "evals_word", "evals_token", "spearman_word_cc"]
    lines = [
        "# ContextCite beside auto: seconds and faithfulness under word deletion", "",
        f"smollm2-135m on CPU, one torch thread, one run; {(df.set == 'short').sum()} SST-2 dev sentences "
        f"(`Review: …\\nSentiment:`) and {(df.set == 'paragraph').sum()} Alpaca paragraphs with their instruction "
        "as the query (`Context: …\\n\\nQuery: …`), chat template, the model's greedy continuation of at most "
        f"{args.max_new_tokens} tokens as the target for every method. `auto` at its default precision "
        f"({auto_precision():g} on CPU, max_evals 512, seed 0, masking {args.masking}, score {args.score}) with `unit=word` and with tokens (token values "
        f"summed per word); ContextCite 0.0.4 per word (whitespace words, the same as `unit=word`), "
        f"{args.ablations} ablations, Lasso surrogate, batch {args.cc_batch}. Made by:", "",
        f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_contextcite.py{' '.join([''] + sys.argv[1:])}", "",
        "Deletion AOPC: mean drop (nats) of the target's total log-probability after deleting the top "
        f"k = 1..{K_MAX} words from the text (re-tokenised, plain forward pass); higher is more faithful; "
        f"random: mean of {args.n_random} random word orders. Seconds per example include each method's "
        "model evaluations (ContextCite: its ablations and Lasso fit).", "",
        "## Per set (means)", "", markdown_table(summary), "",
        "## Per example", "", markdown_table(df[cols]), "",
        f"Paired bootstrap (10 000 resamples over the {len(df)} examples) of the AOPC difference: "
        f"auto(word) − ContextCite = {d.mean():+.2f} nats, 95 % CI [{lo:+.2f}, {hi:+.2f}]; "
        f"auto(token) − ContextCite = {dt.mean():+.2f} nats, 95 % CI [{tlo:+.2f}, {thi:+.2f}].", "",
        f"Seconds per example (mean): auto(word) {df.s_auto_word.mean():.1f}, auto(token) {df.s_auto_token.mean():.1f}, "
        f"ContextCite {df.s_contextcite.mean():.1f}.", "",
        f"Load average (1/5/15 min) at the start {load_start}, at the end {load_average()} on "
        f"{machine_info()['nproc']} cores (the machine is shared; the times are from one run, so their "
        "ratios are comparable, their absolute values are not).", "",
        f"Machine: {machine_info()}", "",
    ]
    (args.out / f"CONTEXTCITE{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
