"""A naive scorer to check the optimised one against: one coalition at a time, nothing clever.

It builds the whole token sequence of each coalition by hand (prefix + masked input + suffix +
target), runs it alone through the model (no key/value cache, no padding, no batching, no
compaction, explicit positions ``0..L-1``) and takes the log-softmax over the vocabulary at the
positions before each target token. It shares no code with :mod:`shapshift.scoring`.

The conventions it checks independently: when nothing precedes the input (an empty prefix), the
model's BOS token (else its EOS token) stands first, so the first target token always has a
token to be predicted from; with attention masking, the first target token is predicted at the
last token the model sees (a masked last input token's hidden state would carry the token itself).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def start_token(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def naive_scores(model, tokenizer, prefix_ids, input_ids, suffix_ids, target_ids, masks, *,
                 masking: str = "attention", score: str = "log_odds", mask_token_id: int | None = None) -> np.ndarray:
    """Scores ``(len(masks), len(target_ids))`` in nats, float64, one forward pass per coalition."""
    prefix = list(prefix_ids) or [start_token(tokenizer)]
    if mask_token_id is None:
        pad = model.config.pad_token_id
        mask_token_id = pad if pad is not None else 0
    rows = []
    for keep in np.asarray(masks, dtype=bool).reshape(-1, len(input_ids)):
        if masking == "delete":
            body = [t for t, k in zip(input_ids, keep) if k]
            body_attn = [1] * len(body)
        elif masking == "replace":
            body = [t if k else mask_token_id for t, k in zip(input_ids, keep)]
            body_attn = [1] * len(body)
        elif masking == "attention":
            body = list(input_ids)
            body_attn = [int(k) for k in keep]
        else:
            raise ValueError(masking)
        seq = prefix + body + list(suffix_ids) + list(target_ids)
        attn = [1] * len(prefix) + body_attn + [1] * (len(suffix_ids) + len(target_ids))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq]), attention_mask=torch.tensor([attn]),
                           position_ids=torch.arange(len(seq)).unsqueeze(0), use_cache=False).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1)
        first = len(seq) - len(target_ids)  # index of the first target token
        # the first target is predicted at the last token the model sees before it (a masked token is
        # never read, not even its own hidden state), every later one at the target token before it
        seen = max(k for k in range(first) if attn[k])
        lps = [float(logp[seen if j == 0 else first - 1 + j, t]) for j, t in enumerate(target_ids)]
        if score == "log_prob":
            rows.append(lps)
        else:
            rows.append([lp - math.log(-math.expm1(min(lp, -1e-12))) for lp in lps])
    return np.asarray(rows, dtype=np.float64)
