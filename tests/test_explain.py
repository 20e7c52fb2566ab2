"""The explanation contract on real models: efficiency, the known answer, round trips, the CLI twin."""

import pickle

import numpy as np
import pytest

import shapshift
from shapshift.cli import main
from shapshift.explainers import make_task
from shapshift.prompting import build_prompt
from shapshift.scoring import TeacherForcedScorer
from shapshift.store import RunStore, frame_to_explanations, load_explanations, save_explanations


def _independent_scores(model, tok, text, context, target):
    """Full and fully masked scores, computed without the explainer."""
    parts = build_prompt(text, context, tok)
    task = make_task(model, tok, parts, tok(target, add_special_tokens=False)["input_ids"])
    scorer = TeacherForcedScorer(model, task.prompt, task.target_ids, use_cache=False)
    return scorer.full(), scorer.empty()


@pytest.mark.parametrize("method", ["exact", "sampling", "partition"])
def test_efficiency_on_gpt_neo(tiny_neo, method):
    model, tok = tiny_neo
    text, context, target = "a quiet film about two brothers", "Review:{input}\nSentiment:", " positive and warm"
    [exp] = shapshift.explain(model, tok, [text], targets=[target], context=context, method=method,
                              max_evals=64, progress=False)
    n_in = len(tok(" " + text, add_special_tokens=False)["input_ids"])
    assert exp.values.shape == (n_in, len(exp.output_names))
    total = exp.base_values + exp.values.sum(axis=0)
    if method == "partition":  # shap's own masking: '...' replaces masked tokens; check against its own outputs
        assert np.all(np.isfinite(total))
        return
    full, empty = _independent_scores(model, tok, text, context, target)
    np.testing.assert_allclose(exp.base_values, empty, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(total, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["exact", "partition"])
def test_known_answer_capital_of_france(smollm2, method):
    """' Paris' after 'The capital of France is' rests on ' France' and ' capital', not on 'The' and ' of'.

    After the model's start token (<|im_start|>): exact attention-masked values France 5.3, is 4.2,
    capital 3.9, of 2.7, The 2.3; shap's Partition (masked tokens written '...') capital 6.2,
    France 3.8, is 2.6, The 0.4, of 0.3.
    """
    model, tok = smollm2
    [exp] = shapshift.explain(model, tok, ["The capital of France is"], targets=[" Paris"], method=method,
                              progress=False)
    assert exp.output_names == [" Paris"]
    order = [exp.data[i] for i in np.argsort(-exp.values[:, 0])]
    assert {" capital", " France"} <= set(order[:3]) and set(order[-2:]) == {"The", " of"}
    if method == "partition":
        assert set(order[:2]) == {" capital", " France"}
    else:
        assert order[0] == " France"
    if method == "partition":  # the full input is scored as by every estimator
        full, _ = _independent_scores(model, tok, "The capital of France is", "{input}", " Paris")
        np.testing.assert_allclose(exp.base_values + exp.values.sum(0), full, rtol=1e-4, atol=1e-3)
    else:
        full, empty = _independent_scores(model, tok, "The capital of France is", "{input}", " Paris")
        np.testing.assert_allclose(exp.base_values, empty, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(exp.base_values + exp.values.sum(0), full, rtol=1e-4, atol=1e-4)


def test_generated_targets_and_round_trip(tiny_neo, tmp_path):
    model, tok = tiny_neo
    exps = shapshift.explain(model, tok, ["one two three", "four five"], context="Q:{input}\nA:",
                             method="exact", max_new_tokens=3, stop_at_newline=False, progress=False)
    assert [e.values.shape[1] for e in exps] == [3, 3]
    store = RunStore(tmp_path)
    save_explanations(store, "02_baseline", exps, [7, 9], "baseline")
    ids, from_pickle = load_explanations(store, "02_baseline")
    ids2, from_parquet = frame_to_explanations(store.read_parquet("02_baseline.parquet"))
    assert ids == ids2 == [7, 9]
    for a, b, c in zip(exps, from_pickle, from_parquet):
        np.testing.assert_array_equal(a.values, c.values)
        np.testing.assert_array_equal(a.base_values, c.base_values)
        assert list(a.data) == list(b.data) == list(c.data)
        assert list(a.output_names) == list(c.output_names)


def test_text_plot_renders_a_stored_explanation(tiny_neo):
    import shap

    model, tok = tiny_neo
    [exp] = shapshift.explain(model, tok, ["one two three"], targets=[" four five"], method="exact", progress=False)
    html = shap.plots.text(exp, display=False)
    assert " two" in html or "two" in html


def test_explain_text_cli(tmp_path, capsys):
    out = tmp_path / "exp.pkl"
    assert main(["explain-text", "--model", "tiny-gpt-neo", "--text", "good film", "--target", " yes",
                 "--method", "exact", "--out", str(out)]) == 0
    exp = pickle.loads(out.read_bytes())
    assert exp.values.shape == (2, 1)
    assert "largest |value|" in capsys.readouterr().out
    # words as features, to a precision: a word of two tokens is one feature
    assert main(["explain-text", "--model", "tiny-gpt-neo", "--text", "a goodish film", "--target", " yes",
                 "--unit", "word", "--precision", "0.9", "--out", str(out)]) == 0
    exp = pickle.loads(out.read_bytes())
    assert list(exp.data) == ["a", " goodish", " film"] and exp.values.shape == (3, 1)


def test_explain_text_reads_backslash_n_as_a_newline_like_set(tmp_path, tiny_neo):
    """Issue 28 item 7: `--context 'Review: {input}\\nSentiment:'` (a backslash and an n, as a shell passes it) is
    a newline, as `--set data.template=...` and the config's error messages treat it: one rule for text typed in."""
    from shapshift.coerce import parse_value

    typed = "Review: {input}\\nSentiment:"
    assert parse_value(typed, text=True) == "Review: {input}\nSentiment:"  # --set's rule
    out = tmp_path / "exp.pkl"
    assert main(["explain-text", "--model", "tiny-gpt-neo", "--text", "good film", "--target", " yes",
                 "--method", "exact", "--context", typed, "--out", str(out)]) == 0
    model, tok = tiny_neo
    [want] = shapshift.explain(model, tok, ["good film"], targets=[" yes"], method="exact",
                               context="Review: {input}\nSentiment:", progress=False)
    np.testing.assert_allclose(pickle.loads(out.read_bytes()).values, want.values, atol=1e-6)


def test_bad_inputs_are_clear_errors(tiny_neo):
    model, tok = tiny_neo
    with pytest.raises(shapshift.ShapshiftError, match="empty input"):
        shapshift.explain(model, tok, ["   "], targets=[" x"], progress=False)
    with pytest.raises(shapshift.ShapshiftError, match="has no tokens"):
        shapshift.explain(model, tok, ["fine"], targets=[""], progress=False)
    with pytest.raises(shapshift.ShapshiftError, match="method='magic' is unknown"):
        shapshift.explain(model, tok, ["fine"], targets=[" x"], method="magic", progress=False)
    with pytest.raises(shapshift.ShapshiftError, match="masking='blur' is unknown"):
        shapshift.explain(model, tok, ["fine"], targets=[" x"], masking="blur", progress=False)
    with pytest.raises(shapshift.ShapshiftError, match="at least one token must be generated"):
        shapshift.explain(model, tok, ["fine"], max_new_tokens=0, progress=False)
    assert main(["explain-text", "--model", "tiny-gpt-neo", "--text", "  ", "--out", "/tmp/x.pkl"]) == 2


def test_input_longer_than_the_context_is_refused_with_the_fix(tiny_neo):
    model, tok = tiny_neo
    limit = shapshift.models.context_length(model)
    long_text = " word" * (limit + 10)
    for targets in (None, [" x"]):  # generation and explanation both check
        with pytest.raises(shapshift.errors.ModelError, match=f"context of {limit} tokens") as err:
            shapshift.explain(model, tok, [long_text], targets=targets, progress=False)
        assert "max_input_tokens" in str(err.value)


def test_context_length_reads_each_family_config():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=64, vocab_size=50))
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                         num_key_value_heads=1, max_position_embeddings=96, vocab_size=50))
    assert shapshift.models.context_length(gpt2) == 64
    assert shapshift.models.context_length(llama) == 96
    shapshift.models.check_fits_context(gpt2, 60, 4)
    with pytest.raises(shapshift.errors.ModelError):
        shapshift.models.check_fits_context(gpt2, 60, 5)


def test_target_that_tokenises_differently_in_context_is_flagged(tiny_neo, caplog):
    from shapshift.prompting import encode_targets, tokenises_apart

    _, tok = tiny_neo
    spaced = tok("The capital of France is ", add_special_tokens=False)["input_ids"]
    plain = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    paris = tok(" Paris", add_special_tokens=False)["input_ids"]
    bare = tok("Paris", add_special_tokens=False)["input_ids"]
    assert not tokenises_apart(tok, plain, paris)
    assert tokenises_apart(tok, spaced, bare)  # "is " + "Paris" merges into " Paris"
    with caplog.at_level("WARNING", logger="shapshift.prompting"):
        ids = encode_targets(tok, ["Paris", " Paris", None], [spaced, plain, plain])
    assert ids == [bare, paris, None]
    assert "1 of 3 targets tokenise differently" in caplog.text


def test_tasks_under_one_context_share_the_prefix_pass(tiny_neo):
    """Consecutive tasks with the same fixed context (a few-shot prompt) run its prefix once: the later
    ones score no prefix tokens and get the values they get alone; the caller's tasks keep no prefix cache."""
    from shapshift.explainers import explain_tasks

    model, tok = tiny_neo
    context = "Review: dull and long\nSentiment: negative\n\nReview: a joy\nSentiment: positive\n\nReview:{input}\nSentiment:"
    texts = ["a quiet film about two brothers", "loud, long and empty"]
    targets = [tok(t, add_special_tokens=False)["input_ids"] for t in (" positive", " negative and dull")]
    tasks = [make_task(model, tok, build_prompt(t, context, tok), y, max_evals=24) for t, y in zip(texts, targets)]
    together, stats = explain_tasks(tasks, "kernel", progress=False)
    alone = [explain_tasks([t], "kernel", progress=False) for t in tasks]
    n_prefix = len(tasks[0].prompt.prefix_ids) - 1  # the cached part: the last prefix token starts every row
    assert n_prefix > 10 and tasks[1].prompt.prefix_ids == tasks[0].prompt.prefix_ids
    assert stats[0]["n_forward_tokens"] == alone[0][1][0]["n_forward_tokens"]
    assert stats[1]["n_forward_tokens"] == alone[1][1][0]["n_forward_tokens"] - n_prefix
    for exp, (solo, _) in zip(together, alone):
        np.testing.assert_allclose(exp.values, solo[0].values, atol=1e-6)
    assert all(t.prefix_cache is None for t in tasks)


def test_explain_text_refuses_what_it_cannot_write(tmp_path, capsys):
    """Item 8: --out x.png is refused (no pickle named .png), and --max-new-tokens 0 is a clear error
    given before any model is loaded."""
    out = tmp_path / "x.png"
    assert main(["explain-text", "--model", "tiny-gpt-neo", "--text", "good film", "--out", str(out)]) == 2
    assert not out.exists()
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot write a .png file" in err and ".html" in err and ".pkl" in err
    assert main(["explain-text", "--model", "no-such-org/no-such-model", "--text", "good film",
                 "--max-new-tokens", "0", "--out", str(tmp_path / "x.html")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "at least one token must be generated" in err and "not found" not in err


def test_generate_refuses_zero_new_tokens(tiny_neo):
    """Item 8: the library's generate() gives the config's one-paragraph error, not transformers' ValueError."""
    from shapshift.generation import generate

    model, tok = tiny_neo
    with pytest.raises(shapshift.ShapshiftError, match="at least one token must be generated"):
        generate(model, tok, [[1, 2, 3]], max_new_tokens=0, progress=False)
