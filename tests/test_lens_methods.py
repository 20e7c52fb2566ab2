"""The cheaper lenses (input × gradient, integrated gradients, attention) behind ``explain()``.

References are independent of the lens code: finite differences of a score computed by hand from
the model's logits, the model's own ``output_attentions``, a naive rollout loop, and the scorer's
full-input score (the lenses must explain the very score the SHAP estimators explain).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import tiny

import shapshift
from shapshift.config import ExplainConfig
from shapshift.explainers import REGISTRY, explain_tasks, make_task
from shapshift.explainers.api import to_parts
from shapshift.validation import load_config

LENSES = ("input_x_gradient", "integrated_gradients", "attention", "attention_rollout")
TEXT, TEMPLATE, TARGET = "a warm , funny and moving film", "Review: {input}\nSentiment:", " positive great"


def task_for(model, tok, text=TEXT, template=TEMPLATE, target=TARGET, **options):
    parts = to_parts(text, template, tok, chat=False)  # as explain() builds it
    target_ids = tok(target, add_special_tokens=False)["input_ids"]
    return make_task(model, tok, parts, target_ids, **options)


def naive_scores(model, task, features: torch.Tensor, score: str) -> np.ndarray:
    """Scores ``(n_out,)`` from one plain forward pass over the whole sequence's embeddings, in float64."""
    ids = torch.tensor([task.prompt.ids + task.target_ids[:-1]])
    with torch.no_grad():
        emb = model.get_input_embeddings()(ids).double()
        start = len(task.prompt.prefix_ids)
        emb[0, start:start + task.n_features] = features
        logits = model(inputs_embeds=emb.to(model.dtype)).logits[0].double()
    n_out = len(task.target_ids)
    logp = torch.log_softmax(logits[-n_out:], -1)[torch.arange(n_out), torch.tensor(task.target_ids)]
    out = logp if score == "log_prob" else logp - torch.log1p(-logp.exp())
    return out.numpy()


@pytest.mark.parametrize("score", ["log_odds", "log_prob"])
def test_input_x_gradient_equals_finite_differences(score):
    """values[i, j] = d/dt f_j(x with token i's embedding scaled by 1 + t) at t = 0 (central differences)."""
    model, tok = tiny("gpt2", torch.float64)
    task = task_for(model, tok, score=score)
    [exp], _ = explain_tasks([task], "input_x_gradient", progress=False)
    start = len(task.prompt.prefix_ids)
    with torch.no_grad():
        x = model.get_input_embeddings()(torch.tensor([task.prompt.ids]))[0, start:start + task.n_features].double()
    h = 1e-4
    ref = np.zeros_like(exp.values)
    for i in range(task.n_features):
        up, down = x.clone(), x.clone()
        up[i] *= 1 + h
        down[i] *= 1 - h
        ref[i] = (naive_scores(model, task, up, score) - naive_scores(model, task, down, score)) / (2 * h)
    assert exp.values.shape == (task.n_features, len(task.target_ids))
    assert np.abs(ref).max() > 1e-3  # the check has something to check
    np.testing.assert_allclose(exp.values, ref, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_completeness_gap_shrinks_with_steps():
    model, tok = tiny("llama", torch.float64)
    gaps = []
    for steps in (4, 8, 16, 64):
        task = task_for(model, tok, options={"n_steps": steps, "max_steps": steps})
        [exp], [st] = explain_tasks([task], "integrated_gradients", progress=False)
        total = np.asarray(st["score_full"]) - exp.base_values
        np.testing.assert_allclose(st["completeness_gap"], total - exp.values.sum(0), atol=1e-9)
        gaps.append(np.abs(st["completeness_gap"]).max() / np.abs(total).max())
    # the scores are float32 (shapshift.scoring.token_scores), so the gap levels off near 1e-4 of the total
    assert all(later < earlier for earlier, later in zip(gaps[:3], gaps[1:3])), gaps
    assert gaps[-1] < 1e-3 < gaps[0], gaps


@pytest.mark.parametrize("baseline", ["pad", "zero", "mean"])
def test_integrated_gradients_base_value_is_the_baseline_embeddings_score(baseline):
    """base_values = f(baseline embeddings); the default baseline puts the pad token's embedding at every input slot."""
    model, tok = tiny("gpt2", torch.float64)
    options = {} if baseline == "pad" else {"baseline": baseline}
    task = task_for(model, tok, options=options)
    [exp], [st] = explain_tasks([task], "integrated_gradients", progress=False)
    table = model.get_input_embeddings().weight.detach().double()
    scorer = task.make_scorer()
    row = {"pad": table[scorer.mask_token_id], "zero": torch.zeros(32, dtype=torch.float64),
           "mean": table.mean(0)}[baseline]
    ref = naive_scores(model, task, row.expand(task.n_features, -1).clone(), task.score)
    np.testing.assert_allclose(exp.base_values, ref, rtol=1e-5)
    np.testing.assert_allclose(st["score_full"], scorer.full(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["score_baseline"], exp.base_values)


def test_input_x_gradient_is_relative_to_the_zero_embedding():
    model, tok = tiny("gpt2", torch.float64)
    task = task_for(model, tok)
    [exp], _ = explain_tasks([task], "input_x_gradient", progress=False)
    ref = naive_scores(model, task, torch.zeros(task.n_features, 32, dtype=torch.float64), task.score)
    np.testing.assert_allclose(exp.base_values, ref, rtol=1e-5)


@pytest.mark.parametrize("arch", ["neo", "gpt2", "llama"])
def test_attention_is_the_models_own_head_average(arch):
    """Column j = mean over heads of the last layer's attention probabilities, row = target j's predicting slot."""
    model, tok = tiny(arch)
    task = task_for(model, tok)
    [exp], _ = explain_tasks([task], "attention", progress=False)
    [roll], _ = explain_tasks([task], "attention_rollout", progress=False)
    ids = task.prompt.ids + task.target_ids[:-1]
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            maps = [a[0].double().numpy() for a in model(torch.tensor([ids]), output_attentions=True).attentions]
    finally:
        model.set_attn_implementation(before)
    start, n = len(task.prompt.prefix_ids), task.n_features
    rows = len(task.prompt.ids) - 1 + np.arange(len(task.target_ids))
    last = maps[-1].mean(0)
    np.testing.assert_allclose(exp.values, last[rows][:, start:start + n].T, atol=1e-6)
    assert np.all(exp.values >= 0) and np.all(exp.values.sum(0) <= 1 + 1e-6)
    assert np.all(exp.base_values == 0)
    # rollout, by a plain loop over layers
    r = np.eye(len(ids))
    for a in maps:
        m = 0.5 * a.mean(0) + 0.5 * np.eye(len(ids))
        r = (m / m.sum(1, keepdims=True)) @ r
    np.testing.assert_allclose(roll.values, r[rows][:, start:start + n].T, atol=1e-5)
    assert model.config._attn_implementation == before


def test_attention_restores_the_attention_implementation(smollm2):
    model, tok = smollm2
    before = model.config._attn_implementation
    shapshift.explain(model, tok, ["fine"], targets=[" yes"], method="attention", progress=False)
    assert model.config._attn_implementation == before


@pytest.mark.parametrize("arch", ["neo", "gpt2", "llama", "smollm2"])
def test_every_lens_on_every_architecture(arch, smollm2, one_thread):
    """Same features, targets and result type as SHAP; gradients explain SHAP's score (same full-input value)."""
    model, tok = smollm2 if arch == "smollm2" else tiny(arch)
    kw = dict(targets=[TARGET], context=TEMPLATE, progress=False)
    [shap_exp] = shapshift.explain(model, tok, [TEXT], method="exact" if arch != "smollm2" else "kernel",
                                   max_evals=64, **kw)
    full = shap_exp.base_values + shap_exp.values.sum(0)  # efficiency: the score of the full input
    for method in LENSES:
        assert not REGISTRY[method].is_shap
        # on SmolLM2 integrated gradients is held at 32 steps: nothing below needs its convergence there (raising the
        # steps until the gap is small on SmolLM2 is test_integrated_gradients_raises_its_steps_until_the_gap_is_small)
        options = {"max_steps": 32} if method == "integrated_gradients" and arch == "smollm2" else {}
        [exp] = shapshift.explain(model, tok, [TEXT], method=method, options=options, **kw)
        assert exp.values.shape == shap_exp.values.shape
        assert list(exp.data) == list(shap_exp.data) and list(exp.output_names) == list(shap_exp.output_names)
        assert np.all(np.isfinite(exp.values)) and np.abs(exp.values).max() > 0
        if "gradient" in method:
            task = task_for(model, tok, score=ExplainConfig().score, options=options)  # the score explain() explained
            [_], [st] = explain_tasks([task], method, progress=False)
            np.testing.assert_allclose(st["score_full"], full, rtol=1e-4, atol=1e-4)
            if method == "integrated_gradients" and arch != "smollm2":  # a real model needs ~128 steps for 2 %
                span = np.abs(np.asarray(st["score_full"]) - exp.base_values).max()
                assert np.abs(st["completeness_gap"]).max() < 0.02 * span + 1e-4


def test_the_prefix_cache_does_not_change_gradients():
    model, tok = tiny("neo")
    long = "You judge reviews. " * 6 + TEMPLATE
    a = explain_tasks([task_for(model, tok, template=long)], "integrated_gradients", progress=False)[0][0]
    b = explain_tasks([task_for(model, tok, template=long, use_cache=False)], "integrated_gradients", progress=False)[0][0]
    np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-6)


def test_unknown_method_lists_the_lenses(tiny_neo):
    model, tok = tiny_neo
    with pytest.raises(shapshift.ShapshiftError, match="saliency") as err:
        shapshift.explain(model, tok, ["x"], targets=[" y"], method="saliency", progress=False)
    message = " ".join(str(err.value).split())
    assert all(name in message for name in ("input_x_gradient", "integrated_gradients", "attention_rollout"))


def test_a_missing_lens_package_says_what_to_install(tiny_neo, monkeypatch, tmp_path):
    """Issue 28 item 4: Captum was in the dev extra only, so a plain install failed on a gradient lens with
    ModuleNotFoundError. Now the `lenses` extra holds it, the notebooks install it with the lens, and without it
    explain() and a run say in one sentence what to install (before any model time)."""
    import re
    import sys
    from pathlib import Path

    from shapshift import colab
    from shapshift.errors import ConfigError
    from shapshift.explainers.gradients import CAPTUM
    from shapshift.pipeline import run

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"{CAPTUM}"' in re.search(r"^lenses = \[(.*)\]$", pyproject, re.M).group(1)
    core = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.M | re.S).group(1)
    assert "captum" not in core  # not a dependency of every install: the lens's extra
    assert colab.lens_command(["auto", "integrated_gradients"]) == []  # installed here: nothing to do
    monkeypatch.setitem(sys.modules, "captum", None)  # as on a plain install
    model, tok = tiny_neo
    for method in ("input_x_gradient", "integrated_gradients"):
        with pytest.raises(ConfigError, match=r"(?s)not installed.*pip install\s+'captum>=0.7'"):
            shapshift.explain(model, tok, ["good film"], targets=[" yes"], method=method, progress=False)
    assert colab.lens_command(["auto", "integrated_gradients"])[-1] == CAPTUM
    assert colab.lens_command(["auto", "attention"]) == []  # attention needs nothing more
    cfg = load_config({"output_dir": str(tmp_path), "model": {"spec": "tiny-gpt-neo"},
                               "explain": {"methods": ["auto", "integrated_gradients"]}})
    with pytest.raises(ConfigError, match="captum"):
        run(cfg)
    assert not (tmp_path / cfg.name).exists()


def test_integrated_gradients_raises_its_steps_until_the_gap_is_small(smollm2, caplog):
    """Issue 28 item 3: on the README's lens example the gap at 32 steps is most of f(x) - f(reference) (Captum's
    convergence delta). The default now doubles the steps until the gap is at most 5 % (it is reported in the stats),
    and a run held at 32 steps says it did not converge."""
    import logging

    from shapshift.explainers.gradients import IG_TOLERANCE

    model, tok = smollm2
    parts = to_parts("A warm, funny film", "Review: {input}\nSentiment:", tok, False)
    ids = tok(" positive", add_special_tokens=False)["input_ids"]
    caplog.set_level(logging.WARNING, logger="shapshift")
    _, [stats] = explain_tasks([make_task(model, tok, parts, ids)], "integrated_gradients", progress=False)
    assert stats["relative_gap"] <= IG_TOLERANCE and stats["n_steps"] > 32, stats
    assert abs(stats["completeness_gap"][0]) <= IG_TOLERANCE * max(abs(stats["score_full"][0] - stats["score_baseline"][0]), 0.1)
    assert not caplog.records
    task = make_task(model, tok, parts, ids, options={"max_steps": 32})
    _, [held] = explain_tasks([task], "integrated_gradients", progress=False)
    assert held["relative_gap"] > IG_TOLERANCE and held["n_steps"] == 32
    assert any("did not converge" in r.getMessage() for r in caplog.records)


def test_explain_text_prints_lens_values_at_their_scale(capsys):
    """Issue 28 item 3: attention rollout's values on SmolLM2 are about 1e-7; they printed as +0.00."""
    from shapshift.cli import main

    assert main(["explain-text", "--text", "A warm, funny film", "--target", " positive", "--context",
                 "Review: {input}\\nSentiment:", "--method", "attention_rollout", "--out", "/tmp/rollout.pkl"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("largest |value|"))
    assert "+0.00" not in line and "e-0" in line, line
