"""What the model did under each condition: its generations, label matches, the probability of the
explained text, and the fine-tuning record — read from a run folder (every file sha256-checked).

An explanation of a text the model would never produce says what drives the score of an unlikely
continuation, not what the model does. :func:`behaviour_warnings` flags a condition under which
the explained text is improbable or the model never produced the reference.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from . import conditions
from .store import RunStore

#: Below this geometric-mean probability per token, the explained text counts as improbable.
IMPROBABLE_TOKEN_P = 0.05
FINETUNE_FILE = "03_finetune.json"


def generations(store: RunStore) -> pd.DataFrame:
    """``02_generations`` and ``03_generations`` (when recorded) in one table, with ``n_explained_tokens``.

    Columns: those of the generations tables (``example_id, condition, generated_text, label_match,
    explained_ids, explained_logprob`` …) plus ``n_explained_tokens``. Empty when stage 2 has not run.
    """
    recorded = store.manifest().get("artifacts", {})
    frames = [store.read_parquet(n) for n in ("02_generations.parquet", "03_generations.parquet")
              if n in recorded or store.path(n).exists()]
    if not frames:
        return pd.DataFrame(columns=["example_id", "condition", "generated_text", "label_match", "explained_logprob",
                                     "n_explained_tokens"])
    gens = pd.concat(frames, ignore_index=True)
    gens["n_explained_tokens"] = gens["explained_ids"].map(len) if "explained_ids" in gens else np.nan
    return gens


def condition_summary(gens: pd.DataFrame) -> pd.DataFrame:
    """Per condition: ``n``, ``label_matches`` (count, NaN without references), ``mean_logprob``
    (mean over examples of the summed log-probability of the explained text, nats) and
    ``token_p`` (geometric-mean probability per explained token, exp of the mean per-token log-prob)."""
    rows = []
    for cond in sorted(set(gens["condition"]), key=conditions.order_key):
        g = gens[gens["condition"] == cond]
        matches = g["label_match"].dropna()
        per_token = (g["explained_logprob"] / g["n_explained_tokens"].clip(lower=1)).mean()
        rows.append({"condition": cond, "n": len(g), "label_matches": float(matches.sum()) if len(matches) else np.nan,
                     "n_with_reference": len(matches), "mean_logprob": float(g["explained_logprob"].mean()),
                     "token_p": float(math.exp(per_token)) if np.isfinite(per_token) else np.nan})
    return pd.DataFrame(rows, columns=["condition", "n", "label_matches", "n_with_reference", "mean_logprob",
                                       "token_p"])


def behaviour_warnings(summary: pd.DataFrame, label: Any = str) -> list[str]:
    """Plain-language warnings: conditions under which the explained text is improbable (geometric-mean
    probability per token below :data:`IMPROBABLE_TOKEN_P`) or the model never produced the reference."""
    out = []
    for r in summary.itertuples():
        said = []
        if np.isfinite(r.token_p) and r.token_p < IMPROBABLE_TOKEN_P:
            said.append(f"the explained text is improbable (mean log-probability {r.mean_logprob:.2f}, about "
                        f"{r.token_p:.2g} per token)")
        if r.n_with_reference and r.label_matches == 0:
            said.append(f"the model never produced the reference output (0 of {r.n_with_reference} examples)")
        if said:
            out.append(f"Under {label(r.condition)} {' and '.join(said)}: the model is not doing the task as "
                       "prompted, and the explanations say what moves the score of a text it would not produce.")
    return out


def finetune_record(store: RunStore) -> dict[str, Any] | None:
    """``03_finetune.json`` (losses per step, task metric before/after) after its sha256 check; None if absent."""
    if FINETUNE_FILE not in store.manifest().get("artifacts", {}) and not store.path(FINETUNE_FILE).exists():
        return None
    return json.loads(store.verify(FINETUNE_FILE).read_text())
