"""The optimised scorer equals a naive reference on every prompt shape (property-based, differential).

Each draw picks an architecture (random tiny GPT-Neo whose local attention window is shorter than
the rows, GPT-2, Llama; the real SmolLM2 in its own test), a prompt built through the real path
(``build_prompt``/``encode_prompt``: no template, a prefix, a suffix, both), a target of 1..4 tokens,
a masking, a score, coalitions (the empty and full ones often), a batch size, a cached or uncached
prefix, and a prefix cache handed over from another example. ``reference_scorer.naive_scores``
recomputes every coalition alone; they must agree within 1e-4 nats.

The same kind of draw runs ``explain()`` end to end for every estimator and checks efficiency
against the reference's scores of the full and the fully masked input.

``SHAPSHIFT_DEEP=1`` (``make test-deep``) runs ten times as many draws.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_scorer import naive_scores
from tiny_models import tiny

import shapshift
from shapshift.constants import DEFAULT_SCORE
from shapshift.prompting import PromptParts, build_prompt, encode_prompt
from shapshift.scoring import MASKINGS, TeacherForcedScorer

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = [" the", " film", " good", " bad", " not", " Paris", " is", " a", ".", ",", "!", " very", " and",
         " capital", " of", " France", " review", " it", " was", " quiet", "\n", " 42", " über", " 🙂"]
TEMPLATES = [None, "{input}", "Review:{input}\nSentiment:", "{input} The answer is", "Q:{input}",
             ("Text: ", ""), ("", " =>")]
ARCHS = ["neo", "gpt2", "llama"]
#: draws per property: 300 scorer draws in CI, ten times as many in ``make test-deep``
DEPTH = 10 if os.environ.get("SHAPSHIFT_DEEP") else 1
FULL_DRAWS = 300 * DEPTH


def _text(words: list[str]) -> str:
    text = "".join(words).lstrip(" ")
    return text if text.strip() else "x" + text  # a blank input is refused with a clear error, by design


@st.composite
def prompts(draw, tok):
    """An encoded prompt through the real path, and its target ids."""
    text = _text(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=7)))
    template = draw(st.sampled_from(TEMPLATES))
    if template is None:
        parts = PromptParts("", text, "")
    elif isinstance(template, tuple):
        parts = build_prompt(text, template[0] + "{input}" + template[1], tok)
    else:
        parts = build_prompt(text, template, tok)
    prompt = encode_prompt(parts, tok)
    target = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4))
    target_ids = tok("".join(target), add_special_tokens=False)["input_ids"][:4]
    return parts, prompt, target_ids


def as_log_prob(values: np.ndarray, score: str) -> np.ndarray:
    """``log p`` from log-probabilities or log-odds (``log p = -softplus(-log_odds)``, exact)."""
    return values if score == "log_prob" else -np.logaddexp(0.0, -values)


@st.composite
def coalitions(draw, n: int):
    rows = draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=0, max_size=5))
    ends = draw(st.sampled_from(["both", "empty", "full", "none"]))
    extra = {"both": [[False] * n, [True] * n], "empty": [[False] * n], "full": [[True] * n], "none": []}[ends]
    rows = extra + rows
    return np.asarray(rows or [[False] * n], dtype=bool)


def check_scorer_against_reference(data, model, tok, rtol: float = 0.0):
    parts, prompt, target = data.draw(prompts(tok))
    masks = data.draw(coalitions(len(prompt.input_ids)))
    masking = data.draw(st.sampled_from(MASKINGS))
    score = data.draw(st.sampled_from(["log_odds", "log_prob"]))
    batch_size = data.draw(st.sampled_from([1, 2, 3, 5, 32, None]))
    use_cache = data.draw(st.booleans())
    prefix_cache = None
    if use_cache and data.draw(st.booleans()):  # prefix reuse: the cache of another example under the same prefix
        other = TeacherForcedScorer(model, type(prompt)(prompt.prefix_ids, prompt.input_ids[:1], []), [target[0]])
        prefix_cache = other.prefix_cache
    scorer = TeacherForcedScorer(model, prompt, target, score=score, masking=masking, batch_size=batch_size,
                                 use_cache=use_cache, prefix_cache=prefix_cache)
    got = scorer(masks)
    expected = naive_scores(model, tok, prompt.prefix_ids, prompt.input_ids, prompt.suffix_ids, target, masks,
                            masking=masking, score=score)
    assert got.shape == (len(masks), len(target))
    # log-odds magnify float32 rounding by 1 / (1 - p) where p is near 1: compare both in log-probabilities
    np.testing.assert_allclose(as_log_prob(got, score), as_log_prob(expected, score), atol=1e-4, rtol=rtol,
                               err_msg=f"{parts!r} target={target} masking={masking} score={score} "
                                       f"batch={batch_size} cache={use_cache} reuse={prefix_cache is not None}")


@settings(max_examples=FULL_DRAWS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(ARCHS), data=st.data())
def test_scorer_equals_the_naive_reference_on_tiny_models(arch, data):
    model, tok = tiny(arch)
    check_scorer_against_reference(data, model, tok)


@pytest.mark.slow
@settings(max_examples=12 * DEPTH, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_scorer_equals_the_naive_reference_on_smollm2(smollm2, data):
    """30 float32 layers: batched and one-row matrix products differ by up to ~1.3e-4 nats at |score| ≈ 18
    (relative 7e-6), the rounding of float32 sums, not a scorer difference; hence 1e-4 + 1e-5 |score|."""
    model, tok = smollm2
    check_scorer_against_reference(data, model, tok, rtol=1e-5)


# -- explain() end to end: efficiency against the reference ---------------------------------------------
ESTIMATORS = ["exact", "kernel", "sampling", "hierarchical", "auto", "partition"]


def check_explain_efficiency(data, model, tok, method: str):
    text = _text(data.draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6)))
    context = data.draw(st.sampled_from(TEMPLATES))
    target = "".join(data.draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)))
    # partition masks with shap's Text masker only (its registry entry): any other masking is refused
    masking = "auto" if method == "partition" else data.draw(st.sampled_from(MASKINGS))
    score = data.draw(st.sampled_from(["log_odds", "log_prob"]))
    [exp] = shapshift.explain(model, tok, [text], targets=[target], context=context, method=method, max_evals=40,
                              masking=masking, score=score, seed=data.draw(st.integers(0, 3)), progress=False)
    parts = build_prompt(text, "{input}" if context is None else
                         (context if isinstance(context, str) else context[0] + "{input}" + context[1]), tok)
    prompt = encode_prompt(parts, tok)
    target_ids = tok(target, add_special_tokens=False)["input_ids"]
    n = len(prompt.input_ids)
    total = exp.base_values + exp.values.sum(axis=0)
    assert exp.values.shape[1] == len(target_ids)
    if method == "partition":  # shap's Text masker: masked tokens become '...'; the full input is the same
        import shap

        masked = str(shap.maskers.Text(tok)(np.zeros(len(exp.data), bool), parts.text)[0][0])
        lead, trail = parts.text[:len(parts.text) - len(parts.text.lstrip())], parts.text[len(parts.text.rstrip()):]
        empty, full = (naive_scores(model, tok, prompt.prefix_ids, ids, prompt.suffix_ids, target_ids,
                                    np.ones((1, len(ids)), bool), masking="delete", score=score)[0]
                       for ids in (tok(lead + masked + trail, add_special_tokens=False)["input_ids"], prompt.input_ids))
    else:
        assert exp.values.shape[0] == n
        empty, full = naive_scores(model, tok, prompt.prefix_ids, prompt.input_ids, prompt.suffix_ids, target_ids,
                                   np.array([[False] * n, [True] * n]), masking=masking, score=score)
    np.testing.assert_allclose(exp.base_values, empty, atol=1e-4, rtol=0)
    np.testing.assert_allclose(total, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ESTIMATORS)
@settings(max_examples=8 * DEPTH, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(ARCHS), data=st.data())
def test_explain_efficiency_against_the_reference(method, arch, data):
    model, tok = tiny(arch)
    check_explain_efficiency(data, model, tok, method)


def naive_greedy(model, tok, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy continuation, one full forward pass per token, cut before a newline or EOS (as documented)."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    out = ids[len(prompt_ids):]
    stops = [i for i, t in enumerate(out) if "\n" in tok.decode([t]) or t == tok.eos_token_id]
    return out[:max(stops[0], 1)] if stops else out


@pytest.mark.slow
@pytest.mark.parametrize("method", ESTIMATORS)
def test_the_first_calls_a_user_types_on_smollm2(smollm2, method):
    """The README's first call (no template, generated or multi-token target), and the two context forms."""
    model, tok = smollm2
    cases = [("The capital of France is", None, None), ("The capital of France is", None, " Paris, and"),
             ("The capital of France is", ("Question: ", "\nAnswer:"), " Paris"),
             ("The capital of France is", "{input}", " Paris, and")]
    for text, context, target in cases:
        [exp] = shapshift.explain(model, tok, [text], targets=None if target is None else [target], context=context,
                                  method=method, max_evals=48, max_new_tokens=3, progress=False)
        parts = build_prompt(text, "{input}" if context is None else
                             (context if isinstance(context, str) else context[0] + "{input}" + context[1]), tok)
        prompt = encode_prompt(parts, tok)
        target_ids = (tok(target, add_special_tokens=False)["input_ids"] if target is not None
                      else naive_greedy(model, tok, prompt.ids, 3))
        full = naive_scores(model, tok, prompt.prefix_ids, prompt.input_ids, prompt.suffix_ids, target_ids,
                            np.ones((1, len(prompt.input_ids)), bool), score=DEFAULT_SCORE)[0]
        assert len(exp.output_names) == len(target_ids) >= 1
        np.testing.assert_allclose(exp.base_values + exp.values.sum(axis=0), full, atol=1e-3, rtol=0)
