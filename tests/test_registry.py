"""The estimator registry: one class in one module is a new method everywhere; options are typed and checked.

The toy estimator below is defined and registered in this file only, as a user's module would do it;
the tests show that the run configuration, ``explain()``, the method lists and the comparison stage
accept it without any other file knowing its name, and that its options reach its constructor.
Its values are checked against an independent computation with the teacher-forced scorer.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import shap

import shapshift
from shapshift.config import apply_overrides
from shapshift.errors import ConfigError
from shapshift.explainers import REGISTRY, Estimator, method_choices, register, shap_methods
from shapshift.explainers.base import Attribution, scorer_attribution
from shapshift.explainers.registry import (
    auto_candidates,
    choose_method,
    is_deterministic,
    lens_methods,
    masking_used,
    round_methods,
)
from shapshift.prompting import build_prompt, encode_prompt
from shapshift.scoring import TeacherForcedScorer
from shapshift.store import RunStore, save_explanations, stored_methods
from shapshift.validation import load_config

CONTEXT = "Review:{input}\nSentiment:"


@dataclass(frozen=True)
class LeaveOneOutOptions:
    """``scale``: a factor on every value (a toy option with a default and a check)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError(f"toy_leave_one_out's scale={self.scale} must be positive.", "Use e.g. scale=1.")


class LeaveOneOut(Estimator):
    """A toy: each feature's value is ``scale * (f(all) - f(all but it))``; ``n + 2`` evaluations."""

    name = "toy_leave_one_out"
    Options = LeaveOneOutOptions
    budget = "ignored: n + 2 evaluations"

    def attribute(self, task, scorer) -> Attribution:
        n = task.n_features
        masks = np.concatenate([np.zeros((1, n), bool), np.ones((1, n), bool), ~np.eye(n, dtype=bool)])
        v = scorer(masks)
        return scorer_attribution(scorer, self.options.scale * (v[1] - v[2:]), v[0])


@pytest.fixture
def toy():
    """The toy registered for one test (as importing its module would), and unregistered afterwards."""
    register(LeaveOneOut)
    yield LeaveOneOut
    REGISTRY.pop(LeaveOneOut.name)


def test_a_registered_estimator_is_selectable_everywhere(toy, tiny_neo):
    assert toy.name in shap_methods() and toy.name in method_choices() and toy.name not in lens_methods()
    cfg = load_config({"explain": {"method": toy.name, "options": {"scale": 2}}})
    assert cfg.explain.options == {"scale": 2}
    assert is_deterministic([toy.name]) is True  # what compare reads for the noise floor
    model, tok = tiny_neo
    text = "a quiet film about two brothers"
    [one] = shapshift.explain(model, tok, [text], targets=[" positive"], context=CONTEXT, method=toy.name, progress=False)
    [two] = shapshift.explain(model, tok, [text], targets=[" positive"], context=CONTEXT, method=toy.name,
                              options={"scale": 2.0}, progress=False)
    # independently: the full input and each leave-one-out input scored one at a time, without the prefix cache
    prompt = encode_prompt(build_prompt(text, CONTEXT, tok), tok)
    target = tok(" positive", add_special_tokens=False)["input_ids"]
    ref = TeacherForcedScorer(model, prompt, target, use_cache=False, batch_size=1)
    n = len(prompt.input_ids)
    expected = ref(np.ones((1, n), bool))[0] - ref(~np.eye(n, dtype=bool))
    np.testing.assert_allclose(one.values, expected, atol=1e-5)
    np.testing.assert_allclose(two.values, 2 * expected, atol=1e-5)
    np.testing.assert_allclose(one.base_values, ref.empty(), atol=1e-5)
    assert one.n_evals == n + 2 and one.method == toy.name


def test_an_unregistered_estimator_is_refused():
    assert "toy_leave_one_out" not in REGISTRY
    with pytest.raises(ConfigError, match="toy_leave_one_out"):
        load_config({"explain": {"method": "toy_leave_one_out"}})


def test_options_are_checked_against_the_methods_that_take_them(toy):
    with pytest.raises(ConfigError, match=r"no option\(s\) 'rollout'") as err:
        toy({"rollout": True})
    assert "scale=1.0" in str(err.value)  # the allowed options, with their defaults
    with pytest.raises(ConfigError, match="scale=0"):
        load_config({"explain": {"method": toy.name, "options": {"scale": 0}}})
    with pytest.raises(ConfigError, match=r"'fanout'.*no method.*kernel") as err:
        load_config({"explain": {"method": "kernel", "options": {"fanout": 3}}})
    assert "kernel: none" in " ".join(str(err.value).split())
    # auto may choose levels, so its fanout is an option of auto; a bad value is refused by levels
    assert load_config({"explain": {"options": {"fanout": 3}}}).explain.options == {"fanout": 3}
    with pytest.raises(ConfigError, match="fanout=1 must be between 2 and 8"):
        load_config({"explain": {"options": {"fanout": 1}}})
    # a lens beside the SHAP method brings its options; --set values are typed by the option
    cfg = load_config(apply_overrides({"explain": {"methods": ["auto", "integrated_gradients"]}},
                                              ["explain.options.n_steps=64", "explain.options.baseline=zero"]))
    assert REGISTRY["integrated_gradients"].make_options(cfg.explain.options).n_steps == 64
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(apply_overrides({}, ["explain.options.fanout=wide"]))
    with pytest.raises(ConfigError, match="baseline='noise' is not pad, zero or mean"):
        shapshift.explain(None, None, ["x"], method="integrated_gradients", options={"baseline": "noise"})


def test_the_fanout_option_reaches_hierarchical(tiny_neo):
    model, tok = tiny_neo
    text = "The film was long. The cast was great, but the plot dragged on and on. I left early."
    runs = {f: shapshift.explain(model, tok, [text], targets=[" bad"], context=CONTEXT, method="hierarchical",
                                 max_evals=400, options={"fanout": f}, progress=False)[0] for f in (2, 4)}
    task = shapshift.explainers.make_task(model, tok, build_prompt(text, CONTEXT, tok),
                                          tok(" bad", add_special_tokens=False)["input_ids"], max_evals=400)
    direct = REGISTRY["hierarchical"]({"fanout": 2}).attribute(task, task.make_scorer())
    np.testing.assert_allclose(runs[2].values, direct.values, atol=1e-6)
    assert runs[2].n_evals != runs[4].n_evals  # 2^2 vs 2^4 coalitions per refined span


def test_auto_is_a_policy_over_the_entries():
    ladder = [(c.name, c.auto_max_features) for c in auto_candidates()]
    assert ladder == [("exact", 5), ("quadrature", 32), ("levels", None)]
    assert [choose_method(n) for n in (1, 5, 6, 32, 33, 2000)] == ["exact"] * 2 + ["quadrature"] * 2 + ["levels"] * 2
    assert set(round_methods()) == {"quadrature", "kernel", "sampling", "regression", "levels"}
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.budget and cls.make_options({}) is not None
    assert {n for n, c in REGISTRY.items() if c.deterministic} >= {"exact", "hierarchical", "attention"}
    assert not REGISTRY["quadrature"].deterministic and not REGISTRY["levels"].deterministic


def test_partition_records_and_enforces_its_own_masking(tiny_neo):
    """shap's Text masker is the only masking partition runs: other maskings are refused, and the run records it."""
    model, tok = tiny_neo
    for masking in ("attention", "delete", "replace"):
        with pytest.raises(ConfigError, match=f"partition cannot mask with '{masking}'"):
            shapshift.explain(model, tok, ["fine"], targets=[" x"], method="partition", masking=masking, progress=False)
        assert masking_used("partition", masking) == "shap_text" and masking_used("kernel", masking) == masking
    with pytest.raises(ConfigError, match="masking='shap_text' is unknown"):  # partition's own, not kernel's
        load_config({"explain": {"method": "kernel", "masking": "shap_text"}})
    load_config({"explain": {"method": "partition", "masking": "shap_text"}})


def test_compare_reads_the_stored_method_column(tmp_path):
    from shapshift.compare import baseline_is_deterministic

    store = RunStore(tmp_path)
    exp = shap.Explanation(values=np.ones((3, 2)), base_values=np.zeros(2), data=np.array(["a", "b", "c"], dtype=object),
                           output_names=["x", "y"])
    assert baseline_is_deterministic(store) is None  # nothing stored, no config
    for method, expected in (("hierarchical", True), ("kernel", False), ("no_such_method", None)):
        exp.method = method
        save_explanations(store, "02_baseline", [exp], [0], "baseline", {"method": "auto"})
        assert stored_methods(store, "02_baseline") == [method]
        assert store.read_parquet("02_baseline.parquet")["method"].eq(method).all()
        assert baseline_is_deterministic(store) is expected


def test_importing_the_config_stays_cheap():
    """The registry (torch) is read when a configuration is validated, never when shapshift.config is imported."""
    code = "import sys, shapshift.config, shapshift.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
