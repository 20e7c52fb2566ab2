"""Prompt formats: chat turns, the target as the reply begins, the format check, and what each format scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shapshift.config import DataConfig
from shapshift.data import preprocess
from shapshift.formats import (
    PromptFormat,
    candidate_formats,
    check_formats,
    greedy_prefix_and_logprob,
)
from shapshift.generation import generate
from shapshift.prompting import Demonstration, build_prompt, encode_prompt
from shapshift.scoring import TeacherForcedScorer
from tests.conftest import DEMO_DATA
from tests.tiny_models import tiny

TEMPLATE = "Review: {input}\nSentiment:"
DEMOS = [Demonstration("loved it", "positive"), Demonstration("dull and slow", "negative")]


def _hand_logprob(model, ids: list[int], target: list[int]) -> float:
    """log p(target | ids) from one plain forward pass over ids + target, built by hand."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + target])).logits[0]
    rows = logits[len(ids) - 1:len(ids) - 1 + len(target)]
    return float(torch.log_softmax(rows.double(), -1)[torch.arange(len(target)), torch.tensor(target)].sum())


def test_chat_demonstrations_are_turns_and_the_target_is_the_reply():
    model, tok = tiny("llama")
    assert tok.chat_template, "the tiny models carry SmolLM2's tokenizer and its chat template"
    parts = build_prompt("a fine film", TEMPLATE, tok, chat=True, instruction="Classify the review.",
                         demonstrations=DEMOS)
    # instruction as the system message, each demonstration a user turn and an assistant turn, the example last
    assert parts.prefix.startswith("<|im_start|>system\nClassify the review.<|im_end|>\n")
    assert "<|im_start|>user\nReview: loved it\nSentiment:<|im_end|>\n<|im_start|>assistant\npositive<|im_end|>" \
        in parts.prefix
    assert "<|im_start|>assistant\nnegative<|im_end|>\n<|im_start|>user\nReview:" in parts.prefix
    assert parts.text == " a fine film" and parts.suffix == "\nSentiment:<|im_end|>\n<|im_start|>assistant\n"
    # the target's tokens are the reply's first tokens: the whole chat text tokenised at once ends in them
    fmt = PromptFormat(chat=True, target_prefix="", target_case="as_written")
    target = tok(fmt.target("positive"), add_special_tokens=False)["input_ids"]
    enc = encode_prompt(parts, tok)
    joint = tok(parts.prompt + fmt.target("positive"), add_special_tokens=False)["input_ids"]
    assert enc.ids + target == joint


def test_a_template_without_a_system_role_puts_the_instruction_in_the_first_user_turn():
    _, tok = tiny("llama")
    no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
                 "{% endif %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
    saved = tok.chat_template
    try:
        tok.chat_template = no_system
        parts = build_prompt("ok", TEMPLATE, tok, chat=True, instruction="Classify.", demonstrations=DEMOS[:1])
    finally:
        tok.chat_template = saved
    assert parts.prefix.startswith("<user>Classify.\n\nReview: loved it")
    assert parts.suffix.endswith("</user><assistant>")


@pytest.mark.parametrize("fmt", [PromptFormat(c, p, k) for c in (True, False) for p in (" ", "")
                                 for k in ("as_written", "capitalized")], ids=lambda f: f.name)
def test_every_format_scores_the_target_a_plain_forward_pass_scores(fmt):
    model, tok = tiny("llama")
    parts = build_prompt("the plot was dull", TEMPLATE, tok, chat=fmt.chat, instruction="Classify.",
                         demonstrations=[Demonstration(d.text, fmt.target(d.answer)) for d in DEMOS])
    enc = encode_prompt(parts, tok)
    target = tok(fmt.target("negative"), add_special_tokens=False)["input_ids"]
    expected = _hand_logprob(model, enc.ids, target)
    scored = TeacherForcedScorer(model, enc, target, score="log_prob").full().sum()
    assert scored == pytest.approx(expected, abs=1e-4)
    _, logps = greedy_prefix_and_logprob(model, [enc.ids], [target])
    assert logps[0] == pytest.approx(expected, abs=1e-4)


def test_the_check_reads_greedy_generation_and_log_probability_right():
    """Against generate() and a plain forward pass, on prompts sharing a cached beginning and prompts that do not."""
    model, tok = tiny("llama")
    prompts = [encode_prompt(build_prompt(t, TEMPLATE, tok, demonstrations=DEMOS), tok).ids
               for t in ("good", "a bad film", "fine")]
    greedy = generate(model, tok, prompts, max_new_tokens=2, stop_at_newline=False, progress=False)
    # one target the model writes greedily (its own generation), two it does not
    targets = [list(greedy[0][:2]), [int(greedy[1][0]) + 1], tok(" fine", add_special_tokens=False)["input_ids"]]
    for batch in (prompts, [prompts[0]]):
        hits, logps = greedy_prefix_and_logprob(model, batch, targets[:len(batch)], batch_size=2)
        for p, t, h, lp in zip(batch, targets, hits, logps):
            assert lp == pytest.approx(_hand_logprob(model, p, t), abs=1e-4)
            assert h == (generate(model, tok, [p], max_new_tokens=len(t), stop_at_newline=False,
                                  progress=False)[0][:len(t)] == t)
    assert hits[0] is True


def test_candidates_open_only_the_auto_settings():
    _, tok = tiny("llama")
    every = candidate_formats(DataConfig(), tok, ["negative", "positive"])
    # lower-case labels: "lower" writes them as written, so 2 chat x 2 spaces x 2 casings
    assert len(every) == 8 and len({f.name for f in every}) == 8
    fixed = candidate_formats(DataConfig(chat="no", target_prefix=" ", target_case="lower"), tok, ["positive"])
    assert fixed == [PromptFormat(False, " ", "lower")]
    assert PromptFormat(True, "", "capitalized").target(" positive ") == "Positive"


def test_preprocess_picks_the_format_the_model_writes_and_records_the_check(smollm2):
    model, tok = smollm2
    cfg = DataConfig(source=str(DEMO_DATA), n_explain=4, format_check_rows=6, format_check_shots=4)
    df, report = preprocess(cfg, tok, model=model)
    table = pd.DataFrame(report.format_check)
    assert set(table["prompt"]) == {"template", "demonstrations"} and table["n_rows"].eq(6).all()
    shown = table[table["prompt"] == "demonstrations"].set_index("format")
    chosen = report.format["name"]
    # the chosen format is the one the model writes most often after demonstrations (then the most probable)
    best = shown.sort_values(["generates", "mean_logprob"], ascending=False).index[0]
    assert chosen == best or (shown.loc[chosen, "generates"] == shown.loc[best, "generates"]
                              and shown.loc[chosen, "mean_logprob"] == shown.loc[best, "mean_logprob"])
    # the stored rows are in the chosen format, and the explained rows were never checked
    fmt = PromptFormat.from_dict(report.format)
    assert (df["target_text"] == df["reference_text"].map(fmt.target)).all()
    assert bool(df["prompt_chat"].all()) == fmt.chat
    # SmolLM2-135M-Instruct writes the label after plain demonstrations; in chat turns it does so less often
    assert not fmt.chat and shown.loc[chosen, "generates"] >= 0.5


def test_no_format_that_works_is_said_before_anything_is_explained():
    model, tok = tiny("gpt2")  # random weights: never writes the label
    train = pd.DataFrame({"example_id": range(12), "source_text": [f"text number {i}" for i in range(12)],
                          "reference_text": ["alpha", "beta"] * 6, "label": ["alpha", "beta"] * 6})
    cfg = DataConfig(format_check_rows=4, format_check_shots=2)
    check = check_formats(model, tok, train, cfg, candidate_formats(cfg, tok, ["alpha", "beta"]))
    assert check.table["generates"].eq(0).all()
    assert check.note and "none of the" in check.note and "contrastive" in check.note
    assert np.isfinite(check.table["mean_logprob"]).all()


def test_on_sst2_the_chosen_format_makes_few_shot_write_a_label(smollm2, sst2_dev):
    """Real SST-2 rows (not the demo's reviews): under the format the check picks, SmolLM2 with the run's few-shot
    prompt answers with a label (as the format writes it) for at least 80 % of 8 explained sentences.

    Whether it is the *right* label is the model's accuracy, not the format's: SmolLM2-135M gets about half of
    these dev sentences right (4 of 8 here), so the reference itself is written for fewer."""
    from shapshift.adapt import condition_parts, run_uses_chat
    from shapshift.config import RunConfig
    from shapshift.explaining import label_match
    from shapshift.fewshot import shared_demonstrations

    model, tok = smollm2
    cfg = RunConfig(data=DataConfig(source=str(sst2_dev), input_column="sentence", max_rows=80, n_explain=8,
                                    label_names={"0": "negative", "1": "positive"}))
    df, report = preprocess(cfg.data, tok, model=model)
    rows = df[df["split"] == "explain"].reset_index(drop=True)
    demos = shared_demonstrations(df, cfg.adapt.k_shot, cfg.data.seed)
    parts = condition_parts(cfg, rows, tok, instruction=cfg.adapt.instruction, demonstrations=demos)
    assert run_uses_chat(rows, tok) == report.format["chat"]
    gens = generate(model, tok, [encode_prompt(p, tok, input_ids=list(r.input_ids)).ids
                                 for p, r in zip(parts, rows.itertuples())], max_new_tokens=3, progress=False)
    texts = [tok.decode(g, skip_special_tokens=True) for g in gens]
    labels = sorted(set(df["target_text"]))
    writes_label = [any(t.startswith(lab) for lab in labels) for t in texts]
    assert np.mean(writes_label) >= 0.8, (report.format, texts)
    # the model's own accuracy, recorded beside (the format cannot lift it): at least chance
    assert np.mean([label_match(t, ref) for t, ref in zip(texts, rows["target_text"])]) >= 0.375
