"""Deletion / insertion curves, ERASER comprehensiveness and sufficiency, and real text deletion."""

import numpy as np
import pytest

from shapshift.faithfulness import (
    ERASER_BINS,
    aopc,
    comprehensiveness,
    deletion_curve,
    faithfulness_report,
    insertion_curve,
    random_orders,
    ranking,
    sufficiency,
    text_deletion_scorer,
)
from shapshift.prompting import PromptParts, build_prompt, encode_prompt
from shapshift.scoring import TeacherForcedScorer

WEIGHTS = np.array([3.0, -1.0, 0.5, 2.0, 0.0, -0.5])


pytestmark = pytest.mark.usefixtures("one_thread")


def additive(masks):
    """A game whose true attributions are WEIGHTS: f(kept) = 10 + sum of kept weights."""
    return 10.0 + np.asarray(masks, float) @ WEIGHTS


def test_ranking_signed_and_abs():
    values = np.array([[1.0, 1.0], [-5.0, 0.0], [3.0, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(ranking(values), [2, 0, 3, 1])
    np.testing.assert_array_equal(ranking(values, by="abs"), [1, 2, 0, 3])
    with pytest.raises(ValueError):
        ranking(values, by="median")


def test_deletion_and_insertion_curves_on_an_additive_game():
    best = ranking(WEIGHTS)
    worst = best[::-1]
    d_best, d_worst = deletion_curve(additive, best), deletion_curve(additive, worst)
    assert d_best[0] == 0 and d_best[-1] == pytest.approx(WEIGHTS.sum())
    np.testing.assert_allclose(d_best[1:3], [3.0, 5.0])
    assert aopc(d_best) > aopc(d_worst)
    # the true ranking beats every random order
    assert all(aopc(d_best) >= aopc(deletion_curve(additive, o)) - 1e-12 for o in random_orders(6, 20))
    ins = insertion_curve(additive, best)
    assert ins[0] == 0 and ins[-1] == pytest.approx(WEIGHTS.sum())
    assert aopc(ins) > aopc(insertion_curve(additive, worst))


def test_eraser_comprehensiveness_and_sufficiency():
    order = ranking(WEIGHTS)
    # n = 6: bins 1 %, 5 %, 10 %, 20 % -> top 1 token; 50 % -> top 3 tokens
    top1, top3 = 3.0, 3.0 + 2.0 + 0.5
    assert comprehensiveness(additive, order) == pytest.approx((4 * top1 + top3) / 5)
    total = WEIGHTS.sum()
    assert sufficiency(additive, order) == pytest.approx((4 * (total - top1) + (total - top3)) / 5)
    assert comprehensiveness(additive, order) > comprehensiveness(additive, order[::-1])
    assert sufficiency(additive, order) < sufficiency(additive, order[::-1])
    assert len(ERASER_BINS) == 5


def test_report_keys_and_random_baseline():
    rep = faithfulness_report(additive, WEIGHTS[:, None], n_random=5)
    assert set(rep) == {"deletion_aopc", "deletion_aopc_random", "insertion_auc", "comprehensiveness", "sufficiency"}
    assert rep["deletion_aopc"] > rep["deletion_aopc_random"]


def test_text_deletion_rescores_the_shortened_text(tiny_neo):
    model, tok = tiny_neo
    parts = build_prompt("a quiet and tender film", "Review:{input}\nSentiment:", tok)
    target = tok(" good", add_special_tokens=False)["input_ids"]
    score_kept, scorer = text_deletion_scorer(model, tok, parts, target)
    prompt = encode_prompt(parts, tok)
    n = len(prompt.input_ids)
    full = TeacherForcedScorer(model, prompt, target, score="log_prob").full().sum()
    assert score_kept(np.ones((1, n), bool))[0] == pytest.approx(full, abs=1e-4)
    # deleting tokens 1 and 2 is scoring the shorter text, re-tokenised, in the same prompt
    keep = np.ones(n, bool)
    keep[[1, 2]] = False
    short = tok.decode([t for t, k in zip(prompt.input_ids, keep) if k])
    short_prompt = encode_prompt(PromptParts(parts.prefix, short, parts.suffix), tok)
    expected = TeacherForcedScorer(model, short_prompt, target, score="log_prob").full().sum()
    assert score_kept(keep[None])[0] == pytest.approx(expected, abs=1e-4)
    # everything deleted is a valid (empty) text; repeated rows are scored once
    before = scorer.n_evals
    out = score_kept(np.zeros((3, n), bool))
    assert np.all(np.isfinite(out)) and out[0] == out[2] and scorer.n_evals == before + 1
    curve = deletion_curve(score_kept, np.arange(n))
    assert curve.shape == (n + 1,) and curve[0] == 0
