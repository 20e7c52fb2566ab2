"""``levels`` against planted games with known Shapley values, and on the real (tiny) model under ``auto``."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapshift.explainers import REGISTRY, explain_tasks, make_task
from shapshift.explainers.levels import AUTO_FIRST_ROUND, LevelsExplainer, allocate, first_level
from shapshift.explainers.precision import CachingScorer, explain_to_precision
from shapshift.prompting import build_prompt
from shapshift.stats import expected_rank_agreement


def sentences(n: int, every: int = 9) -> list[str]:
    """``n`` word features, a sentence ending every ``every`` words."""
    return [f" w{i}" + ("." if i % every == every - 1 else "") for i in range(n)]


def game(n: int, seed: int = 0, pair: float = 0.0):
    """An additive game with 2 outputs (weights ``w``) plus ``pair`` times the product of features 0 and 1."""
    w = np.random.default_rng(seed).normal(size=(n, 2))

    def f(masks):
        m = np.asarray(masks, float)
        return m @ w + pair * (m[:, :1] * m[:, 1:2])

    return w, f


def nonlinear_game(n: int, seed: int = 5):
    """A weighted sum plus the sine of another: interactions of every order, far from additive."""
    v, u = np.random.default_rng(seed).normal(size=(2, n))

    def f(masks):
        m = np.asarray(masks, float)
        return (m @ v + 2 * np.sin(m @ u))[:, None]

    return f


def run(n: int, budget: int, seed: int = 0, pair: float = 0.0, **options):
    w, f = game(n, pair=pair)
    task = SimpleNamespace(n_features=n, feature_strings=sentences(n), max_evals=budget, seed=seed)
    return w, f, LevelsExplainer(options).attribute(task, CachingScorer(f))


def test_an_additive_game_with_the_budget_to_refine_every_group_gets_its_exact_values():
    w, _, att = run(40, 4000)
    np.testing.assert_allclose(att.values, w, atol=1e-9)
    assert att.extras["groups_refined"] == att.extras["groups"] == 5


def test_a_pairwise_interaction_is_split_as_shapley_splits_it():
    """v = sum w + 0.3 x0 x1: Shapley gives each of features 0 and 1 half of the 0.3 (same sentence, same group)."""
    w, _, att = run(20, 4000, pair=0.3)
    expected = w.copy()
    expected[:2] += 0.15
    np.testing.assert_allclose(att.values, expected, atol=1e-9)


def test_a_group_the_budget_does_not_reach_spreads_its_value_and_says_so():
    w, f, att = run(47, 60)
    spans = first_level(sentences(47), 5)
    unrefined = [(a, b) for a, b in spans if np.ptp(att.values[a:b, 0]) == 0 and b - a > 1]
    assert unrefined, "at 60 evaluations some groups stay whole"
    for a, b in unrefined:
        m, value = b - a, w[a:b].sum(axis=0)
        np.testing.assert_allclose(att.values[a:b], np.tile(value / m, (m, 1)), atol=1e-9)
        np.testing.assert_allclose(att.error_std[a:b], np.tile(np.abs(value) * np.sqrt(m - 1) / m, (m, 1)))
        assert (att.sampling_std[a:b] == 0).all()  # no seed changes them: the rerun would agree
    # the stated errors cover the distance to the true values on most features (a spread is not a sampling error)
    assert (np.abs(att.values - w) <= 2 * att.error_std + 1e-9).mean() > 0.6


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 160), budget=st.integers(6, 700), seed=st.integers(0, 3), fanout=st.integers(2, 8))
def test_efficiency_and_the_budget_hold_for_every_length_and_budget(n, budget, seed, fanout):
    w, f, att = run(n, budget, seed=seed, pair=0.5, fanout=fanout)
    full, empty = f(np.ones((1, n)))[0], f(np.zeros((1, n)))[0]
    np.testing.assert_allclose(att.base_values, empty)
    np.testing.assert_allclose(att.base_values + att.values.sum(axis=0), full, atol=1e-8)
    assert att.n_evals <= max(budget, 2 ** min(fanout, 2) + 2)
    assert np.isfinite(att.error_std).all() and (att.error_std >= att.sampling_std).all()


def test_long_inputs_get_a_level_more_inside_large_groups():
    """300 features, 512 evaluations: groups of 60 are split again rather than left whole."""
    w, _, att = run(300, 512)
    assert att.n_evals <= 512
    assert att.extras["features_refined"] > 60  # more than one first-level group's worth, through sub-groups
    assert len(np.unique(np.round(att.values[:, 0], 9))) > 60


def test_allocate_refines_the_heaviest_groups_first_within_the_budget():
    alloc = allocate([10, 10, 10, 1], np.array([1.0, 5.0, 3.0, 9.0]), 100)
    # 40 (4m) each to the two heaviest groups of 10; the 20 left are below group 0's least (2m + 6 = 26), so they
    # go to the refined groups in proportion to their weight
    assert alloc[0] == 0 and alloc[3] == 0 and alloc[1] > alloc[2] >= 40 and sum(alloc) == 100
    assert allocate([10, 10], np.array([1.0, 2.0]), 25) == [0, 0]  # below 2m + 6 nothing is refined


def test_two_seeds_differ_and_the_predicted_precision_is_below_one_on_a_game_with_interactions():
    """Not a perfect floor by construction: the sampled level differs between seeds, and the precision says so."""
    n = 45
    f = nonlinear_game(n)
    atts = [LevelsExplainer().attribute(SimpleNamespace(n_features=n, feature_strings=sentences(n), max_evals=128,
                                                        seed=s), CachingScorer(f)) for s in (0, 1)]
    assert not np.allclose(atts[0].values, atts[1].values)
    precision = expected_rank_agreement(atts[0].values, atts[0].rerun_std, seed=0)
    assert 0 < precision < 1


def test_precision_rounds_reuse_every_scored_coalition():
    f = nonlinear_game(50)
    calls = []

    def counted(masks):
        calls.append(len(masks))
        return f(masks)

    task = SimpleNamespace(n_features=50, feature_strings=sentences(50), max_evals=400, seed=0)
    res = explain_to_precision(task, counted, LevelsExplainer(), 0.999, 400, first_budget=AUTO_FIRST_ROUND)
    assert res.rounds > 1
    assert sum(calls) == res.attribution.n_evals <= 400  # nothing scored twice across the rounds


@pytest.mark.usefixtures("one_thread")
def test_auto_explains_a_long_input_by_levels_on_the_real_model(tiny_neo):
    model, tok = tiny_neo
    text = " ".join(f"Sentence {i} says the film was {'good' if i % 2 else 'slow'}." for i in range(6))
    parts = build_prompt(text, "Review:{input}\nSentiment:", tok)
    task = make_task(model, tok, parts, tok(" positive", add_special_tokens=False)["input_ids"], max_evals=200)
    assert task.n_features > REGISTRY["quadrature"].auto_max_features
    [exp], [stats] = explain_tasks([task], "auto", progress=False)
    assert exp.method == "levels" and stats["method"] == "levels"
    scorer = task.make_scorer()
    np.testing.assert_allclose(exp.base_values + exp.values.sum(0), scorer.full(), atol=1e-4)
    assert stats["n_evals"] <= 200 and stats["level_evals"][0] == 32 and stats["groups"] == 5
    assert 0 < exp.precision <= 1 and exp.error_std is not None and np.isfinite(exp.error_std).all()
    assert exp.settings["precision"] == pytest.approx(0.9)
