"""Speed and fidelity of shapshift's SHAP estimators against shap's Partition explainer and Captum.

One run, one model, the same inputs and the same targets for every method:

- ``sst2``: SST-2 dev sentences in the SmolLM2 chat template around ``Review: {input}\\nSentiment:``
  (half of them 6-10 tokens, where exact Shapley values are the reference, half 11-24 tokens);
- ``fewshot``: short SST-2 dev sentences after 4-8 label-balanced demonstrations from train
  (300+ context tokens, never masked; the sentence's own tokens are the only features);
- ``long`` (optional): one ~1,000-token input explained hierarchically within a small budget.

The target is the model's own greedy continuation (up to 10 tokens, cut at a newline).

Methods: ``shap-partition`` (shap's Partition explainer and Text masker with its defaults,
max_evals=500, through shapshift's ``partition`` path), ``captum-svs`` and ``captum-kernelshap``
(Captum's ``LLMAttribution`` around ``ShapleyValueSampling`` / ``KernelShap``, fixed context via a
``TextTokenInput`` whose interpretable mask covers only the sentence's tokens), and shapshift's
``exact`` (n <= 10), ``sampling``, ``kernel``, ``hierarchical`` (all three at the budget auto
gives kernel, ``4n + 2`` evaluations) and ``auto``.

Measured per example and method: wall seconds, model evaluations, forward tokens, peak extra
memory (RSS sampled every 5 ms), Spearman and top-3 overlap with exact values (n <= 10), and
deletion faithfulness by real deletion from the text (shapshift.faithfulness): deletion AOPC
against random orders, ERASER comprehensiveness and sufficiency.

    .venv/bin/python benchmarks/bench_explainers.py --threads 1   # the full run (~95 min on one CPU core)
    .venv/bin/python benchmarks/bench_explainers.py --quick    # tiny-gpt-neo smoke run (~1 min)
    python benchmarks/bench_explainers.py --model gpt-neo-125m-random --out benchmarks/gpu   # on a GPU:
        # GPT-Neo-125M's architecture with random weights (speed only; its fidelity numbers mean nothing)

Writes ``benchmarks/RESULTS.md``, ``benchmarks/results.csv`` (one row per example and method)
and ``benchmarks/summary.csv`` (``--quick``: ``*_quick`` files, RESULTS.md untouched).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PeakMemory,
    Timer,
    align_values,
    bootstrap_mean_ci,
    fewshot_example,
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
from shapshift.explainers.api import auto_budget  # noqa: E402
from shapshift.faithfulness import ERASER_BINS, aopc, random_orders, ranking, text_deletion_scorer  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.prompting import token_strings  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
OURS = ("exact", "sampling", "kernel", "hierarchical", "auto")
REFERENCE = "shap-partition"
EXACT_MAX = 10


# -- methods -------------------------------------------------------------------------------------
def run_ours(model, tok, ex, method: str, budget: int, seed: int = 0):
    task = make_task(model, tok, ex.parts, ex.target_ids, input_ids=ex.prompt.input_ids, max_evals=budget, seed=seed)
    [exp], [stats] = explain_tasks([task], method, progress=False)
    return np.asarray(exp.values), stats["n_evals"], stats["n_forward_tokens"], stats["method"]


def run_partition(model, tok, ex):
    task = make_task(model, tok, ex.parts, ex.target_ids, input_ids=ex.prompt.input_ids, max_evals=500, seed=0)
    [exp], [stats] = explain_tasks([task], "partition", progress=False)
    values = align_values([str(d) for d in exp.data], exp.values, token_strings(tok, ex.prompt.input_ids))
    return values, stats["n_evals"], stats["n_forward_tokens"], "partition"


def captum_input(tok, ex):
    """A Captum ``TextTokenInput`` of the whole prompt whose interpretable features are the sentence's tokens only.

    Captum's own constructor tokenises a text and can skip token *ids* (not positions); to keep the
    context fixed and the features identical to everyone else's, its documented attributes are set
    from the prompt's token ids: ``itp_mask`` marks the sentence's positions, masked tokens are
    replaced by Captum's default baseline (token id 0).
    """
    from captum.attr import TextTokenInput

    inp = TextTokenInput.__new__(TextTokenInput)
    ids = torch.tensor([ex.prompt.ids])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    start = len(ex.prompt.prefix_ids)
    mask[0, start:start + ex.n] = True
    inp.inp_tensor, inp.itp_mask, inp.itp_tensor = ids, mask, ids[mask].unsqueeze(0)
    inp.values = tok.convert_ids_to_tokens(inp.itp_tensor[0].tolist())
    inp.tokenizer, inp.n_itp_features, inp.baselines, inp.skip_tokens = tok, ex.n, 0, None
    return inp


def run_captum(model, tok, ex, kind: str, n_samples: int):
    from captum.attr import KernelShap, LLMAttribution, ShapleyValueSampling

    algo = ShapleyValueSampling(model) if kind == "svs" else KernelShap(model)
    attr = LLMAttribution(algo, tok)
    target_text = tok.decode(ex.target_ids)
    same = tok.encode(target_text, add_special_tokens=False) == list(ex.target_ids)
    target = target_text if same else torch.tensor(ex.target_ids)
    calls = {"n": 0}
    inner = attr.attr_method.forward_func  # one call = one perturbed prompt scored (Captum bypasses module hooks)

    def counted(*a, **k):
        calls["n"] += 1
        return inner(*a, **k)

    attr.attr_method.forward_func = counted
    torch.manual_seed(0)
    res = attr.attribute(captum_input(tok, ex), target=target, n_samples=n_samples, forward_in_tokens=False)
    tokens = calls["n"] * (len(ex.prompt.ids) + len(ex.target_ids))  # prompt + target, one forward pass each
    if res.token_attr is not None:
        values = res.token_attr.detach().double().cpu().numpy().T  # (n_in, n_out)
    else:
        values = res.seq_attr.detach().double().cpu().numpy()[:, None]  # (n_in, 1): total log-prob
    return values, calls["n"], tokens, kind


# -- faithfulness ----------------------------------------------------------------------------------
def deletion_grid(n: int, max_points: int = 64) -> list[int]:
    """``k = 1..n``, or for long inputs ``max_points`` evenly spaced ``k`` (a coarser AOPC)."""
    if n <= max_points:
        return list(range(1, n + 1))
    return sorted({int(round(n * (j + 1) / max_points)) for j in range(max_points)})


def faithfulness(model, tok, ex, values_by_method: dict, n_random: int, max_points: int = 64):
    """Deletion AOPC (+ random), comprehensiveness, sufficiency of each method, all masks scored in one batch."""
    score_kept, scorer = text_deletion_scorer(model, tok, ex.parts, ex.target_ids, ex.prompt.input_ids)
    n = ex.n
    grid = deletion_grid(n, max_points)
    bins = [max(1, min(n, int(round(q * n)))) for q in ERASER_BINS]
    orders = {m: ranking(v) for m, v in values_by_method.items()}
    randoms = random_orders(n, n_random, seed=0)

    def mask(order, k, keep_top):
        m = np.zeros(n, bool) if keep_top else np.ones(n, bool)
        m[order[:k]] = keep_top
        return m

    masks = [np.ones(n, bool)]
    for order in list(orders.values()) + randoms:
        masks += [mask(order, k, False) for k in sorted(set(grid) | set(bins))]
        masks += [mask(order, k, True) for k in bins]
    score_kept(np.stack(masks))  # one batched pass, sorted by length; the lookups below hit the cache
    full = score_kept(np.ones((1, n), bool))[0]

    def drop(order, k, keep_top=False):
        return full - score_kept(mask(order, k, keep_top)[None])[0]

    def deletion_aopc(order):
        return aopc(np.array([0.0] + [drop(order, k) for k in grid]))

    rand = float(np.mean([deletion_aopc(o) for o in randoms]))
    out = {m: {"deletion_aopc": deletion_aopc(o), "deletion_aopc_random": rand,
               "comprehensiveness": float(np.mean([drop(o, k) for k in bins])),
               "sufficiency": float(np.mean([drop(o, k, True) for k in bins]))} for m, o in orders.items()}
    return out, scorer.n_evals


# -- sets ----------------------------------------------------------------------------------------
def build_examples(model, tok, args):
    dev, train = load_sst2("dev"), load_sst2("train")
    half = (args.n_sst2 + 1) // 2
    short = pick_sentences(dev, tok, half, 6, EXACT_MAX, seed=0)
    medium = pick_sentences(dev, tok, args.n_sst2 - half, 11, 24, seed=0, exclude=set(short))
    few = pick_sentences(dev, tok, args.n_fewshot, 6, EXACT_MAX, seed=2, exclude=set(short) | set(medium))
    examples = [sst2_example(tok, dev.sentence[i], f"dev{i}") for i in short + medium]
    examples += [fewshot_example(tok, dev.sentence[i], f"dev{i}", train, k=4 + j % 5, seed=100 + j,
                                 min_context=args.min_context) for j, i in enumerate(few)]
    if args.long_tokens:
        text, j = "", 0
        for s in dev.sentence:
            if len(tok(text + " " + s, add_special_tokens=False)["input_ids"]) > args.long_tokens:
                break
            text = (text + " " + s).strip()
            j += 1
        examples.append(sst2_example(tok, text, f"dev0-{j - 1}", "long"))
    targets = generate(model, tok, [e.prompt.ids for e in examples], max_new_tokens=args.max_new_tokens,
                       batch_size=4, progress=False)
    for e, t in zip(examples, targets):
        e.target_ids = t
    return examples


def methods_for(ex, args) -> list[str]:
    if ex.set == "long":
        return ["hierarchical", "kernel"]
    names = [REFERENCE, "captum-svs", "captum-kernelshap"]
    if ex.n <= EXACT_MAX:
        names.append("exact")
    return names + ["sampling", "kernel", "hierarchical", "auto"]


def run_method(model, tok, ex, name, args):
    budget = args.long_budget if ex.set == "long" else auto_budget("kernel", ex.n, 512)
    if name == REFERENCE:
        return run_partition(model, tok, ex)
    if name == "captum-svs":
        return run_captum(model, tok, ex, "svs", args.captum_svs_samples)
    if name == "captum-kernelshap":
        return run_captum(model, tok, ex, "kernelshap", budget)
    return run_ours(model, tok, ex, name, 512 if name in ("auto", "exact") else budget)


def warm_up(model, tok, args):
    """First calls compile shap's numba code and fill caches; they are not timed."""
    from common import Example

    from shapshift.prompting import build_prompt, encode_prompt

    parts = build_prompt("a fine film", "Review: {input}\nSentiment:", tok, chat=True)
    ex = Example("warmup", "warmup", parts, encode_prompt(parts, tok), tok(" good", add_special_tokens=False)["input_ids"])
    for name in [REFERENCE, "captum-svs", "captum-kernelshap", "kernel", "hierarchical"]:
        run_method(model, tok, ex, name, args)


# -- report --------------------------------------------------------------------------------------
def summarise(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (set_name, method), g in df.groupby(["set", "method"], sort=False):
        ref = df[(df.set == set_name) & (df.method == REFERENCE)].set_index("example")["seconds"]
        ratio = ref.reindex(g.example).to_numpy() / g["seconds"].to_numpy()
        rows.append({
            "set": set_name, "method": method, "examples": len(g), "mean n": g["n"].mean(),
            "s / example": g["seconds"].mean(),
            "× faster than partition": float(np.exp(np.nanmean(np.log(ratio)))) if len(ref) else float("nan"),
            "evals": g["evals"].mean(), "forward tokens": g["forward_tokens"].mean(), "peak MB": g["peak_mb"].mean(),
            "Spearman vs exact": g["spearman"].mean(), "top-3 vs exact": g["top3"].mean(),
            "deletion AOPC": g["deletion_aopc"].mean(), "random AOPC": g["deletion_aopc_random"].mean(),
            "compr.": g["comprehensiveness"].mean(), "suff.": g["sufficiency"].mean()})
    return pd.DataFrame(rows)


def paired_difference(df: pd.DataFrame, set_name: str, a: str, b: str, column: str, n_boot: int = 10000,
                      seed: int = 0) -> tuple[float, float, float, int, int]:
    """Mean of ``column`` of method ``a`` minus method ``b`` over the examples both ran, its 95 % bootstrap CI
    (examples resampled), and on how many examples ``a`` is higher."""
    sub = df[df.set == set_name].pivot_table(index="example", columns="method", values=column)
    d = (sub[a] - sub[b]).dropna().to_numpy()
    if len(d) == 0:
        return math.nan, math.nan, math.nan, 0, 0
    lo, hi = bootstrap_mean_ci(d, n_boot, seed)
    return float(d.mean()), lo, hi, int((d > 0).sum()), len(d)


def write_results(path: Path, summary: pd.DataFrame, df: pd.DataFrame, info: dict, args, wall: float,
                  loads: tuple[str, str], command: str) -> None:
    lines = ["# Benchmark: shapshift estimators vs shap Partition and Captum", "",
             f"Command: `{command}` — whole run {wall / 60:.1f} min (load average at start / end: {loads[0]} / {loads[1]}).",
             "", "Machine and versions: " + ", ".join(f"{k}={v}" for k, v in info.items()) + ".", "",
             f"Model: {args.model}. Targets: the model's greedy continuation (≤ {args.max_new_tokens} tokens, cut at a newline). "
             "Speeds are per-example ratios to shap Partition measured in this same run (geometric mean); "
             "`evals` = masked inputs scored; `forward tokens` = token positions run through the model (padding included); "
             "`peak MB` = peak extra resident memory during the call (5 ms sampler). Spearman / top-3 (by |sum over output "
             "tokens|) against exact Shapley values of shapshift's attention masking, on examples with n ≤ 10 only. "
             "Deletion metrics: real deletion from the text, tokens ranked by the signed sum of their values over the output "
             "tokens (most positive first), drop of the target's total log-probability in nats; AOPC = mean drop over "
             "k = 1..n (higher is better; `random AOPC`: mean of random orders); comprehensiveness (higher is better) and "
             "sufficiency (lower is better) per ERASER, bins 1/5/10/20/50 %.", ""]
    for set_name in summary["set"].unique():
        sub = summary[summary["set"] == set_name].drop(columns="set")
        lines += [f"## {set_name}", "", markdown_table(sub), ""]
    lines += ["## Targets", ""]
    for set_name, need in (("sst2", 5.0), ("fewshot", 20.0)):
        s = summary[(summary.set == set_name)].set_index("method")
        if "auto" not in s.index or REFERENCE not in s.index:
            continue
        a, p = s.loc["auto"], s.loc[REFERENCE]
        speed = a["× faster than partition"]
        ok = speed >= need and a["deletion AOPC"] >= p["deletion AOPC"] and (
            np.isnan(a["Spearman vs exact"]) or a["Spearman vs exact"] >= 0.9)
        lines.append(f"- {set_name}: auto is {speed:.1f}× faster than shap Partition (target ≥ {need:g}×), deletion AOPC "
                     f"{a['deletion AOPC']:.3f} vs {p['deletion AOPC']:.3f}, Spearman vs exact {a['Spearman vs exact']:.3f} "
                     f"(target ≥ 0.9): {'met' if ok else 'MISSED'}.")
        diff, lo, hi, wins, total = paired_difference(df, set_name, "auto", REFERENCE, "deletion_aopc")
        lines.append(f"  Deletion AOPC, auto − Partition per example: mean {diff:+.3f} nats, 95 % bootstrap CI "
                     f"[{lo:+.3f}, {hi:+.3f}]; auto higher on {wins} of {total} examples.")
        if "captum-svs" in s.index:
            c = s.loc["captum-svs"]
            lines.append(f"  Captum ShapleyValueSampling: auto is {c['s / example'] / a['s / example']:.1f}× faster; deletion "
                         f"AOPC {a['deletion AOPC']:.3f} vs {c['deletion AOPC']:.3f}.")
    lines.append("")
    lines += studies_section(path.parent)
    path.write_text("\n".join(lines))


def studies_section(folder: Path) -> list[str]:
    """The masking and budget studies (``study_masking.py``'s CSVs), summarised, when they are there."""
    masking, budget = folder / "study_masking.csv", folder / "study_budget.csv"
    if not (masking.exists() and budget.exists()):
        return []
    m = pd.read_csv(masking)
    common = set.intersection(*(set(g.example) for _, g in m.groupby("masking")))  # the same examples for each
    m = m[m.example.isin(common)]
    table = m.groupby("masking")[["deletion_aopc", "deletion_aopc_random", "comprehensiveness", "sufficiency",
                                  "spearman_vs_attention", "forward_tokens"]].mean().reset_index()
    b = pd.read_csv(budget)
    err = b.pivot_table(index="per_feature", columns="method", values="rel_error", aggfunc="mean").reset_index()
    err.columns = ["evals per feature c (budget c·n + 2)"] + [f"{c} rel. error" for c in err.columns[1:]]
    return [
        "## Studies behind the defaults (`python benchmarks/study_masking.py`)", "",
        f"Masking, on the {len(common)} SST-2 sentences (5-8 tokens) scored under every masking: exact Shapley values "
        "of each masking judged by real deletion from the text (as above; means over sentences). `spearman_vs_attention`: "
        "rank agreement of each masking's values with attention masking's.", "",
        markdown_table(table), "",
        f"Estimator error against exact values at equal budgets ({b.example.nunique()} sentences of 5-10 tokens, "
        f"{b.seed.nunique()} seeds each for kernel and sampling, hierarchical is deterministic; replayed on the recorded "
        "coalition scores of attention masking): relative L2 error of the (input × output token) value matrix, mean "
        "over sentences and seeds:", "",
        markdown_table(err), "",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-gpt-neo, 2+2 sentences, no long input: a smoke run")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n-sst2", type=int, default=16)
    ap.add_argument("--n-fewshot", type=int, default=8)
    ap.add_argument("--min-context", type=int, default=300)
    ap.add_argument("--max-new-tokens", type=int, default=10)
    ap.add_argument("--captum-svs-samples", type=int, default=4,
                    help="Captum ShapleyValueSampling permutations (each n + 1 evaluations; 4 ≈ the 4n + 2 budget)")
    ap.add_argument("--long-tokens", type=int, default=1000, help="length of the long input (0: none)")
    ap.add_argument("--long-budget", type=int, default=40)
    ap.add_argument("--n-random", type=int, default=4, help="random orders of the deletion baseline")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on CUDA, fp32 on CPU), float32, ...")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("shapshift").setLevel(logging.WARNING)
    if args.quick:
        args.model, args.n_sst2, args.n_fewshot, args.long_tokens, args.min_context = "tiny-gpt-neo", 1, 1, 0, 100
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_explainers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t_start, load0 = time.perf_counter(), load_average()
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    examples = build_examples(model, tok, args)
    log.info("%d examples; warming up", len(examples))
    warm_up(model, tok, args)
    rows = []
    for ex in examples:
        values, exact = {}, None
        for name in methods_for(ex, args):
            with PeakMemory() as mem, Timer() as t:
                v, evals, tokens, chosen = run_method(model, tok, ex, name, args)
            values[name] = v
            if name == "exact":
                exact = v.sum(1)
            rows.append({"set": ex.set, "example": ex.name, "n": ex.n, "n_out": len(ex.target_ids),
                         "context_tokens": len(ex.prompt.prefix_ids), "method": name, "chosen": chosen,
                         "seconds": t.seconds, "evals": evals, "forward_tokens": tokens, "peak_mb": mem.mb})
            log.info("%s %s n=%d %s: %.2fs, %d evals", ex.set, ex.name, ex.n, name, t.seconds, evals)
        for r in rows[-len(values):]:
            s = values[r["method"]].sum(1)
            r["spearman"] = spearman(s, exact) if exact is not None else math.nan
            r["top3"] = top_k_overlap(s, exact) if exact is not None else math.nan
        faith, _ = faithfulness(model, tok, ex, values, args.n_random if ex.set != "long" else 2,
                                max_points=64 if ex.set != "long" else 10)
        for r in rows[-len(values):]:
            r.update(faith[r["method"]])
    df = pd.DataFrame(rows)
    summary = summarise(df)
    wall = time.perf_counter() - t_start
    suffix = "_quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / f"results{suffix}.csv", index=False)
    summary.to_csv(args.out / f"summary{suffix}.csv", index=False)
    write_results(args.out / f"RESULTS{suffix}.md", summary, df, machine_info(), args, wall, (load0, load_average()),
                  command)
    print(markdown_table(summary))
    log.info("done in %.1f min", wall / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
