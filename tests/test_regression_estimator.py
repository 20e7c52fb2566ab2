"""The regression-adjusted estimator (``explainers/regression.py``) against independent references.

References: brute-force Shapley values of fully known coalition tables (``explainers/exact.py``), brute-force
size-wise effects ``D_i(t)`` of the proxy's kernel functions, and the mean and spread over many seeds.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapshift.explainers import REGISTRY
from shapshift.explainers.exact import all_coalitions, shapley_from_table
from shapshift.explainers.precision import CachingScorer, explain_to_precision
from shapshift.explainers.regression import (
    RegressionExplainer,
    RegressionOptions,
    class_effects,
    pair_schedule,
    proxy_kernel,
    size_classes,
)
from shapshift.scoring import TableScorer


def task(n: int, budget: int, seed: int) -> SimpleNamespace:
    """What the estimator reads of a task (no model: the scorer is a table)."""
    return SimpleNamespace(n_features=n, max_evals=budget, seed=seed, options={})


def random_table(n: int, k: int, seed: int, order2: float = 1.0, noise: float = 1.0) -> np.ndarray:
    """``(2^n, k)`` values: additive + pairwise (``order2``) + unstructured (``noise``) parts."""
    rng = np.random.default_rng(seed)
    x = all_coalitions(n).astype(float)
    pairs = np.einsum("mi,ijk,mj->mk", x, rng.normal(size=(n, n, k)) / n, x)
    return x @ rng.normal(size=(n, k)) + order2 * pairs + noise * rng.normal(size=(2**n, k)) + 1.0


def test_is_registered_for_precision_rounds():
    cls = REGISTRY["regression"]
    assert cls is RegressionExplainer and cls.rounds and not cls.deterministic and cls.is_shap
    assert cls.auto_order is None  # auto's policy is not changed by this estimator


def test_proxy_effects_match_brute_force():
    """``class_effects``: D over each class's sizes of every kernel function equals the brute-force means."""
    n, rng = 7, np.random.default_rng(1)
    x = all_coalitions(n)
    sizes = x.sum(axis=1)
    z = rng.random((4, n)) < 0.5
    options = RegressionOptions(pair_scale=0.3, slope_scale=0.7, slope_degree=2)
    games, effects = proxy_kernel(x, z, options), class_effects(z, options)
    for c, cls in enumerate(size_classes(n)):
        brute = sum(np.stack([games[(sizes == t) & x[:, i]].mean(0) - games[(sizes == t) & ~x[:, i]].mean(0)
                              for i in range(n)]) for t in cls)
        np.testing.assert_allclose(effects[c], brute, atol=1e-10)


def test_schedule_is_prefix_stable_and_covers_every_class():
    n = 12
    long, short = pair_schedule(n, 40), pair_schedule(n, 13)
    np.testing.assert_array_equal(long[:13], short)
    assert set(pair_schedule(n, 2 * len(size_classes(n)))) == set(range(len(size_classes(n))))


def test_additive_game_gives_the_exact_values():
    """An additive game: the linear proxy fits it, the correction is ~0, the values are the exact Shapley values."""
    n, k = 9, 3
    table = random_table(n, k, 0, order2=0.0, noise=0.0)
    exact = shapley_from_table(table, n)
    est = RegressionExplainer({"pair_scale": 0.0, "ridge": 1e-6})
    for seed in range(3):
        att = est.attribute(task(n, 4 * n + 2, seed), TableScorer(table))
        np.testing.assert_allclose(att.values, exact, atol=1e-4)
        assert np.all(att.error_std < 1e-3)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(4, 10), k=st.integers(1, 3), per_feature=st.integers(2, 10), seed=st.integers(0, 1000))
def test_shapes_efficiency_and_budget(n, k, per_feature, seed):
    """Any size and budget: values and errors ``(n, k)``, efficiency to rounding, no more evaluations than the budget."""
    table = random_table(n, k, seed)
    budget = per_feature * n + 2
    scorer = TableScorer(table)
    att = RegressionExplainer().attribute(task(n, budget, seed), scorer)
    assert att.values.shape == (n, k) and att.error_std.shape == (n, k) and att.base_values.shape == (k,)
    np.testing.assert_allclose(att.values.sum(axis=0) + att.base_values, table[-1], atol=1e-8)
    assert att.n_evals == scorer.n_evals <= max(budget, 2 * n + 2)


def test_unbiased_and_standard_errors_cover():
    """A random non-additive game: the mean over seeds approaches the exact values (within 4 standard errors of
    the mean), and the 95 % intervals hold the exact values at about the nominal rate."""
    n, k, seeds = 8, 2, 300
    table = random_table(n, k, 7, order2=1.0, noise=0.5)
    exact = shapley_from_table(table, n)
    runs = [RegressionExplainer().attribute(task(n, 6 * n + 2, s), TableScorer(table)) for s in range(seeds)]
    values = np.stack([r.values for r in runs])
    se_mean = values.std(axis=0, ddof=1) / np.sqrt(seeds)
    assert np.all(np.abs(values.mean(axis=0) - exact) <= 4 * se_mean + 1e-9)
    coverage = np.mean([np.abs(r.values - exact) <= 1.96 * r.error_std for r in runs])
    assert 0.85 <= coverage <= 0.99, coverage
    # the reported errors match the spread over seeds (within a factor 1.5 on average)
    ratio = np.mean([r.error_std for r in runs], axis=0).mean() / values.std(axis=0, ddof=1).mean()
    assert 0.67 < ratio < 1.5, ratio


def test_every_coalition_affordable_is_exact_and_small_inputs_run_kernel():
    n = 5
    table = random_table(n, 2, 3)
    att = RegressionExplainer().attribute(task(n, 2**n, 0), TableScorer(table))
    np.testing.assert_allclose(att.values, shapley_from_table(table, n), atol=1e-10)
    assert np.all(att.error_std == 0)
    att = RegressionExplainer().attribute(task(3, 6, 0), TableScorer(random_table(3, 2, 3)))
    assert att.values.shape == (3, 2)


def test_rounds_reuse_the_coalitions_scored():
    """A larger budget with the same seed scores the earlier pairs first: a round costs only the pairs it adds."""
    n = 10
    table = random_table(n, 2, 5)
    cache = CachingScorer(TableScorer(table))
    RegressionExplainer().attribute(task(n, 4 * n + 2, 1), cache)
    first = cache.n_evals
    RegressionExplainer().attribute(task(n, 6 * n + 2, 1), cache)
    fresh = CachingScorer(TableScorer(table))
    RegressionExplainer().attribute(task(n, 6 * n + 2, 1), fresh)
    assert first <= 4 * n + 2 and cache.n_evals == fresh.n_evals <= 6 * n + 2  # (a pair drawn twice is scored once)
    result = explain_to_precision(task(n, 200, 1), TableScorer(table), "regression", target=0.999, max_evals=200)
    assert result.attribution.n_evals <= 200 and result.rounds >= 2


@pytest.mark.parametrize("options", [{"ridge": 0}, {"pair_scale": -1}, {"slope_degree": -1}, {"slope_scale": -2}])
def test_bad_options_are_refused(options):
    with pytest.raises(Exception, match="regression"):
        RegressionExplainer(options)


@pytest.mark.usefixtures("one_thread")
def test_explain_a_tiny_model_with_words_and_a_precision(tiny_neo):
    """Through shapshift.explain on a real (tiny) model: word features, precision rounds, efficiency."""
    import shapshift

    model, tok = tiny_neo
    text = "a quiet , tender and very moving film about two old friends"
    [exp] = shapshift.explain(model, tok, [text], targets=[" positive"], method="regression", unit="word",
                              max_evals=120, precision=0.99, progress=False, context="Review:{input}\nSentiment:")
    values = np.asarray(exp.values)
    assert values.shape[0] == len(text.split()) and np.all(np.isfinite(np.asarray(exp.error_std)))
    # efficiency: the values plus the base value give the full input's score, per output token
    full = np.asarray(exp.base_values) + values.sum(axis=0)
    again = shapshift.explain(model, tok, [text], targets=[" positive"], method="kernel", unit="word", max_evals=40,
                              progress=False, context="Review:{input}\nSentiment:")[0]  # efficiency exact too
    np.testing.assert_allclose(full, np.asarray(again.base_values) + np.asarray(again.values).sum(axis=0), atol=1e-4)
