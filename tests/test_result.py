"""ExampleExplanation round-trips through every form it is stored in, for many shapes (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapshift.result import ExampleExplanation


@st.composite
def explanations(draw) -> ExampleExplanation:
    n_in, n_out = draw(st.integers(1, 7)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    words = draw(st.booleans())
    tokens = [[f"t{i}{j}" for j in range(draw(st.integers(1, 3)))] for i in range(n_in)] if words else None
    return ExampleExplanation(
        values=rng.normal(size=(n_in, n_out)), base_values=rng.normal(size=n_out),
        features=["".join(t) for t in tokens] if tokens else [draw(st.text(max_size=4)) for _ in range(n_in)],
        outputs=[draw(st.text(max_size=4)) for _ in range(n_out)],
        error_std=np.abs(rng.normal(size=(n_in, n_out))) if draw(st.booleans()) else None, feature_tokens=tokens,
        method=draw(st.sampled_from([None, "exact", "quadrature"])),
        n_evals=draw(st.one_of(st.none(), st.integers(0, 10_000))),
        precision=draw(st.one_of(st.none(), st.floats(0, 1))))


def _same(a: ExampleExplanation, b: ExampleExplanation) -> None:
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.base_values, b.base_values)
    assert (a.error_std is None) == (b.error_std is None)
    if a.error_std is not None:
        np.testing.assert_array_equal(a.error_std, b.error_std)
    assert (a.features, a.outputs, a.feature_tokens) == (b.features, b.outputs, b.feature_tokens)
    assert (a.method, a.n_evals) == (b.method, b.n_evals)
    assert a.precision == pytest.approx(b.precision) if a.precision is not None else b.precision is None


@settings(max_examples=60, deadline=None)
@given(explanations())
def test_round_trips(exp):
    _same(exp, ExampleExplanation.from_shap(exp.to_shap()))
    frame = exp.to_frame(7, "zero_shot")
    assert len(frame) == exp.values.size and set(frame["example_id"]) == {7}
    _same(exp, ExampleExplanation.from_frame(frame.sample(frac=1, random_state=0)))  # any row order
    back, extra = ExampleExplanation.from_npz(exp.to_npz(stats={"n_evals": 3}))
    _same(exp, back)
    assert extra == {"stats": {"n_evals": 3}}


def test_the_long_table_is_the_contract():
    exp = ExampleExplanation(values=[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], base_values=[0.5, -0.5],
                             features=["a", "b", "c"], outputs=["x", "y"])
    f = exp.to_frame(1, "baseline")
    row = f[(f["in_pos"] == 2) & (f["out_pos"] == 1)].iloc[0]
    assert (row["in_token"], row["out_token"], row["value"], row["base_value"]) == ("c", "y", 6.0, -0.5)
    # efficiency is readable from the table alone: base + sum over inputs = the full input's score
    sums = f.groupby("out_pos")["value"].sum() + f.groupby("out_pos")["base_value"].first()
    assert list(sums) == [9.5, 11.5]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="do not match"):
        ExampleExplanation(values=np.zeros((2, 1)), base_values=[0.0], features=["a"], outputs=["x"])


def test_it_draws_itself():
    exp = ExampleExplanation(values=[[1.0], [-2.0]], base_values=[0.0], features=["good", " film"], outputs=[" yes"])
    page = exp.text_plot_html()
    assert "good" in page and "rgba(" in page and "np.float64" not in page
