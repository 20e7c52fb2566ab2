"""The stages' functions (:data:`shapshift.stages.TABLE` names them) and ``run()``, the one stage runner.

Stage artifacts (in ``config.run_dir``):
1. ``01_dataset.parquet``
2. ``02_generations.parquet``, ``02_baseline.{pkl,parquet}``, ``02_baseline_rerun.{pkl,parquet}`` (noise floor)
3. ``03_<condition>.{pkl,parquet}``, ``03_generations.parquet``, ``adapters/``, ``03_finetune.json``
4. ``04_overlap.parquet``, ``04_summary.csv``, ``figures/*.png``, ``report.html``
and ``manifest.json`` (config, versions, timings, sha256 of each artifact). The conditions of
stage 3 are declared in :mod:`shapshift.conditions` and set up by :mod:`shapshift.adapt`; how one condition is
explained is :mod:`shapshift.explaining`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import adapt, conditions, parallel, stages
from .backends.capabilities import capabilities
from .backends.load import load_config_model
from .compare import run_compare
from .conditions import BASELINE
from .config import RunConfig
from .data import preprocess
from .errors import ArtifactError, DataError
from .explaining import (
    DATASET,
    choose_contrasts,
    condition_targets,
    explain_condition,
    explain_lenses,
    explain_rows,
    generate_and_score,
    noise_floor,
    reference_targets,
    task_labels,
)
from .lenses import run_lenses
from .report import write_report
from .stages import STAGES, invalidate_from, stage_record, stage_status
from .store import (
    RunStore,
    load_explanations,
    package_versions,
)
from .validation import validate

log = logging.getLogger(__name__)



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
    parts = adapt.base_parts(rows)
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
        exps, stats = explain_condition(cfg, store, model, tokenizer, rows, parts, targets, base.stem, base.name,
                                         cfg.explain.seed, resume, contrasts=contrasts)
        explain_lenses(cfg, store, model, tokenizer, rows, parts, targets, base.stem, base.name, resume)
        if cfg.explain.noise_floor:
            noise_floor(cfg, store, model, tokenizer, rows, parts, targets, exps, stats, resume, contrasts)
        matches = gens["label_match"].dropna()
        info.update(n_examples=len(rows), accuracy=float(matches.mean()) if len(matches) else None,
                    evals=int(sum(st["n_evals"] for st in stats)), complete=True)
    stages.clear_partial(store, "explain")
    return exps


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
                cond_model, parts = adapt.setup_of(cond, cfg)(adapt.Setup(cfg, store, model, tokenizer, data, rows, info, resume))
                own = parallel.from_main(generate_and_score, cond_model, tokenizer, rows, parts, condition, cfg)
                targets = condition_targets(cfg, tokenizer, rows, parts, own, base_targets)
                gens = own if cfg.explain.target == "own" else parallel.from_main(
                    generate_and_score, cond_model, tokenizer, rows, parts, condition, cfg, explained=targets)
                gens[["generated_text", "generated_ids", "generated_tokens", "label_match"]] = \
                    own[["generated_text", "generated_ids", "generated_tokens", "label_match"]]
                tables.append(gens)
                results[condition], _ = explain_condition(cfg, store, cond_model, tokenizer, rows, parts, targets,
                                                           cond.stem, condition, cfg.explain.seed, resume,
                                                           contrasts=contrasts)
                explain_lenses(cfg, store, cond_model, tokenizer, rows, parts, targets, cond.stem, condition, resume)
                matches = own["label_match"].dropna()
                info["accuracy"] = float(matches.mean()) if len(matches) else None
        if tables:
            store.write_parquet(pd.concat(tables, ignore_index=True), "03_generations.parquet")
        stage_info["complete"] = True
    stages.clear_partial(store, "adapt")
    return results


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
    store = open_store(cfg)
    check_complete(store, cfg)
    with store.timed("compare", **stage_record(cfg, "compare")) as info:
        summary = run_compare(store.dir, cfg.compare)
        if len(cfg.explain.all_methods) > 1:
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
    validate(cfg)
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
