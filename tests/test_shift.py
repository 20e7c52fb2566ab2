"""The whole comparison against known answers: a null condition is reported unchanged, a planted change is found.

The model is the real SmolLM2. The null condition is the baseline model with 1e-5 Gaussian noise added to
every weight (behaviour unchanged); the planted condition is the baseline model made to rely on one
word (" boring"): wherever it is visible, the logit of the explained target rises by 3 (so its value
should rise by about 3 and no other word's should move). Each is explained as the pipeline explains a condition (the baseline's seed: common
random numbers), the baseline once more with another seed (the noise floor), and stage 4 (``run_compare``)
runs on the run folder; its verdicts are checked.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shapshift
from shapshift import shift
from shapshift.compare import CHANGES_FILE, VERDICT_SUMMARY_FILE, VERDICTS_FILE, run_compare
from shapshift.config import CompareConfig
from shapshift.explanation import Explanation
from shapshift.store import RunStore, save_explanations

TEXTS = ["The plot was boring and far too slow.", "A boring film with a great cast.",
         "Honestly boring, though the music is nice.", "Long, loud and boring from start to end."]
TEMPLATE = "Review: {input}\nSentiment:"


def Exp(values, error_std=None, data=None) -> Explanation:  # noqa: N802 - an explanation of given values, for the fast unit tests
    values = np.asarray(values, float)
    return Explanation(values=values, base_values=np.zeros(values.shape[1]), error_std=error_std,
                       features=data if data is not None else [f"t{i}" for i in range(len(values))],
                       outputs=[f"o{j}" for j in range(values.shape[1])])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 30), scale=st.floats(0.01, 2.0), seed=st.integers(0, 10_000))
def test_pure_noise_is_rarely_called_a_change(n, scale, seed):
    """Two explanations of one model that differ only by their estimators' noise (the stated standard errors):
    no feature is called changed at FDR 5 % in most draws (checked over many draws below)."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, 1))
    se = np.full((n, 1), scale)
    a, b = Exp(truth + scale * rng.normal(size=(n, 1)), se), Exp(truth + scale * rng.normal(size=(n, 1)), se)
    table = shift.feature_changes(a, b, fdr=0.05, min_change=0.0)
    assert table["changed"].sum() <= 2  # FDR control: a false discovery is rare, several are very rare


def test_false_alarm_rate_of_the_example_verdict_is_at_most_the_fdr():
    rng = np.random.default_rng(0)
    alarms = 0
    for _ in range(400):
        truth = rng.normal(size=(12, 2))
        se = np.full((12, 2), 0.3)
        a, b = Exp(truth + 0.3 * rng.normal(size=(12, 2)), se), Exp(truth + 0.3 * rng.normal(size=(12, 2)), se)
        alarms += shift.example_verdict(a, b, min_change=0.0)[0]["changed"]
    assert alarms / 400 <= 0.05  # BH under the global null controls the family-wise rate at the FDR level


def test_a_large_change_is_found_and_a_deterministic_rounding_change_is_not():
    base = Exp([[1.0], [0.2], [-0.5], [0.1]])
    moved = Exp([[1.0], [2.2], [-0.5], [0.1]], np.full((4, 1), 0.1))
    verdict, table = shift.example_verdict(base, moved)
    assert verdict["changed"] and verdict["n_changed"] == 1 and table.loc[1, "changed"]
    assert verdict["top_moved"].startswith("t1 (+2.00)")
    rounding = Exp(base.values + 1e-7)  # exact values (no error): only min_change stands between them
    assert not shift.example_verdict(base, rounding)[0]["changed"]


def test_a_sampled_value_with_a_zero_or_unknown_error_is_never_called_changed():
    """Issue 28 item 1: a sampled feature reported with error 2e-16 (or NaN) beside others of 0.3 made z about
    -1e15 and a "change"; it is now left untested (z and p NaN) and the others are tested as before."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(9, 1))
    for tiny in (2e-16, 0.0, np.nan):
        se = np.full((9, 1), 0.3)
        se[-1] = tiny
        a, b = Exp(truth, se), Exp(truth + np.r_[np.zeros(8), 0.4][:, None], se)  # the last moves by about 1 SE
        verdict, table = shift.example_verdict(a, b)
        last = table.iloc[-1]
        assert not last["changed"] and np.isnan(last["z"]) and np.isnan(last["p"]), (tiny, last.to_dict())
        assert not verdict["changed"] and np.isfinite(verdict["reliability_b"])
        assert table["z"].iloc[:-1].abs().max() < 10


def test_reliability_is_one_without_noise_and_falls_with_it():
    values = np.linspace(-1, 1, 10)
    assert shift.reliability(values, np.zeros(10)) == 1.0
    high, low = shift.reliability(values, np.full(10, 0.01)), shift.reliability(values, np.full(10, 1.0))
    assert 0.95 < high <= 1.0 and low < 0.6


def plant_reliance(model, token_id: int, target_id: int, bonus: float):
    """The model, made to rely on one input token: wherever ``token_id`` is visible (in the row and not masked),
    every later position's logit of ``target_id`` rises by ``bonus``. A forward hook on the real model, so
    every scorer path (cache, compaction, padding) sees it; the known answer is a value of about ``+bonus``
    for that token and no change elsewhere."""
    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"]
        visible = ids == token_id
        if kwargs.get("attention_mask") is not None and kwargs["attention_mask"].dim() == 2:
            visible &= kwargs["attention_mask"][:, -ids.shape[1]:] > 0
        seen = visible.cumsum(dim=1) > 0  # (b, width): the token stands at or before this position
        keep = output.logits.shape[1]
        output.logits[:, :, target_id] += bonus * seen[:, -keep:].to(output.logits.dtype)
        return output

    model.register_forward_hook(hook, with_kwargs=True)
    return model


PLANTED_BONUS = 3.0


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, smollm2):
    model, tok = smollm2
    torch.manual_seed(0)
    null = copy.deepcopy(model)
    with torch.no_grad():
        for p in null.parameters():
            p.add_(1e-5 * torch.randn_like(p))
    [boring], [positive] = (tok(w, add_special_tokens=False)["input_ids"] for w in (" boring", " positive"))
    planted = plant_reliance(copy.deepcopy(model), boring, positive, PLANTED_BONUS)

    def run(m, seed):
        return shapshift.explain(m, tok, TEXTS, targets=[" positive"] * len(TEXTS), context=TEMPLATE, method="kernel",
                                 max_evals=100, seed=seed, progress=False)

    store = RunStore(tmp_path_factory.mktemp("run"))
    ids = list(range(len(TEXTS)))
    # the conditions' slots: 03_few_shot holds the null model, 03_finetuned the planted one
    for stem, cond, m, seed in [("02_baseline", "baseline", model, 0), ("02_baseline_rerun", "baseline_rerun", model, 1),
                                ("03_few_shot", "few_shot", null, 0), ("03_finetuned", "finetuned", planted, 0)]:
        save_explanations(store, stem, run(m, seed), ids, cond, {"method": "kernel"})
    run_compare(store.dir, CompareConfig(n_bootstrap=200))
    return store, boring


@pytest.mark.slow
def test_the_null_condition_is_reported_unchanged(run_folder):
    store, _ = run_folder
    verdicts = store.read_parquet(VERDICTS_FILE)
    null = verdicts[verdicts["condition_b"] == "few_shot"]
    assert len(null) == len(TEXTS) and not null["changed"].any()
    assert (null["spearman"] > 0.99).all()  # common random numbers: the same coalitions, the same ranking
    summary = pd.read_csv(store.path(VERDICT_SUMMARY_FILE))
    sentence = summary.set_index("condition_b").loc["few_shot", "sentence"]
    assert "did not change" in sentence and f"any of {len(TEXTS)} examples" in sentence


@pytest.mark.slow
def test_the_planted_change_is_detected_on_the_planted_word(run_folder):
    store, _ = run_folder
    verdicts = store.read_parquet(VERDICTS_FILE)
    planted = verdicts[verdicts["condition_b"] == "finetuned"]
    assert planted["changed"].all()
    changes = store.read_parquet(CHANGES_FILE)
    changes = changes[changes["condition_b"] == "finetuned"]
    for ex_id, g in changes.groupby("example_id"):
        top = g.loc[g["delta"].abs().idxmax()]
        assert top["in_token"] == " boring" and top["changed"], (ex_id, g.sort_values("delta").to_string())
        assert top["delta"] == pytest.approx(PLANTED_BONUS, abs=0.5)
        assert g["changed"].sum() == 1  # nothing else moved
    summary = pd.read_csv(store.path(VERDICT_SUMMARY_FILE)).set_index("condition_b")
    assert summary.loc["finetuned", "n_changed"] == len(TEXTS)
    assert f"in {len(TEXTS)} of {len(TEXTS)} examples" in summary.loc["finetuned", "sentence"]


class Recorder:
    """A scorer that remembers every coalition it was asked to score, in order."""

    def __init__(self, inner):
        self.inner, self.masks = inner, []

    def __call__(self, masks):
        self.masks.extend(np.asarray(masks, bool).tolist())
        return self.inner(masks)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("method", ["auto", "quadrature", "kernel", "sampling"])
def test_conditions_share_their_coalitions(method):
    """Common random numbers: two different models (two conditions) explained with one seed are asked about the
    same coalitions in the same order (an adaptive run may ask more of one: the shared part is identical);
    another seed asks about others."""
    from tiny_models import tiny

    from shapshift.explainers import explain_tasks, make_task
    from shapshift.prompting import build_prompt

    (model_a, tok), (model_b, _) = tiny("gpt2"), tiny("llama")
    parts = build_prompt("A film with a great cast, but far too slow and long.", "Review:{input}\nSentiment:", tok)
    target = tok(" good", add_special_tokens=False)["input_ids"]

    def coalitions(model, seed):
        task = make_task(model, tok, parts, target, max_evals=60, seed=seed, precision=0.99 if method == "auto" else None)
        recorder = Recorder(task.make_scorer())
        explain_tasks([task], method, progress=False, scorers=[recorder])
        return recorder.masks

    a, b, other = coalitions(model_a, 0), coalitions(model_b, 0), coalitions(model_a, 1)
    shared = min(len(a), len(b))
    assert shared >= 20 and a[:shared] == b[:shared]
    assert a[:shared] != other[:shared]
