"""The package's Explanation round-trips through every form it is stored in, for many shapes (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapshift.explanation import Explanation


@st.composite
def explanations(draw) -> Explanation:
    n_in, n_out = draw(st.integers(1, 7)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    words = draw(st.booleans())
    tokens = [[f"t{i}{j}" for j in range(draw(st.integers(1, 3)))] for i in range(n_in)] if words else None
    return Explanation(
        values=rng.normal(size=(n_in, n_out)), base_values=rng.normal(size=n_out),
        features=["".join(t) for t in tokens] if tokens else [draw(st.text(max_size=4)) for _ in range(n_in)],
        outputs=[draw(st.text(max_size=4)) for _ in range(n_out)],
        error_std=np.abs(rng.normal(size=(n_in, n_out))) if draw(st.booleans()) else None, feature_tokens=tokens,
        method=draw(st.sampled_from([None, "exact", "quadrature"])),
        n_evals=draw(st.one_of(st.none(), st.integers(0, 10_000))),
        precision=draw(st.one_of(st.none(), st.floats(0, 1))))


def _same(a: Explanation, b: Explanation) -> None:
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
    _same(exp, Explanation.from_shap(exp.to_shap()))
    frame = exp.to_frame(7, "zero_shot")
    assert len(frame) == exp.values.size and set(frame["example_id"]) == {7}
    _same(exp, Explanation.from_frame(frame.sample(frac=1, random_state=0)))  # any row order
    back, extra = Explanation.from_npz(exp.to_npz(stats={"n_evals": 3}))
    _same(exp, back)
    assert extra == {"stats": {"n_evals": 3}}


def test_the_long_table_is_the_contract():
    exp = Explanation(values=[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], base_values=[0.5, -0.5],
                             features=["a", "b", "c"], outputs=["x", "y"])
    f = exp.to_frame(1, "baseline")
    row = f[(f["in_pos"] == 2) & (f["out_pos"] == 1)].iloc[0]
    assert (row["in_token"], row["out_token"], row["value"], row["base_value"]) == ("c", "y", 6.0, -0.5)
    # efficiency is readable from the table alone: base + sum over inputs = the full input's score
    sums = f.groupby("out_pos")["value"].sum() + f.groupby("out_pos")["base_value"].first()
    assert list(sums) == [9.5, 11.5]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="do not match"):
        Explanation(values=np.zeros((2, 1)), base_values=[0.0], features=["a"], outputs=["x"])


def test_it_draws_itself():
    exp = Explanation(values=[[1.0], [-2.0]], base_values=[0.0], features=["good", " film"], outputs=[" yes"])
    page = exp.text_plot_html()
    assert "good" in page and "rgba(" in page and "np.float64" not in page


@settings(max_examples=25, deadline=None)
@given(explanations())
def test_it_saves_and_loads_itself(tmp_path_factory, exp):
    exp.settings, exp.diagnostics = {"score": "log_prob", "options": {"fanout": 4}}, {"requests": 12.0}
    path = exp.save(tmp_path_factory.mktemp("x") / "one.parquet")
    back = Explanation.load(path)
    _same(exp, back)
    assert (back.settings, back.diagnostics) == (exp.settings, exp.diagnostics)


def test_shaps_names_and_shaps_plots():
    exp = Explanation(values=[[1.0], [-2.0]], base_values=[0.5], features=["good", " film"], outputs=[" yes"],
                      method="exact", n_evals=4, precision=1.0, seconds=0.2)
    assert list(exp.data) == ["good", " film"] and exp.output_names == [" yes"] and exp.target == " yes"
    assert exp.stored().seconds is None and exp.seconds == 0.2
    shap_exp = exp.to_shap()
    assert shap_exp.method == "exact" and list(shap_exp.output_names) == [" yes"]
    assert "good" in exp._repr_html_() and "2 features × 1 outputs" in repr(exp)


def test_an_old_run_folders_shap_objects_are_read_as_explanations(tmp_path):
    """Run folders written before this type pickled shap.Explanation objects: they load as Explanations."""
    import pickle

    import shap

    from shapshift.store import RunStore, load_explanations, save_explanations

    store = RunStore(tmp_path / "run")
    ours = Explanation(values=[[1.0, 0.5], [-2.0, 0.0]], base_values=[0.5, -1.0], features=["a", "b"],
                       outputs=["x", "y"], error_std=[[0.1, 0.1], [0.2, 0.2]], method="kernel", n_evals=10,
                       precision=0.9)
    save_explanations(store, "02_baseline", [ours], [3], "baseline")
    old = shap.Explanation(values=ours.values, base_values=ours.base_values, data=ours.data,
                           output_names=ours.outputs, error_std=ours.error_std)
    old.method, old.n_evals, old.precision = "kernel", 10, 0.9
    payload = pickle.loads(store.path("02_baseline.pkl").read_bytes())
    assert isinstance(payload["explanations"][0], Explanation)  # what a run stores now: the package's own type
    payload["explanations"] = [old]
    store.path("02_baseline.pkl").write_bytes(pickle.dumps(payload, protocol=4))
    store.record("02_baseline.pkl")
    ids, [back] = load_explanations(store, "02_baseline")
    assert ids == [3] and isinstance(back, Explanation)
    _same(ours, back)
