"""The four stages as plain functions of a :class:`RunConfig`, and ``run()`` for all of them.

Stage artifacts (in ``config.run_dir``):
1. ``01_dataset.parquet``
2. ``02_generations.parquet``, ``02_baseline.{pkl,parquet}``, ``02_baseline_rerun.{pkl,parquet}`` (noise floor)
3. ``03_<condition>.{pkl,parquet}``, ``03_generations.parquet``, ``adapters/``, ``03_finetune.json``
4. ``04_overlap.parquet``, ``04_summary.csv``, ``figures/*.png``, ``report.html``
and ``manifest.json`` (config, versions, timings, sha256 of each artifact).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import RunConfig
from .errors import ArtifactError, DataError
from .explainers import REGISTRY, PrefixReuse, explain_tasks, make_task
from .generation import generate
from .models import load_model, uses_chat_template
from .prompting import (
    Demonstration,
    PromptParts,
    build_prompt,
    encode_prompt,
    encode_targets,
    token_strings,
)
from .scoring import make_scorer
from .store import (
    ExampleCheckpoint,
    RunStore,
    load_explanations,
    package_versions,
    save_explanations,
    write_json,
)

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
    df, report = preprocess(cfg.data, tokenizer)  # errors here leave the run folder untouched
    invalidate_from(store, "preprocess")
    with store.timed("preprocess", fingerprint=stage_fingerprint(cfg, "preprocess")) as info:
        store.write_parquet(df, DATASET)
        info.update(asdict(report), complete=True)
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


def reference_targets(tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, parts: list[PromptParts]) -> list[list[int] | None]:
    """The reference target text of each row, tokenised alone (warns when that differs in context)."""
    prompts = [encode_prompt(p, tokenizer, input_ids=list(r.input_ids)).ids for p, r in zip(parts, rows.itertuples())]
    return encode_targets(tokenizer, list(rows["target_text"]), prompts)


#: Config sections whose change alters each stage's results (and every later stage's).
STAGE_SECTIONS = {
    "preprocess": ("model", "data"),
    "explain": ("model", "data", "generation", "explain"),
    "adapt": ("model", "data", "generation", "explain", "adapt"),
    "compare": ("model", "data", "generation", "explain", "adapt", "compare"),
}
#: Artifacts each stage writes (compare's figures and report are listed by the compare module).
STAGE_ARTIFACTS = {
    "preprocess": ["01_dataset.parquet"],
    "explain": ["02_generations.parquet", "02_baseline.parquet", "02_baseline.pkl", "02_baseline_rerun.parquet",
                "02_baseline_rerun.pkl"],
    "adapt": ["03_generations.parquet", "03_finetune.json"] + [f"03_{c}.{ext}" for c in ("zero_shot", "few_shot", "finetuned")
                                                               for ext in ("parquet", "pkl")],
    "compare": ["04_overlap.parquet", "04_overlap_curves.parquet", "04_summary.csv", "report.html"],
}


def stage_fingerprint(cfg: RunConfig, stage: str) -> str:
    return cfg.fingerprint(*STAGE_SECTIONS[stage])


def stage_done(store: RunStore, cfg: RunConfig, stage: str) -> bool:
    """Whether ``stage`` finished under the same config and its recorded artifacts are intact."""
    info = store.manifest().get("stages", {}).get(stage, {})
    if info.get("fingerprint") != stage_fingerprint(cfg, stage) or not info.get("complete"):
        return False
    recorded = store.manifest().get("artifacts", {})
    try:
        for name in STAGE_ARTIFACTS[stage]:
            if name in recorded:
                store.verify(name)
    except ArtifactError as exc:
        log.warning("%s: re-running (%s)", stage, exc.problem)
        return False
    return True


def invalidate_from(store: RunStore, stage: str) -> None:
    """Delete the artifacts of ``stage`` and every later stage: a fresh stage never mixes with stale results."""
    import shutil

    later = STAGES[STAGES.index(stage):]
    man = store.manifest()
    for st in later:
        for name in STAGE_ARTIFACTS[st]:
            store.path(name).unlink(missing_ok=True)
            man.get("artifacts", {}).pop(name, None)
        man.get("stages", {}).pop(st, None)
    if "compare" in later:
        shutil.rmtree(store.path("figures"), ignore_errors=True)
    if "adapt" in later:
        shutil.rmtree(store.path("adapters"), ignore_errors=True)
    write_json(man, store.path("manifest.json"))


def _explain_condition(cfg: RunConfig, store: RunStore, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       rows: pd.DataFrame, parts: list[PromptParts], targets: list[list[int]], stem: str,
                       condition: str, seed: int, resume: bool = False) -> tuple[list[Any], list[dict]]:
    """Explain every row, saving each example as soon as it is done; a resumed run skips those."""
    ex = cfg.explain
    fingerprint = f"{stage_fingerprint(cfg, 'adapt' if stem.startswith('03_') else 'explain')}-{stem}-{seed}"
    checkpoint = ExampleCheckpoint(store.path(f".partial/{stem}"), fingerprint)
    done = checkpoint.start(resume)
    if done:
        log.info("%s: resuming, %d of %d examples already explained", condition, len(done), len(rows))
    reuse = PrefixReuse()  # the condition's fixed context (few-shot demonstrations) runs once, not per example
    if getattr(model, "is_remote", False):
        from .remote.costs import announce_cost

        announce_cost([make_task(model, tokenizer, p, t, input_ids=list(r.input_ids), max_evals=ex.max_evals)
                       for p, t, r in zip(parts, targets, rows.itertuples()) if int(r.example_id) not in done],
                      ex.method, f"explain {condition}")
    for p, t, r in tqdm(list(zip(parts, targets, rows.itertuples())), desc=f"explain {condition}", leave=False):
        if int(r.example_id) in done:
            continue
        task = make_task(model, tokenizer, p, t, input_ids=list(r.input_ids), score=ex.score, masking=ex.masking,
                         batch_size=ex.batch_size, max_evals=ex.max_evals, seed=seed, precision=ex.precision,
                         unit=ex.unit)
        [exp], [stats] = explain_tasks([task], ex.method, progress=False, reuse=reuse)
        checkpoint.save(int(r.example_id), exp, stats)
        done[int(r.example_id)] = (exp, stats)
    explanations = [done[int(i)][0] for i in rows["example_id"]]
    stats = [done[int(i)][1] for i in rows["example_id"]]
    methods = sorted({st["method"] for st in stats})
    meta = {"method": ex.method, "methods_used": methods, "score": ex.score, "masking": ex.masking,
            "max_evals": ex.max_evals, "seed": seed, "unit": ex.unit,
            "deterministic": all(REGISTRY[m].deterministic for m in methods)}
    save_explanations(store, stem, explanations, rows["example_id"].tolist(), condition, meta)
    store.update_manifest(explain_stats={stem: stats})
    checkpoint.clear()
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
        logp = make_scorer(model, prompt, t, score="log_prob").full()
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
def explain_stage(cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                  resume: bool = False) -> list[Any]:
    """Stage 2: generate and explain the pre-trained model on the plain prompt.

    Writes ``02_generations.parquet``, ``02_baseline.{pkl,parquet}`` and, when ``explain.noise_floor``,
    ``02_baseline_rerun`` (the baseline explained again with seed + 1; an example explained by a
    deterministic estimator is copied, its floor being exactly 1). With ``resume``, examples finished
    by an interrupted run under the same config are kept and skipped.
    """
    store = open_store(cfg)
    rows = explain_rows(store)
    parts = base_parts(rows)
    if not resume:
        invalidate_from(store, "explain")
    with store.timed("explain", fingerprint=stage_fingerprint(cfg, "explain")) as info:
        gens = generations_table(model, tokenizer, rows, parts, "baseline", cfg)
        if cfg.explain.target == "reference":
            targets = reference_targets(tokenizer, rows, parts)
            if any(t is None or not t for t in targets):
                raise DataError("explain.target is 'reference' but some examples have no target text.",
                                "Set data.target_column, or explain.target to baseline.")
        else:
            targets = [list(g) for g in gens["generated_ids"]]
        gens["explained_ids"] = targets
        store.write_parquet(gens, "02_generations.parquet")
        exps, stats = _explain_condition(cfg, store, model, tokenizer, rows, parts, targets, "02_baseline", "baseline",
                                         cfg.explain.seed, resume)
        if cfg.explain.noise_floor:
            _noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats, resume)
        matches = gens["label_match"].dropna()
        info.update(n_examples=len(rows), accuracy=float(matches.mean()) if len(matches) else None,
                    evals=int(sum(st["n_evals"] for st in stats)), complete=True)
    return exps


def _noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats, resume) -> None:
    again = [i for i, st in enumerate(stats) if not REGISTRY[st["method"]].deterministic]
    rerun = list(exps)
    if again:
        sub = rows.iloc[again].reset_index(drop=True)
        new, _ = _explain_condition(cfg, store, model, tokenizer, sub, [parts[i] for i in again],
                                    [targets[i] for i in again], "02_baseline_rerun", "baseline_rerun",
                                    cfg.explain.seed + 1, resume)
        for i, e in zip(again, new):
            rerun[i] = e
    save_explanations(store, "02_baseline_rerun", rerun, rows["example_id"].tolist(), "baseline_rerun",
                      {"seed": cfg.explain.seed + 1, "re_explained": len(again),
                       "copied_deterministic": len(rows) - len(again)})


# -- stage 3 ----------------------------------------------------------------------------------------
def adapt_stage(cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                resume: bool = False) -> dict[str, list[Any]]:
    """Stage 3: zero-shot, few-shot and fine-tuned conditions, each explained like the baseline."""
    store = open_store(cfg)
    data = store.read_parquet(DATASET)
    rows = data[data["split"] == "explain"].reset_index(drop=True)
    base = store.read_parquet("02_generations.parquet")
    base_targets = {int(r.example_id): list(r.explained_ids) for r in base.itertuples()}
    if not resume:
        invalidate_from(store, "adapt")
    results, tables = {}, []
    with store.timed("adapt", fingerprint=stage_fingerprint(cfg, "adapt")) as stage_info:
        for condition in cfg.adapt.conditions:
            with store.timed(f"adapt:{condition}") as info:
                cond_model, parts = _condition_setup(cfg, store, condition, model, tokenizer, data, rows, info, resume)
                own = generations_table(cond_model, tokenizer, rows, parts, condition, cfg)
                targets = _condition_targets(cfg, tokenizer, rows, parts, own, base_targets)
                gens = own if cfg.explain.target == "own" else \
                    generations_table(cond_model, tokenizer, rows, parts, condition, cfg, explained=targets)
                gens[["generated_text", "generated_ids", "generated_tokens", "label_match"]] = \
                    own[["generated_text", "generated_ids", "generated_tokens", "label_match"]]
                tables.append(gens)
                results[condition], _ = _explain_condition(cfg, store, cond_model, tokenizer, rows, parts, targets,
                                                           f"03_{condition}", condition, cfg.explain.seed, resume)
                matches = own["label_match"].dropna()
                info["accuracy"] = float(matches.mean()) if len(matches) else None
        if tables:
            store.write_parquet(pd.concat(tables, ignore_index=True), "03_generations.parquet")
        stage_info["complete"] = True
    return results


def _condition_targets(cfg, tokenizer, rows, parts, own, base_targets) -> list[list[int]]:
    if cfg.explain.target == "own":
        return [list(g) for g in own["generated_ids"]]
    if cfg.explain.target == "reference":
        return reference_targets(tokenizer, rows, parts)
    return [base_targets[int(i)] for i in rows["example_id"]]


def _condition_setup(cfg, store, condition, model, tokenizer, data, rows, info, resume):
    if condition == "zero_shot":
        return model, condition_parts(cfg, rows, tokenizer, instruction=cfg.adapt.instruction)
    if condition == "few_shot":
        from .fewshot import shared_demonstrations

        demos = shared_demonstrations(data, cfg.adapt.k_shot, cfg.data.seed, balance=bool(cfg.data.label_column))
        info["demonstrations"] = [asdict(d) for d in demos]
        return model, condition_parts(cfg, rows, tokenizer, instruction=cfg.adapt.instruction, demonstrations=demos)
    if condition == "finetuned":
        train = data[data["split"] == "train"].reset_index(drop=True)
        return _finetuned_model(cfg, store, model, tokenizer, rows, train, info, resume), base_parts(rows)
    raise ValueError(condition)


def _finetuned_model(cfg, store, model, tokenizer, rows, train, info, resume):
    """Fine-tune (or, resuming under the same config, reload the saved adapter) and measure the task metric."""
    from .finetune import evaluate_task, finetune, load_finetuned

    labels = sorted(set(train["target_text"].dropna())) if cfg.data.label_column else None
    summary_file = store.path("03_finetune.json")
    fingerprint = stage_fingerprint(cfg, "adapt")
    if resume and summary_file.exists():
        summary = json.loads(store.verify("03_finetune.json").read_text())
        if summary.get("fingerprint") == fingerprint:
            info.update(task_metric_before=summary["before"], task_metric_after=summary["after"], reloaded=True)
            return load_finetuned(model, store.path("adapters"), cfg.adapt.finetune)
    before = evaluate_task(model, tokenizer, rows, labels=labels)
    result = finetune(model, tokenizer, train, cfg.adapt.finetune, seed=cfg.data.seed, out_dir=store.path("adapters"))
    after = evaluate_task(result.model, tokenizer, rows, labels=labels)
    summary = {"before": before, "after": after, "losses": result.losses, "steps": result.steps,
               "seconds": result.seconds, "method": cfg.adapt.finetune.method, "fingerprint": fingerprint,
               "evaluated_on": "the explain split (held out from training)"}
    write_json(summary, summary_file)
    store.record("03_finetune.json")
    info.update(task_metric_before=before, task_metric_after=after, steps=result.steps)
    log.info("fine-tuning: task metric before %s, after %s", before, after)
    return result.model


# -- stage 4 ----------------------------------------------------------------------------------------
def compare_stage(cfg: RunConfig) -> pd.DataFrame:
    """Stage 4: overlap metrics, noise floor, statistics, figures, ``report.html``."""
    from .compare import run_compare
    from .report import write_report

    store = open_store(cfg)
    with store.timed("compare", fingerprint=stage_fingerprint(cfg, "compare")) as info:
        summary = run_compare(store.dir, cfg.compare)
        write_report(store.dir, cfg.compare)
        info["complete"] = True
    return summary


# -- all ----------------------------------------------------------------------------------------------
def run(cfg: RunConfig, stages: Sequence[str] = STAGES, *, resume: bool = False) -> RunStore:
    """Run the named stages in order, loading the model once.

    ``resume``: skip stages that finished under the same config (artifacts intact), and within an
    unfinished stage keep the examples already explained.
    """
    store = RunStore(cfg.run_dir)
    todo = [s for s in stages if not (resume and stage_done(store, cfg, s))]
    for s in stages:
        if s not in todo:
            log.info("stage %s: done under the same config, skipped", s)
    model = tokenizer = None
    if any(s in todo for s in ("preprocess", "explain", "adapt")):
        m = cfg.model
        model, tokenizer = load_model(m.spec, device=m.device, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                                      tokenizer=m.tokenizer, served_name=m.served_name, api_key_env=m.api_key_env,
                                      concurrency=m.concurrency)
    for stage in todo:
        log.info("stage %s", stage)
        if stage == "preprocess":
            preprocess_stage(cfg, tokenizer)
        elif stage == "explain":
            explain_stage(cfg, model, tokenizer, resume=resume)
        elif stage == "adapt":
            adapt_stage(cfg, model, tokenizer, resume=resume)
        elif stage == "compare":
            compare_stage(cfg)
        else:
            raise ValueError(f"unknown stage {stage!r}")
        if getattr(model, "is_remote", False):  # what the server was asked for: requests, retries, tokens
            store.update_manifest(remote_usage=model.usage_dict())
    return store


def load_condition(run_dir, condition: str, *, trust_pickle: bool = False):
    """The stored explanations of ``condition`` (``baseline``, ``zero_shot`` …): ``(example_ids, explanations)``."""
    stem = {"baseline": "02_baseline", "baseline_rerun": "02_baseline_rerun"}.get(condition, f"03_{condition}")
    return load_explanations(RunStore(run_dir), stem, trust_pickle=trust_pickle)
