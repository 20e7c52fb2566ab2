"""Agreement metrics between two attribution vectors: hand-computed cases and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shapshift import overlap as ov
from shapshift.aggregation import aggregate

FAST = settings(max_examples=40, deadline=None)

# Hand-computed case. |a| ranks features 0,1,2,3; |b| = [1, 3, 2, 0.2] ranks 1,2,0,3.
A = np.array([3.0, -2.0, 1.0, 0.5])
B = np.array([1.0, -3.0, -2.0, 0.2])


def naive_topk(v: np.ndarray, k: int) -> list[int]:
    """Top-k by |v|, ties to the lower index: an independent implementation for the checks."""
    return sorted(range(len(v)), key=lambda i: (-abs(v[i]), i))[:k]


# -- hand-computed values -------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "expected"), [
    (1, {"feature_agreement": 0, "rank_agreement": 0, "sign_agreement": 0, "signed_rank_agreement": 0, "jaccard": 0}),
    (2, {"feature_agreement": 1 / 2, "rank_agreement": 0, "sign_agreement": 1 / 2, "signed_rank_agreement": 0,
         "jaccard": 1 / 3}),
    (3, {"feature_agreement": 1, "rank_agreement": 0, "sign_agreement": 2 / 3, "signed_rank_agreement": 0,
         "jaccard": 1}),
    (4, {"feature_agreement": 1, "rank_agreement": 1 / 4, "sign_agreement": 3 / 4, "signed_rank_agreement": 1 / 4,
         "jaccard": 1}),
    (10, {"feature_agreement": 1, "rank_agreement": 1 / 4, "sign_agreement": 3 / 4, "signed_rank_agreement": 1 / 4,
          "jaccard": 1}),  # k clipped to n = 4
])
def test_topk_metrics_by_hand(k, expected):
    funcs = {"feature_agreement": ov.feature_agreement, "rank_agreement": ov.rank_agreement,
             "sign_agreement": ov.sign_agreement, "signed_rank_agreement": ov.signed_rank_agreement,
             "jaccard": ov.jaccard}
    for name, fn in funcs.items():
        assert fn(A, B, k) == pytest.approx(expected[name]), name


def test_overlap_curve_by_hand():
    np.testing.assert_allclose(ov.overlap_curve(A, B), [0, 1 / 2, 1, 1])


def test_global_metrics_by_hand():
    # ranks of |a| = [4,3,2,1], of |b| = [2,4,3,1]: sum d^2 = 6, rho = 1 - 6*6/(4*15) = 0.4
    assert ov.spearman(A, B) == pytest.approx(0.4)
    # pairs: (0,1) and (0,2) discordant, the other four concordant
    assert ov.kendall(A, B) == pytest.approx(2 / 6)
    assert ov.pairwise_rank_agreement(A, B) == pytest.approx(4 / 6)
    assert ov.cosine_similarity(A, B) == pytest.approx(7.1 / math.sqrt(14.25 * 14.04))
    # RBO_ext with A_d = [0, .5, 1, 1], p = 0.9: 0.9^4 + 0.1 (0.9*0.5 + 0.81 + 0.729)
    assert ov.rbo(A, B, p=0.9) == pytest.approx(0.6561 + 0.1989)


def test_rbo_swapped_top_two():
    # S = (x, y, z), T = (y, x, z): A = [0, 1, 1]; RBO_ext = 0.9^3 + 0.1 (0.9 + 0.81) = 0.9
    assert ov.rbo([3.0, 2.0, 1.0], [2.0, 3.0, 1.0], p=0.9) == pytest.approx(0.9)
    assert ov.rbo([3.0, 2.0, 1.0], [2.0, 3.0, 1.0], p=0.5) == pytest.approx(0.125 + 0.5 * (0 + 0.5 + 0.25))
    with pytest.raises(ValueError):
        ov.rbo(A, B, p=1.0)


def test_signed_rank_correlation_option():
    a, b = np.array([-3.0, 1.0, 2.0]), np.array([3.0, 1.0, 2.0])
    assert ov.spearman(a, b) == pytest.approx(1.0)  # same importance ranking
    assert ov.spearman(a, b, by="signed") == pytest.approx(-0.5)  # ranks [1,2,3] vs [3,1,2]
    with pytest.raises(ValueError):
        ov.spearman(a, b, by="rank")


def test_ties_broken_by_feature_index():
    v = np.array([1.0, -1.0, 1.0, 0.5])
    assert ov.ranking(v).tolist() == [0, 1, 2, 3]
    # top-1 of both is feature 0 (the earliest of the tied), so they agree
    assert ov.feature_agreement(v, np.array([1.0, 1.0, 0.0, 0.0]), 1) == 1.0
    assert ov.feature_agreement(v, np.array([0.0, 1.0, 1.0, 0.0]), 1) == 0.0


def test_constant_vectors_do_not_crash():
    z = np.zeros(5)
    v = np.arange(5.0)
    assert math.isnan(ov.spearman(z, v)) and math.isnan(ov.spearman(z, z))
    assert math.isnan(ov.kendall(z, v))
    assert math.isnan(ov.cosine_similarity(z, v))
    assert ov.feature_agreement(z, z, 2) == 1.0  # same tie-break on both sides
    assert ov.pairwise_rank_agreement(z, z) == 1.0  # every pair tied in both
    rows = ov.compare_vectors(z, v, ks=[1, 3])
    assert {r["metric"] for r in rows} == set(ov.METRICS)


def test_single_feature():
    rows = {r["metric"]: r["value"] for r in ov.compare_vectors([2.0], [-1.0], ks=[1, 5])}
    assert rows["feature_agreement"] == 1.0 and rows["sign_agreement"] == 0.0 and rows["rbo"] == 1.0
    assert math.isnan(rows["spearman"]) and math.isnan(rows["pairwise_rank_agreement"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="same features"):
        ov.feature_agreement([1.0, 2.0], [1.0, 2.0, 3.0], 1)
    with pytest.raises(ValueError, match="NaN"):
        ov.spearman([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError):
        ov.feature_agreement(A, B, 0)


@pytest.mark.parametrize(("n", "k"), [(1, 1), (4, 1), (5, 1), (6, 2), (10, 2), (11, 3), (15, 3), (128, 26)])
def test_fraction_k(n, k):
    assert ov.fraction_k(n, 0.2) == k


def test_aggregate():
    values = np.array([[1.0, -3.0], [2.0, 2.0], [0.0, -1.0]])  # (n_in=3, n_out=2)
    np.testing.assert_allclose(aggregate(values, "sum"), [-2.0, 4.0, -1.0])
    np.testing.assert_allclose(aggregate(values, "mean_abs"), [2.0, 2.0, 0.5])
    with pytest.raises(ValueError):
        aggregate(values, "max")


def test_compare_explanations_table():
    rng = np.random.default_rng(0)
    va, vb = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))  # n_out differs: token scope on 2 positions
    df = ov.compare_explanations(va, vb, ks=[1, 3])
    assert list(df.columns) == ov.COMPARE_COLUMNS
    assert set(df["scope"]) == {"aggregate", "token"}
    assert sorted(df.loc[df["scope"] == "token", "out_pos"].unique().tolist()) == [0, 1]
    assert df.loc[df["scope"] == "aggregate", "out_pos"].isna().all()
    assert set(df["k_spec"]) == {"1", "3", "20%", "all"}
    agg = df[df["scope"] == "aggregate"].set_index(["metric", "k_spec"])["value"]
    assert agg["feature_agreement", "3"] == ov.feature_agreement(va.sum(1), vb.sum(1), 3)
    assert df.loc[df["k_spec"] == "20%", "k"].eq(2).all()  # ceil(0.2 * 7)
    with pytest.raises(ValueError, match="same features"):
        ov.compare_explanations(va, rng.normal(size=(6, 3)))


def test_rank_correlations_match_scipy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.integers(-4, 5, size=12).astype(float)  # many ties in |a|
        b = rng.normal(size=12)
        if len(set(np.abs(a))) < 2:
            continue
        assert ov.spearman(a, b) == pytest.approx(scipy.stats.spearmanr(np.abs(a), np.abs(b)).statistic)
        assert ov.kendall(a, b) == pytest.approx(scipy.stats.kendalltau(np.abs(a), np.abs(b)).statistic)


# -- properties -----------------------------------------------------------------------------------
def vectors(min_size: int = 2, max_size: int = 25):
    """Finite float vectors, including zeros and ties."""
    return st.integers(min_size, max_size).flatmap(
        lambda n: arrays(np.float64, n, elements=st.floats(-100, 100, allow_nan=False, width=32)))


@st.composite
def distinct_pair(draw, min_size: int = 2, max_size: int = 25):
    """Two vectors without zeros and without ties in |value| (so the ranking needs no tie-break)."""
    n = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    assume(np.unique(np.abs(a)).size == n and np.unique(np.abs(b)).size == n and np.all(a != 0) and np.all(b != 0))
    return a, b


def metric_values(a, b, ks=(1, 2, 3, 5, 40)) -> dict[tuple[str, str], float]:
    return {(r["metric"], r["k_spec"]): r["value"] for r in ov.compare_vectors(a, b, ks)}


@FAST
@given(vectors())
def test_identical_explanations_agree_fully(v):
    assume(np.abs(v).max() > 0 and np.unique(np.abs(v)).size > 1)  # Spearman/cosine need variation
    for key, value in metric_values(v, v).items():
        assert value == pytest.approx(1.0), key


@FAST
@given(distinct_pair())
def test_negation(pair):
    a, b = pair
    for k in (1, 2, 3, 10):
        assert ov.feature_agreement(a, -a, k) == 1.0
        assert ov.rank_agreement(a, -a, k) == 1.0
        assert ov.sign_agreement(a, -a, k) == 0.0
        assert ov.signed_rank_agreement(a, -a, k) == 0.0
        # negating one side keeps the top-k sets and flips every common sign
        assert ov.feature_agreement(a, -b, k) == ov.feature_agreement(a, b, k)
        assert ov.sign_agreement(a, b, k) + ov.sign_agreement(a, -b, k) == pytest.approx(ov.feature_agreement(a, b, k))
    assert ov.spearman(a, -b) == pytest.approx(ov.spearman(a, b))
    assert ov.cosine_similarity(a, -a) == pytest.approx(-1.0)


@FAST
@given(distinct_pair(), st.randoms(use_true_random=False))
def test_joint_permutation_changes_nothing(pair, rnd):
    a, b = pair
    perm = np.array(rnd.sample(range(a.size), a.size))
    before, after = metric_values(a, b), metric_values(a[perm], b[perm])
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == pytest.approx(before[key], abs=1e-12), key


@FAST
@given(vectors(), st.integers(0, 2**32 - 1))
def test_ranges_and_curve(a, seed):
    b = np.random.default_rng(seed).normal(size=a.size).round(1)
    for (metric, _), value in metric_values(a, b).items():
        if math.isnan(value):
            assert metric in ("spearman", "kendall", "cosine")
            continue
        declared = ov.METRICS[metric]  # each metric's registered range
        assert declared.lo - 1e-12 <= value <= declared.hi + 1e-12, metric
    curve = ov.overlap_curve(a, b)
    for k in range(1, a.size + 1):
        expected = len(set(naive_topk(a, k)) & set(naive_topk(b, k))) / k
        assert curve[k - 1] == pytest.approx(expected)
        assert ov.feature_agreement(a, b, k) == pytest.approx(expected)
    assert curve[-1] == 1.0
