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
