"""Greedy, batched generation of the continuations that are explained."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .backends.capabilities import capabilities
from .backoff import halving
from .config import GenerationConfig
from .models import check_fits_context, model_device

log = logging.getLogger(__name__)


def trim_generation(ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, *, stop_at_newline: bool = True) -> list[int]:
    """Cut a generated sequence at its first stop token (EOS, or a newline token) and drop padding.

    When the very first token is a stop token the generation is empty; it is then explained as that
    token alone (usually EOS), so there is always something to explain.
    """
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    out: list[int] = []
    for t in ids:
        t = int(t)
        if t in eos or (stop_at_newline and "\n" in tokenizer.decode([t])):
            if not out:
                out.append(t)
            break
        out.append(t)
    return out


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[Sequence[int]], *,
             max_new_tokens: int = 8, stop_at_newline: bool = True, batch_size: int = 8,
             progress: bool = True) -> list[list[int]]:
    """Greedy continuations (token ids, trimmed at EOS/newline) of each prompt, batched with left padding.

    Out-of-memory halves the batch and retries. A remote model generates through its server.
    """
    GenerationConfig(max_new_tokens=max_new_tokens, stop_at_newline=stop_at_newline,
                     batch_size=batch_size).validate()  # the config's own check and message
    if not capabilities(model).weights:
        return model.generate_greedy(prompt_ids, max_new_tokens=max_new_tokens, stop_at_newline=stop_at_newline,
                                     progress=progress)
    if prompt_ids:
        longest = max(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        check_fits_context(model, len(prompt_ids[longest]), max_new_tokens, f"Prompt {longest}")
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[list[int]] = []
    bar = tqdm(total=len(prompt_ids), desc="generate", disable=not progress, leave=False)

    def run(size: int) -> None:  # resumes after the prompts already done when retried with a smaller batch
        while len(results) < len(prompt_ids):
            batch = [list(p) for p in prompt_ids[len(results):len(results) + size]]
            width = max(len(p) for p in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for i, p in enumerate(batch):
                ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
                attn[i, width - len(p):] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, num_beams=1)
            results.extend(trim_generation(row, tokenizer, stop_at_newline=stop_at_newline)
                           for row in out[:, width:].tolist())
            bar.update(len(batch))

    halving(run, batch_size, "generation")()
    bar.close()
    return results
