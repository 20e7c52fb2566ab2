"""The stages' functions (:data:`shapshift.stages.TABLE` names them) and ``run()``, the one stage runner.

Stage artifacts (in ``config.run_dir``):
1. ``01_dataset.parquet``
2. ``02_generations.parquet``, ``02_baseline.{pkl,parquet}``, ``02_baseline_rerun.{pkl,parquet}`` (noise floor)
3. ``03_<condition>.{pkl,parquet}``, ``03_generations.parquet``, ``adapters/``, ``03_finetune.json``
4. ``04_overlap.parquet``, ``04_summary.csv``, ``figures/*.png``, ``report.html``
and ``manifest.json`` (config, versions, timings, sha256 of each artifact). The conditions of
stage 3 and their set-up live in :mod:`shapshift.conditions`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import conditions, parallel, stages
from .backends.capabilities import capabilities
from .backends.load import load_config_model
from .conditions import BASELINE, NOISE_FLOOR
from .config import RunConfig, resolve_masking
from .errors import ArtifactError, DataError
from .explainers import REGISTRY, PrefixReuse, explain_tasks, make_task
from .explainers.costs import announce_cost
from .explainers.registry import masking_used
from .generation import generate
from .prompting import PromptParts, encode_prompt, encode_targets, token_strings
from .scoring import make_scorer
from .stages import STAGES, invalidate_from, stage_fingerprint, stage_record, stage_status
from .store import (
    ExampleCheckpoint,
    RunStore,
    load_explanations,
    package_versions,
    save_explanations,
)

log = logging.getLogger(__name__)

DATASET = "01_dataset.parquet"


def open_store(cfg: RunConfig) -> RunStore:
    store = RunStore(cfg.run_dir)
    store.dir.mkdir(parents=True, exist_ok=True)
    store.update_manifest(config=cfg.to_dict(), versions=package_versions(), model_spec=cfg.model.spec)
    return store


# -- stage 1 ----------------------------------------------------------------------------------------
def preprocess_stage(cfg: RunConfig, model: Any, tokenizer: PreTrainedTokenizerBase, *, resume: bool = True
                     ) -> pd.DataFrame:
    """Stage 1: load, check the prompt formats on training rows and pick one (:mod:`shapshift.formats`), format,
    tokenise, split; writes ``01_dataset.parquet``; the format and the check's table go to the manifest."""
    from .data import preprocess

    store = open_store(cfg)
    df, report = preprocess(cfg.data, tokenizer, model=model)  # errors here leave the run folder untouched
    check_training_rows(cfg, int((df["split"] == "train").sum()))
    invalidate_from(store, "explain", because="preprocess is redone")
    with store.timed("preprocess", **stage_record(cfg, "preprocess")) as info:
        store.write_parquet(df, DATASET)
        info.update(asdict(report), complete=True)
    log.info("preprocess: %d examples (%s)", len(df), report.splits)
    return df


def check_training_rows(cfg: RunConfig, n_train: int) -> None:
    """Refuse a split that leaves too few train rows for the chosen conditions (before any model time)."""
    needs = {c: conditions.get(c, cfg).train_rows(cfg) for c in cfg.adapt.conditions}
    need = max(needs.values(), default=0)
    if n_train < need:
        which = [c for c, n in needs.items() if n > 0]
        raise DataError(f"After putting data.n_explain={cfg.data.n_explain} examples into the explain split, "
                        f"{n_train} row(s) are left for training, but {' and '.join(which)} need(s) at least {need}.",
                        "Lower data.n_explain (or adapt.k_shot), raise data.max_rows, or leave those conditions "
                        "out of adapt.conditions.")


def explain_rows(store: RunStore) -> pd.DataFrame:
    df = store.read_parquet(DATASET)
    return df[df["split"] == "explain"].reset_index(drop=True)


def reference_targets(tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, parts: list[PromptParts]) -> list[list[int] | None]:
    """The reference target text of each row, tokenised alone (warns when that differs in context)."""
    prompts = [encode_prompt(p, tokenizer, input_ids=list(r.input_ids)).ids for p, r in zip(parts, rows.itertuples())]
    return encode_targets(tokenizer, list(rows["target_text"]), prompts)


def _explain_condition(cfg: RunConfig, store: RunStore, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       rows: pd.DataFrame, parts: list[PromptParts], targets: list[list[int]], stem: str,
                       condition: str, seed: int, resume: bool = False,
                       method: str | None = None, contrasts: list[list[int]] | None = None) -> tuple[list[Any], list[dict]]:
    """Explain every row, saving each example as soon as it is done; a resumed run skips those.

    ``method``: the estimator (default ``explain.method``; a lens writes ``<stem>__<lens>``, see :func:`_explain_lenses`).
    ``contrasts``: each row's foil under ``explain.target: contrastive`` (:func:`choose_contrasts`).
    """
    ex = cfg.explain
    method = method or ex.method
    fingerprint = f"{stage_fingerprint(cfg, stages.stage_of(stem).name)}-{stem}-{seed}"
    checkpoint = ExampleCheckpoint(store.path(f".partial/{stem}"), fingerprint)
    done = _open_checkpoint(checkpoint, resume)
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


def _open_checkpoint(checkpoint: ExampleCheckpoint, resume: bool) -> dict[int, tuple[Any, dict]]:
    """The examples done already: the main process starts (or clears) the checkpoint, the others then read it
    (every process sees the same examples, so their shares of the rest are the same split)."""
    done = checkpoint.start(resume) if parallel.is_main() else {}
    parallel.wait()
    if not parallel.is_main():
        done = checkpoint.load()
    parallel.wait()  # before any process saves a new example
    return done


def _explain_lenses(cfg: RunConfig, store: RunStore, model, tokenizer, rows, parts, targets, stem: str, condition: str,
                    resume: bool = False) -> None:
    """Explain the condition again with each lens of ``explain.methods`` (after the SHAP method): ``<stem>__<lens>``."""
    from .lenses import lens_stem

    for lens in cfg.explain.all_methods[1:]:
        _explain_condition(cfg, store, model, tokenizer, rows, parts, targets, lens_stem(stem, lens), condition,
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
    parts = conditions.base_parts(rows)
    if not resume:
        invalidate_from(store, "explain", because="explain starts afresh", partial=True)
    invalidate_from(store, "adapt", because="explain is redone")
    with store.timed("explain", **stage_record(cfg, "explain")) as info:
        reference = contrasts = None
        if cfg.explain.target in ("reference", "contrastive"):
            reference = reference_targets(tokenizer, rows, parts)
            if any(t is None or not t for t in reference):
                raise DataError(f"explain.target is {cfg.explain.target!r} but some examples have no target text.",
                                "Set data.target_column, or explain.target to baseline.")
        # explained_logprob is the log-prob of the text explained (the reference when there is one)
        gens = parallel.from_main(generate_and_score, model, tokenizer, rows, parts, "baseline", cfg,
                                  explained=reference)
        if cfg.explain.target == "contrastive":
            contrasts = parallel.from_main(choose_contrasts, model, tokenizer, rows, parts, task_labels(store))
            gens["contrast_ids"] = contrasts
        targets = reference if reference is not None else [list(g) for g in gens["generated_ids"]]
        store.write_parquet(gens, "02_generations.parquet")
        base = conditions.get(BASELINE)
        exps, stats = _explain_condition(cfg, store, model, tokenizer, rows, parts, targets, base.stem, base.name,
                                         cfg.explain.seed, resume, contrasts=contrasts)
        _explain_lenses(cfg, store, model, tokenizer, rows, parts, targets, base.stem, base.name, resume)
        if cfg.explain.noise_floor:
            _noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats, resume, contrasts)
        matches = gens["label_match"].dropna()
        info.update(n_examples=len(rows), accuracy=float(matches.mean()) if len(matches) else None,
                    evals=int(sum(st["n_evals"] for st in stats)), complete=True)
    stages.clear_partial(store, "explain")
    return exps


def task_labels(store: RunStore) -> list[str]:
    """The labels of the run's task as its targets write them (the distinct reference texts of labelled rows)."""
    data = store.read_parquet(DATASET)
    return sorted(set(data.loc[data["label"].notna(), "target_text"].dropna().astype(str)))


def _noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats, resume, contrasts=None) -> None:
    floor = conditions.get(NOISE_FLOOR)
    again = [i for i, st in enumerate(stats) if not REGISTRY[st["method"]].deterministic]
    rerun = list(exps)
    if again:
        sub = rows.iloc[again].reset_index(drop=True)
        new, _ = _explain_condition(cfg, store, model, tokenizer, sub, [parts[i] for i in again],
                                    [targets[i] for i in again], floor.stem, floor.name, cfg.explain.seed + 1, resume,
                                    contrasts=[contrasts[i] for i in again] if contrasts else None)
        for i, e in zip(again, new):
            rerun[i] = e
    save_explanations(store, floor.stem, rerun, rows["example_id"].tolist(), floor.name,
                      {"seed": cfg.explain.seed + 1, "re_explained": len(again),
                       "copied_deterministic": len(rows) - len(again)})


# -- stage 3 ----------------------------------------------------------------------------------------
def adapt_stage(cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *,
                resume: bool = False) -> dict[str, list[Any]]:
    """Stage 3: each condition of ``adapt.conditions`` (:mod:`shapshift.conditions`), explained like the baseline."""
    store = open_store(cfg)
    data = store.read_parquet(DATASET)
    rows = data[data["split"] == "explain"].reset_index(drop=True)
    base = store.read_parquet("02_generations.parquet")
    base_targets = {int(r.example_id): list(r.explained_ids) for r in base.itertuples()}
    contrasts = [list(base.set_index("example_id").at[int(i), "contrast_ids"]) for i in rows["example_id"]] \
        if cfg.explain.target == "contrastive" else None
    if not resume:
        invalidate_from(store, "adapt", because="adapt starts afresh", partial=True)
    invalidate_from(store, "compare", because="adapt is redone")
    results, tables = {}, []
    with store.timed("adapt", **stage_record(cfg, "adapt")) as stage_info:
        for condition in cfg.adapt.conditions:
            cond = conditions.get(condition, cfg)
            with store.timed(f"adapt:{condition}") as info:
                cond_model, parts = cond.setup(conditions.Setup(cfg, store, model, tokenizer, data, rows, info, resume))
                own = parallel.from_main(generate_and_score, cond_model, tokenizer, rows, parts, condition, cfg)
                targets = _condition_targets(cfg, tokenizer, rows, parts, own, base_targets)
                gens = own if cfg.explain.target == "own" else parallel.from_main(
                    generate_and_score, cond_model, tokenizer, rows, parts, condition, cfg, explained=targets)
                gens[["generated_text", "generated_ids", "generated_tokens", "label_match"]] = \
                    own[["generated_text", "generated_ids", "generated_tokens", "label_match"]]
                tables.append(gens)
                results[condition], _ = _explain_condition(cfg, store, cond_model, tokenizer, rows, parts, targets,
                                                           cond.stem, condition, cfg.explain.seed, resume,
                                                           contrasts=contrasts)
                _explain_lenses(cfg, store, cond_model, tokenizer, rows, parts, targets, cond.stem, condition, resume)
                matches = own["label_match"].dropna()
                info["accuracy"] = float(matches.mean()) if len(matches) else None
        if tables:
            store.write_parquet(pd.concat(tables, ignore_index=True), "03_generations.parquet")
        stage_info["complete"] = True
    stages.clear_partial(store, "adapt")
    return results


def _condition_targets(cfg, tokenizer, rows, parts, own, base_targets) -> list[list[int]]:
    if cfg.explain.target == "own":
        return [list(g) for g in own["generated_ids"]]
    if cfg.explain.target in ("reference", "contrastive"):
        return reference_targets(tokenizer, rows, parts)
    return [base_targets[int(i)] for i in rows["example_id"]]


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
            files = {c: f"{conditions.get(c, cfg).stem}.parquet" for c in cfg.adapt.conditions}
            absent = [c for c, f in files.items() if f not in recorded or not store.path(f).exists()]
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
ModelLoader = Callable[[RunConfig], tuple[Any, Any]]


def load_run_model(cfg: RunConfig) -> tuple[Any, Any]:
    """The config's model and tokenizer (``model`` section), loaded afresh."""
    m = cfg.model
    # under a launcher each process takes its own device (cuda:<local rank>), not every one the first GPU
    device = (parallel.device() if m.device in ("auto", "cuda") else None) or m.device
    return load_config_model(m, cfg.run_dir, device=device, dtype=m.dtype, trust_remote_code=m.trust_remote_code)


def run(cfg: RunConfig, stages_to_run: Sequence[str] = STAGES, *, fresh: bool = False, resume: bool = True,
        loader: ModelLoader | None = None, replace: bool = False) -> RunStore:
    """Run the named stages in order, loading the model once (when a stage needs it), reusing what is still valid.

    The one stage runner: the CLI verbs and the notebooks call it. By default a stage that finished
    under the same settings (its artifacts intact) is reused, an unfinished one keeps the examples it
    had explained, and a stage whose settings changed is redone; each decision is logged with its
    reason, and redoing a stage removes (and lists) the later stages' results made from its old
    output. A stage whose inputs (an earlier stage's artifacts) are missing stops with an error that
    says which stage to run first. Finished explain or adapt results made under other settings are never
    removed silently: the run refuses (an :class:`ArtifactError` naming the changed settings and how to keep
    them: another run name) unless ``replace`` (CLI ``--replace``) or ``fresh``. ``fresh``: remove the named
    stages' results (and every later stage's, unfinished examples included) and start over; ``resume=False`` is its old spelling.
    ``loader``: ``cfg -> (model, tokenizer)`` (default :func:`load_run_model`; the notebooks pass one
    that keeps the model between cells).
    """
    fresh = fresh or not resume
    todo = [stages.get(s) for s in stages_to_run]
    store = RunStore(cfg.run_dir)
    new_folder = not store.dir.exists()
    stages.check_before_running(store, cfg, [s.name for s in todo], replace=fresh or replace or new_folder)
    try:
        _run_stages(cfg, store, todo, fresh=fresh, loader=loader)
    except BaseException:
        if new_folder:  # a run that failed before it wrote anything leaves no folder holding only manifest.json
            stages.remove_if_empty(store)
        raise
    return store


def _run_stages(cfg: RunConfig, store: RunStore, todo: list, *, fresh: bool, loader: ModelLoader | None) -> None:
    """:func:`run`'s body: the stages in order, each reused or run."""
    if fresh and store.dir.exists() and todo:
        first = min(todo, key=stages.TABLE.index).name
        invalidate_from(store, first, because=f"--fresh: starting over from stage {first}", partial=True)
    parallel.wait()  # under a launcher: every process sees the folder as the main process left it
    model = tokenizer = None
    redone = False
    for stage in sorted(todo, key=stages.TABLE.index):
        ok, why = stage_status(store, cfg, stage.name)
        if ok and not redone:
            log.info("stage %s: reused (%s)", stage.name, why)
            continue
        if not redone:
            stages.require_inputs(cfg, stage.name)
        log.info("stage %s: running (%s)", stage.name, "an earlier stage was redone" if ok else why)
        redone = True
        start = time.perf_counter()
        function = globals()[stage.function]
        if not (stage.shared or parallel.is_main()):
            pass  # a stage that does not split its examples runs on the main process alone
        elif not stage.needs_model:
            function(cfg)
        else:
            if model is None:
                model, tokenizer = (loader or load_run_model)(cfg)
            function(cfg, model, tokenizer, resume=True)
        log.info("stage %s: finished in %.0f s; results in %s", stage.name, time.perf_counter() - start, cfg.run_dir)
        if capabilities(model).remote:  # what the server was asked for: requests, retries, tokens
            store.update_manifest(remote_usage=model.usage_dict())
        parallel.wait()


def load_condition(run_dir, condition: str, *, trust_pickle: bool = False):
    """The stored explanations of ``condition`` (``baseline``, ``zero_shot`` …): ``(example_ids, explanations)``."""
    return load_explanations(RunStore(run_dir), conditions.stem(condition), trust_pickle=trust_pickle)
