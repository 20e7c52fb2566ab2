"""The weaker API tiers against the prompt-log-probability tier, on the same served model and the same prompts.

llama-cpp-python's server serves the SmolLM2 GGUF (one thread). SST-2 dev sentences of 4-6 words, word features,
exact Shapley values (every coalition), deletion masking, log-probability; the target is the reference label, one
token. Each tier explains the same prompts:

- ``prompt_logprobs`` (the echo of ``/v1/completions``): the reference;
- ``top_logprobs`` over ``/v1/completions`` (plain prompt, target `` positive`` / `` negative``, top 20);
- ``top_logprobs`` over ``/v1/chat/completions`` (SmolLM2's chat turns sent as messages, :data:`INSTRUCTION` as the
  system message, the reply's first token ``Positive`` / ``Negative``; the echo reference scores the same chat rendering), top 20;
- ``text`` over ``/v1/completions`` (plain prompt; scalarizer ``starts_with``; 2 repeats of 3 coalitions).

Reported per tier: Spearman of the word values with the reference's (per example; the mean over examples with no
censored score, and over all), the share of censored scores, requests sent, the text tier's measured spread.
The plain prompts start with the BOS token's text, as the echo tier sends them (llama-cpp-python aligns prompt
log-probabilities only after it), so that every tier scores the same context.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_api_tiers.py --n 6     # ~8 min on 2 busy cores

Writes ``benchmarks/api_tiers.csv`` and ``benchmarks/API_TIERS.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ANSWERS, TEMPLATE, load_sst2, machine_info, spearman  # noqa: E402

from shapshift import load_model  # noqa: E402
from shapshift.explainers import explain_tasks, make_task  # noqa: E402
from shapshift.prompting import build_prompt, encode_prompt  # noqa: E402
from shapshift.remote.local_server import llama_server  # noqa: E402

HERE = Path(__file__).resolve().parent
#: The chat prompts' system message: without it SmolLM2 never starts a reply with the label (all 256 chat scores
#: were censored at top 20 in a first run without it).
INSTRUCTION = "Decide whether the movie review is positive or negative. Answer with one word: Positive or Negative."
log = logging.getLogger("bench_api_tiers")


def sentences(n: int, lo: int = 4, hi: int = 6, seed: int = 0) -> list[tuple[str, int]]:
    df = load_sst2("dev")
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(df)):
        words = df.sentence[i].split()
        if lo <= len(words) <= hi:
            out.append((df.sentence[i], int(df.label[i])))
        if len(out) == n:
            return out
    return out


def tasks(model, tok, rows, chat: bool):
    out = []
    for text, label in rows:
        parts = build_prompt(text, TEMPLATE, tok, chat=chat, instruction=INSTRUCTION if chat else None)
        if not chat:  # BOS first, as the echo tier sends it: every tier scores the same context
            parts = type(parts)(tok.bos_token + parts.prefix, parts.text, parts.suffix)
        prompt = encode_prompt(parts, tok)
        answer = ANSWERS[label].strip().capitalize() if chat else ANSWERS[label]  # a reply starts with a capital
        target = tok(answer, add_special_tokens=False)["input_ids"]
        assert len(target) == 1, answer
        out.append(make_task(model, tok, parts, target, input_ids=prompt.input_ids, masking="delete",
                             score="log_prob", seed=0, unit="word"))
    return out


def run(model, tok, rows, chat: bool):
    u = model.usage
    start, asked = time.perf_counter(), u.requests + u.cache_hits
    exps, stats = explain_tasks(tasks(model, tok, rows, chat), "exact", progress=False)
    return exps, stats, u.requests + u.cache_hits - asked, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--cache", default=str(HERE.parent / "outputs" / "bench_api_tiers_cache"),
                    help="answers kept here: a re-run sends only what it has not asked (the echo tier is slow)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rows = sentences(args.n)
    records = []
    with llama_server() as spec:  # its log in the temporary folder
        results = {}
        for tier, route, chat in (("prompt_logprobs", "completions", False), ("prompt_logprobs", "completions", True),
                                  ("top_logprobs", "completions", False), ("top_logprobs", "chat", True),
                                  ("text", "completions", False)):
            model, tok = load_model(spec, access=tier, route=route, tokenizer="smollm2-135m", scalarizer="starts_with",
                                    cache_dir=args.cache)
            results[(tier, route, chat)] = run(model, tok, rows, chat)
            log.info("%s over %s (chat=%s): %d requests, %.0f s", tier, route, chat, *results[(tier, route, chat)][2:])
            model.close()
    # requests: what the example's explanation needed (answers the cache held count too)
    for (tier, route, chat), (exps, stats, requests, seconds) in results.items():
        if tier == "prompt_logprobs":
            continue
        ref = results[("prompt_logprobs", "completions", chat)][0]
        for i, (e, r, st) in enumerate(zip(exps, ref, stats)):
            d = st.get("diagnostics", {})
            records.append({"tier": tier, "route": route, "prompt": "chat" if chat else "plain", "example": i,
                            "n_words": e.values.shape[0], "spearman": spearman(e.values[:, 0], r.values[:, 0]),
                            "censored": d.get("censored_scores", 0.0), "scores": d.get("scores", float("nan")),
                            "api_noise_sd": d.get("api_noise_sd", float("nan")),
                            "requests": requests / len(exps), "seconds": seconds / len(exps)})
    df = pd.DataFrame(records)
    df.to_csv(HERE / "api_tiers.csv", index=False)
    lines = ["# API tiers against the prompt-log-probability tier", "",
             f"`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_api_tiers.py --n {args.n}`; {machine_info()}.", "",
             "Same served model (llama-cpp-python, SmolLM2-135M-Instruct Q4_1 GGUF), same prompts; word features, exact "
             "Shapley values, deletion, log-probability of the one-token label target. Spearman of the word values "
             "with the echo tier's, per example. Chat prompts carry the instruction `INSTRUCTION` as the system message "
             "(without it SmolLM2 never began a reply with the label: 256 of 256 chat scores censored at top 20). "
             "`requests`: what an example needed, sent or read from the answer cache (`--cache`); `seconds`: of this "
             "run, in which answers already cached took none.", "",
             "| tier | route | prompt | examples | uncensored examples | Spearman (uncensored, mean) | Spearman (all, mean) "
             "| censored scores | requests / example | API spread (text) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (tier, route, prompt), g in df.groupby(["tier", "route", "prompt"], sort=False):
        clean = g[g.censored == 0]
        lines.append(f"| {tier} | {route} | {prompt} | {len(g)} | {len(clean)} | "
                     f"{clean.spearman.mean():.3f} | {g.spearman.mean():.3f} | "
                     f"{int(g.censored.sum())} of {int(g.scores.sum()) if g.scores.notna().all() else '-'} | "
                     f"{g.requests.mean():.0f} | {g.api_noise_sd.mean():.3f} |")
    table = df.round(3)
    lines += ["", "Per example:", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    (HERE / "API_TIERS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
