"""Contrastive targets: log p(reference) - log p(foil), with efficiency and the right sign."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shapshift.explainers import explain_tasks, make_task
from shapshift.explainers.base import ContrastScorer
from shapshift.explainers.registry import check_explain
from shapshift.prompting import build_prompt, encode_prompt
from tests.tiny_models import tiny


def _logprob(model, ids: list[int], target: list[int]) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + target])).logits[0]
    rows = torch.log_softmax(logits[len(ids) - 1:len(ids) - 1 + len(target)].double(), -1)
    return float(rows[torch.arange(len(target)), torch.tensor(target)].sum())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_contrast_values_keep_efficiency_against_an_independent_rescoring(arch):
    model, tok = tiny(arch)
    parts = build_prompt("the film was slow but kind", "Review: {input}\nSentiment:", tok)
    ref, foil = tok(" negative", add_special_tokens=False)["input_ids"], tok(" Positive", add_special_tokens=False)["input_ids"]
    task = make_task(model, tok, parts, ref, contrast_ids=foil, unit="word", max_evals=64)
    [exp], [stats] = explain_tasks([task], "exact", progress=False)
    assert exp.values.shape == (task.n_features, 1) and stats["n_outputs"] == 1
    assert exp.output_names == ["negative vs Positive"]
    full = encode_prompt(parts, tok).ids
    contrast_full = _logprob(model, full, ref) - _logprob(model, full, foil)
    assert exp.base_values[0] + exp.values.sum() == pytest.approx(contrast_full, abs=1e-4)
    # the base value: the contrast with every word deleted from the text (the prefix and suffix alone)
    enc = encode_prompt(parts, tok)
    bare = enc.prefix_ids + enc.suffix_ids
    assert exp.base_values[0] == pytest.approx(_logprob(model, bare, ref) - _logprob(model, bare, foil), abs=1e-4)


class _Planted:
    """A game whose score depends on one input feature: ``weight`` when it is kept, 0 otherwise (per target token)."""

    def __init__(self, feature: int, weight: float, n_out: int = 1) -> None:
        self.feature, self.weight, self.n_out, self.n_evals = feature, weight, n_out, 0

    def __call__(self, masks):
        masks = np.asarray(masks, bool)
        self.n_evals += len(masks)
        return np.repeat(self.weight * masks[:, [self.feature]].astype(float) / self.n_out, self.n_out, axis=1)


def test_a_planted_contrast_is_explained_the_right_way_round():
    """The reference label rests on word 1, the other label on word 3: the contrast credits word 1 and
    debits word 3, whatever else the input holds."""
    model, tok = tiny("llama")
    parts = build_prompt("great plot awful acting overall", "Review: {input}\nSentiment:", tok)
    ref, foil = tok(" positive", add_special_tokens=False)["input_ids"], tok(" negative", add_special_tokens=False)["input_ids"]
    task = make_task(model, tok, parts, ref, contrast_ids=foil, unit="word")
    scorer = ContrastScorer(_Planted(1, 2.0, n_out=len(ref)), _Planted(3, 1.5, n_out=len(foil)))
    [exp], _ = explain_tasks([task], "exact", progress=False, scorers=[scorer])
    values = exp.values[:, 0]
    assert values[1] == pytest.approx(2.0) and values[3] == pytest.approx(-1.5)
    assert np.allclose(np.delete(values, [1, 3]), 0)
    # a sampling estimator agrees in sign and size
    task.max_evals = 64
    [est], _ = explain_tasks([task], "quadrature", progress=False,
                             scorers=[ContrastScorer(_Planted(1, 2.0), _Planted(3, 1.5))])
    assert est.values[1, 0] == pytest.approx(2.0, abs=0.2) and est.values[3, 0] == pytest.approx(-1.5, abs=0.2)


def test_contrastive_targets_refuse_what_cannot_explain_them():
    from shapshift.config import ExplainConfig, RunConfig
    from shapshift.errors import ConfigError

    with pytest.raises(ConfigError, match="log_prob"):
        check_explain(ExplainConfig(target="contrastive", score="log_odds"))
    with pytest.raises(ConfigError, match="partition"):
        check_explain(ExplainConfig(target="contrastive", method="partition"))
    cfg = RunConfig()
    cfg.explain.target, cfg.data.label_column = "contrastive", None
    with pytest.raises(ConfigError, match="label"):
        cfg.validate()


def test_explain_takes_contrasts_and_keeps_efficiency():
    from shapshift import explain

    model, tok = tiny("llama")
    [exp] = explain(model, tok, ["a slow but kind film"], targets=[" positive"], contrasts=[" negative"],
                    context="Review: {input}\nSentiment:", method="exact", unit="word", progress=False)
    parts = build_prompt("a slow but kind film", "Review: {input}\nSentiment:", tok)
    ids = encode_prompt(parts, tok).ids
    pos, neg = (tok(t, add_special_tokens=False)["input_ids"] for t in (" positive", " negative"))
    assert exp.values.shape == (5, 1) and exp.output_names == ["positive vs negative"]
    assert exp.base_values[0] + exp.values.sum() == pytest.approx(_logprob(model, ids, pos) - _logprob(model, ids, neg),
                                                                  abs=1e-4)
