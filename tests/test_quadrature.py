"""The quadrature estimator, the explain-to-precision rounds and the calibration of standard errors.

Known answers: games with interactions of order at most 2 (Shapley values in closed form), the
recorded SmolLM2 coalition tables of ``benchmarks/tables`` (exact Shapley values stored beside
them), and simulated reruns for the predicted rank agreement. No model runs except in the last test.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

import shapshift
from shapshift.config import ExplainConfig
from shapshift.errors import ConfigError
from shapshift.explainers import REGISTRY, explain_tasks, make_task
from shapshift.explainers.api import AUTO_PRECISION
from shapshift.explainers.base import ExplainTask
from shapshift.explainers.costs import round_budgets
from shapshift.explainers.exact import all_coalitions
from shapshift.explainers.precision import GROWTH, MIN_STEP, CachingScorer, explain_to_precision
from shapshift.explainers.quadrature import size_quadrature
from shapshift.explainers.registry import check_explain
from shapshift.prompting import build_prompt
from shapshift.scoring import TableScorer
from shapshift.stats import expected_rank_agreement, importance

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: log-odds under attention masking (the defaults when they were recorded), and the defaults now (log-prob, deletion)
TABLES = sorted((BENCHMARKS / "tables").glob("*.npz"))
DELETE_TABLES = sorted((BENCHMARKS / "tables_delete_log_prob").glob("*.npz"))
TABLE_SETS = {"attention_log_odds": TABLES, "delete_log_prob": DELETE_TABLES}


def table_task(table: np.ndarray, budget: int, seed: int = 0) -> ExplainTask:
    """A task of the table's features (no model); its scorer is ``TableScorer(table)``, passed explicitly."""
    n_in = int(np.log2(len(table)))
    return ExplainTask(model=None, tokenizer=None, parts=None, prompt=SimpleNamespace(input_ids=[0] * n_in),
                       target_ids=[], max_evals=budget, seed=seed)


def attribute(method: str, table: np.ndarray, budget: int, seed: int = 0):
    """``method``'s attribution of the table's game within ``budget`` evaluations."""
    return REGISTRY[method]().attribute(table_task(table, budget, seed), TableScorer(table))


def second_order_game(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Table ``(2^n, k)`` of ``c + sum a_i x_i + sum_{i<j} b_ij x_i x_j`` and its Shapley values ``a_i + sum_j b_ij / 2``."""
    a, b, c = rng.normal(size=(n, k)), np.triu(rng.normal(size=(n, n, k)).transpose(2, 0, 1), 1), rng.normal(size=k)
    x = all_coalitions(n).astype(float)
    table = c + x @ a + np.einsum("mi,kij,mj->mk", x, b, x)
    full_b = b + b.transpose(0, 2, 1)
    return table, a + full_b.sum(axis=2).T / 2


def recorded(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    d = np.load(path)
    return d["table"].astype(np.float64), d["exact"], int(d["n"])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 9), seed=st.integers(0, 1000))
def test_exact_for_second_order_games_from_the_end_sizes(n, seed):
    table, phi = second_order_game(n, 2, np.random.default_rng(seed))
    att = attribute("quadrature", table, 2 * n + 2, seed)
    np.testing.assert_allclose(att.values, phi, atol=1e-8)
    assert att.n_evals == 2 * n + 2


@settings(max_examples=15, deadline=None)
@given(n=st.sampled_from([4, 6, 8, 10]), per=st.integers(3, 8), seed=st.integers(0, 1000))
def test_exact_for_second_order_games_with_paired_middle_coalitions(n, per, seed):
    """Even n: a pair's two coalitions share the middle size, their difference is linear in a 2nd-order game."""
    table, phi = second_order_game(n, 3, np.random.default_rng(seed))
    budget = min(per * n + 2, 2**n - 1)
    att = attribute("quadrature", table, budget, seed)
    np.testing.assert_allclose(att.values, phi, atol=1e-6)


def test_size_quadrature_sums_polynomials_over_sizes_exactly():
    for n, nodes in [(10, [1, 5, 9]), (9, [1, 4, 5, 8]), (20, [1, 7, 10, 13, 19])]:
        w = size_quadrature(n, nodes)
        for deg in range(len(nodes)):
            p = np.random.default_rng(deg).normal(size=deg + 1)
            assert np.isclose(w @ np.polyval(p, nodes), np.polyval(p, np.arange(1, n)).sum())


@pytest.mark.parametrize("path", TABLES[:3], ids=lambda p: p.stem)
def test_efficiency_exact_and_budget_kept_on_recorded_tables(path):
    table, exact, n = recorded(path)
    for budget in (n + 2, 2 * n + 2, 3 * n + 2, 8 * n + 2, 2**n):
        att = attribute("quadrature", table, budget)
        np.testing.assert_allclose(att.values.sum(0), table[-1] - table[0], atol=1e-9)
        np.testing.assert_allclose(att.base_values, table[0])
        assert att.n_evals <= budget
    np.testing.assert_allclose(att.values, exact, atol=1e-9)  # every coalition affordable: exact
    assert np.all(att.error_std == 0)


def _mean_error(method: str, per: int, seeds: int = 3, tables=TABLES) -> float:
    errs = []
    for path in tables:
        table, exact, n = recorded(path)
        for seed in range(seeds):
            att = attribute(method, table, per * n + 2, seed)
            errs.append(np.linalg.norm(att.values - exact) / np.linalg.norm(exact))
    return float(np.mean(errs))


def test_quadrature_beats_kernel_at_equal_budgets_on_recorded_tables():
    assert len(TABLES) >= 4
    assert _mean_error("quadrature", 2) <= _mean_error("kernel", 2) * (1 + 1e-6)  # the same values at 2n + 2
    for per in (4, 8):
        assert _mean_error("kernel", per) / _mean_error("quadrature", per) > 1.5, per


def test_quadrature_beats_kernel_under_the_default_deletion_and_log_prob():
    """The default game is harder (benchmarks/ESTIMATORS_delete_log_prob.md): the lead shrinks but holds."""
    assert len(DELETE_TABLES) >= 4
    assert _mean_error("quadrature", 2, tables=DELETE_TABLES) <= _mean_error("kernel", 2, tables=DELETE_TABLES) * (1 + 1e-6)
    for per in (4, 8):
        assert _mean_error("kernel", per, tables=DELETE_TABLES) / _mean_error("quadrature", per, tables=DELETE_TABLES) > 1.3


@pytest.mark.parametrize("method,per,tables", [
    *[(m, per, "attention_log_odds") for m in ("quadrature", "kernel") for per in (4, 8, 16)],
    # deletion: quadrature's bias over sizes (relative error 0.049 with exact middle values) is not in its standard
    # error, so at 16n + 2 its coverage falls to 0.88 (ESTIMATORS_delete_log_prob.md); auto stops on rerun agreement
    *[(m, per, "delete_log_prob") for m in ("quadrature", "kernel") for per in (4, 8)]])
def test_standard_errors_cover_the_exact_values_on_recorded_tables(method, per, tables):
    """95 % intervals (value ± 1.96 SE) hold the exact Shapley values 90-98 % of the time (pooled over tables)."""
    hits = []
    for path in TABLE_SETS[tables]:
        table, exact, n = recorded(path)
        for seed in range(4):
            att = attribute(method, table, per * n + 2, seed)
            hits.append((np.abs(att.values - exact) <= 1.96 * att.error_std).ravel())
    coverage = np.concatenate(hits).mean()
    assert 0.90 <= coverage <= 0.98, coverage


def test_expected_rank_agreement_matches_simulated_reruns():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 3))
    assert expected_rank_agreement(values, np.zeros_like(values)) == 1.0
    assert np.isnan(expected_rank_agreement(values, np.full_like(values, np.nan)))
    previous = 1.0
    for scale in (0.05, 0.2, 0.5):
        err = np.full_like(values, scale)
        predicted = expected_rank_agreement(values, err, n_sim=400)
        runs = [[importance(values + rng.normal(size=values.shape) * err) for _ in range(2)] for _ in range(400)]
        direct = np.mean([spearmanr(a, b).statistic for a, b in runs])
        assert abs(predicted - direct) < 0.03 and predicted < previous
        previous = predicted


def test_rounds_reuse_every_scored_coalition():
    table, _, n = recorded(TABLES[-1])
    scorer = TableScorer(table)
    cache = CachingScorer(scorer)
    for budget in (4 * n + 2, 6 * n + 2, 9 * n + 2):
        REGISTRY["quadrature"]().attribute(table_task(table, budget), cache)
        assert cache.n_evals == budget  # the larger design starts with the smaller one's pairs
    assert scorer.n_evals == 9 * n + 2


def test_precision_rounds_stop_at_the_target_and_at_the_cap():
    table, exact, n = recorded(TABLES[-1])
    cap = 40 * n
    res = explain_to_precision(table_task(table, 0), TableScorer(table), "quadrature", 0.95, cap)
    assert res.precision >= 0.95 and res.attribution.n_evals < cap and res.rounds > 1
    first = explain_to_precision(table_task(table, 0), TableScorer(table), "quadrature", 0.5, cap)
    assert first.rounds == 1 and first.attribution.n_evals == 4 * n + 2
    capped = explain_to_precision(table_task(table, 0), TableScorer(table), "quadrature", 0.9999, 10 * n)
    assert capped.budget == 10 * n and capped.attribution.n_evals <= 10 * n and capped.precision < 0.9999
    for method in ("kernel", "sampling"):  # the other sampling estimators on request
        res = explain_to_precision(table_task(table, 0), TableScorer(table), method, 0.9, cap)
        assert res.precision >= 0.9 or res.budget == cap
        assert res.attribution.n_evals <= cap


def test_cost_bound_follows_the_rounds_and_growth_is_honoured():
    """costs.round_budgets (what a remote run is told it may cost) is the budgets explain_to_precision visits."""
    table, _, n = recorded(TABLES[-1])
    cap = 30 * n
    visited = []

    class Recording(type(REGISTRY["quadrature"]())):
        def attribute(self, task, scorer):
            visited.append(task.max_evals)
            return super().attribute(task, scorer)

    res = explain_to_precision(table_task(table, 0), TableScorer(table), Recording(), 0.9999, cap)
    assert visited == round_budgets(n, 4 * n + 2, cap) and res.budget == cap
    assert all(b2 == min(cap, max(int(b1 * GROWTH), b1 + MIN_STEP * n)) for b1, b2 in zip(visited, visited[1:]))
    slow = []
    Recording.attribute = lambda self, task, scorer: slow.append(task.max_evals) or REGISTRY["quadrature"]().attribute(task, scorer)
    explain_to_precision(table_task(table, 0), TableScorer(table), Recording(), 0.9999, cap, growth=2.0)
    assert slow[:3] == [4 * n + 2, 2 * (4 * n + 2), 4 * (4 * n + 2)]


def test_auto_default_precision_is_met_by_real_reruns_on_recorded_tables():
    """At AUTO_PRECISION (predicted) two seeds' rankings agree at least that well, measured, under the default
    deletion and log-probability, and not below what the rule predicted (the prediction is not optimistic: the
    default target relies on it, benchmarks/STOPPING_MODEL.md); each run ranks like the exact values (an
    independent reference)."""
    agree, exact_agree, predicted = [], [], []
    for path in DELETE_TABLES:
        table, exact, n = recorded(path)
        cap = min(512, 2**n)
        runs = [explain_to_precision(table_task(table, 0, seed), TableScorer(table), "quadrature", AUTO_PRECISION, cap)
                for seed in range(4)]
        imps = [importance(r.attribution.values) for r in runs]
        agree += [spearmanr(a, b).statistic for a, b in zip(imps, imps[1:])]
        exact_agree += [spearmanr(a, importance(exact)).statistic for a in imps]
        predicted += [r.precision for r in runs[:-1]]
        assert all(r.precision >= AUTO_PRECISION or r.budget == cap for r in runs)
    assert np.mean(agree) >= max(AUTO_PRECISION, np.mean(predicted) - 0.02), (np.mean(agree), np.mean(predicted))
    assert np.mean(exact_agree) >= AUTO_PRECISION, np.mean(exact_agree)


def test_precision_setting_is_validated():
    for bad in (0, 1, 1.5, -0.1, "high"):
        with pytest.raises(ConfigError, match="explain.precision"):
            check_explain(ExplainConfig(precision=bad))
    check_explain(ExplainConfig(precision=0.9))


def test_explain_records_the_precision_reached(tiny_neo):
    model, tok = tiny_neo
    parts = build_prompt("the movie was a charming and often affecting journey", "Review:{input}\nSentiment:", tok)
    target = tok(" good", add_special_tokens=False)["input_ids"]
    tasks = [make_task(model, tok, parts, target, max_evals=cap, precision=0.9) for cap in (2000, 30)]
    exps, stats = explain_tasks(tasks, "quadrature", progress=False)
    assert stats[0]["precision"] >= 0.9 and stats[0]["n_evals"] < 2000 and round(exps[0].precision, 4) == stats[0]["precision"]
    assert stats[1]["n_evals"] <= 30 and 0 <= stats[1]["precision"] <= 1
    [auto] = shapshift.explain(model, tok, ["the movie was a charming and often affecting journey"], targets=[" good"],
                               progress=False)
    assert auto.precision >= AUTO_PRECISION  # auto's CPU default, reached within max_evals on this short input
