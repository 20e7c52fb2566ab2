"""Lens-vs-SHAP comparison (shapshift.lenses): planted agreements and shifts, and a whole run with explain.methods."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_DATA
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sstats

from shapshift.config import ExplainConfig
from shapshift.errors import ConfigError
from shapshift.explainers.registry import check_explain
from shapshift.lenses import (
    LENSES_FILE,
    LENSES_SUMMARY_FILE,
    example_rows,
    shift_to_noise,
    summarize_lenses,
)
from shapshift.store import RunStore
from shapshift.validation import load_config

KS = (1, 3)


def _row(rows, cond, kind, metric, k_spec="all"):
    [r] = [r for r in rows if r["condition"] == cond and r["kind"] == kind and r["metric"] == metric
           and r["k_spec"] == k_spec]
    return r


def test_a_lens_that_sees_the_same_shift_agrees_and_one_that_sees_none_does_not():
    rng = np.random.default_rng(0)
    base = rng.normal(size=12)
    move = np.zeros(12)
    move[[2, 7, 9]] = [4.0, -3.0, 2.5]  # fine-tuning moved three tokens
    shap = {"baseline": base, "baseline_rerun": base + rng.normal(scale=0.01, size=12), "finetuned": base + move}
    # a lens on another scale that sees the same change (monotone transform of SHAP) ...
    same = {"baseline": 3 * base + 1, "finetuned": 3 * (base + move) + 1}
    # ... and one whose explanation does not change at all
    blind = {"baseline": 3 * base + 1, "finetuned": 3 * base + 1 + 1e-9 * rng.normal(size=12)}
    good = example_rows(shap, same, "good", KS, 0.2)
    bad = example_rows(shap, blind, "bad", KS, 0.2)
    assert _row(good, "finetuned", "shift", "spearman")["value"] == pytest.approx(1.0)
    assert _row(good, "finetuned", "shift", "feature_agreement", "3")["value"] == 1.0
    assert abs(_row(bad, "finetuned", "shift", "spearman")["value"]) < 0.7
    assert _row(bad, "finetuned", "shift", "feature_agreement", "3")["value"] < 1.0
    # the floor: SHAP's shift measured from its rerun finds the same three movers; the order of the
    # unchanged tokens is the rerun's noise, so the rank agreement of all changes stays below 1
    assert _row(good, "finetuned", "shift", "feature_agreement", "3")["floor"] == 1.0
    assert 0.3 < _row(good, "finetuned", "shift", "spearman")["floor"] < 1.0
    # level agreement: the blind lens still explains each condition's baseline part
    assert _row(bad, "baseline", "agreement", "spearman")["value"] == pytest.approx(
        sstats.spearmanr(np.abs(base), np.abs(3 * base + 1)).statistic)
    [ratio] = shift_to_noise(shap)
    assert ratio["value"] > 100


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 20), st.integers(0, 10_000))
def test_shift_rank_agreement_equals_scipy_on_the_changes(n, seed):
    rng = np.random.default_rng(seed)
    shap = {"baseline": rng.normal(size=n), "few_shot": rng.normal(size=n)}
    lens = {"baseline": rng.random(n), "few_shot": rng.random(n)}
    rows = example_rows(shap, lens, "attention", KS, 0.2)
    got = _row(rows, "few_shot", "shift", "spearman")["value"]
    ref = sstats.spearmanr(shap["few_shot"] - shap["baseline"], lens["few_shot"] - lens["baseline"]).statistic
    assert got == pytest.approx(ref) or (np.isnan(got) and np.isnan(ref))
    assert np.isnan(_row(rows, "few_shot", "shift", "spearman")["floor"])  # no rerun: no floor


def test_summary_intervals_and_test_against_the_floor():
    table = pd.DataFrame({"example_id": range(8), "condition": "finetuned", "method": "attention", "kind": "shift",
                          "metric": "spearman", "k_spec": "all", "k": 5, "n_features": 5,
                          "value": np.linspace(0.1, 0.3, 8), "floor": np.full(8, 0.9)})
    [s] = summarize_lenses(table, n_bootstrap=200).to_dict("records")
    assert s["ci_low"] <= s["mean"] <= s["ci_high"] and s["mean"] == pytest.approx(0.2)
    assert s["floor_mean"] == pytest.approx(0.9) and s["delta_vs_floor"] == pytest.approx(-0.7)
    assert s["wilcoxon_p"] < 0.01 and s["n"] == 8


def test_explain_methods_is_validated():
    assert ExplainConfig().all_methods == ["auto"]
    assert ExplainConfig(methods=["auto", "attention"]).all_methods == ["auto", "attention"]
    for bad in (["attention"], ["kernel", "attention"], ["auto", "saliency"], ["auto", "attention", "attention"], []):
        with pytest.raises(ConfigError, match="explain.methods"):
            check_explain(ExplainConfig(methods=bad))


def test_a_run_with_lenses_writes_their_artifacts_tables_and_report_section(tmp_path):
    from shapshift.pipeline import STAGES, run

    cfg = load_config({
        "name": "lenses", "output_dir": str(tmp_path), "model": {"spec": "tiny-gpt-neo"},
        "data": {"source": str(DEMO_DATA), "n_explain": 3, "max_input_tokens": 8, "max_rows": 40},
        "generation": {"max_new_tokens": 2},
        "explain": {"method": "sampling", "max_evals": 24, "batch_size": 32,
                    "methods": ["sampling", "integrated_gradients", "attention"]},
        "adapt": {"conditions": ["zero_shot", "finetuned"], "k_shot": 2,
                  "finetune": {"max_steps": 1, "batch_size": 4, "max_length": 48}},
        "compare": {"n_bootstrap": 50, "n_plot_examples": 1},
    })
    run(cfg, STAGES)
    store = RunStore(cfg.run_dir)
    man = store.manifest()
    for stem in ("02_baseline", "03_zero_shot", "03_finetuned"):
        for lens in ("integrated_gradients", "attention"):
            assert f"{stem}__{lens}.parquet" in man["artifacts"]
            df = store.read_parquet(f"{stem}__{lens}.parquet")
            shap = store.read_parquet(f"{stem}.parquet")
            assert df[["example_id", "out_pos", "in_pos", "in_token"]].equals(shap[["example_id", "out_pos", "in_pos", "in_token"]])
    assert "02_baseline_rerun__attention.parquet" not in man["artifacts"]  # deterministic lenses need no rerun
    table = store.read_parquet(LENSES_FILE)
    assert set(table["method"]) == {"integrated_gradients", "attention", "shap"}
    assert set(table.loc[table["kind"] == "shift", "condition"]) == {"zero_shot", "finetuned"}
    summary = pd.read_csv(store.path(LENSES_SUMMARY_FILE))
    assert {"mean", "ci_low", "ci_high", "floor_mean", "wilcoxon_p"} <= set(summary.columns)
    report = store.path("report.html").read_text()
    assert "Do cheaper methods see the same change?" in report
    assert "integrated gradients: median gap" in report  # the completeness gap, from the run's explain_stats
    assert store.path("figures/lenses_agreement.png").exists()
    # the lens artifacts go with their stage when it is run afresh
    from shapshift.pipeline import invalidate_from

    invalidate_from(store, "adapt")
    assert not list(store.dir.glob("03_*__*")) and not store.path(LENSES_FILE).exists()
    assert store.path("02_baseline__attention.parquet").exists()
