"""Features at the unit a reader reads: words and sentences as groups of tokens, masked together."""

from __future__ import annotations

import re
from itertools import combinations
from math import factorial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_scorer import naive_scores
from tiny_models import tiny

import shapshift
from shapshift.constants import DEFAULT_MASKING, DEFAULT_SCORE
from shapshift.errors import ConfigError
from shapshift.prompting import build_prompt, encode_prompt, feature_groups
from shapshift.store import RunStore, frame_to_explanations, load_explanations, save_explanations

pytestmark = pytest.mark.usefixtures("one_thread")

PIECES = [" the", " film", "good", " bad.", " Not", "!", " it", "'s", " über", " 🙂", "😀", "  ", "\n", " a. B",
          ",", " café", "?", " Really?", " x", "42"]


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=12), unit=st.sampled_from(["word", "sentence"]))
def test_groups_partition_the_tokens_into_the_readers_units(pieces, unit):
    _, tok = tiny("gpt2")
    text = "".join(pieces)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    groups = feature_groups(tok, ids, unit)
    assert [i for g in groups for i in g] == list(range(len(ids)))  # every token once, in order, contiguous
    decoded = tok.decode(ids, clean_up_tokenization_spaces=False)
    texts = [tok.decode([ids[i] for i in g], clean_up_tokenization_spaces=False) for g in groups]
    if unit == "word":
        words = decoded.split()
        if words:  # one group per whitespace-delimited word, holding that word
            assert [t.strip() for t in texts] == words
    else:
        sentences = [s for s in re.split(r"(?<=[.!?])[\"')\]]*\s+", decoded.strip()) if s]
        if sentences:
            assert len(groups) == len(sentences)


def brute_force_shapley(game, n: int) -> np.ndarray:
    """Shapley values ``(n, n_out)`` of ``game(mask) -> (n_out,)`` from the definition."""
    values = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = 0.0
        for size in range(n):
            for subset in combinations(others, size):
                mask = np.zeros(n, bool)
                mask[list(subset)] = True
                with_i = mask.copy()
                with_i[i] = True
                weight = factorial(size) * factorial(n - size - 1) / factorial(n)
                total = total + weight * (game(with_i) - game(mask))
        values.append(total)
    return np.asarray(values)


@pytest.mark.parametrize("arch", ["neo", "llama"])
@pytest.mark.parametrize("unit", ["word", "sentence"])
def test_word_values_are_the_shapley_values_of_the_word_game(arch, unit):
    """exact with unit=word equals brute-force Shapley values of the game whose players are words (the naive
    reference scorer, every token of an absent word masked); the stored table keeps each word's tokens."""
    model, tok = tiny(arch)
    text, template, target = "A friendly film. Not bad, really!", "Review:{input}\nSentiment:", " good."
    [exp] = shapshift.explain(model, tok, [text], targets=[target], context=template, method="exact", unit=unit,
                              progress=False)
    prompt = encode_prompt(build_prompt(text, template, tok), tok)
    groups = feature_groups(tok, prompt.input_ids, unit)
    target_ids = tok(target, add_special_tokens=False)["input_ids"]

    def game(unit_mask: np.ndarray) -> np.ndarray:
        token_mask = np.zeros(len(prompt.input_ids), bool)
        for g in np.flatnonzero(unit_mask):
            token_mask[groups[g]] = True
        return naive_scores(model, tok, prompt.prefix_ids, prompt.input_ids, prompt.suffix_ids, target_ids,
                            token_mask[None], masking=DEFAULT_MASKING, score=DEFAULT_SCORE)[0]

    expected = brute_force_shapley(game, len(groups))
    assert exp.values.shape == (len(groups), len(target_ids))
    np.testing.assert_allclose(exp.values, expected, atol=1e-4)
    assert [t.strip() for t in exp.data] == (text.split() if unit == "word" else ["A friendly film.", "Not bad, really!"])
    assert ["".join(ts) for ts in exp.feature_tokens] == list(exp.data)


def test_units_survive_the_run_folder(tmp_path):
    model, tok = tiny("gpt2")
    [exp] = shapshift.explain(model, tok, ["Not bad at all."], targets=[" yes"], method="kernel", unit="word",
                              max_evals=20, progress=False)
    store = RunStore(tmp_path)
    save_explanations(store, "02_baseline", [exp], [7], "baseline")
    table = store.read_parquet("02_baseline.parquet")
    assert "in_tokens" in table
    for _, [back] in (load_explanations(store, "02_baseline"), frame_to_explanations(table)):  # pickle; table alone
        assert back.feature_tokens == exp.feature_tokens and list(back.data) == list(exp.data)
        np.testing.assert_allclose(back.values, exp.values)


def test_partition_refuses_word_units():
    model, tok = tiny("gpt2")
    with pytest.raises(ConfigError, match="partition"):
        shapshift.explain(model, tok, ["Not bad."], targets=[" yes"], method="partition", unit="word", progress=False)


@pytest.mark.parametrize("method", ["input_x_gradient", "attention"])
def test_lenses_give_a_word_the_sum_of_its_tokens(method):
    model, tok = tiny("llama")
    text = "A friendly film. Not bad, really!"
    [tokens] = shapshift.explain(model, tok, [text], targets=[" good"], method=method, progress=False)
    [words] = shapshift.explain(model, tok, [text], targets=[" good"], method=method, unit="word", progress=False)
    groups = feature_groups(tok, tok(text, add_special_tokens=False)["input_ids"], "word")
    np.testing.assert_allclose(words.values, np.stack([tokens.values[g].sum(0) for g in groups]), atol=1e-5)
    assert [t.strip() for t in words.data] == text.split()
