"""Out-of-memory back-off and a fuzzed data loader."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shapshift.config import DataConfig
from shapshift.errors import DataError
from shapshift.generation import generate
from shapshift.prompting import EncodedPrompt
from shapshift.scoring import TeacherForcedScorer


class FlakyForward:
    """Makes the model's forward raise an out-of-memory error on its first ``n`` calls with batch > 1."""

    def __init__(self, model, n: int, message: str = "CUDA out of memory. Tried to allocate 2.00 GiB"):
        self.model, self.n, self.message, self.raised = model, n, message, 0
        self.original = model.forward

    def __enter__(self):
        def forward(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if self.raised < self.n and ids is not None and ids.shape[0] > 1:
                self.raised += 1
                raise RuntimeError(self.message)
            return self.original(*args, **kwargs)

        self.model.forward = forward
        return self

    def __exit__(self, *exc):
        self.model.forward = self.original


def test_scorer_halves_its_batch_on_out_of_memory(tiny_neo):
    model, tok = tiny_neo
    prompt = EncodedPrompt(tok("Q:")["input_ids"], tok(" one two three four", add_special_tokens=False)["input_ids"], [])
    masks = np.random.default_rng(0).random((24, len(prompt.input_ids))) > 0.5
    expected = TeacherForcedScorer(model, prompt, [5, 6], batch_size=16)(masks)
    scorer = TeacherForcedScorer(model, prompt, [5, 6], batch_size=16)
    with FlakyForward(model, 2) as flaky:
        got = scorer(masks)
    assert flaky.raised == 2 and scorer.batch_size == 4
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_scorer_does_not_swallow_other_errors(tiny_neo):
    model, tok = tiny_neo
    prompt = EncodedPrompt(tok("Q:")["input_ids"], tok(" one two", add_special_tokens=False)["input_ids"], [])
    scorer = TeacherForcedScorer(model, prompt, [5], batch_size=8)
    with FlakyForward(model, 1, message="shape mismatch"), pytest.raises(RuntimeError, match="shape mismatch"):
        scorer(np.ones((4, len(prompt.input_ids)), bool))


def test_generation_backs_off_on_out_of_memory(tiny_neo):
    model, tok = tiny_neo
    prompts = [tok(t)["input_ids"] for t in ["one two", "three four five", "six", "seven eight"]]
    expected = generate(model, tok, prompts, max_new_tokens=3, batch_size=4, stop_at_newline=False, progress=False)
    with FlakyForward(model, 2) as flaky:
        got = generate(model, tok, prompts, max_new_tokens=3, batch_size=4, stop_at_newline=False, progress=False)
    assert flaky.raised == 2 and got == expected


texts = st.one_of(
    st.just(""), st.just("   \t\n "), st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Cc", "Zs", "Lo", "So", "Mn"]), max_size=30),
    st.text(min_size=300, max_size=600),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(texts, min_size=1, max_size=8))
def test_fuzzed_texts_never_crash_and_every_row_is_accounted_for(smollm2, texts):
    from shapshift.data import preprocess

    tok = smollm2[1]
    table = pd.DataFrame({"text": texts, "label": ["positive"] * len(texts)})
    cfg = DataConfig(source="fuzz.csv", max_input_tokens=16, n_explain=2)
    try:
        out, report = preprocess(cfg, tok, table=table)
    except DataError as exc:  # only allowed when nothing usable is left
        assert "empty" in str(exc) or "No example" in str(exc)
        return
    assert report.n_kept + report.n_empty + report.n_dropped_too_long == report.n_rows == len(texts)
    assert len(out) == report.n_kept and out["n_input_tokens"].between(1, 16).all()
    assert set(out["split"]) <= {"explain", "train"} and (out["split"] == "explain").sum() == min(2, len(out))
