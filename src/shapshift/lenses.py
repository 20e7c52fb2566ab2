"""Do the cheaper lenses see what SHAP sees, and the same *change*? Per condition, per lens.

A run with ``explain.methods: [<shap method>, integrated_gradients, attention, ...]`` stores each
lens's explanations of every condition beside SHAP's, as ``<stem>__<lens>.{parquet,pkl}`` (e.g.
``02_baseline__integrated_gradients.parquet``, ``03_finetuned__attention.parquet``). This module
compares them with SHAP, example by example, on the values aggregated over the generated tokens
(``compare.aggregate``):

* ``kind="agreement"``: the lens's explanation of a condition against SHAP's of the same
  condition — Spearman ρ of the importances ``|value|`` and top-k overlap;
* ``kind="shift"``: the lens's change from the baseline to a condition, ``Δ_lens = lens(c) - lens(baseline)``
  per input token, against SHAP's ``Δ_SHAP`` — Spearman ρ of the signed changes (do the tokens
  move in the same order and direction?) and top-k overlap of the tokens that moved most (|Δ|).

The noise floor of each number is SHAP's agreement with itself when only its estimation noise
differs: the baseline against its rerun (``02_baseline_rerun``) for ``agreement``, and for ``shift``
``Δ_SHAP`` against the same change measured from the rerun, ``SHAP(c) - SHAP(baseline_rerun)``.
A lens at the floor agrees with SHAP as well as SHAP agrees with itself; without a rerun the floor is
NaN. ``shift_to_noise`` (method ``shap``) says whether there is a shift to agree on at all:
``‖Δ_SHAP‖ / ‖SHAP(baseline_rerun) - SHAP(baseline)‖`` per example (large: a real change).

Writes ``04_lenses.parquet`` (one row per example × condition × lens × kind × metric × k) and
``04_lenses_summary.csv`` (means with percentile-bootstrap 95 % intervals over examples, the floor's
mean, the paired Wilcoxon p-value against the floor), through the run store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import aggregation as agg
from . import conditions
from . import overlap as ov
from .compare import available_conditions
from .conditions import BASELINE, NOISE_FLOOR
from .config import CompareConfig
from .stats import bootstrap_mean_ci, wilcoxon_paired
from .store import RunStore, atomic_write_bytes, load_explanations

log = logging.getLogger(__name__)

LENSES_FILE = "04_lenses.parquet"
LENSES_SUMMARY_FILE = "04_lenses_summary.csv"
ROW_COLUMNS = ["example_id", "condition", "method", "kind", "metric", "k_spec", "k", "n_features", "value", "floor"]
SUMMARY_COLUMNS = ["condition", "method", "kind", "metric", "k_spec", "mean", "ci_low", "ci_high", "n",
                   "floor_mean", "floor_ci_low", "floor_ci_high", "delta_vs_floor", "wilcoxon_p"]


def lens_stem(stem: str, lens: str) -> str:
    """The artifact stem of a lens's explanations of a condition: ``02_baseline`` → ``02_baseline__attention``."""
    return f"{stem}__{lens}"


def load_lens(store: RunStore, condition: str, lens: str | None = None) -> dict[int, Any]:
    """``{example_id: Explanation}`` of a condition by SHAP (``lens=None``) or by a lens; ``{}`` when not stored."""
    stem = conditions.stem(condition) if lens is None else lens_stem(conditions.stem(condition), lens)
    if not (store.path(f"{stem}.parquet").exists() or store.path(f"{stem}.pkl").exists()):
        return {}
    ids, exps = load_explanations(store, stem)
    return {int(i): e for i, e in zip(ids, exps, strict=True)}


def stored_lenses(store: RunStore) -> list[str]:
    """The lenses whose baseline explanations are in the run folder, in file-name order."""
    prefix = lens_stem(conditions.stem(BASELINE), "")
    return sorted({p.name[len(prefix):].rsplit(".", 1)[0] for p in store.dir.glob(f"{prefix}*.parquet")})


# -- per example ------------------------------------------------------------------------------------
def agreement_metrics(a: np.ndarray, b: np.ndarray, ks: Sequence[int], top_fraction: float) -> list[dict[str, Any]]:
    """The lenses' metrics of ``|a|`` and ``|b|`` (Spearman ρ, top-k overlap at each k of :func:`overlap.k_specs`); 1-D."""
    return _metrics(a, b, ks, top_fraction, by="abs")


def shift_metrics(da: np.ndarray, db: np.ndarray, ks: Sequence[int], top_fraction: float) -> list[dict[str, Any]]:
    """Spearman ρ of the signed changes ``da``, ``db`` and top-k overlap of the largest ``|change|``."""
    return _metrics(da, db, ks, top_fraction, by="signed")


def _metrics(a, b, ks, top_fraction, by: str) -> list[dict[str, Any]]:
    """The lenses' metrics (:data:`shapshift.overlap.METRICS` entries with ``in_lenses``): those over all features
    first, then those at each k."""
    n, pair = len(a), ov.Pair(np.asarray(a, float), np.asarray(b, float), by=by)
    metrics = [m for m in ov.METRICS.values() if m.in_lenses]
    out = [{"metric": m.name, "k_spec": "all", "k": n, "value": m.compute(pair, None)} for m in metrics if not m.at_k]
    for spec in ov.k_specs(ks, top_fraction):
        k = ov.fraction_k(n, top_fraction) if spec.endswith("%") else ov.clip_k(int(spec), n)
        out += [{"metric": m.name, "k_spec": spec, "k": k, "value": m.compute(pair, k)} for m in metrics if m.at_k]
    return out


def example_rows(shap: dict[str, np.ndarray], lens: dict[str, np.ndarray], lens_name: str, ks: Sequence[int],
                 top_fraction: float) -> list[dict[str, Any]]:
    """Rows of one example: ``shap``/``lens`` map condition → aggregated values ``(n_in,)`` (``baseline`` needed).

    ``shap`` may hold ``baseline_rerun`` (the floor); without it the floors are NaN.
    """
    rows = []
    base, rerun = shap[BASELINE], shap.get(NOISE_FLOOR)
    floors_level = {r["metric"] + r["k_spec"]: r["value"] for r in agreement_metrics(base, rerun, ks, top_fraction)} \
        if rerun is not None else {}
    for cond in [c for c in lens if c in shap and c != NOISE_FLOOR]:
        for r in agreement_metrics(shap[cond], lens[cond], ks, top_fraction):
            rows.append({"condition": cond, "method": lens_name, "kind": "agreement", **r,
                         "floor": floors_level.get(r["metric"] + r["k_spec"], np.nan)})
        if cond == BASELINE or BASELINE not in lens:
            continue
        d_shap, d_lens = shap[cond] - base, lens[cond] - lens[BASELINE]
        floors = {r["metric"] + r["k_spec"]: r["value"] for r in shift_metrics(
            d_shap, shap[cond] - rerun, ks, top_fraction)} if rerun is not None else {}
        for r in shift_metrics(d_shap, d_lens, ks, top_fraction):
            rows.append({"condition": cond, "method": lens_name, "kind": "shift", **r,
                         "floor": floors.get(r["metric"] + r["k_spec"], np.nan)})
    return rows


def shift_to_noise(shap: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """``‖SHAP(c) - SHAP(baseline)‖ / ‖SHAP(rerun) - SHAP(baseline)‖`` per condition (inf for a noiseless rerun)."""
    rerun = shap.get(NOISE_FLOOR)
    if rerun is None:
        return []
    noise = float(np.linalg.norm(rerun - shap[BASELINE]))
    out = []
    for cond in [c for c in shap if c not in (BASELINE, NOISE_FLOOR)]:
        size = float(np.linalg.norm(shap[cond] - shap[BASELINE]))
        ratio = size / noise if noise > 0 else (np.inf if size > 0 else np.nan)
        out.append({"condition": cond, "method": "shap", "kind": "shift", "metric": "shift_to_noise", "k_spec": "all",
                    "k": len(rerun), "value": ratio, "floor": 1.0})
    return out


def lens_table(store: RunStore, lenses: Sequence[str], cfg: CompareConfig) -> pd.DataFrame:
    """Every example's rows (:data:`ROW_COLUMNS`) for the stored conditions and the given lenses."""
    conditions = [c for c in available_conditions(store)]
    shap = {c: load_lens(store, c) for c in conditions}
    by_lens = {m: {c: load_lens(store, c, m) for c in conditions if c != NOISE_FLOOR} for m in lenses}
    rows = []
    for ex_id in sorted(shap.get(BASELINE, {})):
        s = {c: agg.aggregate(e[ex_id], cfg.aggregate) for c, e in shap.items() if ex_id in e}
        ex_rows = shift_to_noise(s)
        for m, exps in by_lens.items():
            lv = {c: agg.aggregate(e[ex_id], cfg.aggregate) for c, e in exps.items() if ex_id in e}
            if BASELINE not in lv:
                continue
            ex_rows += example_rows(s, lv, m, cfg.ks, cfg.top_fraction)
        for r in ex_rows:
            r.update(example_id=ex_id, n_features=len(s[BASELINE]))
        rows += ex_rows
    df = pd.DataFrame(rows, columns=ROW_COLUMNS)
    return df.astype({"example_id": "int64", "k": "int64", "n_features": "int64", "value": "float64", "floor": "float64"})


def summarize_lenses(table: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per condition × lens × kind × metric × k: mean [95 % bootstrap CI], the floor's, and Wilcoxon p vs the floor."""
    out = []
    keys = ["condition", "method", "kind", "metric", "k_spec"]
    for key, g in table.groupby(keys, sort=False):
        ci = bootstrap_mean_ci(g["value"].to_numpy(), n_bootstrap=n_bootstrap, seed=seed)
        fl = bootstrap_mean_ci(g["floor"].to_numpy(), n_bootstrap=n_bootstrap, seed=seed)
        out.append({**dict(zip(keys, key, strict=True)), "mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
                    "n": ci.n, "floor_mean": fl.mean, "floor_ci_low": fl.low, "floor_ci_high": fl.high,
                    "delta_vs_floor": ci.mean - fl.mean,
                    "wilcoxon_p": wilcoxon_paired(g["value"].to_numpy(), g["floor"].to_numpy())})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def run_lenses(run_dir: str | Path, cfg: CompareConfig | None = None,
               lenses: Sequence[str] | None = None) -> pd.DataFrame:
    """Compare each lens with SHAP in ``run_dir``; write ``04_lenses.parquet`` and ``04_lenses_summary.csv``.

    ``lenses``: the lenses to compare (default: those stored for the baseline). Returns the summary.
    """
    cfg = cfg or CompareConfig()
    store = RunStore(run_dir)
    lenses = list(lenses) if lenses is not None else stored_lenses(store)
    table = lens_table(store, lenses, cfg)
    summary = summarize_lenses(table, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    store.write_parquet(table, LENSES_FILE)
    atomic_write_bytes(store.path(LENSES_SUMMARY_FILE), summary.to_csv(index=False).encode())
    store.record(LENSES_SUMMARY_FILE)
    log.info("lenses: compared %s with SHAP on %d examples", ", ".join(lenses), table["example_id"].nunique())
    return summary


def read_lens_summary(run_dir: str | Path) -> pd.DataFrame | None:
    """The stored ``04_lenses_summary.csv`` (None when the run has no lenses)."""
    path = RunStore(run_dir).path(LENSES_SUMMARY_FILE)
    return pd.read_csv(path) if path.exists() else None
