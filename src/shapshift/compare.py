"""Stage 4: explanation overlap between conditions, per example, with CIs and the noise floor.

Reads the stored explanations of each condition (``02_baseline``, ``02_baseline_rerun``,
``03_zero_shot``, ``03_few_shot``, ``03_finetuned``; any but the baseline may be absent) and writes

* ``04_overlap.parquet`` — one row per example × condition pair × scope × output position × metric
  × k: ``example_id, condition_a, condition_b, scope, out_pos, metric, k_spec, k, k_used,
  n_features, value`` (``scope="aggregate"``: the values summed/averaged over generated tokens,
  ``out_pos`` missing; ``scope="token"``: one generated token; ``k_spec`` labels the k: ``"3"`` or
  ``"20%"`` (k = ceil(0.2 n) per example) or ``"all"`` for metrics over all features);
* ``04_overlap_curves.parquet`` — the top-k overlap for every k = 1..n of the aggregated values:
  ``example_id, condition_a, condition_b, k, n_features, value``;
* ``04_summary.csv`` — per condition pair × scope × metric × k_spec: ``mean, ci_low, ci_high, n``
  (percentile bootstrap over examples; a token-scope value is first averaged over the example's
  output positions), and for pairs against the baseline ``noise_floor_mean``, ``delta_vs_floor``,
  ``wilcoxon_p`` (paired over examples, two-sided) and ``wilcoxon_p_holm`` (Holm-adjusted over the
  conditions of one metric × k × scope), with a ``note``.

The noise floor is the overlap of the baseline with itself explained again under another seed
(``baseline_rerun``): what overlap looks like when nothing but estimator noise changed. Without a
rerun, the floor is NaN — unless the baseline's estimator is known to be deterministic (its registry
entry says so: exact Shapley values, hierarchical, the lenses), whose rerun would be identical: then
the floor is exactly 1 for every example.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import aggregation as agg
from . import conditions as conds
from . import movement, shift
from . import overlap as ov
from .conditions import BASELINE, NOISE_FLOOR
from .config import CompareConfig
from .errors import ArtifactError
from .explanation import Explanation
from .stats import bootstrap_mean_ci, holm, wilcoxon_paired
from .store import RunStore, atomic_write_bytes, load_explanations, stored_methods

log = logging.getLogger(__name__)

OVERLAP_FILE = "04_overlap.parquet"
#: Per-feature changes and per-example verdicts against the estimator's noise (:mod:`shapshift.shift`).
CHANGES_FILE = "04_changes.parquet"
MOVEMENT_FILE = "04_movement.parquet"
VERDICTS_FILE = "04_verdicts.parquet"
VERDICT_SUMMARY_FILE = "04_verdicts.csv"
CURVES_FILE = "04_overlap_curves.parquet"
SUMMARY_FILE = "04_summary.csv"
#: The manifest's ``stages`` entry of :func:`run_compare` (time, conditions, pairs, notes).
STAGE = "compare_overlap"
OVERLAP_COLUMNS = ["example_id", "condition_a", "condition_b", "scope", "out_pos", "metric", "k_spec", "k",
                   "k_used", "n_features", "value"]
SUMMARY_COLUMNS = ["condition_a", "condition_b", "scope", "metric", "k_spec", "k_mean", "mean", "ci_low", "ci_high",
                   "n", "noise_floor_mean", "delta_vs_floor", "wilcoxon_p", "wilcoxon_p_holm", "note"]

Explanations = dict[int, Explanation]  # example_id -> its explanation


# -- loading --------------------------------------------------------------------------------------
def available_conditions(store: RunStore) -> list[str]:
    """The conditions whose explanations exist in the run folder: registered ones in registry order
    (:mod:`shapshift.conditions`), then a user's own (``03_<name>``) by name."""
    found = [c for c in conds.REGISTRY if store.path(f"{conds.stem(c)}.parquet").exists()
             or store.path(f"{conds.stem(c)}.pkl").exists()]
    own = {p.stem[3:] for p in [*store.dir.glob("03_*.parquet"), *store.dir.glob("03_*.pkl")]
           if "__" not in p.stem and p.stem != "03_generations"} - set(found)
    return found + sorted(own)


def load_condition(store: RunStore, condition: str) -> Explanations:
    """``{example_id: Explanation}`` of one condition (values ``(n_in, n_out)``)."""
    ids, exps = load_explanations(store, conds.stem(condition))
    return {int(i): e for i, e in zip(ids, exps, strict=True)}


def baseline_is_deterministic(store: RunStore) -> bool | None:
    """Whether the baseline's estimator gives seed-independent values; None when the run does not say.

    The methods are the baseline table's ``method`` column (the estimator that produced each example,
    :func:`shapshift.store.stored_methods`), else the manifest's ``config.explain.method`` (unless
    ``"auto"``); the estimators' registry says whether each is deterministic (None for an unknown one).
    """
    from .explainers.registry import is_deterministic

    methods = stored_methods(store, conds.stem(BASELINE))
    if not methods:
        method = store.manifest().get("config", {}).get("explain", {}).get("method")
        methods = [method] if isinstance(method, str) and method != "auto" else []
    return is_deterministic(methods)


def condition_pairs(conditions: list[str]) -> list[tuple[str, str]]:
    """The pairs compared: baseline vs each condition, each condition vs each other, baseline vs rerun.

    The rerun is paired with the baseline only (it is the noise floor, not a condition).
    """
    others = [c for c in conditions if c not in (BASELINE, NOISE_FLOOR)]
    pairs = [(BASELINE, c) for c in others] if BASELINE in conditions else []
    pairs += [(a, b) for i, a in enumerate(others) for b in others[i + 1:]]
    if BASELINE in conditions and NOISE_FLOOR in conditions:
        pairs.append((BASELINE, NOISE_FLOOR))
    return pairs


# -- per example ----------------------------------------------------------------------------------
def _common_ids(exps_a: Explanations, exps_b: Explanations, pair: tuple[str, str]) -> list[int]:
    ids = sorted(set(exps_a) & set(exps_b))
    missing = sorted(set(exps_a) ^ set(exps_b))
    if missing:
        log.warning("%s vs %s: %d example(s) explained in only one of them are skipped: %s",
                    *pair, len(missing), missing[:10])
    return ids


def _check_features(ex_id: int, exp_a: Explanation, exp_b: Explanation, pair: tuple[str, str]) -> None:
    na, nb = len(exp_a.features), len(exp_b.features)
    if na != nb:
        raise ArtifactError(
            f"Example {ex_id} has {na} input tokens in {pair[0]} but {nb} in {pair[1]}: overlap needs the same features.",
            "Every condition must explain the tokens of the example's own input; re-run the explain stages.")
    if exp_a.features != exp_b.features:
        log.warning("Example %d: the input tokens of %s and %s differ in text; positions are compared.", ex_id, *pair)


def compare_pair(exps_a: Explanations, exps_b: Explanations, pair: tuple[str, str], cfg: CompareConfig, *,
                 top_fraction: float = ov.TOP_FRACTION, rbo_p: float = ov.RBO_P) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and overlap curves of one condition pair over their common examples.

    Returns ``(rows, curves)``: ``rows`` with :data:`OVERLAP_COLUMNS`, ``curves`` with
    ``example_id, condition_a, condition_b, k, n_features, value`` (top-k overlap of the aggregated
    values for k = 1..n).
    """
    rows: list[dict[str, Any]] = []
    curves = []
    for ex_id in _common_ids(exps_a, exps_b, pair):
        ea, eb = exps_a[ex_id], exps_b[ex_id]
        _check_features(ex_id, ea, eb, pair)
        rows += [{"example_id": ex_id, **r} for r in ov.explanation_rows(
            ea, eb, cfg.ks, how=cfg.aggregate, top_fraction=top_fraction, rbo_p=rbo_p)]
        curve = ov.overlap_curve(agg.aggregate(ea, cfg.aggregate), agg.aggregate(eb, cfg.aggregate))
        curves.append(pd.DataFrame({"example_id": ex_id, "k": np.arange(1, curve.size + 1), "n_features": curve.size,
                                    "value": curve}))
    table = pd.DataFrame(rows, columns=["example_id", *ov.COMPARE_COLUMNS])
    curv = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["example_id", "k", "n_features", "value"])
    for df in (table, curv):
        df.insert(1, "condition_a", pair[0])
        df.insert(2, "condition_b", pair[1])
    return table[OVERLAP_COLUMNS], curv


# -- summary --------------------------------------------------------------------------------------
_KEYS = ["condition_a", "condition_b", "scope", "metric", "k_spec"]


def per_example(overlap: pd.DataFrame) -> pd.DataFrame:
    """One value per example × pair × scope × metric × k_spec (token scope: mean over output positions).

    Columns: the keys, ``example_id``, ``k`` (mean k of the example), ``value``.
    """
    df = overlap.assign(k=overlap["k"].astype("float64"))
    return (df.groupby([*_KEYS, "example_id"], sort=False, dropna=False)
            .agg(k=("k", "mean"), value=("value", "mean")).reset_index())


def _floor_values(ex: pd.DataFrame, deterministic: bool | None) -> tuple[pd.DataFrame | None, str]:
    """Per-example noise-floor values (``scope, metric, k_spec, example_id, floor``) and a note."""
    rerun = ex[(ex["condition_a"] == BASELINE) & (ex["condition_b"] == NOISE_FLOOR)]
    if not rerun.empty:
        return (rerun[["scope", "metric", "k_spec", "example_id", "value"]].rename(columns={"value": "floor"}),
                "noise floor: baseline vs baseline_rerun")
    if deterministic:
        return None, "noise floor: deterministic estimator, exactly 1 by construction (no rerun needed)"
    return None, "noise floor: NaN, no baseline_rerun in this run (set explain.noise_floor=true)"


def summarize(overlap: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0,
              deterministic: bool | None = None) -> pd.DataFrame:
    """The summary table (:data:`SUMMARY_COLUMNS`) of a ``04_overlap`` table; see the module docstring.

    ``noise_floor_mean`` is the mean of the floor over its own examples (the same number as the
    baseline-vs-rerun row); the Wilcoxon test pairs the examples that both have.
    """
    ex = per_example(overlap)
    floor, floor_note = _floor_values(ex, deterministic)
    floor_means: dict[tuple[str, str, str], float] = {}
    if floor is not None:
        ex = ex.merge(floor, on=["scope", "metric", "k_spec", "example_id"], how="left")
        floor_means = floor.groupby(["scope", "metric", "k_spec"])["floor"].mean().to_dict()
    elif deterministic:
        ex["floor"] = 1.0
    rows = []
    for keys, g in ex.groupby(_KEYS, sort=False):
        row = dict(zip(_KEYS, keys, strict=True))
        ci = bootstrap_mean_ci(g["value"].to_numpy(), n_bootstrap=n_bootstrap, seed=seed)
        row.update(k_mean=float(g["k"].mean()) if g["k"].notna().any() else np.nan,
                   mean=ci.mean, ci_low=ci.low, ci_high=ci.high, n=ci.n,
                   noise_floor_mean=np.nan, wilcoxon_p=np.nan, note="")
        if row["condition_a"] == BASELINE and row["condition_b"] == NOISE_FLOOR:
            row["note"] = "this row is the noise floor (baseline explained twice)"
        elif row["condition_a"] == BASELINE:
            row["note"] = floor_note
            if "floor" in g:
                row["noise_floor_mean"] = floor_means.get(keys[2:], 1.0 if floor is None else np.nan)
                row["wilcoxon_p"] = wilcoxon_paired(g["value"].to_numpy(), g["floor"].to_numpy())
        rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c not in ("delta_vs_floor", "wilcoxon_p_holm")])
    out["delta_vs_floor"] = out["mean"] - out["noise_floor_mean"]
    out["wilcoxon_p_holm"] = np.nan
    for _, idx in out.groupby(["scope", "metric", "k_spec"], sort=False).groups.items():
        out.loc[idx, "wilcoxon_p_holm"] = holm(out.loc[idx, "wilcoxon_p"].to_numpy())
    return out[SUMMARY_COLUMNS]


# -- the stage ------------------------------------------------------------------------------------
def run_compare(run_dir: str | Path, cfg: CompareConfig | None = None) -> pd.DataFrame:
    """Compare every condition pair in ``run_dir``; write the stage-4 artifacts; return the summary.

    Writes ``04_overlap.parquet``, ``04_overlap_curves.parquet`` and ``04_summary.csv`` atomically
    and records their sha256 in ``manifest.json`` (with the stage's time, pairs and notes under
    ``stages.compare_overlap``). Top-k metrics use ``cfg.ks`` plus k = 20 % of the features (rounded up,
    at least 1) per example; RBO uses p = 0.9 (``cfg.rbo_p`` / ``cfg.top_fraction`` / ``cfg.seed``
    are honoured where the config has them). Raises :class:`ArtifactError` without a baseline.
    """
    cfg = cfg or CompareConfig()
    cfg.validate()
    store = RunStore(run_dir)
    conditions = available_conditions(store)
    if BASELINE not in conditions:
        raise ArtifactError(f"No baseline explanations ({conds.stem(BASELINE)}.parquet) in {store.dir}.",
                            "Run the explain stage first (`shapshift explain`).")
    top_fraction = float(getattr(cfg, "top_fraction", ov.TOP_FRACTION))
    rbo_p = float(getattr(cfg, "rbo_p", ov.RBO_P))
    seed = int(getattr(cfg, "seed", 0))
    pairs = condition_pairs(conditions)
    with store.timed(STAGE, conditions=conditions, pairs=[list(p) for p in pairs], config=asdict(cfg)) as info:
        loaded = {c: load_condition(store, c) for c in conditions}
        frames, curves = [], []
        for pair in pairs:
            rows, curv = compare_pair(loaded[pair[0]], loaded[pair[1]], pair, cfg, top_fraction=top_fraction, rbo_p=rbo_p)
            frames.append(rows)
            curves.append(curv)
            log.info("compared %s vs %s on %d examples", *pair, rows["example_id"].nunique())
        overlap = _typed(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=OVERLAP_COLUMNS))
        curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(
            columns=["example_id", "condition_a", "condition_b", "k", "n_features", "value"])
        deterministic = baseline_is_deterministic(store) if NOISE_FLOOR not in conditions else None
        summary = summarize(overlap, n_bootstrap=cfg.n_bootstrap, seed=seed, deterministic=deterministic)
        verdicts, changes, verdict_summary = compare_to_baseline(loaded, cfg)
        moved = movement.movement(changes, user_groups=getattr(cfg, "word_groups", None), n_bootstrap=cfg.n_bootstrap,
                                  seed=seed)
        store.write_parquet(moved, MOVEMENT_FILE)
        info["movement"] = movement_sentences(moved, store)
        store.write_parquet(overlap, OVERLAP_FILE)
        store.write_parquet(curves_df, CURVES_FILE)
        store.write_parquet(changes, CHANGES_FILE)
        store.write_parquet(verdicts, VERDICTS_FILE)
        for name, table in ((SUMMARY_FILE, summary), (VERDICT_SUMMARY_FILE, verdict_summary)):
            atomic_write_bytes(store.path(name), table.to_csv(index=False).encode())
            store.record(name)
        info["verdicts"] = verdict_summary["sentence"].tolist() if len(verdict_summary) else []
        planned = (store.manifest().get("config") or {}).get("adapt", {}).get("conditions")
        info["notes"] = run_notes(conditions, deterministic, planned, store.manifest().get("explain_stats"))
        info["n_examples"] = int(overlap["example_id"].nunique()) if len(overlap) else 0
    for note in info["notes"]:
        log.info("compare: %s", note)
    return summary


def movement_sentences(moved: pd.DataFrame, store: RunStore) -> list[str]:
    """How each condition (not the noise floor) moved importance: one sentence each (:func:`movement.answer_sentence`)."""
    score = (store.manifest().get("config") or {}).get("explain", {}).get("score", "log_prob")
    unit = "nats" if score == "log_prob" else "log-odds"
    names = [c for c in dict.fromkeys(moved["condition"]) if c != NOISE_FLOOR]
    return [movement.answer_sentence(moved, c, conds.label(c), unit=unit) for c in conds.ordered(names)]


def compare_to_baseline(loaded: dict[str, Explanations], cfg: CompareConfig) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                      pd.DataFrame]:
    """Each condition (and the rerun, as a check of false alarms) against the baseline, feature by feature.

    Returns ``(verdicts, changes, summary)``: :data:`shift.VERDICT_COLUMNS` per example,
    :data:`shift.CHANGE_COLUMNS` per feature, and :func:`shift.summarize_verdicts` per condition.
    """
    verdicts, changes = [], []
    for pair in condition_pairs(list(loaded)):
        if pair[0] != BASELINE:
            continue
        v, c = shift.compare_changes(loaded[pair[0]], loaded[pair[1]], pair, how=cfg.aggregate, fdr=cfg.fdr,
                                     min_change=cfg.min_change, seed=cfg.seed)
        verdicts.append(v)
        changes.append(c)
    verdicts_df = pd.concat(verdicts, ignore_index=True) if verdicts else pd.DataFrame(columns=shift.VERDICT_COLUMNS)
    changes_df = pd.concat(changes, ignore_index=True) if changes else pd.DataFrame(columns=shift.CHANGE_COLUMNS)
    summary = shift.summarize_verdicts(verdicts_df, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    for sentence in summary.get("sentence", []):
        log.info("compare: %s", sentence)
    return verdicts_df, changes_df, summary


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.astype({"example_id": "int64", "out_pos": "Int64", "k": "Int64", "k_used": "Int64",
                    "n_features": "int64", "value": "float64"})
    for col in ("condition_a", "condition_b", "scope", "metric", "k_spec"):
        df[col] = df[col].astype(str)
    return df.reset_index(drop=True)


def run_notes(conditions: list[str], deterministic: bool | None, planned: list[str] | None = None,
              explain_stats: dict[str, list[dict]] | None = None) -> list[str]:
    """Plain-language notes on what the run could and could not compare.

    ``planned``: the conditions the run was configured with (``adapt.conditions``); a condition left
    out of them on purpose is not reported missing. None: every condition is expected.
    ``explain_stats``: the manifest's per-condition, per-example stats of the explain stages (``levels``
    says how many features it valued inside the groups it refined).
    """
    notes = []
    whole = [(st["n_features"] - st["features_refined"], st["n_features"])
             for per in (explain_stats or {}).values() for st in per if "features_refined" in st]
    left = [(a, b) for a, b in whole if a > 0]
    if left:
        share = sum(a for a, _ in left) / sum(b for _, b in whole)
        notes.append(f"levels left groups of features whole in {len(left)} of {len(whole)} explanations "
                     f"({share:.0%} of their features): each such feature holds an even share of its group's value, "
                     "with a standard error that says its own value is unknown; raise explain.max_evals or "
                     "explain.precision to split them. The noise floor measures only the sampled part.")
    expected = [BASELINE, *(planned if planned is not None else conds.REGISTRY)]
    missing = [c for c in expected if c not in conditions and c != NOISE_FLOOR]
    if missing:
        notes.append(f"Conditions without explanations (not compared): {', '.join(missing)}.")
    if NOISE_FLOOR not in conditions:
        if deterministic:
            notes.append("No baseline rerun, but the baseline's estimator is deterministic (exact Shapley "
                         "values): a rerun would be identical, so the noise floor is exactly 1.")
        else:
            notes.append("No baseline rerun (02_baseline_rerun): the noise floor is NaN and no Wilcoxon test "
                         "against it is possible. Set explain.noise_floor=true to measure it.")
    return notes
