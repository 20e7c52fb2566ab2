"""The remote scorer against the local one: seconds and requests per example, and concurrency's speed-up.

SST-2 dev sentences in the plain prompt ``Review: {input}\nSentiment:`` (``--chat``: SmolLM2's chat
prompt, about 30 tokens longer), the reference label as the target, KernelSHAP (paired,
``4n + 2`` coalitions, seed 0) under deletion masking, explained
- by the local model (the GGUF de-quantised into torch, one torch thread), and
- through llama-cpp-python's server serving the same GGUF (one thread), with 1, 4 and 16 requests in
  flight; every concurrency starts with an empty prompt cache (a fresh remote model).
The values are compared with the local ones (Spearman per example), the speeds as ratios in this one run.

    .venv/bin/python benchmarks/bench_remote.py --threads 1 --n 3      # ~15 min on 2 busy CPU cores

Writes ``benchmarks/remote.csv`` and prints the table of ``benchmarks/REMOTE.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ANSWERS,
    TEMPLATE,
    Example,
    load_average,
    load_sst2,
    machine_info,
    pick_sentences,
    spearman,
)

from shapshift import load_model  # noqa: E402
from shapshift.explainers import explain_tasks, make_task  # noqa: E402
from shapshift.prompting import build_prompt, encode_prompt  # noqa: E402
from shapshift.remote.local_server import llama_server  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench_remote")


def example(tok, sentence: str, name: str, chat: bool) -> Example:
    """The prompt of one sentence; a plain one starts with BOS, as llama-cpp-python's server needs (both sides see it)."""
    parts = build_prompt(sentence, TEMPLATE, tok, chat=chat)
    prompt = encode_prompt(parts, tok)
    if prompt.prefix_ids[0] != tok.bos_token_id:
        prompt.prefix_ids.insert(0, tok.bos_token_id)
    return Example(name, "sst2", parts, prompt)


def tasks(model, tok, examples, targets):
    return [make_task(model, tok, ex.parts, t, input_ids=ex.prompt.input_ids, score="log_odds", masking="delete",
                      max_evals=4 * ex.n + 2, seed=0) for ex, t in zip(examples, targets)]


def timed_explain(model, tok, examples, targets):
    """Per example: seconds, coalitions scored, and the Explanation."""
    out = []
    for task in tasks(model, tok, examples, targets):
        start = time.perf_counter()
        [exp], [stats] = explain_tasks([task], "kernel", progress=False)
        out.append((time.perf_counter() - start, stats["n_evals"], exp))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6, help="SST-2 dev sentences")
    ap.add_argument("--lo", type=int, default=6, help="fewest input tokens")
    ap.add_argument("--hi", type=int, default=14, help="most input tokens")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--threads", type=int, default=1, help="torch threads and server threads")
    ap.add_argument("--chat", action="store_true", help="SmolLM2's chat prompt instead of the plain one")
    ap.add_argument("--out", type=Path, default=HERE / "remote.csv")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    local, tok = load_model("smollm2-135m")
    df = load_sst2("dev")
    rows = pick_sentences(df, tok, args.n, args.lo, args.hi, seed=0)
    examples = [example(tok, df.sentence[i], f"dev{i}", args.chat) for i in rows]
    targets = [tok(ANSWERS[int(df.label[i])], add_special_tokens=False)["input_ids"] for i in rows]
    log.info("load %s; %d examples of %s input tokens", load_average(), len(examples), [ex.n for ex in examples])

    records = []
    local_runs = timed_explain(local, tok, examples, targets)
    for ex, (sec, evals, _) in zip(examples, local_runs):
        records.append({"scorer": "local", "concurrency": 0, "example": ex.name, "n_in": ex.n, "seconds": sec,
                        "evals": evals, "requests": 0, "prompt_tokens": 0, "spearman_vs_local": 1.0})
    with llama_server(n_threads=args.threads) as spec:
        for c in args.concurrency:
            remote, _ = load_model(spec, concurrency=c)  # a fresh model: an empty prompt cache
            for ex, t, (_, _, ref) in zip(examples, tasks(remote, tok, examples, targets), local_runs):
                before = remote.usage.as_dict()
                start = time.perf_counter()
                [exp], [stats] = explain_tasks([t], "kernel", progress=False)
                sec = time.perf_counter() - start
                after = remote.usage.as_dict()
                records.append({"scorer": "remote", "concurrency": c, "example": ex.name, "n_in": ex.n, "seconds": sec,
                                "evals": stats["n_evals"], "requests": after["requests"] - before["requests"],
                                "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
                                "spearman_vs_local": spearman(exp.values.ravel(), ref.values.ravel())})
                log.info("%s c=%d %.2f s %d requests rho %.4f", ex.name, c, sec, records[-1]["requests"],
                         records[-1]["spearman_vs_local"])
            remote.close()
    res = pd.DataFrame(records)
    res.to_csv(args.out, index=False)
    print(summary(res))
    print("\nmachine:", machine_info(), "load:", load_average())
    return 0


def summary(res: pd.DataFrame) -> str:
    """The markdown table: per setting, mean seconds per example (± sd over examples), ratios per example."""
    local = res[res.scorer == "local"].set_index("example")
    c1 = res[(res.scorer == "remote") & (res.concurrency == res[res.scorer == "remote"].concurrency.min())].set_index("example")
    lines = ["| scorer | in flight | s / example (mean ± sd) | remote / local time (median, range) | speed-up vs 1 in flight "
             "(median, range) | requests / example | coalitions / example | prompt tokens / example | Spearman vs local (min) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (scorer, c), g in res.groupby(["scorer", "concurrency"], sort=False):
        g = g.set_index("example")
        vs_local = g.seconds / local.seconds
        vs_c1 = c1.seconds / g.seconds if scorer == "remote" else None
        lines.append(
            f"| {scorer} | {c if scorer == 'remote' else '-'} | {g.seconds.mean():.2f} ± {g.seconds.std():.2f} | "
            + (f"{vs_local.median():.2f}× ({vs_local.min():.2f}–{vs_local.max():.2f})" if scorer == "remote" else "1") + " | "
            + (f"{vs_c1.median():.2f}× ({vs_c1.min():.2f}–{vs_c1.max():.2f})" if vs_c1 is not None else "-") + " | "
            + f"{g.requests.mean():.1f} | {g.evals.mean():.1f} | {g.prompt_tokens.mean():.0f} | {g.spearman_vs_local.min():.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
