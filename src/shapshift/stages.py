"""The four stages, defined once: what each reads, writes and needs, and whether its results are still valid.

:data:`TABLE` is read by the pipeline (:func:`shapshift.pipeline.run`), the CLI (one verb per stage),
the notebooks (``shapshift.form`` and ``shapshift.display``) and the manifest checks below. A stage's
artifacts are the files of the run folder whose names start with one of its ``writes`` prefixes
(``02_`` … and its folders), so a condition or lens added later needs no entry here.

This module imports no model code (the notebooks and the CLI read it before a model is loaded).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig
    from .store import RunStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage of a run.

    ``sections``: the config sections whose change alters its results (and every later stage's);
    ``form_sections``: the sections its notebook takes from its own form once the run folder has a
    manifest (None: all, the first notebook starts the run); ``requires``: artifacts it reads (written
    by earlier stages); ``writes``: name prefixes of the files and folders it writes;
    ``function``: its function in :mod:`shapshift.pipeline`, called as ``f(cfg, model, tokenizer, resume=)``
    (``needs_model`` False: ``f(cfg)``); ``shared``: under ``accelerate launch`` every process runs it
    and explains its share of the examples (else the main process alone runs it, see :mod:`shapshift.parallel`).
    """

    name: str
    title: str
    sections: tuple[str, ...]
    form_sections: tuple[str, ...] | None
    requires: tuple[str, ...]
    writes: tuple[str, ...]
    notebook: str
    function: str
    needs_model: bool = True
    shared: bool = False


TABLE: tuple[Stage, ...] = (
    Stage("preprocess", "load, format, tokenise and split the data", ("model", "data"), None, (),
          ("01_",), "01_preprocess.ipynb", "preprocess_stage"),
    Stage("explain", "generate and explain the baseline (and its noise-floor rerun)",
          ("model", "data", "generation", "explain"), ("generation", "explain"), ("01_dataset.parquet",),
          ("02_",), "02_baseline_shap.ipynb", "explain_stage", shared=True),
    Stage("adapt", "prompt and fine-tune: explain every condition of adapt.conditions",
          ("model", "data", "generation", "explain", "adapt"), ("adapt",),
          ("01_dataset.parquet", "02_generations.parquet"), ("03_", "adapters/"), "03_finetune_and_prompt.ipynb",
          "adapt_stage", shared=True),
    Stage("compare", "overlap metrics, verdicts against the noise, figures and report.html",
          ("model", "data", "generation", "explain", "adapt", "compare"), ("compare",), ("02_baseline.parquet",),
          ("04_", "figures/", "report.html"), "04_explanation_overlap.ipynb", "compare_stage", needs_model=False),
)
STAGES: tuple[str, ...] = tuple(s.name for s in TABLE)
_BY_NAME = {s.name: s for s in TABLE}


def get(name: str) -> Stage:
    """The stage called ``name`` (a clear error for an unknown one)."""
    if name not in _BY_NAME:
        raise ConfigError(f"Unknown stage {name!r}.", f"Use one of {', '.join(STAGES)}.")
    return _BY_NAME[name]


def later(name: str) -> list[Stage]:
    """``name``'s stage and every stage after it."""
    return list(TABLE[STAGES.index(get(name).name):])


def stage_of(artifact: str) -> Stage | None:
    """The stage that writes ``artifact`` (a name relative to the run folder), if any."""
    return next((s for s in TABLE if artifact.startswith(s.writes)), None)


# -- settings -----------------------------------------------------------------------------------------
def stage_fingerprint(cfg: RunConfig, stage: str) -> str:
    return cfg.fingerprint(*get(stage).sections)


def stage_record(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """What the manifest keeps of a stage's settings: the fingerprint and the sections it hashes."""
    data = cfg.to_dict()
    return {"fingerprint": stage_fingerprint(cfg, stage), "settings": {s: data[s] for s in get(stage).sections}}


def changed_settings(before: dict[str, Any], cfg: RunConfig, stage: str) -> list[str]:
    """The ``section.key`` names whose value differs between a stage's recorded settings and ``cfg``."""
    now = cfg.to_dict()
    out = []
    for section in get(stage).sections:
        old, new = before.get(section, {}), now[section]
        if not isinstance(old, dict) or not isinstance(new, dict):
            if old != new:
                out.append(section)
            continue
        out += [f"{section}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return out


# -- status -------------------------------------------------------------------------------------------
def partial_folders(store: RunStore, stages: Sequence[Stage]) -> list[str]:
    """The per-example checkpoint folders (``.partial/<stem>``) of unfinished stages."""
    root = store.path(".partial")
    if not root.is_dir():
        return []
    return [f".partial/{p.name}" for p in sorted(root.iterdir()) if p.is_dir() and p.name.startswith(
        tuple(w for s in stages for w in s.writes))]


def stage_status(store: RunStore, cfg: RunConfig, stage: str) -> tuple[bool, str]:
    """``(reusable, why)``: whether ``stage`` finished under the same config with its artifacts intact."""
    info = store.manifest().get("stages", {}).get(stage)
    if not info:
        kept = sum(len(list(store.path(f).glob("example-*.npz"))) for f in partial_folders(store, [get(stage)]))
        return False, (f"it was interrupted last time ({kept} finished example(s) kept)" if kept
                       else "not run yet in this folder")
    if info.get("fingerprint") != stage_fingerprint(cfg, stage):
        changed = changed_settings(info.get("settings") or {}, cfg, stage) if info.get("settings") else []
        return False, ("its settings changed: " + ", ".join(changed)) if changed else "its settings changed"
    if not info.get("complete"):
        return False, "it did not finish last time (the examples it had finished are kept)"
    upto = tuple(w for s in TABLE[: STAGES.index(stage) + 1] for w in s.writes)
    try:  # its own artifacts and its inputs (the earlier stages' artifacts)
        for name in store.manifest().get("artifacts", {}):
            if name.startswith(upto):
                store.verify(name)
    except ArtifactError as exc:
        return False, exc.problem
    return True, "finished under the same settings, artifacts intact"


#: Stages whose finished results cost model time: a re-run under other settings refuses to remove them
#: unless asked (``replace``; CLI ``--replace``), and says how to keep them (another run name).
COSTLY = ("explain", "adapt")


def finished_work_at_risk(store: RunStore, cfg: RunConfig, stage_names: Sequence[str]) -> tuple[str, list[str], list[str]] | None:
    """What running ``stage_names`` under ``cfg`` would remove of finished costly work: ``(stage, changed keys,
    finished costly stages)``, or None. The first stage to redo is the one whose settings changed; redoing it
    removes it and every later stage (:func:`invalidate_from`)."""
    recorded = store.manifest().get("stages", {})
    for name in sorted(stage_names, key=STAGES.index):
        info = recorded.get(name)
        ok, _ = stage_status(store, cfg, name)
        if ok:
            continue
        if not info or info.get("fingerprint") == stage_fingerprint(cfg, name):
            return None  # not run, interrupted or damaged: nothing finished under other settings is at stake
        finished = [s.name for s in later(name) if s.name in COSTLY and recorded.get(s.name, {}).get("complete")]
        changed = changed_settings(info.get("settings") or {}, cfg, name) if info.get("settings") else []
        return (name, changed, finished) if finished else None
    return None


def check_before_running(store: RunStore, cfg: RunConfig, stage_names: Sequence[str], *, replace: bool) -> None:
    """Refuse, before any work, to run ``stage_names`` when a lens's package is missing (what to install) or when it
    would remove finished costly results made under other settings, unless ``replace`` (how to keep them)."""
    if any(name in COSTLY for name in stage_names):
        from .explainers.registry import check_installed

        check_installed(cfg.explain.all_methods)
    at_risk = None if replace else finished_work_at_risk(store, cfg, stage_names)
    if at_risk:
        stage, changed, finished = at_risk
        raise ArtifactError(
            f"The run folder {store.dir} holds finished {' and '.join(finished)} results made under other settings "
            f"({', '.join(changed) or 'settings of stage ' + stage} changed); running stage {stage} now would remove them.",
            f"To keep them, run under another name (--name {cfg.name}_2, or --set name=...: a new folder under "
            f"{cfg.output_dir}); to replace them on purpose, add --replace (in a notebook: resume off).")


def remove_if_empty(store: RunStore) -> None:
    """Remove the run folder when it holds nothing but ``manifest.json`` (a run that failed before writing)."""
    if store.writer and store.dir.is_dir() and {p.name for p in store.dir.iterdir()} <= {"manifest.json"}:
        shutil.rmtree(store.dir, ignore_errors=True)


def stage_done(store: RunStore, cfg: RunConfig, stage: str) -> bool:
    """Whether ``stage`` finished under the same config and its recorded artifacts are intact."""
    return stage_status(store, cfg, stage)[0]


def require_inputs(cfg: RunConfig, stage: str) -> None:
    """Raise a clear :class:`ArtifactError` when an earlier stage's output is missing from the run folder."""
    missing = [n for n in get(stage).requires if not (cfg.run_dir / n).exists()]
    if not missing:
        return
    before = [s for s in TABLE[: STAGES.index(stage)] if any(n.startswith(s.writes) for n in missing)]
    names = " and ".join(s.name for s in before) or "the earlier stages"
    nbs = " and ".join(s.notebook for s in before) or "the earlier notebooks"
    which = f"stages {names} write" if len(before) > 1 else f"stage {names} writes"
    raise ArtifactError(
        f"The run folder {cfg.run_dir} lacks {', '.join(missing)}, which {which} ({nbs}).",
        f"Run {which.rsplit(' ', 1)[0]} first with the same output_dir and name (`shapshift run` runs every stage; in the "
        f"notebooks run {nbs} first). In Colab every notebook runs on its own machine: set use_drive to True in "
        "all of them so that they share the run folder on Google Drive.")


# -- invalidation -------------------------------------------------------------------------------------
def invalidate_from(store: RunStore, stage: str, *, because: str | None = None, partial: bool = False) -> list[str]:
    """Delete the artifacts of ``stage`` and every later stage: a fresh stage never mixes with stale results.

    Returns the names removed (logged with ``because`` when any). ``partial``: also the unfinished
    examples of those stages (``.partial/``).
    """
    from .store import write_json

    if not store.writer:  # one of several processes, not the main one: the main process removes them
        return []
    stages = later(stage)
    prefixes = tuple(w for s in stages for w in s.writes)
    man = store.manifest()
    removed = []
    if store.dir.is_dir():
        for path in sorted(store.dir.iterdir()):
            name = path.name + ("/" if path.is_dir() else "")
            if not name.startswith(prefixes):
                continue
            removed.append(name)
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for name in [n for n in man.get("artifacts", {}) if n.startswith(prefixes)]:
        man["artifacts"].pop(name)
    for key in [k for k in man.get("stages", {}) if k.split(":")[0] in {s.name for s in stages}]:
        man["stages"].pop(key)
    if partial:
        for folder in partial_folders(store, stages):
            removed.append(folder + "/")
            shutil.rmtree(store.path(folder), ignore_errors=True)
    if store.path("manifest.json").exists():
        write_json(man, store.path("manifest.json"))
    if removed and because:
        log.info("%s, so the results made from the old ones are removed: %s", because, ", ".join(removed))
    return removed


def clear_partial(store: RunStore, stage: str) -> None:
    """Drop a finished stage's per-example checkpoints (kept until the whole stage is done)."""
    if not store.writer:
        return
    for folder in partial_folders(store, [get(stage)]):
        shutil.rmtree(store.path(folder), ignore_errors=True)
    root = store.path(".partial")
    if root.is_dir() and not any(root.iterdir()):  # no stage left unfinished: no empty folder either
        root.rmdir()
