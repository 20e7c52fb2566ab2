"""Did a condition change what the model relies on? Per-feature changes tested against the estimator's noise.

Overlap metrics (:mod:`shapshift.overlap`) say how similar two explanations are; this module says
whether they differ by more than the estimators' own noise, feature by feature, and how similar they
would be without that noise.

For one example and a pair of conditions ``a`` (the baseline) and ``b``, with each feature's value
aggregated over the generated tokens (``sum``, or ``mean_abs``) and its standard error ``se``:

* ``delta = value_b - value_a`` and ``se_delta = sqrt(se_a^2 + se_b^2)``. The pipeline explains every
  condition with the baseline's seed, so the two estimates share their coalitions (common random
  numbers) and their errors are positively correlated: the true error of ``delta`` is at most this,
  so the test is conservative. Over output tokens, a feature's standard error is bounded by the sum
  of its per-token standard errors (exact whatever their correlation).
* A two-sided z-test per feature, Benjamini-Hochberg over the features of the example at level
  ``fdr``. A feature **changed beyond noise** when it passes that test *and* its change is at least
  ``min_change`` times the example's largest ``|value|`` (in either condition) (so a deterministic estimator, whose
  standard errors are 0, does not call a rounding-size change real). An example changed when at least
  one feature did.
* Reliability of an explanation: the expected Spearman correlation of ``|value|`` between two
  independent runs of its estimator, simulated from its values and standard errors (1 for exact
  values) — the same precision the estimators run to. The agreement of two conditions corrected for attenuation (Spearman 1904) is their
  observed Spearman divided by ``sqrt(rel_a * rel_b)``, clipped to [-1, 1]: the agreement that
  noise-free explanations would show.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sstats

from . import aggregation as agg
from . import overlap as ov
from .conditions import NOISE_FLOOR, label
from .explanation import Explanation
from .stats import bootstrap_mean_ci, expected_rank_agreement

log = logging.getLogger(__name__)

#: Columns of the per-feature table (``04_changes.parquet``).
CHANGE_COLUMNS = ["example_id", "condition_a", "condition_b", "in_pos", "in_token", "value_a", "value_b", "delta",
                  "se_delta", "z", "p", "p_bh", "changed"]
#: Columns of the per-example table (``04_verdicts.parquet``).
VERDICT_COLUMNS = ["example_id", "condition_a", "condition_b", "n_features", "changed", "n_changed", "top_moved",
                   "spearman", "reliability_a", "reliability_b", "spearman_corrected", "ranking_changed", "scale_ratio"]


#: A sampled value's standard error at or below this fraction of its example's largest is rounding, not a
#: measured error (issue 28: a 2e-16 error gave z = -1e15): the feature is left untested.
UNTESTABLE_SE = 1e-6


def aggregate_with_error(exp: Any, how: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """One value and one standard error per feature, ``(n_in,)`` each, aggregated over the output tokens by the
    aggregation ``how`` (:mod:`shapshift.aggregation`, which says how an error propagates and why).

    Explanations without ``error_std`` (exact values) have zero error. A sampled value whose standard error is
    unknown (NaN) or no more than rounding (:data:`UNTESTABLE_SE` of the example's largest) has no error to test
    against: its aggregate error is NaN, and :func:`feature_changes` leaves it untested. All errors 0: exact
    values, testable.
    """
    exp = Explanation.coerce(exp)
    values = exp.values
    err = np.zeros_like(values) if exp.error_std is None else exp.error_std
    largest = np.nanmax(err) if np.isfinite(err).any() else np.nan
    if not (largest == 0):  # sampled values (or unknown errors): a zero or NaN error is not a measured one
        err = np.where(np.isfinite(err) & (err > UNTESTABLE_SE * largest), err, np.nan)
    return agg.aggregate(values, how), agg.aggregate_error(err, how)


def reliability(values: np.ndarray, se: np.ndarray, *, seed: int = 0) -> float:
    """Expected Spearman ρ of ``|value|`` between two independent estimates with these standard errors, ``(n,)`` each.

    The precision the estimators run to (:func:`shapshift.stats.expected_rank_agreement`): 1.0 when every ``se`` is 0.
    """
    return expected_rank_agreement(np.asarray(values, float)[:, None], np.asarray(se, float)[:, None], seed=seed)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (monotone, capped at 1)."""
    return sstats.false_discovery_control(np.asarray(p, float), method="bh") if len(p) else np.asarray(p, float)


def feature_changes(exp_a: Any, exp_b: Any, *, how: str = "sum", fdr: float = 0.05,
                    min_change: float = 0.1) -> pd.DataFrame:
    """Per feature: both values, the change, its standard error, z, p, BH-adjusted p, and ``changed``."""
    a, se_a = aggregate_with_error(exp_a, how)
    b, se_b = aggregate_with_error(exp_b, how)
    return change_table(a, se_a, b, se_b, Explanation.coerce(exp_a).features, fdr=fdr, min_change=min_change)


def share_changes(exp_a: Any, exp_b: Any, *, how: str = "sum", fdr: float = 0.05, min_change: float = 0.1) -> pd.DataFrame:
    """:func:`feature_changes` of each feature's *share* of the explanation (its value over the sum of ``|value|``):
    a change of the ranking, not of the scale. A model that became sure of its answer has smaller values
    everywhere; its shares change only where the features' order of importance did. The standard errors are
    scaled by the same totals (their own error is left out: a first-order approximation)."""
    a, se_a = aggregate_with_error(exp_a, how)
    b, se_b = aggregate_with_error(exp_b, how)
    ta, tb = float(np.abs(a).sum()) or 1.0, float(np.abs(b).sum()) or 1.0
    return change_table(a / ta, se_a / ta, b / tb, se_b / tb, [str(i) for i in range(a.size)], fdr=fdr,
                        min_change=min_change)


def change_table(a: np.ndarray, se_a: np.ndarray, b: np.ndarray, se_b: np.ndarray, tokens: list[str], *,
                 fdr: float = 0.05, min_change: float = 0.1) -> pd.DataFrame:
    """The tests of :func:`feature_changes` on values ``a``, ``b`` with standard errors ``se_a``, ``se_b`` (``(n,)`` each)."""
    delta = b - a
    se = np.sqrt(se_a ** 2 + se_b ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, delta / se, np.where(delta == 0, 0.0, np.sign(delta) * np.inf))
    untested = np.isnan(se)  # a sampled value without a measured error: z and p are NaN, never "changed"
    z = np.where(untested, np.nan, z)
    if untested.any():
        log.warning("%d of %d features have a sampled value without a measured standard error (zero or unknown): "
                    "they are not tested for a change (z and p NaN)", int(untested.sum()), a.size)
    p = np.where(untested, np.nan, 2 * sstats.norm.sf(np.abs(np.nan_to_num(z))))
    p_bh = np.full_like(p, np.nan)
    p_bh[~untested] = benjamini_hochberg(p[~untested])
    scale = float(max(np.max(np.abs(a)), np.max(np.abs(b)))) if a.size else 0.0
    changed = ~untested & (np.nan_to_num(p_bh, nan=1.0) <= fdr) & (np.abs(delta) >= min_change * scale) & (np.abs(delta) > 0)
    return pd.DataFrame({"in_pos": np.arange(a.size), "in_token": tokens, "value_a": a, "value_b": b,
                         "delta": delta, "se_delta": se, "z": z, "p": p, "p_bh": p_bh, "changed": changed})


def _largest_for_unknown(se: np.ndarray) -> np.ndarray:
    """Unknown errors (NaN) as the largest known one, for the reliability (conservative); all unknown: NaN."""
    return np.where(np.isnan(se), np.nanmax(se) if np.isfinite(se).any() else np.nan, se)


def example_verdict(exp_a: Any, exp_b: Any, *, how: str = "sum", fdr: float = 0.05, min_change: float = 0.1,
                    n_top: int = 3, seed: int = 0) -> tuple[dict[str, Any], pd.DataFrame]:
    """The verdict on one example (a dict of :data:`VERDICT_COLUMNS` but the ids) and its feature table."""
    table = feature_changes(exp_a, exp_b, how=how, fdr=fdr, min_change=min_change)
    a, se_a = aggregate_with_error(exp_a, how)
    b, se_b = aggregate_with_error(exp_b, how)
    se_a, se_b = _largest_for_unknown(se_a), _largest_for_unknown(se_b)
    rho = ov.spearman(a, b)
    rel_a, rel_b = reliability(a, se_a, seed=seed), reliability(b, se_b, seed=seed + 1)
    denom = math.sqrt(rel_a * rel_b) if rel_a > 0 and rel_b > 0 else math.nan
    shares = share_changes(exp_a, exp_b, how=how, fdr=fdr, min_change=min_change)
    moved = table[table["changed"]].sort_values("delta", key=np.abs, ascending=False)
    top = ", ".join(f"{t.strip() or repr(t)} ({d:+.2f})" for t, d in zip(moved["in_token"][:n_top], moved["delta"][:n_top]))
    verdict = {"n_features": int(a.size), "changed": bool(table["changed"].any()),
               "n_changed": int(table["changed"].sum()), "top_moved": top, "spearman": rho,
               "reliability_a": rel_a, "reliability_b": rel_b,
               "spearman_corrected": float(np.clip(rho / denom, -1, 1)) if np.isfinite(denom) and np.isfinite(rho)
               else math.nan,
               "ranking_changed": bool(shares["changed"].any()),
               "scale_ratio": float(np.abs(b).sum() / np.abs(a).sum()) if np.abs(a).sum() > 0 else math.nan}
    return verdict, table


def compare_changes(exps_a: dict[int, Any], exps_b: dict[int, Any], pair: tuple[str, str], *, how: str = "sum",
                    fdr: float = 0.05, min_change: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Verdicts (:data:`VERDICT_COLUMNS`) and feature changes (:data:`CHANGE_COLUMNS`) over the common examples."""
    verdicts, changes = [], []
    for ex_id in sorted(set(exps_a) & set(exps_b)):
        verdict, table = example_verdict(exps_a[ex_id], exps_b[ex_id], how=how, fdr=fdr, min_change=min_change,
                                         seed=seed + ex_id)
        verdicts.append({"example_id": ex_id, "condition_a": pair[0], "condition_b": pair[1], **verdict})
        changes.append(table.assign(example_id=ex_id, condition_a=pair[0], condition_b=pair[1]))
    verdict_df = pd.DataFrame(verdicts, columns=VERDICT_COLUMNS)
    change_df = pd.concat(changes, ignore_index=True)[CHANGE_COLUMNS] if changes else pd.DataFrame(columns=CHANGE_COLUMNS)
    return verdict_df, change_df


def summarize_verdicts(verdicts: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per condition pair: examples changed beyond noise (count, share with a 95 % Wilson interval), mean
    observed and attenuation-corrected Spearman with CIs, mean reliabilities, and one ``sentence``."""
    rows = []
    for (ca, cb), g in verdicts.groupby(["condition_a", "condition_b"], sort=False):
        k, n = int(g["changed"].sum()), len(g)
        # a proportion's interval (Wilson): a bootstrap of 0 of 4 would claim [0, 0]
        share = sstats.binomtest(k, n).proportion_ci(method="wilson") if n else None
        rho = bootstrap_mean_ci(g["spearman"].to_numpy(float), n_bootstrap=n_bootstrap, seed=seed)
        corr = bootstrap_mean_ci(g["spearman_corrected"].to_numpy(float), n_bootstrap=n_bootstrap, seed=seed)
        row = {"condition_a": ca, "condition_b": cb, "n": n, "n_changed": k,
               "n_ranking_changed": int((g["changed"] & g["ranking_changed"]).sum()),
               "median_scale_ratio": float(g["scale_ratio"].median()),
               "share_changed": k / n if n else math.nan, "share_ci_low": share.low if n else math.nan,
               "share_ci_high": share.high if n else math.nan,
               "spearman": rho.mean, "spearman_ci_low": rho.low, "spearman_ci_high": rho.high,
               "spearman_corrected": corr.mean, "corrected_ci_low": corr.low, "corrected_ci_high": corr.high,
               "reliability_a": float(g["reliability_a"].mean()), "reliability_b": float(g["reliability_b"].mean())}
        row["sentence"] = verdict_sentence(row)
        rows.append(row)
    return pd.DataFrame(rows)


def _interval(low: float, high: float) -> str:
    return f"95 % CI {low:.2f} to {high:.2f}" if np.isfinite(low) and np.isfinite(high) else "no interval with so few examples"


def verdict_sentence(row: dict[str, Any]) -> str:
    """One sentence a reader can act on: what changed, how sure, against which noise."""
    a, b, n, k = label(row["condition_a"]), label(row["condition_b"]), int(row["n"]), int(row["n_changed"])
    who = "The baseline's rerun with another seed (the noise floor)" if row["condition_b"] == NOISE_FLOOR \
        else f"The {b} condition"
    if n == 0:
        return f"{b} vs {a}: no example was explained under both."
    r = int(row.get("n_ranking_changed", k))
    how = (f", {r} of them in the ranking of the features" if k else "") + (
        f" and {k - r} in scale only (the same order, values {row['median_scale_ratio']:.2g}× the baseline's in the "
        "median example)" if k and r < k else "")
    head = (f"{who} changed what the model relies on in {k} of {n} examples beyond the estimator's noise{how}"
            if k else f"{who} did not change what the model relies on beyond the estimator's noise in any of {n} examples")
    agree = row["spearman_corrected"]
    tail = (f"; its importance rankings agree with the {a}'s at Spearman {row['spearman']:.2f} "
            f"({agree:.2f} corrected for estimator noise, {_interval(row['corrected_ci_low'], row['corrected_ci_high'])})"
            if np.isfinite(agree) else "")
    return f"{head} (share {row['share_changed']:.2f}, {_interval(row['share_ci_low'], row['share_ci_high'])}){tail}."
