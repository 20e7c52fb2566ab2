"""A long explanation never starts silently (issue 28, item 5).

Before: ``explain()`` on a 600-token input sat at ``0/1`` for 15 minutes, ``exact`` on 16 tokens started
65,536 evaluations without a word, a generated ``'\\n'`` was explained for 211 s, and a precision target
missed (0.933 for 0.95) passed without a warning. Now: the cost is said from the first batch, ``exact``
refuses past its limit unless asked, a bar moves within the example, and both misses are warnings.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import shapshift
from shapshift.errors import ConfigError
from shapshift.explainers import api, progress
from shapshift.explainers.exact import EXACT_LIMIT

WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"


def _text_of(tok, n_tokens: int) -> str:
    words = WORDS.split()
    for k in range(1, len(words) + 1):
        text = " ".join(words[:k])
        if len(tok(text, add_special_tokens=False)["input_ids"]) >= n_tokens:
            return text
    raise AssertionError("no text that long")


def test_exact_refuses_past_its_limit_unless_asked(tiny_neo):
    model, tok = tiny_neo
    text = _text_of(tok, EXACT_LIMIT + 1)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    with pytest.raises(ConfigError, match=rf"(?s)2\^{n} = {2**n:,} model evaluations.*max_features"):
        shapshift.explain(model, tok, [text], targets=[" x"], method="exact", progress=False)
    [exp] = shapshift.explain(model, tok, [text], targets=[" x"], method="exact", options={"max_features": n},
                              progress=False)
    assert exp.n_evals == 2**n
    with pytest.raises(ConfigError, match="max_features"):
        shapshift.explain(model, tok, ["a b"], targets=[" x"], method="exact", options={"max_features": 17})


class RecordingBar:
    """Stands in for tqdm: records every bar made and each update."""

    made: list[RecordingBar] = []

    def __init__(self, iterable=None, total=None, desc=None, **_):
        self.iterable, self.total, self.desc, self.updates = iterable, total, desc, []
        RecordingBar.made.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def update(self, k):
        self.updates.append(k)

    def close(self):
        pass


def test_a_bar_moves_within_one_example(tiny_neo, monkeypatch):
    model, tok = tiny_neo
    RecordingBar.made = []
    monkeypatch.setattr(api, "tqdm", RecordingBar)
    monkeypatch.setattr(progress, "tqdm", RecordingBar)
    monkeypatch.setattr(progress, "CHUNK", 64)
    [exp] = shapshift.explain(model, tok, ["a quiet film about two brothers and their long drive"], targets=[" x"],
                              method="kernel", max_evals=300)
    inner = [b for b in RecordingBar.made if b.desc == "evaluations"]
    assert len(inner) == 1 and inner[0].total == 300
    assert len(inner[0].updates) >= 3 and sum(inner[0].updates) == exp.n_evals  # it moved within the example


def test_the_cost_of_a_long_call_is_said_from_the_first_batch(tiny_neo, monkeypatch, caplog):
    model, tok = tiny_neo
    monkeypatch.setattr(progress, "LONG_CALL_S", 0.0)  # every call is "long" here
    caplog.set_level(logging.WARNING, logger="shapshift")
    shapshift.explain(model, tok, ["a quiet film about two brothers"], targets=[" x"], method="sampling",
                      max_evals=200, progress=False)
    said = [r.getMessage() for r in caplog.records if "evaluations, about" in r.getMessage()]
    assert len(said) == 1 and "up to 200 evaluations" in said[0] and "(sampling, " in said[0], said


def test_a_whitespace_target_and_a_missed_precision_are_warnings(tiny_neo, caplog):
    model, tok = tiny_neo
    caplog.set_level(logging.WARNING, logger="shapshift")
    shapshift.explain(model, tok, ["good film"], targets=["\n"], method="exact", progress=False)
    assert any("only whitespace" in r.getMessage() for r in caplog.records)
    caplog.clear()
    [exp] = shapshift.explain(model, tok, ["a quiet film about two brothers and their long drive home"],
                              targets=[" x"], method="quadrature", precision=0.999, max_evals=60, progress=False)
    assert exp.precision < 0.999
    missed = [r.getMessage() for r in caplog.records if "precision" in r.getMessage()]
    assert missed and f"{exp.precision:.3f} reached of the 0.999 asked" in missed[0] and "max_evals=60" in missed[0]
    assert np.isfinite(exp.values).all()
