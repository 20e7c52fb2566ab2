"""Random 2-layer GPT-Neo (with a local window), GPT-2 and Llama models with the SmolLM2 tokenizer, shared by the tests."""

from __future__ import annotations

from functools import cache

import torch


@cache
def tiny(arch: str, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: ``arch`` is ``neo`` (local window 4, shorter than most rows), ``gpt2`` or ``llama``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from shapshift.models import random_gpt_neo, tiny_gpt_neo
    from shapshift.scoring import has_windowed_attention

    _, tok = tiny_gpt_neo()
    torch.manual_seed(0)
    if arch == "neo":
        model, _ = random_gpt_neo(1, tok, hidden_size=32, num_layers=2, num_heads=2, window_size=4,
                                  attention_types=[[["local", "global"], 1]], max_position_embeddings=256,
                                  intermediate_size=64)
        assert has_windowed_attention(model)
    elif arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    return model.to(dtype).eval(), tok
