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

from .config import RunConfig, resolve_masking
from .errors import ArtifactError, DataError
from .explainers import REGISTRY, PrefixReuse, explain_tasks, make_task
from .explainers.registry import masking_used
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
    check_training_rows(cfg, int((df["split"] == "train").sum()))
    invalidate_from(store, "explain", because="preprocess is redone")
    with store.timed("preprocess", **stage_record(cfg, "preprocess")) as info:
        store.write_parquet(df, DATASET)
        info.update(asdict(report), complete=True)
    log.info("preprocess: %d examples (%s)", len(df), report.splits)
    return df


def check_training_rows(cfg: RunConfig, n_train: int) -> None:
    """Refuse a split that leaves too few train rows for the chosen conditions (before any model time)."""
    need = max([1 if "finetuned" in cfg.adapt.conditions else 0,
                cfg.adapt.k_shot if "few_shot" in cfg.adapt.conditions else 0])
    if n_train < need:
        which = [c for c in ("few_shot", "finetuned") if c in cfg.adapt.conditions]
        raise DataError(f"After putting data.n_explain={cfg.data.n_explain} examples into the explain split, "
                        f"{n_train} row(s) are left for training, but {' and '.join(which)} need(s) at least {need}.",
                        "Lower data.n_explain (or adapt.k_shot), raise data.max_rows, or leave those conditions "
                        "out of adapt.conditions.")


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
    "compare": ["04_overlap.parquet", "04_overlap_curves.parquet", "04_summary.csv", "04_changes.parquet",
                "04_verdicts.parquet", "04_verdicts.csv", "report.html"],
}


def stage_fingerprint(cfg: RunConfig, stage: str) -> str:
    return cfg.fingerprint(*STAGE_SECTIONS[stage])


def stage_record(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """What the manifest keeps of a stage's settings: the fingerprint and the sections it hashes."""
    data = cfg.to_dict()
    return {"fingerprint": stage_fingerprint(cfg, stage), "settings": {s: data[s] for s in STAGE_SECTIONS[stage]}}


def changed_settings(before: dict[str, Any], cfg: RunConfig, stage: str) -> list[str]:
    """The ``section.key`` names whose value differs between a stage's recorded settings and ``cfg``."""
    now = cfg.to_dict()
    out = []
    for section in STAGE_SECTIONS[stage]:
        old, new = before.get(section, {}), now[section]
        if not isinstance(old, dict) or not isinstance(new, dict):
            if old != new:
                out.append(section)
            continue
        out += [f"{section}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return out


def stage_status(store: RunStore, cfg: RunConfig, stage: str) -> tuple[bool, str]:
    """``(reusable, why)``: whether ``stage`` finished under the same config with its artifacts intact."""
    info = store.manifest().get("stages", {}).get(stage)
    if not info:
        kept = sum(len(list(store.path(f".partial/{stem}").glob("example-*.npz"))) for stem in _stage_stems([stage]))
        return False, (f"it was interrupted last time ({kept} finished example(s) kept)" if kept
                       else "not run yet in this folder")
    if info.get("fingerprint") != stage_fingerprint(cfg, stage):
        changed = changed_settings(info.get("settings") or {}, cfg, stage) if info.get("settings") else []
        return False, ("its settings changed: " + ", ".join(changed)) if changed else "its settings changed"
    if not info.get("complete"):
        return False, "it did not finish last time (the examples it had finished are kept)"
    recorded = store.manifest().get("artifacts", {})
    try:  # its own artifacts and its inputs (the earlier stages' artifacts)
        for name in [n for st in STAGES[: STAGES.index(stage) + 1] for n in STAGE_ARTIFACTS[st]]:
            if name in recorded:
                store.verify(name)
    except ArtifactError as exc:
        return False, exc.problem
    return True, "finished under the same settings, artifacts intact"


def stage_done(store: RunStore, cfg: RunConfig, stage: str) -> bool:
    """Whether ``stage`` finished under the same config and its recorded artifacts are intact."""
    return stage_status(store, cfg, stage)[0]


def invalidate_from(store: RunStore, stage: str, *, because: str | None = None, partial: bool = False) -> list[str]:
    """Delete the artifacts of ``stage`` and every later stage: a fresh stage never mixes with stale results.

    Returns the names removed (logged with ``because`` when any). ``partial``: also the unfinished
    examples of those stages (``.partial/``).
    """
    import shutil

    later = STAGES[STAGES.index(stage):]
    man = store.manifest()
    removed = []
    for st in later:
        for name in STAGE_ARTIFACTS[st]:
            if store.path(name).exists():
                removed.append(name)
            store.path(name).unlink(missing_ok=True)
            man.get("artifacts", {}).pop(name, None)
        man.get("stages", {}).pop(st, None)
    lens_files = {"explain": "02_*__*.*", "adapt": "03_*__*.*", "compare": "04_lenses*"}  # explain.methods' lenses
    for path in [p for st in later if st in lens_files for p in sorted(store.dir.glob(lens_files[st]))]:
        removed.append(path.name)
        path.unlink(missing_ok=True)
        man.get("artifacts", {}).pop(path.name, None)
    folders = [d for d, st in (("figures", "compare"), ("adapters", "adapt")) if st in later]
    if partial:
        folders += [f".partial/{stem}" for stem in _stage_stems(later)]
    for folder in folders:
        if store.path(folder).exists():
            removed.append(folder + "/")
            shutil.rmtree(store.path(folder), ignore_errors=True)
        for name in [n for n in man.get("artifacts", {}) if n.startswith(folder + "/")]:
            man["artifacts"].pop(name)
    if store.path("manifest.json").exists():
        write_json(man, store.path("manifest.json"))
    if removed and because:
        log.info("%s, so the results made from the old ones are removed: %s", because, ", ".join(removed))
    return removed


def _stage_stems(stages: Sequence[str]) -> list[str]:
    stems = {"explain": ["02_baseline", "02_baseline_rerun"],
             "adapt": [f"03_{c}" for c in ("zero_shot", "few_shot", "finetuned")]}
    return [stem for st in stages for stem in stems.get(st, [])]


def _clear_partial(store: RunStore, stage: str) -> None:
    """Drop a finished stage's per-example checkpoints (kept until the whole stage is done)."""
    import shutil

    for stem in _stage_stems([stage]):
        shutil.rmtree(store.path(f".partial/{stem}"), ignore_errors=True)


def _explain_condition(cfg: RunConfig, store: RunStore, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       rows: pd.DataFrame, parts: list[PromptParts], targets: list[list[int]], stem: str,
                       condition: str, seed: int, resume: bool = False,
                       method: str | None = None) -> tuple[list[Any], list[dict]]:
    """Explain every row, saving each example as soon as it is done; a resumed run skips those.

    ``method``: the estimator (default ``explain.method``; a lens writes ``<stem>__<lens>``, see :func:`_explain_lenses`).
    """
    ex = cfg.explain
    method = method or ex.method
    fingerprint = f"{stage_fingerprint(cfg, 'adapt' if stem.startswith('03_') else 'explain')}-{stem}-{seed}"
    checkpoint = ExampleCheckpoint(store.path(f".partial/{stem}"), fingerprint)
    done = checkpoint.start(resume)
    done = {i: v for i, v in done.items() if i in set(rows["example_id"].astype(int))}
    if done:
        log.info("%s: resuming, %d of %d examples already explained (reused: %s)", condition, len(done), len(rows),
                 ", ".join(map(str, sorted(done))))
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
                         unit=ex.unit, options=dict(ex.options))
        [exp], [stats] = explain_tasks([task], method, progress=False, reuse=reuse)
        checkpoint.save(int(r.example_id), exp, stats)
        done[int(r.example_id)] = (exp, stats)
    explanations = [done[int(i)][0] for i in rows["example_id"]]
    stats = [done[int(i)][1] for i in rows["example_id"]]
    methods = sorted({st["method"] for st in stats})
    meta = {"method": method, "methods_used": methods, "score": ex.score,
            "masking": masking_used(method, resolve_masking(ex.masking, model)),  # partition: shap's Text masker
            "max_evals": ex.max_evals, "seed": seed, "unit": ex.unit,
            "deterministic": all(REGISTRY[m].deterministic for m in methods)}
    save_explanations(store, stem, explanations, rows["example_id"].tolist(), condition, meta)
    store.update_manifest(explain_stats={stem: stats})
    return explanations, stats  # the checkpoint stays until the whole stage is done (a kill later loses nothing)


def _explain_lenses(cfg: RunConfig, store: RunStore, model, tokenizer, rows, parts, targets, stem: str, condition: str,
                    resume: bool = False) -> None:
    """Explain the condition again with each lens of ``explain.methods`` (after the SHAP method): ``<stem>__<lens>``."""
    from .lenses import lens_stem

    for lens in cfg.explain.all_methods[1:]:
        _explain_condition(cfg, store, model, tokenizer, rows, parts, targets, lens_stem(stem, lens), condition,
                           cfg.explain.seed, resume, method=lens)


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
        invalidate_from(store, "explain", because="explain starts afresh", partial=True)
    invalidate_from(store, "adapt", because="explain is redone")
    with store.timed("explain", **stage_record(cfg, "explain")) as info:
        reference = None
        if cfg.explain.target == "reference":
            reference = reference_targets(tokenizer, rows, parts)
            if any(t is None or not t for t in reference):
                raise DataError("explain.target is 'reference' but some examples have no target text.",
                                "Set data.target_column, or explain.target to baseline.")
        # explained_logprob is the log-prob of the text explained (the reference when there is one)
        gens = generations_table(model, tokenizer, rows, parts, "baseline", cfg, explained=reference)
        targets = reference if reference is not None else [list(g) for g in gens["generated_ids"]]
        store.write_parquet(gens, "02_generations.parquet")
        exps, stats = _explain_condition(cfg, store, model, tokenizer, rows, parts, targets, "02_baseline", "baseline",
                                         cfg.explain.seed, resume)
        _explain_lenses(cfg, store, model, tokenizer, rows, parts, targets, "02_baseline", "baseline", resume)
        if cfg.explain.noise_floor:
            _noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats, resume)
        matches = gens["label_match"].dropna()
        info.update(n_examples=len(rows), accuracy=float(matches.mean()) if len(matches) else None,
                    evals=int(sum(st["n_evals"] for st in stats)), complete=True)
    _clear_partial(store, "explain")
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
        invalidate_from(store, "adapt", because="adapt starts afresh", partial=True)
    invalidate_from(store, "compare", because="adapt is redone")
    results, tables = {}, []
    with store.timed("adapt", **stage_record(cfg, "adapt")) as stage_info:
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
                _explain_lenses(cfg, store, cond_model, tokenizer, rows, parts, targets, f"03_{condition}", condition,
                                resume)
                matches = own["label_match"].dropna()
                info["accuracy"] = float(matches.mean()) if len(matches) else None
        if tables:
            store.write_parquet(pd.concat(tables, ignore_index=True), "03_generations.parquet")
        stage_info["complete"] = True
    _clear_partial(store, "adapt")
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
            for name in [n for n in store.manifest().get("artifacts", {}) if n.startswith("adapters/")]:
                store.verify(name)
            info.update(task_metric_before=summary["before"], task_metric_after=summary["after"], reloaded=True)
            return load_finetuned(model, store.path("adapters"), cfg.adapt.finetune)
    before = evaluate_task(model, tokenizer, rows, labels=labels)
    result = finetune(model, tokenizer, train, cfg.adapt.finetune, seed=cfg.data.seed, out_dir=store.path("adapters"))
    store.record(*sorted(str(p.relative_to(store.dir)) for p in store.path("adapters").rglob("*") if p.is_file()))
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
def check_complete(store: RunStore, cfg: RunConfig) -> None:
    """Refuse to compare a run whose explain or adapt stage did not finish under this config.

    The error names the conditions that are missing or stale and why, so that a half-finished run
    is never summarised as if it were whole.
    """
    problems, missing = [], []
    recorded = store.manifest().get("artifacts", {})
    ok, why = stage_status(store, cfg, "explain")
    if not ok:
        problems.append(f"stage explain: {why}")
        missing.append("baseline")
    if cfg.adapt.conditions:
        ok, why = stage_status(store, cfg, "adapt")
        if not ok:
            problems.append(f"stage adapt: {why}")
            absent = [c for c in cfg.adapt.conditions
                      if f"03_{c}.parquet" not in recorded or not store.path(f"03_{c}.parquet").exists()]
            missing += absent or list(cfg.adapt.conditions)
    if problems:
        raise ArtifactError(
            f"The run in {store.dir} is incomplete, so it cannot be compared. Conditions missing or stale: "
            f"{', '.join(missing)} ({'; '.join(problems)}).",
            "Run `shapshift run` with the same config (it continues where it stopped), or leave unfinished "
            "conditions out with --set 'adapt.conditions=[...]'.")


def compare_stage(cfg: RunConfig) -> pd.DataFrame:
    """Stage 4: overlap metrics, noise floor, statistics, figures, ``report.html``."""
    from .compare import run_compare
    from .report import write_report

    store = open_store(cfg)
    check_complete(store, cfg)
    with store.timed("compare", **stage_record(cfg, "compare")) as info:
        summary = run_compare(store.dir, cfg.compare)
        if len(cfg.explain.all_methods) > 1:
            from .lenses import run_lenses

            run_lenses(store.dir, cfg.compare, cfg.explain.all_methods[1:])
        write_report(store.dir, cfg.compare)
        info["complete"] = True
    return summary


# -- all ----------------------------------------------------------------------------------------------
def run(cfg: RunConfig, stages: Sequence[str] = STAGES, *, fresh: bool = False, resume: bool = True) -> RunStore:
    """Run the named stages in order, loading the model once, and reusing what is still valid.

    By default a stage that finished under the same settings (its artifacts intact) is reused, an
    unfinished one keeps the examples it had explained, and a stage whose settings changed is redone;
    each decision is logged with its reason, and redoing a stage removes (and lists) the later stages'
    results made from its old output. ``fresh``: remove the named stages' results (and every later
    stage's, unfinished examples included) and start over. ``resume=False`` is the old spelling of
    ``fresh=True``.
    """
    fresh = fresh or not resume
    store = RunStore(cfg.run_dir)
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown stage {s!r}")
    if fresh and store.dir.exists():
        first = min(stages, key=STAGES.index)
        invalidate_from(store, first, because=f"--fresh: starting over from stage {first}", partial=True)
    model = tokenizer = None
    redone = False
    for stage in stages:
        ok, why = stage_status(store, cfg, stage)
        if ok and not redone:
            log.info("stage %s: reused (%s)", stage, why)
            continue
        log.info("stage %s: running (%s)", stage, "an earlier stage was redone" if ok else why)
        redone = True
        if stage != "compare" and model is None:
            m = cfg.model
            model, tokenizer = load_model(m.spec, device=m.device, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                                          tokenizer=m.tokenizer, served_name=m.served_name, api_key_env=m.api_key_env,
                                          concurrency=m.concurrency)
        if stage == "preprocess":
            preprocess_stage(cfg, tokenizer)
        elif stage == "explain":
            explain_stage(cfg, model, tokenizer, resume=True)
        elif stage == "adapt":
            adapt_stage(cfg, model, tokenizer, resume=True)
        else:
            compare_stage(cfg)
        if getattr(model, "is_remote", False):  # what the server was asked for: requests, retries, tokens
            store.update_manifest(remote_usage=model.usage_dict())
    return store


def load_condition(run_dir, condition: str, *, trust_pickle: bool = False):
    """The stored explanations of ``condition`` (``baseline``, ``zero_shot`` …): ``(example_ids, explanations)``."""
    stem = {"baseline": "02_baseline", "baseline_rerun": "02_baseline_rerun"}.get(condition, f"03_{condition}")
    return load_explanations(RunStore(run_dir), stem, trust_pickle=trust_pickle)
