"""Fine-tuning: loss mask, LoRA/full training on a copy, saving and reloading, OOM, task evaluation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import tiny as tiny_arch

from shapshift.config import DataConfig, FinetuneConfig
from shapshift.errors import ArtifactError, ConfigError, DataError, ShapshiftError
from shapshift.finetune import (
    IGNORE_INDEX,
    build_training_examples,
    evaluate_task,
    finetune,
    load_finetuned,
    sequence_logprobs,
    task_labels,
)
from shapshift.lora import check_target_modules, default_target_modules
from shapshift.models import load_model, tiny_gpt_neo
from shapshift.prompting import build_prompt, encode_prompt

TEMPLATE = "Review: {input}\nSentiment:"
REVIEWS = [
    ("A wonderful, moving film.", "positive"), ("Dull and far too long.", "negative"),
    ("The cast is superb.", "positive"), ("I walked out bored.", "negative"),
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt-neo")


def _rows(tokenizer, reviews=REVIEWS, *, chat: bool = False, repeat: int = 1) -> pd.DataFrame:
    """Stage-1 style rows (the columns fine-tuning reads) for ``reviews``."""
    rows = []
    for i, (text, label) in enumerate(list(reviews) * repeat):
        parts = build_prompt(text, TEMPLATE, tokenizer, chat=chat)
        rows.append({"example_id": i, "split": "train", "input_text": parts.text, "prompt_prefix": parts.prefix,
                     "prompt_suffix": parts.suffix, "prompt_text": parts.prompt, "target_text": f" {label}",
                     "label": label, "input_ids": tokenizer(parts.text, add_special_tokens=False)["input_ids"]})
    return pd.DataFrame(rows)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _logits(model, tokenizer, text: str = "Review: The cast is superb.\nSentiment:") -> torch.Tensor:
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def _cfg(**kw) -> FinetuneConfig:
    base = {"learning_rate": 2e-2, "max_steps": 10, "batch_size": 4, "r": 8, "alpha": 16, "dropout": 0.0}
    return FinetuneConfig(**{**base, **kw})


# -- training examples ----------------------------------------------------------------------------
@pytest.mark.parametrize("chat", [False, True])
def test_labels_mask_exactly_the_prompt(tiny, chat):
    _, tok = tiny
    rows = _rows(tok, chat=chat)
    examples = build_training_examples(tok, rows, max_length=None)
    for ex, row in zip(examples, rows.itertuples(), strict=True):
        prompt = encode_prompt(build_prompt(REVIEWS[row.example_id][0], TEMPLATE, tok, chat=chat), tok, chat=chat).ids
        target = tok(row.target_text, add_special_tokens=False)["input_ids"]
        assert ex["input_ids"] == prompt + target
        assert ex["labels"] == [IGNORE_INDEX] * len(prompt) + target
        assert ex["n_prompt"] == len(prompt)
    if chat:  # the chat template's own special tokens, no extra BOS
        assert examples[0]["input_ids"][0] == tok.convert_tokens_to_ids("<|im_start|>")
        assert examples[0]["input_ids"].count(examples[0]["input_ids"][0]) == 3


def test_too_long_prompts_lose_input_tokens_first(tiny):
    _, tok = tiny
    rows = _rows(tok, [("word " * 40 + "end.", "positive")])
    full = build_training_examples(tok, rows, None)[0]
    cut = build_training_examples(tok, rows, max_length=20)[0]
    assert len(cut["input_ids"]) == 20 and len(full["input_ids"]) > 20
    prefix = tok("Review:")["input_ids"]
    assert cut["input_ids"][:len(prefix)] == prefix  # the template is kept whole
    assert cut["input_ids"][-6:] == full["input_ids"][-6:]  # the end of the text, suffix and target too
    assert cut["labels"].count(IGNORE_INDEX) == cut["n_prompt"] == 20 - 1


def test_rows_without_targets_are_a_data_error(tiny):
    _, tok = tiny
    with pytest.raises(DataError, match="data.target_column"):
        build_training_examples(tok, _rows(tok).assign(target_text=None), 64)


# -- target modules -------------------------------------------------------------------------------
def test_default_target_modules_per_architecture(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    assert default_target_modules(tiny[0]) == ["q_proj", "v_proj"]
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert default_target_modules(gpt2) == ["c_attn"]
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=50))
    assert default_target_modules(llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.value, self.ff = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    assert default_target_modules(Odd()) == ["query", "value"]
    bare = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="target_modules"):
        default_target_modules(bare)


def test_bad_target_module_lists_the_linear_names(tiny):
    with pytest.raises(ConfigError) as info:
        check_target_modules(tiny[0], ["q_proj", "c_attn"])
    message = str(info.value)
    assert "['c_attn']" in message and "out_proj" in message and "c_fc" in message
    with pytest.raises(ConfigError, match="c_attn"):
        finetune(tiny[0], tiny[1], _rows(tiny[1]), _cfg(target_modules=["c_attn"]), seed=0, progress=False)


# -- training -------------------------------------------------------------------------------------
def test_lora_learns_on_a_copy(tiny, tmp_path):
    model, tok = tiny
    before = _snapshot(model)
    rng_state = torch.random.get_rng_state()
    rows = _rows(tok, repeat=4)
    result = finetune(model, tok, rows, _cfg(), seed=0, out_dir=tmp_path, progress=False)

    assert result.steps == 10 and len(result.losses) == 10 and result.seconds > 0
    # a random tiny model's logits are small, so its loss can only fall from ln(49152) = 10.8 to about 9.5
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3]) - 0.4
    # the caller's model, its mode, and the global RNG are untouched
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and not any("lora" in n for n, _ in model.named_modules())
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    # the returned model is a plain, merged model in eval mode that scores differently
    tuned = result.model
    assert type(tuned) is type(model) and not tuned.training
    assert not any("lora" in n for n, _ in tuned.named_modules())
    assert not torch.allclose(_logits(tuned, tok), _logits(model, tok), atol=1e-4)
    # saved adapter reloads to the same logits
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log["losses"] == pytest.approx(result.losses) and log["config"]["method"] == "lora"
    assert log["target_modules"] == ["q_proj", "v_proj"]
    reloaded = load_finetuned(model, tmp_path, result.config)
    torch.testing.assert_close(_logits(reloaded, tok), _logits(tuned, tok), atol=1e-5, rtol=0)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def test_training_is_seeded(tiny):
    model, tok = tiny
    rows = _rows(tok, repeat=2)
    cfg = _cfg(max_steps=3, dropout=0.1)
    a = finetune(model, tok, rows, cfg, seed=1, progress=False)
    b = finetune(model, tok, rows, cfg, seed=1, progress=False)
    c = finetune(model, tok, rows, cfg, seed=2, progress=False)
    assert a.losses == b.losses and a.losses != c.losses
    torch.testing.assert_close(_logits(a.model, tok), _logits(b.model, tok), atol=0, rtol=0)


def test_epochs_without_max_steps(tiny):
    model, tok = tiny
    result = finetune(model, tok, _rows(tok, repeat=3), _cfg(max_steps=None, epochs=2, batch_size=5),
                      seed=0, progress=False)
    assert result.steps == 2 * 3  # 12 rows in batches of 5: 3 steps per epoch


def test_full_finetuning_runs_saves_and_reloads(tiny, tmp_path):
    model, tok = tiny
    before = _snapshot(model)
    result = finetune(model, tok, _rows(tok, repeat=2), _cfg(method="full", learning_rate=1e-3, max_steps=4),
                      seed=0, out_dir=tmp_path, progress=False)
    assert result.losses[-1] < result.losses[0] and result.target_modules is None
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert not torch.allclose(_logits(result.model, tok), _logits(model, tok), atol=1e-4)
    reloaded = load_finetuned(model, tmp_path, result.config)
    torch.testing.assert_close(_logits(reloaded, tok), _logits(result.model, tok), atol=1e-5, rtol=0)
    with pytest.raises(ArtifactError, match="adapter"):
        load_finetuned(model, tmp_path, _cfg(method="lora"))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_first_step_loss_is_the_cross_entropy_of_the_target_tokens_only(tiny, method):
    """Trainer's first logged loss, on one batch of every row, against a hand computation on the base model."""
    model, tok = tiny
    rows = _rows(tok)
    result = finetune(model, tok, rows, _cfg(method=method, max_steps=1, batch_size=len(rows), learning_rate=1e-3),
                      seed=0, progress=False)
    total, n_target, n_all, total_all = 0.0, 0, 0, 0.0
    for ex in build_training_examples(tok, rows, None):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ex["input_ids"]])).logits[0, :-1].double(), -1)
        nll = -logp[torch.arange(len(ex["input_ids"]) - 1), torch.tensor(ex["input_ids"][1:])]
        target = torch.tensor(ex["labels"][1:]) != IGNORE_INDEX
        total, n_target = total + float(nll[target].sum()), n_target + int(target.sum())
        total_all, n_all = total_all + float(nll.sum()), n_all + len(nll)
    # at step 1 a LoRA model is the base model (B = 0); the loss counts target tokens only
    assert result.losses[0] == pytest.approx(total / n_target, abs=1e-4)
    assert abs(total / n_target - total_all / n_all) > 1e-2  # the prompt tokens would change it


def test_lora_on_gpt2_conv1d_trains_and_reloads(tmp_path):
    model, tok = tiny_arch("gpt2")
    before = _snapshot(model)
    result = finetune(model, tok, _rows(tok, repeat=2), _cfg(max_steps=3), seed=0, out_dir=tmp_path, progress=False)
    assert result.target_modules == ["c_attn"] and result.losses[-1] < result.losses[0]
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert not torch.allclose(_logits(result.model, tok), _logits(model, tok), atol=1e-5)
    torch.testing.assert_close(_logits(load_finetuned(model, tmp_path, result.config), tok),
                               _logits(result.model, tok), atol=1e-5, rtol=0)


def _oom_above(model, limit: int):
    """Make ``model``'s transformer raise a CUDA-style out-of-memory error for batches above ``limit``."""

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids.shape[0] > limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return model


def test_out_of_memory_halves_the_batch_with_the_same_result(tiny):
    _, tok = tiny
    rows = _rows(tok, repeat=2)
    plain = finetune(tiny_gpt_neo(tokenizer=tok)[0], tok, rows, _cfg(max_steps=2), seed=0, progress=False)
    small = finetune(_oom_above(tiny_gpt_neo(tokenizer=tok)[0], 1), tok, rows, _cfg(max_steps=2), seed=0,
                     progress=False)
    assert plain.batch_size == 4 and small.batch_size == 1
    assert small.losses == pytest.approx(plain.losses, abs=1e-5)


def test_out_of_memory_at_batch_one_says_what_to_lower(tiny):
    _, tok = tiny
    model = _oom_above(tiny_gpt_neo(tokenizer=tok)[0], 0)
    with pytest.raises(ShapshiftError, match="max_length"):
        finetune(model, tok, _rows(tok), _cfg(max_steps=1), seed=0, progress=False)


# -- evaluation -----------------------------------------------------------------------------------
def test_evaluate_task_paths_agree(tiny):
    model, tok = tiny
    rows = _rows(tok)
    labels = task_labels(rows)
    assert labels == [" negative", " positive"]
    model.train()
    scored = evaluate_task(model, tok, rows, labels=labels, batch_size=3)
    assert model.training  # mode restored
    model.eval()
    plain = evaluate_task(model, tok, rows, labels=None)
    assert 0.0 <= scored["accuracy"] <= 1.0 and scored["n_rows"] == 4 and plain["accuracy"] is None
    assert scored["mean_target_logprob"] == pytest.approx(plain["mean_target_logprob"], abs=1e-4)
    assert plain["mean_target_logprob"] < 0
    # multi-token labels go through full sequences; the one-token shortcut agrees with them
    prompts = [ex["input_ids"][:ex["n_prompt"]] for ex in build_training_examples(tok, rows, None)]
    options = [tok(c, add_special_tokens=False)["input_ids"][0] for c in labels]
    fast = sequence_logprobs(model, [(p, options) for p in prompts], pad_id=0, alternatives=True)
    slow = sequence_logprobs(model, [(p, [o]) for p in prompts for o in options], pad_id=0, batch_size=5)
    np.testing.assert_allclose(fast.ravel(), slow, atol=1e-4)
    with pytest.raises(DataError, match="leading space"):
        evaluate_task(model, tok, rows, labels=["negative", "positive"])


@pytest.mark.slow
def test_lora_raises_smollm2_accuracy_on_demo_reviews():
    """End to end on the real model and the demo data: a few LoRA steps make the task visibly better."""
    from shapshift.data import preprocess

    model, tok = load_model("smollm2-135m")
    table, _ = preprocess(DataConfig(n_explain=16, seed=0), tok)
    train, held = table[table.split == "train"], table[table.split == "explain"]
    labels = task_labels(table)
    before = evaluate_task(model, tok, held, labels=labels)
    result = finetune(model, tok, train, FinetuneConfig(learning_rate=1e-3, max_steps=3, batch_size=8),
                      seed=0, progress=False)
    after = evaluate_task(result.model, tok, held, labels=labels)
    assert result.losses[-1] < result.losses[0]
    assert after["mean_target_logprob"] > before["mean_target_logprob"] + 1.0
    assert after["accuracy"] > before["accuracy"]
