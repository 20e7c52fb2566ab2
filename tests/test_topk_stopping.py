"""The top-k stopping rule (explainers/topk.py) against independent references."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from shapshift.explainers.exact import all_coalitions
from shapshift.explainers.precision import explain_to_precision
from shapshift.explainers.topk import stopping_rule
from shapshift.scoring import TableScorer
from shapshift.stats import expected_rank_agreement, expected_topk_agreement


def test_limits():
    values = np.array([[3.0], [2.0], [1.0], [0.5]])
    assert expected_topk_agreement(values, np.zeros_like(values), 2) == 1.0  # exact values
    assert expected_topk_agreement(values, None, 2) != expected_topk_agreement(values, None, 2)  # NaN: unknown errors
    assert expected_topk_agreement(values, np.full_like(values, 0.1), 4) == 1.0  # k >= n: every feature in both
    assert expected_topk_agreement(values, np.full_like(values, 1e-3), 2) == 1.0  # well separated
    with pytest.raises(ValueError):
        expected_topk_agreement(values, np.zeros_like(values), 0)


def test_indistinguishable_features_give_chance_overlap():
    """Equal values drowned in equal noise: two random top-k sets of n share k/n of their members on average."""
    n, k = 10, 3
    values = np.full((n, 1), 5.0)  # far from 0, so |value| keeps the noise symmetric
    got = expected_topk_agreement(values, np.full((n, 1), 1.0), k, n_sim=4000)
    assert got == pytest.approx(k / n, abs=0.03)


def test_rules_and_precision_rounds():
    n = 8
    rng = np.random.default_rng(0)
    x = all_coalitions(n).astype(float)
    table = x @ rng.normal(size=(n, 2)) + 0.3 * rng.normal(size=(2**n, 2))
    task = SimpleNamespace(n_features=n, max_evals=200, seed=1, options={})
    values, err = rng.normal(size=(n, 2)), np.full((n, 2), 0.2)
    assert stopping_rule("spearman")(values, err, 0) == expected_rank_agreement(values, err, seed=0)
    both = stopping_rule("both", 3)(values, err, 0)
    assert both == min(expected_rank_agreement(values, err, seed=0), expected_topk_agreement(values, err, 3, seed=0))
    assert math.isnan(stopping_rule("both", 3)(values, None, 0))
    with pytest.raises(ValueError):
        stopping_rule("kendall")
    res = explain_to_precision(task, TableScorer(table), "quadrature", 0.99, 200, agreement=stopping_rule("top_k", 3))
    assert res.precision >= 0.99 or res.attribution.n_evals <= 200
    assert res.precision == expected_topk_agreement(res.attribution.values, res.attribution.error_std, 3, seed=1)
