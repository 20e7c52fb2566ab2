"""The teacher-forced scorer: the KV-cached prefix changes nothing, for every masking and architecture."""

import numpy as np
import pytest
import torch

from shapshift.prompting import build_prompt, encode_prompt
from shapshift.scoring import (
    CPU_BATCH_SIZE,
    MASKINGS,
    TableScorer,
    TeacherForcedScorer,
    auto_batch_size,
    row_bytes,
)

# a prefix longer than GPT-Neo's local attention window (16 in tiny-gpt-neo), so the sliding cache is exercised
CONTEXT = "Instruction: read the review and answer with one word.\n\nReview: dull and long\nSentiment: negative\n\nReview:{input}\nSentiment:"
TEXT = "a quiet, tender film about two brothers"
TARGET = " positive and warm"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_llama(tiny_neo):
    """A randomly initialised 2-layer Llama (rotary positions, grouped KV heads) with the SmolLM2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = tiny_neo
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tok


def _prompt_and_target(tok):
    prompt = encode_prompt(build_prompt(TEXT, CONTEXT, tok), tok)
    return prompt, tok(TARGET, add_special_tokens=False)["input_ids"]


def _masks(n, m=12, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.random((m, n)) < 0.5
    masks[0], masks[1] = True, False
    return masks


@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_llama"])
@pytest.mark.parametrize("masking", MASKINGS)
def test_cached_prefix_equals_uncached(arch, masking, request):
    model, tok = request.getfixturevalue(arch)
    prompt, target = _prompt_and_target(tok)
    assert len(prompt.prefix_ids) > 16
    masks = _masks(len(prompt.input_ids))
    cached = TeacherForcedScorer(model, prompt, target, masking=masking, batch_size=5)
    plain = TeacherForcedScorer(model, prompt, target, masking=masking, batch_size=7, use_cache=False)
    assert cached.use_cache and not plain.use_cache
    np.testing.assert_allclose(cached(masks), plain(masks), atol=1e-4, rtol=0)
    assert cached.n_evals == plain.n_evals == len(masks)
    # the cache saves the prefix on every row
    assert cached.n_forward_tokens < plain.n_forward_tokens


@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_llama"])
def test_full_input_matches_an_ordinary_forward_pass(arch, request):
    """The unmasked score equals log-odds from one plain forward pass over prompt + target."""
    model, tok = request.getfixturevalue(arch)
    prompt, target = _prompt_and_target(tok)
    ids = torch.tensor([prompt.ids + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, -len(target) - 1:-1].double(), -1)
    lp = logp[torch.arange(len(target)), torch.tensor(target)].numpy()
    expected = lp - np.log(-np.expm1(lp))
    for masking in MASKINGS:
        scorer = TeacherForcedScorer(model, prompt, target, masking=masking, score="log_odds")
        np.testing.assert_allclose(scorer.full(), expected, atol=1e-4)


@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_llama"])
def test_by_default_a_masked_token_is_deleted_and_the_score_is_its_log_probability(arch, request):
    """The defaults (``explain.masking: auto``, ``explain.score``) against plain forward passes: each coalition's
    score is ``log p(target token)`` after the text with the masked tokens left out."""
    from shapshift.config import ExplainConfig
    from shapshift.constants import resolve_masking

    model, tok = request.getfixturevalue(arch)
    prompt, target = _prompt_and_target(tok)
    masks = _masks(len(prompt.input_ids), m=5, seed=4)
    defaults = ExplainConfig()
    got = TeacherForcedScorer(model, prompt, target, masking=resolve_masking(defaults.masking),
                              score=defaults.score)(masks)
    for mask, row in zip(masks, got):
        kept = [t for t, k in zip(prompt.input_ids, mask) if k]
        ids = torch.tensor([prompt.prefix_ids + kept + prompt.suffix_ids + target])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, -len(target) - 1:-1].double(), -1)
        np.testing.assert_allclose(row, logp[torch.arange(len(target)), torch.tensor(target)].numpy(), atol=1e-4)


def test_delete_masking_equals_scoring_the_shortened_input(tiny_llama):
    model, tok = tiny_llama
    prompt, target = _prompt_and_target(tok)
    masks = _masks(len(prompt.input_ids), m=6, seed=1)
    scorer = TeacherForcedScorer(model, prompt, target, masking="delete", score="log_prob")
    rows = [[t for t, k in zip(prompt.input_ids, m) if k] for m in masks]
    np.testing.assert_allclose(scorer(masks), scorer.score_inputs(rows), atol=1e-5)
    # one shortened row scored alone, without padding, gives the same numbers
    alone = TeacherForcedScorer(model, prompt, target, masking="delete", score="log_prob", batch_size=1)
    np.testing.assert_allclose(alone.score_inputs(rows[2:3]), scorer.score_inputs(rows)[2:3], atol=1e-4)


def test_attention_masking_hides_the_masked_tokens(tiny_llama):
    """With attention masking, what a masked token is does not matter."""
    model, tok = tiny_llama
    prompt, target = _prompt_and_target(tok)
    masks = _masks(len(prompt.input_ids), m=4, seed=2)
    masks[:, 3] = False
    other = type(prompt)(prompt.prefix_ids, list(prompt.input_ids), prompt.suffix_ids)
    other.input_ids[3] = tok("zebra", add_special_tokens=False)["input_ids"][0]
    a = TeacherForcedScorer(model, prompt, target, masking="attention")(masks)
    b = TeacherForcedScorer(model, other, target, masking="attention")(masks)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_batch_size_does_not_change_scores_and_auto_is_sensible(tiny_neo):
    model, tok = tiny_neo
    prompt, target = _prompt_and_target(tok)
    masks = _masks(len(prompt.input_ids), m=9)
    a = TeacherForcedScorer(model, prompt, target, batch_size=1)(masks)
    b = TeacherForcedScorer(model, prompt, target, batch_size=4)(masks)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert TeacherForcedScorer(model, prompt, target).batch_size == CPU_BATCH_SIZE
    assert auto_batch_size(model, 300, 40, 5, torch.device("cpu")) == CPU_BATCH_SIZE
    assert row_bytes(model, 300, 40, 5) > row_bytes(model, 10, 40, 5) > 0


def test_out_of_memory_halves_the_batch_and_retries(tiny_neo, monkeypatch):
    model, tok = tiny_neo
    prompt, target = _prompt_and_target(tok)
    scorer = TeacherForcedScorer(model, prompt, target, batch_size=8)
    real = scorer._score_body

    def fragile(ids, *args):
        if ids.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(ids, *args)

    monkeypatch.setattr(scorer, "_score_body", fragile)
    masks = _masks(len(prompt.input_ids), m=7)
    out = scorer(masks)
    assert scorer.batch_size == 2
    np.testing.assert_allclose(out, TeacherForcedScorer(model, prompt, target)(masks), atol=1e-5)


def test_scores_and_errors(tiny_neo):
    model, tok = tiny_neo
    prompt, target = _prompt_and_target(tok)
    lp = TeacherForcedScorer(model, prompt, target, score="log_prob").full()
    lo = TeacherForcedScorer(model, prompt, target, score="log_odds").full()
    assert np.all(lp < 0)
    np.testing.assert_allclose(lo, lp - np.log(-np.expm1(lp)), atol=1e-4)
    with pytest.raises(ValueError, match="masking"):
        TeacherForcedScorer(model, prompt, target, masking="blur")
    with pytest.raises(ValueError, match="empty"):
        TeacherForcedScorer(model, prompt, [])


def test_table_scorer_looks_up_bit_indexed_rows():
    table = np.arange(16, dtype=float)[:, None] * np.array([[1.0, -1.0]])
    s = TableScorer(table)
    masks = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(s(masks)[:, 0], [1, 6, 15])
    assert s.n_evals == 3 and s.empty()[0] == 0 and s.full()[0] == 15
    with pytest.raises(ValueError):
        TableScorer(np.zeros((5, 1)))


@pytest.fixture(scope="module")
def tiny_gpt2(tiny_neo):
    """A randomly initialised 2-layer GPT-2 (learned absolute positions) with the SmolLM2 tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = tiny_neo
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256)).eval(), tok


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_leaving_masked_tokens_out_equals_hiding_them(arch, use_cache, request):
    """Compacted attention masking (masked tokens not in the forward pass, kept ones at their positions)
    gives the scores of hiding them with the attention mask, with fewer forward tokens."""
    model, tok = request.getfixturevalue(arch)
    prompt, target = _prompt_and_target(tok)
    masks = _masks(len(prompt.input_ids), m=16, seed=3)
    compact = TeacherForcedScorer(model, prompt, target, masking="attention", batch_size=6, use_cache=use_cache)
    hidden = TeacherForcedScorer(model, prompt, target, masking="attention", batch_size=6, use_cache=use_cache)
    hidden.compact = False
    assert compact.compact
    np.testing.assert_allclose(compact(masks), hidden(masks), atol=1e-4, rtol=0)
    assert compact.n_forward_tokens < hidden.n_forward_tokens


def test_windowed_attention_keeps_masked_tokens_in_place(tiny_neo):
    """GPT-Neo's local layers count sequence slots: there masked tokens stay in place, hidden."""
    from shapshift.scoring import has_windowed_attention

    model, tok = tiny_neo
    prompt, target = _prompt_and_target(tok)
    assert has_windowed_attention(model)
    assert not TeacherForcedScorer(model, prompt, target, masking="attention").compact


@pytest.mark.parametrize("masking", ["attention", "delete"])
def test_the_vocabulary_head_runs_on_the_target_positions_only(tiny_llama, masking):
    """Rows of different lengths are padded between input and tail, so every row's targets end it and the
    output head sees exactly ``n_out`` positions per coalition, with the scores of one row at a time."""
    model, tok = tiny_llama
    prompt, target = _prompt_and_target(tok)
    masks = _masks(len(prompt.input_ids), m=10, seed=5)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    try:
        batched = TeacherForcedScorer(model, prompt, target, masking=masking, batch_size=10)(masks)
    finally:
        hook.remove()
    assert seen == [1, len(target)]  # the prefix pass (its last position only), then one batch
    alone = TeacherForcedScorer(model, prompt, target, masking=masking, batch_size=1)(masks)
    np.testing.assert_allclose(batched, alone, atol=1e-4, rtol=0)
