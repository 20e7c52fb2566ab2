"""What an API backend's scorer adds to one explained example: its counts, and its own noise in the errors.

Called by :func:`shapshift.explainers.api.explain_tasks` on each example's scorer; a scorer that has none of
these (the local one) changes nothing. Kept free of imports of the explainers, so no cycle forms.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def finish_attribution(att: Any, scorer: Any) -> dict[str, float]:
    """Fold a nondeterministic API's measured spread into ``att.error_std``; return the scorer's diagnostics.

    A Shapley value is a weighted sum of coalition scores with weights of absolute sum at most 2 (for a fixed
    feature every coalition enters once, with or without it), so independent noise of standard deviation
    ``s`` per score adds at most ``2 s^2`` to its variance: that bound is added (values unchanged).
    """
    noise = getattr(scorer, "output_noise_sd", None)
    if callable(noise) and (sd := noise()) > 0:
        base = np.zeros_like(att.values) if att.error_std is None else np.asarray(att.error_std, dtype=np.float64)
        att.error_std = np.sqrt(base**2 + 2 * sd**2)
    diag = getattr(scorer, "diagnostics", None)
    return dict(diag()) if callable(diag) else {}


def api_notes(manifest: dict[str, Any]) -> list[str]:
    """The report's notes on a model behind an API (from ``manifest.json``): the tier, censored scores, the text
    tier's score and measured nondeterminism; none for a local model."""
    usage = manifest.get("remote_usage") or {}
    tier = usage.get("tier")
    if not tier:
        return []
    diags = [st.get("diagnostics") or {} for stats in (manifest.get("explain_stats") or {}).values() for st in stats]
    notes = [f"The model was explained behind an API at the {tier} tier (over {usage.get('route')}; "
             f"{usage.get('requests', 0)} requests, {usage.get('cache_hits', 0)} answers reused)."]
    scores = sum(d.get("scores", 0.0) for d in diags)
    if tier == "top_logprobs" and scores:
        censored = sum(d.get("censored_scores", 0.0) for d in diags)
        notes.append(f"{censored:.0f} of {scores:.0f} target-token scores ({100 * censored / scores:.1f} %) were "
                     "censored: the token was outside the API's top-k list, and the k-th log-probability (an upper "
                     "bound) stands in for it. Values built on censored scores are bounds, not values.")
    if tier == "text":
        spread = [d["api_noise_sd"] for d in diags if np.isfinite(d.get("api_noise_sd", float("nan")))]
        notes.append("Values explain a scalarizer's score of each reply against the reference (0 to 1, spread over the "
                     "target's tokens), not log-probabilities" + (f"; the API answered repeated prompts with a score "
                     f"spread of {max(spread):.3f} at most, folded into the standard errors." if spread else "."))
    return notes
