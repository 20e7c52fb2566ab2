"""How one condition is explained: its generations and scores, its targets, its SHAP explanations (each example
checkpointed as soon as it is done, a resumed run skipping it), its lenses and the baseline's noise-floor rerun.

The stage functions of :mod:`shapshift.pipeline` call these for the baseline (stage 2) and for each condition of
stage 3; the results are ``0[23]_<condition>.{parquet,pkl}``, ``0[23]_generations.parquet`` and the lenses'
``<stem>__<lens>.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import conditions, parallel, stages
from .backends.capabilities import capabilities
from .conditions import NOISE_FLOOR
from .config import RunConfig
from .constants import resolve_masking
from .errors import DataError
from .explainers import REGISTRY, PrefixReuse, explain_tasks, make_task
from .explainers.costs import announce_cost
from .explainers.registry import masking_used
from .generation import generate
from .lenses import lens_stem
from .prompting import PromptParts, encode_prompt, encode_targets, token_strings
from .scoring import make_scorer
from .stages import stage_fingerprint
from .store import (
    ExampleCheckpoint,
    RunStore,
    save_explanations,
)

log = logging.getLogger(__name__)

#: Stage 1's table, which every later stage reads.
DATASET = "01_dataset.parquet"


def explain_rows(store: RunStore) -> pd.DataFrame:
    df = store.read_parquet(DATASET)
    return df[df["split"] == "explain"].reset_index(drop=True)


def reference_targets(tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, parts: list[PromptParts]) -> list[list[int] | None]:
    """The reference target text of each row, tokenised alone (warns when that differs in context)."""
    prompts = [encode_prompt(p, tokenizer, input_ids=list(r.input_ids)).ids for p, r in zip(parts, rows.itertuples())]
    return encode_targets(tokenizer, list(rows["target_text"]), prompts)


def explain_condition(cfg: RunConfig, store: RunStore, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       rows: pd.DataFrame, parts: list[PromptParts], targets: list[list[int]], stem: str,
                       condition: str, seed: int, resume: bool = False,
                       method: str | None = None, contrasts: list[list[int]] | None = None) -> tuple[list[Any], list[dict]]:
    """Explain every row, saving each example as soon as it is done; a resumed run skips those.

    ``method``: the estimator (default ``explain.method``; a lens writes ``<stem>__<lens>``, see :func:`explain_lenses`).
    ``contrasts``: each row's foil under ``explain.target: contrastive`` (:func:`choose_contrasts`).
    """
    ex = cfg.explain
    method = method or ex.method
    fingerprint = f"{stage_fingerprint(cfg, stages.stage_of(stem).name)}-{stem}-{seed}"
    checkpoint = ExampleCheckpoint(store.path(f".partial/{stem}"), fingerprint)
    done = open_checkpoint(checkpoint, resume)
    done = {i: v for i, v in done.items() if i in set(rows["example_id"].astype(int))}
    if done and parallel.is_main():
        log.info("%s: resuming, %d of %d examples already explained (reused: %s)", condition, len(done), len(rows),
                 ", ".join(map(str, sorted(done))))
    reuse = PrefixReuse()  # the condition's fixed context (few-shot demonstrations) runs once, not per example
    if capabilities(model).remote and parallel.is_main():
        announce_cost([make_task(model, tokenizer, p, t, input_ids=list(r.input_ids), max_evals=ex.max_evals,
                                 precision=ex.precision, unit=ex.unit)
                       for p, t, r in zip(parts, targets, rows.itertuples()) if int(r.example_id) not in done],
                      ex.method, f"explain {condition}")
    listed = list(rows.itertuples())
    several = parallel.num_processes() > 1  # then this process explains its share of the examples left
    bar = tqdm(total=len(rows), initial=len(done), leave=False, disable=not parallel.is_main(),
               desc=f"explain {condition}" + (f" ({parallel.num_processes()} processes)" if several else ""))
    for i in parallel.share([i for i, r in enumerate(listed) if int(r.example_id) not in done]):
        p, t, r = parts[i], targets[i], listed[i]
        task = make_task(model, tokenizer, p, t, input_ids=list(r.input_ids), score=ex.score, masking=ex.masking,
                         batch_size=ex.batch_size, max_evals=ex.max_evals, seed=seed, precision=ex.precision,
                         unit=ex.unit, options=dict(ex.options), contrast_ids=contrasts[i] if contrasts else None)
        [exp], [stats] = explain_tasks([task], method, progress=False, reuse=reuse)
        checkpoint.save(int(r.example_id), exp, stats)
        done[int(r.example_id)] = (exp, stats)
        bar.update(min(checkpoint.count(), len(rows)) - bar.n if several else 1)  # all processes' examples
    bar.close()
    if several:  # every process reads every process's examples once all are done
        parallel.wait()
        done = checkpoint.load()
        parallel.wait()
    explanations = [done[int(i)][0] for i in rows["example_id"]]
    stats = [done[int(i)][1] for i in rows["example_id"]]
    methods = sorted({st["method"] for st in stats})
    meta = {"method": method, "methods_used": methods, "score": ex.score, "target": ex.target,
            "masking": masking_used(method, resolve_masking(ex.masking)),  # partition: shap's Text masker
            "max_evals": ex.max_evals, "seed": seed, "unit": ex.unit,
            "deterministic": all(REGISTRY[m].deterministic for m in methods)}
    save_explanations(store, stem, explanations, rows["example_id"].tolist(), condition, meta)
    store.update_manifest(explain_stats={stem: stats})
    return explanations, stats  # the checkpoint stays until the whole stage is done (a kill later loses nothing)


def open_checkpoint(checkpoint: ExampleCheckpoint, resume: bool) -> dict[int, tuple[Any, dict]]:
    """The examples done already: the main process starts (or clears) the checkpoint, the others then read it
    (every process sees the same examples, so their shares of the rest are the same split)."""
    done = checkpoint.start(resume) if parallel.is_main() else {}
    parallel.wait()
    if not parallel.is_main():
        done = checkpoint.load()
    parallel.wait()  # before any process saves a new example
    return done


def explain_lenses(cfg: RunConfig, store: RunStore, model, tokenizer, rows, parts, targets, stem: str, condition: str,
                    resume: bool = False) -> None:
    """Explain the condition again with each lens of ``explain.methods`` (after the SHAP method): ``<stem>__<lens>``."""
    for lens in cfg.explain.all_methods[1:]:
        explain_condition(cfg, store, model, tokenizer, rows, parts, targets, lens_stem(stem, lens), condition,
                           cfg.explain.seed, resume, method=lens)


def generate_and_score(model, tokenizer, rows: pd.DataFrame, parts: list[PromptParts], condition: str,
                      cfg: RunConfig, explained: list[list[int]] | None = None) -> pd.DataFrame:
    """Each example's own greedy generation, its label match, and the log-prob of the explained target."""
    prompts = [encode_prompt(p, tokenizer, input_ids=list(r.input_ids)) for p, r in zip(parts, rows.itertuples())]
    gens = generate(model, tokenizer, [p.ids for p in prompts], max_new_tokens=cfg.generation.max_new_tokens,
                    stop_at_newline=cfg.generation.stop_at_newline, batch_size=cfg.generation.batch_size)
    out = []
    for r, prompt, g, t in zip(rows.itertuples(), prompts, gens, explained or gens):
        text = tokenizer.decode(g, skip_special_tokens=True)
        logp = make_scorer(model, prompt, t, score="log_prob").full()
        out.append({
            "example_id": int(r.example_id), "condition": condition, "generated_text": text,
            "generated_ids": [int(i) for i in g], "generated_tokens": token_strings(tokenizer, g),
            "label": r.label, "label_match": label_match(text, r.target_text),
            "explained_ids": [int(i) for i in t], "explained_logprob": float(logp.sum()),
        })
    return pd.DataFrame(out)


def choose_contrasts(model, tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, parts: list[PromptParts],
                     labels: Sequence[str]) -> list[list[int]]:
    """Each row's foil for ``explain.target: contrastive``: the label other than its reference that the model
    (the baseline) finds most likely after the full prompt, as token ids. Every condition explains the same
    contrast, so their explanations answer the same question ("why positive rather than negative")."""
    out = []
    for p, r in zip(parts, rows.itertuples()):
        others = [lab for lab in labels if lab != r.target_text]
        if not others:
            raise DataError(f"Example {r.example_id}: no label other than its reference {r.target_text!r} to contrast "
                            "it with.", "Use a dataset with two or more labels, or explain.target: reference.")
        prompt = encode_prompt(p, tokenizer, input_ids=list(r.input_ids))
        ids = [list(tokenizer(lab, add_special_tokens=False)["input_ids"]) for lab in others]
        scores = [float(make_scorer(model, prompt, i, score="log_prob").full().sum()) for i in ids]
        out.append(ids[int(max(range(len(ids)), key=scores.__getitem__))])
    return out


def label_match(generated: str, reference: str | None) -> float:
    """1.0 when the generation starts with the reference answer (case and space insensitive), NaN without one."""
    if reference is None:
        return float("nan")
    ref = reference.strip().lower()
    return float(bool(ref) and generated.strip().lower().startswith(ref))


def task_labels(store: RunStore) -> list[str]:
    """The labels of the run's task as its targets write them (the distinct reference texts of labelled rows)."""
    data = store.read_parquet(DATASET)
    return sorted(set(data.loc[data["label"].notna(), "target_text"].dropna().astype(str)))


def noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats, resume, contrasts=None) -> None:
    floor = conditions.get(NOISE_FLOOR)
    again = [i for i, st in enumerate(stats) if not REGISTRY[st["method"]].deterministic]
    rerun = list(exps)
    if again:
        sub = rows.iloc[again].reset_index(drop=True)
        new, _ = explain_condition(cfg, store, model, tokenizer, sub, [parts[i] for i in again],
                                    [targets[i] for i in again], floor.stem, floor.name, cfg.explain.seed + 1, resume,
                                    contrasts=[contrasts[i] for i in again] if contrasts else None)
        for i, e in zip(again, new):
            rerun[i] = e
    save_explanations(store, floor.stem, rerun, rows["example_id"].tolist(), floor.name,
                      {"seed": cfg.explain.seed + 1, "re_explained": len(again),
                       "copied_deterministic": len(rows) - len(again)})


def condition_targets(cfg, tokenizer, rows, parts, own, base_targets) -> list[list[int]]:
    if cfg.explain.target == "own":
        return [list(g) for g in own["generated_ids"]]
    if cfg.explain.target in ("reference", "contrastive"):
        return reference_targets(tokenizer, rows, parts)
    return [base_targets[int(i)] for i in rows["example_id"]]
