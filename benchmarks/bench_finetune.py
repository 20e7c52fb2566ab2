"""Fine-tuning through transformers.Trainer versus the hand-written loop it replaced, on the demo setting.

The demo's fine-tuned condition (``configs/demo.yaml``: smollm2-135m, LoRA r=8, alpha=16, 6 steps of
8 rows at learning rate 1e-3, the demo reviews' train split) is trained both ways in one process,
alternating the order, ``--repeats`` times each; each run's task metric is measured on the explain
split with :func:`shapshift.finetune.evaluate_task` (as the pipeline does). The old loop is kept
here, as it was in ``src/shapshift/finetune.py`` before issue 15 (one micro-batch per step, no
out-of-memory back-off), as the yardstick.

It also times accelerate's ``find_executable_batch_size`` overhead (a ``gc.collect()`` per call)
against one scorer call on a demo example, which is why the scorer keeps a plain back-off loop
(:mod:`shapshift.backoff`).

    .venv/bin/python benchmarks/bench_finetune.py --threads 1     # ~5 min on 1 CPU core

Writes ``benchmarks/FINETUNE.md``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine_info  # noqa: E402

from shapshift.data import preprocess  # noqa: E402
from shapshift.finetune import (  # noqa: E402
    IGNORE_INDEX,
    _pad_id,
    build_training_examples,
    collate,
    evaluate_task,
    finetune,
)
from shapshift.lora import wrap_lora  # noqa: E402
from shapshift.models import load_model  # noqa: E402
from shapshift.validation import load_config  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
log = logging.getLogger("bench_finetune")


def old_loop(model, tokenizer, train, cfg, seed: int):
    """The hand-written LoRA loop before issue 15: seeded numpy shuffles, AdamW, clip 1, loss on target tokens."""
    examples = build_training_examples(tokenizer, train, cfg.max_length)
    pad_id = _pad_id(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        work, _ = wrap_lora(copy.deepcopy(model), cfg)
        params = [p for p in work.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * math.ceil(len(examples) / cfg.batch_size)
        batches: list[np.ndarray] = []
        while len(batches) < total:
            order = rng.permutation(len(examples))
            batches += [order[i:i + cfg.batch_size] for i in range(0, len(examples), cfg.batch_size)]
        work.train()
        losses = []
        start = time.perf_counter()
        for idx in batches[:total]:
            batch = [examples[j] for j in idx]
            n_tokens = max(1, sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in batch))
            optimizer.zero_grad(set_to_none=True)
            enc = collate(batch, pad_id)
            logits = work(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), enc["labels"][:, 1:].flatten(),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
            (loss / n_tokens).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss.detach()) / n_tokens)
        seconds = time.perf_counter() - start
    work.eval()
    return work.merge_and_unload().requires_grad_(False), losses, seconds


def gc_overhead(model, tokenizer, held) -> tuple[float, float]:
    """(seconds of accelerate's per-call clear_device_cache(gc), seconds of one 32-coalition scorer call)."""
    from accelerate.utils.memory import clear_device_cache

    from shapshift.prompting import PromptParts, encode_prompt
    from shapshift.scoring import TeacherForcedScorer

    row = held.iloc[0]
    prompt = encode_prompt(PromptParts(row.prompt_prefix, row.input_text, row.prompt_suffix), tokenizer,
                           input_ids=list(row.input_ids))
    target = tokenizer(row.target_text, add_special_tokens=False)["input_ids"]
    scorer = TeacherForcedScorer(model, prompt, target, batch_size=32)
    masks = np.random.default_rng(0).random((32, len(prompt.input_ids))) > 0.5
    scorer(masks)  # warm-up
    t = time.perf_counter()
    for _ in range(5):
        scorer(masks)
    call = (time.perf_counter() - t) / 5
    t = time.perf_counter()
    for _ in range(5):
        clear_device_cache(garbage_collection=True)
    return (time.perf_counter() - t) / 5, call


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "FINETUNE.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config)
    ft = cfg.adapt.finetune
    model, tok = load_model(cfg.model.spec)
    data_cfg = copy.deepcopy(cfg.data)
    data_cfg.source = str(ROOT / data_cfg.source)
    table, _ = preprocess(data_cfg, tok)
    train = table[table["split"] == "train"].reset_index(drop=True)
    held = table[table["split"] == "explain"].reset_index(drop=True)
    labels = sorted(set(train["target_text"].dropna()))
    base = evaluate_task(model, tok, held, labels=labels)

    runs: dict[str, list[dict]] = {"old loop": [], "Trainer": []}
    for r in range(args.repeats):
        for name in (["old loop", "Trainer"] if r % 2 == 0 else ["Trainer", "old loop"]):
            t = time.perf_counter()
            if name == "old loop":
                tuned, losses, loop_s = old_loop(model, tok, train, ft, cfg.data.seed)
            else:
                res = finetune(model, tok, train, ft, seed=cfg.data.seed, progress=False)
                tuned, losses, loop_s = res.model, res.losses, res.seconds
            wall = time.perf_counter() - t
            metric = evaluate_task(tuned, tok, held, labels=labels)
            runs[name].append({"wall": wall, "loop": loop_s, "losses": losses, **metric})
            log.warning("%s: %.1f s (loop %.1f s), losses %s, %s", name, wall, loop_s, np.round(losses, 4), metric)
    gc_s, call_s = gc_overhead(model, tok, held)

    def med(name, key):
        return float(np.median([x[key] for x in runs[name]]))

    lines = [
        "# Fine-tuning: transformers.Trainer versus the old hand loop (demo setting)",
        "",
        f"`{' '.join(['benchmarks/bench_finetune.py', *(argv or sys.argv[1:])])}`: {cfg.model.spec}, LoRA r={ft.r} "
        f"alpha={ft.alpha} dropout={ft.dropout}, {ft.max_steps} steps of {ft.batch_size} rows, lr {ft.learning_rate}, "
        f"{len(train)} train rows, task metric on the {len(held)} explain rows; {args.threads} thread(s), "
        f"{args.repeats} runs each, alternating order. Load average at the end: {load_average()}.",
        "",
        "## Time (seconds; median of the runs, all runs in brackets)",
        "",
        "| | whole call | training loop | ratio Trainer / old (whole call) |",
        "|---|---|---|---|",
    ]
    for name in runs:
        ratio = med(name, "wall") / med("old loop", "wall")
        walls = ", ".join(f"{x['wall']:.1f}" for x in runs[name])
        loops = ", ".join(f"{x['loop']:.1f}" for x in runs[name])
        lines.append(f"| {name} | {med(name, 'wall'):.1f} ({walls}) | {med(name, 'loop'):.1f} ({loops}) | {ratio:.2f} |")
    lines += ["", "The spread between repeats of the same method is the precision of these times.", "",
              "## Per-step losses (nats per target token; first run of each)", "",
              "| step | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for i in range(len(runs["old loop"][0]["losses"])):
        lines.append(f"| {i + 1} | " + " | ".join(f"{runs[n][0]['losses'][i]:.4f}" for n in runs) + " |")
    lines += ["", "## Task metric on the explain split", "", "| model | accuracy | mean target log-prob (nats) |",
              "|---|---|---|", f"| base (not fine-tuned) | {base['accuracy']:.3f} | {base['mean_target_logprob']:.4f} |"]
    for name in runs:
        lines.append(f"| {name} | {runs[name][0]['accuracy']:.3f} | {runs[name][0]['mean_target_logprob']:.4f} |")
    same = all(x["losses"] == runs[n][0]["losses"] for n in runs for x in runs[n])
    lines += ["", f"Repeats of one method give identical losses: {same} (both are seeded).", "",
              "## Out-of-memory back-off overhead", "",
              f"accelerate's `find_executable_batch_size` calls `clear_device_cache(garbage_collection=True)` on "
              f"every call: {gc_s:.3f} s here (mean of 5), against {call_s:.3f} s for one 32-coalition scorer call "
              "on a demo example (mean of 5). The scorer is called many times per example, so it keeps a plain "
              "loop (`shapshift.backoff`); generation, task evaluation and fine-tuning run once per stage and use "
              "accelerate's decorator.", "", f"Machine: {machine_info()}", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
