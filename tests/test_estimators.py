"""Every estimator against independent formulas: brute-force Shapley, efficiency, convergence, budgets."""

import itertools
import math

import numpy as np
import pytest

import shapshift
from shapshift.explainers import REGISTRY, choose_method, make_task
from shapshift.explainers.api import auto_budget
from shapshift.explainers.exact import all_coalitions, shapley_from_table
from shapshift.explainers.hierarchical import split_span
from shapshift.explainers.kernel import constrained_wls, kernel_design
from shapshift.prompting import build_prompt, token_strings
from shapshift.scoring import TableScorer, TeacherForcedScorer

CONTEXT = "Review:{input}\nSentiment:"


pytestmark = pytest.mark.usefixtures("one_thread")


def _task(model, tok, text, target=" positive and warm", **options):
    parts = build_prompt(text, CONTEXT, tok)
    return make_task(model, tok, parts, tok(target, add_special_tokens=False)["input_ids"], **options)


def _attribute(method, task, scorer=None):
    """``method``'s attribution of ``task``, scored by ``scorer`` (a recorded table) or the task's own scorer."""
    return REGISTRY[method]().attribute(task, scorer if scorer is not None else task.make_scorer())


def brute_force_shapley(f, n):
    """Shapley values as the mean marginal contribution over all n! orders (memoised f on frozensets)."""
    memo = {}

    def v(s):
        if s not in memo:
            m = np.zeros((1, n), bool)
            m[0, list(s)] = True
            memo[s] = f(m)[0]
        return memo[s]

    phi = 0
    for order in itertools.permutations(range(n)):
        before = frozenset()
        contrib = []
        for i in order:
            contrib.append((i, v(before | {i}) - v(before)))
            before = before | {i}
        phi = phi + np.stack([c for _, c in sorted(contrib)])
    return phi / math.factorial(n)


@pytest.mark.parametrize("text", ["good film", "a quiet, tender film"])
def test_exact_equals_brute_force_over_permutations(tiny_neo, text):
    model, tok = tiny_neo
    task = _task(model, tok, text)
    assert task.n_features <= 5
    independent = TeacherForcedScorer(model, task.prompt, task.target_ids, use_cache=False, batch_size=1)
    expected = brute_force_shapley(independent, task.n_features)
    att = _attribute("exact", task)
    np.testing.assert_allclose(att.values, expected, atol=1e-4)
    assert att.n_evals == 2 ** task.n_features


@pytest.mark.parametrize("method", ["exact", "sampling", "kernel", "hierarchical"])
def test_efficiency_checked_by_independent_scoring(tiny_neo, method):
    model, tok = tiny_neo
    text = "a quiet film about two brothers" if method == "exact" else "a quiet film about two brothers and their long drive home"
    [exp] = shapshift.explain(model, tok, [text], targets=[" positive and warm"], context=CONTEXT, method=method,
                              max_evals=80, progress=False)
    task = _task(model, tok, text)
    independent = TeacherForcedScorer(model, task.prompt, task.target_ids, use_cache=False, batch_size=3)
    np.testing.assert_allclose(exp.base_values, independent.empty(), atol=1e-4)
    np.testing.assert_allclose(exp.base_values + exp.values.sum(axis=0), independent.full(), atol=1e-4)
    assert exp.values.shape == (task.n_features, 3)
    if method in ("sampling", "kernel"):
        assert exp.error_std is not None and exp.error_std.shape == exp.values.shape


def test_partition_efficiency_in_shaps_own_masking(tiny_neo):
    import shap

    model, tok = tiny_neo
    text = "a quiet film about two brothers"
    [exp] = shapshift.explain(model, tok, [text], targets=[" positive"], context=CONTEXT, method="partition",
                              max_evals=40, progress=False)
    parts = build_prompt(text, CONTEXT, tok)
    tf = shap.models.TeacherForcing(model, tok)
    masked = shap.maskers.Text(tok)(np.zeros(len(exp.data), bool), parts.text)[0][0]
    score = lambda body: tf(np.array([parts.prefix + body + parts.suffix]), np.array([" positive"]))[0]  # noqa: E731
    np.testing.assert_allclose(exp.base_values, score(masked), atol=1e-4)
    np.testing.assert_allclose(exp.base_values + exp.values.sum(axis=0), score(parts.text), atol=1e-4)


@pytest.fixture(scope="module")
def neo_table(tiny_neo):
    """Every coalition of an 8-token input scored once, and its exact Shapley values.

    Attention masking: on the tiny random model's deletion game (positions shift with every deleted
    token) the leave-one-in/out coalitions alone are nearly exact, so kernel's error at ``2n + 2``
    is lower than at ``8n`` and "error shrinks with the budget" does not hold there."""
    model, tok = tiny_neo
    task = _task(model, tok, "the long, slow and quiet film", masking="attention")
    table = task.make_scorer()(all_coalitions(task.n_features))
    return task, table, shapley_from_table(table, task.n_features)


@pytest.mark.parametrize("method", ["sampling", "kernel"])
def test_sampling_error_shrinks_as_the_budget_grows(tiny_neo, neo_table, method):
    model, tok = tiny_neo
    task0, table, exact = neo_table
    n = task0.n_features
    errors = {}
    for budget in (2 * n + 2, 8 * n, 24 * n):
        errs = []
        for seed in range(6):
            task = _task(model, tok, "the long, slow and quiet film", max_evals=budget, seed=seed)
            att = _attribute(method, task, TableScorer(table))
            assert att.n_evals <= max(budget, 2 * n)
            np.testing.assert_allclose(att.base_values + att.values.sum(0), table[-1], atol=1e-9)
            errs.append(np.abs(att.values - exact).mean())
        errors[budget] = np.mean(errs)
    small, mid, large = errors.values()
    assert large < mid < small


def test_kernel_standard_error_is_calibrated(tiny_neo, neo_table):
    model, tok = tiny_neo
    task0, table, exact = neo_table
    z = []
    for seed in range(8):
        task = _task(model, tok, "the long, slow and quiet film", max_evals=60, seed=seed)
        att = _attribute("kernel", task, TableScorer(table))
        z.append(np.abs(att.values - exact) / np.maximum(att.error_std, 1e-12))
    z = np.concatenate(z).ravel()
    assert np.median(z) < 1.5 and np.mean(z < 3) > 0.85


def test_kernel_design_and_solver():
    rng = np.random.default_rng(0)
    masks, w, pairs = kernel_design(6, 20, rng)
    assert len(masks) <= 20 and np.isclose(w.sum(), 1) and np.all(w > 0)
    assert not np.any(masks.all(1) | ~masks.any(1))
    assert {int(s) for s in masks.sum(1)} >= {1, 5}  # leave-one-in and leave-one-out come first
    # the whole design recovers exact Shapley values of an arbitrary game, with efficiency
    table = rng.normal(size=(2**6, 2))
    masks, w, _ = kernel_design(6, 62, rng)
    codes = (masks.astype(int) << np.arange(6)).sum(1)
    phi = constrained_wls(masks.astype(float), table[codes] - table[0], w, table[-1] - table[0])
    np.testing.assert_allclose(phi, shapley_from_table(table, 6), atol=1e-6)


def test_hierarchical_on_a_long_input_within_budget(tiny_neo):
    model, tok = tiny_neo
    text = " ".join(f"Sentence number {i} says the film was {'good' if i % 2 else 'slow'}." for i in range(30))
    task = _task(model, tok, text, max_evals=150)
    assert task.n_features >= 200
    scorer = task.make_scorer()
    att = REGISTRY["hierarchical"]().attribute(task, scorer)
    assert att.n_evals <= 150
    np.testing.assert_allclose(att.base_values, scorer.empty(), atol=1e-5)
    np.testing.assert_allclose(att.base_values + att.values.sum(0), scorer.full(), atol=1e-4)
    assert att.values.shape == (task.n_features, 3) and np.all(np.isfinite(att.values))
    # some spans were refined below the top level: the values are not constant over quarters
    assert len(np.unique(np.round(att.values[:, 0], 9))) > 8


def test_hierarchical_splits_sentences_then_words():
    tokens = [" A", " b", ".", " C", " d", " e", ".", " F", "g", " h", "."]
    groups = split_span(tokens, 0, len(tokens), 2)
    assert groups[0][0] == 0 and groups[-1][1] == len(tokens) and len(groups) == 2
    assert groups[0][1] in (3, 7)  # cut at a sentence end
    assert split_span(tokens, 7, 11, 4) == [(7, 8), (8, 9), (9, 10), (10, 11)]
    words = split_span(tokens, 7, 11, 2)
    assert words[0] == (7, 9)  # " F" + "g" is one word


def test_hierarchical_is_exact_on_short_inputs(tiny_neo, neo_table):
    """At most `fanout` tokens: one exact game at the root."""
    model, tok = tiny_neo
    task = _task(model, tok, "good film")
    att = _attribute("hierarchical", task)
    np.testing.assert_allclose(att.values, _attribute("exact", _task(model, tok, "good film")).values,
                               atol=1e-5)


def test_choose_method_and_auto_budget():
    """auto's ladder, read from the registry entries: exact up to 5 features, quadrature up to 32, then levels."""
    exact_max, quadrature_max = REGISTRY["exact"].auto_max_features, REGISTRY["quadrature"].auto_max_features
    assert (exact_max, quadrature_max) == (5, 32)
    assert choose_method(3) == "exact"
    assert choose_method(exact_max) == "exact"
    assert choose_method(exact_max + 1) == "quadrature"
    assert choose_method(quadrature_max) == "quadrature"
    assert choose_method(quadrature_max + 1) == "levels"
    assert choose_method(40, "sampling") == "sampling"
    assert auto_budget("kernel", 20, 512) <= 512
    assert auto_budget("kernel", 20, 30) == 30
    assert auto_budget("hierarchical", 1000, 512) == 512
    assert auto_budget("levels", 1000, 512) == 128 and auto_budget("levels", 1000, 100) == 100
    assert auto_budget("quadrature", 20, 512) == 82


def test_known_answer_capital_of_france_with_auto(smollm2):
    model, tok = smollm2
    [exp] = shapshift.explain(model, tok, ["The capital of France is"], targets=[" Paris"], method="auto",
                              progress=False)
    order = [exp.data[i] for i in np.argsort(-exp.values[:, 0])]  # as exact's (test_explain): France first
    assert order[0] == " France" and " capital" in order[:3] and set(order[-2:]) == {"The", " of"}
    assert list(exp.data) == token_strings(tok, tok("The capital of France is", add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("context", [None, "Story: {input}"])
def test_partition_has_the_same_features_as_every_estimator_under_a_start_token(tiny_neo, context):
    """Issue 28 item 2: a tokenizer that adds a start token (Llama's) made shap's Text masker return it as an empty
    feature '' in front: partition gave 6 features where exact gave 5. The same features, the same efficiency."""
    from transformers import AutoTokenizer

    model, tok = tiny_neo
    with_bos = AutoTokenizer.from_pretrained(tok.name_or_path, add_bos_token=True)
    assert with_bos("Every")["input_ids"][0] == with_bos.bos_token_id  # the tokenizer adds its start token
    text = "Every winter the river freezes"
    [part] = shapshift.explain(model, with_bos, [text], targets=[" over"], method="partition", context=context,
                               progress=False)
    [ex] = shapshift.explain(model, with_bos, [text], targets=[" over"], method="exact", context=context, progress=False)
    assert list(part.data) == list(ex.data) and part.values.shape == ex.values.shape
    full = ex.base_values + ex.values.sum(axis=0)
    np.testing.assert_allclose(part.base_values + part.values.sum(axis=0), full, atol=1e-4)
