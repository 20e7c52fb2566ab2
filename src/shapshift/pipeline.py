"""The four stages as plain functions of a :class:`RunConfig`, and ``run()`` for all of them.

Stage artifacts (in ``config.run_dir``):
1. ``01_dataset.parquet``
2. ``02_generations.parquet``, ``02_baseline.{pkl,parquet}``, ``02_baseline_rerun.{pkl,parquet}`` (noise floor)
3. ``03_<condition>.{pkl,parquet}``, ``03_generations.parquet``, ``adapters/``, ``03_finetune.json``
4. ``04_overlap.parquet``, ``04_summary.csv``, ``figures/*.png``, ``report.html``
and ``manifest.json`` (config, versions, timings, sha256 of each artifact).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import RunConfig
from .errors import DataError
from .explainers import explain_tasks, make_task
from .generation import generate
from .models import load_model, uses_chat_template
from .prompting import Demonstration, PromptParts, build_prompt, encode_prompt, token_strings
from .scoring import TeacherForcedScorer
from .store import RunStore, load_explanations, package_versions, save_explanations

log = logging.getLogger(__name__)

STAGES = ("preprocess", "explain", "adapt", "compare")
DATASET = "01_dataset.parquet"


def open_store(cfg: RunConfig) -> RunStore:
    store = RunStore(cfg.run_dir)
    store.dir.mkdir(parents=True, exist_ok=True)
    store.update_manifest(config=cfg.to_dict(), versions=package_versions(), model_spec=cfg.model.spec)
    return store


# -- stage 1 ----------------------------------------------------------------------------------------
def preprocess_stage(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """Stage 1: load, format, tokenise, split; writes ``01_dataset.parquet``."""
    from .data import preprocess

    store = open_store(cfg)
    with store.timed("preprocess") as info:
        df, report = preprocess(cfg.data, tokenizer)
        store.write_parquet(df, DATASET)
        info.update(asdict(report))
    log.info("preprocess: %d examples (%s)", len(df), report.splits)
    return df


def explain_rows(store: RunStore) -> pd.DataFrame:
    df = store.read_parquet(DATASET)
    return df[df["split"] == "explain"].reset_index(drop=True)


def base_parts(rows: pd.DataFrame) -> list[PromptParts]:
    return [PromptParts(r.prompt_prefix, r.input_text, r.prompt_suffix) for r in rows.itertuples()]


def condition_parts(cfg: RunConfig, rows: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, *,
                    instruction: str | None = None, demonstrations: Sequence[Demonstration] = ()) -> list[PromptParts]:
    """Prompts of a prompting condition; the features (the text part) must equal the baseline's."""
    chat = uses_chat_template(tokenizer, cfg.data.chat)
    parts = [build_prompt(r.source_text, cfg.data.template, tokenizer, chat=chat, instruction=instruction,
                          demonstrations=demonstrations) for r in rows.itertuples()]
    for p, r in zip(parts, rows.itertuples()):
        if p.text != r.input_text:
            raise DataError(f"Example {r.example_id}: the condition's input text {p.text!r} differs from the baseline's {r.input_text!r}.",
                            "The template must place {input} the same way in every condition.")
    return parts


def _target_ids(tokenizer, text: str | None) -> list[int] | None:
    return None if text is None else tokenizer(text, add_special_tokens=False)["input_ids"]


def _explain_condition(cfg: RunConfig, store: RunStore, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       rows: pd.DataFrame, parts: list[PromptParts], targets: list[list[int]], stem: str,
                       condition: str, seed: int) -> tuple[list[Any], list[dict]]:
    ex = cfg.explain
    tasks = [make_task(model, tokenizer, p, t, input_ids=list(r.input_ids), score=ex.score, batch_size=ex.batch_size,
                       max_evals=ex.max_evals, seed=seed) for p, t, r in zip(parts, targets, rows.itertuples())]
    explanations, stats = explain_tasks(tasks, ex.method, desc=f"explain {condition}")
    meta = {"method": ex.method, "score": ex.score, "max_evals": ex.max_evals, "seed": seed, "per_example": stats}
    save_explanations(store, stem, explanations, rows["example_id"].tolist(), condition, meta)
    return explanations, stats


def generations_table(model, tokenizer, rows: pd.DataFrame, parts: list[PromptParts], condition: str,
                      cfg: RunConfig, explained: list[list[int]] | None = None) -> pd.DataFrame:
    """Each example's own greedy generation, its label match, and the log-prob of the explained target."""
    prompts = [encode_prompt(p, tokenizer, input_ids=list(r.input_ids)) for p, r in zip(parts, rows.itertuples())]
    gens = generate(model, tokenizer, [p.ids for p in prompts], max_new_tokens=cfg.generation.max_new_tokens,
                    stop_at_newline=cfg.generation.stop_at_newline, batch_size=cfg.generation.batch_size)
    out = []
    for r, prompt, g, t in zip(rows.itertuples(), prompts, gens, explained or gens):
        text = tokenizer.decode(g, skip_special_tokens=True)
        logp = TeacherForcedScorer(model, prompt, t, score="log_prob").full()
        out.append({
            "example_id": int(r.example_id), "condition": condition, "generated_text": text,
            "generated_ids": [int(i) for i in g], "generated_tokens": token_strings(tokenizer, g),
            "label": r.label, "label_match": label_match(text, r.target_text),
            "explained_ids": [int(i) for i in t], "explained_logprob": float(logp.sum()),
        })
    return pd.DataFrame(out)


def label_match(generated: str, reference: str | None) -> float:
    """1.0 when the generation starts with the reference answer (case and space insensitive), NaN without one."""
    if reference is None:
        return float("nan")
    ref = reference.strip().lower()
    return float(bool(ref) and generated.strip().lower().startswith(ref))


# -- stage 2 ----------------------------------------------------------------------------------------
def explain_stage(cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[Any]:
    """Stage 2: generate and explain the pre-trained model on the plain prompt.

    Writes ``02_generations.parquet``, ``02_baseline.{pkl,parquet}`` and, when ``explain.noise_floor``,
    ``02_baseline_rerun`` (the baseline explained again with seed + 1; an example explained by a
    deterministic estimator is copied, its floor being exactly 1).
    """
    store = open_store(cfg)
    rows = explain_rows(store)
    parts = base_parts(rows)
    with store.timed("explain") as info:
        gens = generations_table(model, tokenizer, rows, parts, "baseline", cfg)
        if cfg.explain.target == "reference":
            targets = [_target_ids(tokenizer, t) for t in rows["target_text"]]
            if any(t is None or not t for t in targets):
                raise DataError("explain.target is 'reference' but some examples have no target text.",
                                "Set data.target_column, or explain.target to baseline.")
        else:
            targets = [list(g) for g in gens["generated_ids"]]
        gens["explained_ids"] = targets
        store.write_parquet(gens, "02_generations.parquet")
        exps, stats = _explain_condition(cfg, store, model, tokenizer, rows, parts, targets, "02_baseline", "baseline",
                                         cfg.explain.seed)
        info.update(n_examples=len(rows), accuracy=float(np.nanmean(gens["label_match"])) if gens["label_match"].notna().any() else None,
                    evals=int(sum(s["n_evals"] for s in stats)))
        if cfg.explain.noise_floor:
            _noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats)
    return exps


def _noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats) -> None:
    from .explainers import REGISTRY

    again = [i for i, s in enumerate(stats) if not REGISTRY[s["method"]].deterministic]
    rerun = list(exps)
    if again:
        sub = rows.iloc[again].reset_index(drop=True)
        ex = cfg.explain
        tasks = [make_task(model, tokenizer, parts[i], targets[i], input_ids=list(r.input_ids), score=ex.score,
                           batch_size=ex.batch_size, max_evals=ex.max_evals, seed=ex.seed + 1)
                 for i, r in zip(again, sub.itertuples())]
        new, _ = explain_tasks(tasks, ex.method, desc="explain baseline (noise floor)")
        for i, e in zip(again, new):
            rerun[i] = e
    save_explanations(store, "02_baseline_rerun", rerun, rows["example_id"].tolist(), "baseline_rerun",
                      {"seed": cfg.explain.seed + 1, "re_explained": len(again), "copied_deterministic": len(rows) - len(again)})


# -- stage 3 ----------------------------------------------------------------------------------------
def adapt_stage(cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[Any]]:
    """Stage 3: zero-shot, few-shot and fine-tuned conditions, each explained like the baseline."""
    store = open_store(cfg)
    data = store.read_parquet(DATASET)
    rows = explain_rows(store)
    train = data[data["split"] == "train"].reset_index(drop=True)
    base = store.read_parquet("02_generations.parquet")
    base_targets = {int(r.example_id): list(r.explained_ids) for r in base.itertuples()}
    results, tables = {}, []
    for condition in cfg.adapt.conditions:
        with store.timed(f"adapt:{condition}") as info:
            cond_model, parts = _condition_setup(cfg, store, condition, model, tokenizer, rows, train, info)
            own = generations_table(cond_model, tokenizer, rows, parts, condition, cfg)
            targets = _condition_targets(cfg, tokenizer, rows, own, base_targets)
            gens = generations_table(cond_model, tokenizer, rows, parts, condition, cfg, explained=targets) \
                if cfg.explain.target != "own" else own
            gens["generated_text"], gens["generated_ids"] = own["generated_text"], own["generated_ids"]
            gens["generated_tokens"], gens["label_match"] = own["generated_tokens"], own["label_match"]
            tables.append(gens)
            results[condition], _ = _explain_condition(cfg, store, cond_model, tokenizer, rows, parts, targets,
                                                       f"03_{condition}", condition, cfg.explain.seed)
            info["accuracy"] = float(np.nanmean(own["label_match"])) if own["label_match"].notna().any() else None
    if tables:
        store.write_parquet(pd.concat(tables, ignore_index=True), "03_generations.parquet")
    return results


def _condition_targets(cfg, tokenizer, rows, own, base_targets) -> list[list[int]]:
    if cfg.explain.target == "own":
        return [list(g) for g in own["generated_ids"]]
    if cfg.explain.target == "reference":
        return [_target_ids(tokenizer, t) for t in rows["target_text"]]
    return [base_targets[int(i)] for i in rows["example_id"]]


def _condition_setup(cfg, store, condition, model, tokenizer, rows, train, info):
    if condition == "zero_shot":
        return model, condition_parts(cfg, rows, tokenizer, instruction=cfg.adapt.instruction)
    if condition == "few_shot":
        from .fewshot import select_demonstrations

        demos = select_demonstrations(train, cfg.adapt.k_shot, seed=cfg.data.seed,
                                      exclude_ids=rows["example_id"].tolist())
        info["demonstrations"] = [asdict(d) for d in demos]
        return model, condition_parts(cfg, rows, tokenizer, instruction=cfg.adapt.instruction, demonstrations=demos)
    if condition == "finetuned":
        from .finetune import evaluate_task, finetune

        labels = sorted({t for t in train["target_text"].dropna()}) if cfg.data.label_column else None
        held_out = rows if len(rows) >= 2 else train.tail(cfg.adapt.finetune.n_eval)
        before = evaluate_task(model, tokenizer, held_out, labels=labels)
        result = finetune(model, tokenizer, train, cfg.adapt.finetune, seed=cfg.data.seed,
                          out_dir=store.path("adapters"))
        after = evaluate_task(result.model, tokenizer, held_out, labels=labels)
        summary = {"before": before, "after": after, "losses": result.losses, "steps": result.steps,
                   "seconds": result.seconds, "method": cfg.adapt.finetune.method}
        from .store import write_json

        write_json(summary, store.path("03_finetune.json"))
        store.record("03_finetune.json")
        info.update(task_metric_before=before, task_metric_after=after, steps=result.steps)
        return result.model, base_parts(rows)
    raise ValueError(condition)


# -- stage 4 ----------------------------------------------------------------------------------------
def compare_stage(cfg: RunConfig) -> pd.DataFrame:
    """Stage 4: overlap metrics, noise floor, statistics, figures, ``report.html``."""
    from .compare import run_compare
    from .report import write_report

    store = open_store(cfg)
    with store.timed("compare"):
        summary = run_compare(store.dir, cfg.compare)
        write_report(store.dir, cfg.compare)
    return summary


# -- all ----------------------------------------------------------------------------------------------
def run(cfg: RunConfig, stages: Sequence[str] = STAGES) -> RunStore:
    """Run the named stages in order, loading the model once."""
    model = tokenizer = None
    needs_model = any(s in stages for s in ("preprocess", "explain", "adapt"))
    if needs_model:
        model, tokenizer = load_model(cfg.model.spec, device=cfg.model.device, dtype=cfg.model.dtype,
                                      trust_remote_code=cfg.model.trust_remote_code)
    for stage in stages:
        log.info("stage %s", stage)
        if stage == "preprocess":
            preprocess_stage(cfg, tokenizer)
        elif stage == "explain":
            explain_stage(cfg, model, tokenizer)
        elif stage == "adapt":
            adapt_stage(cfg, model, tokenizer)
        elif stage == "compare":
            compare_stage(cfg)
        else:
            raise ValueError(f"unknown stage {stage!r}")
    return RunStore(cfg.run_dir)


def load_condition(run_dir, condition: str, *, trust_pickle: bool = False):
    """The stored explanations of ``condition`` (``baseline``, ``zero_shot`` …): ``(example_ids, explanations)``."""
    stem = {"baseline": "02_baseline", "baseline_rerun": "02_baseline_rerun"}.get(condition, f"03_{condition}")
    return load_explanations(RunStore(run_dir), stem, trust_pickle=trust_pickle)
