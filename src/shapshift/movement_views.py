"""The figure of how the reasons moved (:mod:`shapshift.movement`): one panel per condition, the words that rose
and fell most and the word groups, each a mean change over the examples with its 95 % interval."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import conditions  # noqa: E402
from .movement import group_label_order, top_words  # noqa: E402


def movement_figure(moved: pd.DataFrame, *, unit: str = "nats", n: int = 4) -> plt.Figure | None:
    """Horizontal bars per condition (not the noise floor): the ``n`` words that rose most, the ``n`` that fell
    most, then the word groups; whiskers are 95 % bootstrap intervals over the examples. None without rows."""
    names = conditions.ordered(c for c in moved["condition"].unique() if c != conditions.NOISE_FLOOR)
    if not names:
        return None
    groups = group_label_order(moved)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 0.34 * (2 * n + len(groups)) + 1.6),
                             squeeze=False)
    for ax, cond in zip(axes[0], names):
        rose, fell = top_words(moved, cond, n=n)
        g = moved[(moved["condition"] == cond) & (moved["kind"] == "group")].set_index("name").reindex(groups)
        rows = pd.concat([rose, fell.iloc[::-1]]).assign(label=lambda d: "'" + d["name"] + "'")
        rows = pd.concat([rows, g.reset_index().assign(label=lambda d: "[" + d["name"] + "]")], ignore_index=True)
        y = np.arange(len(rows))[::-1]
        mean = rows["mean_change"].to_numpy(float)
        low = np.nan_to_num(mean - rows["ci_low"].to_numpy(float))
        high = np.nan_to_num(rows["ci_high"].to_numpy(float) - mean)
        colors = ["#2ca02c" if m > 0 else "#d62728" for m in mean]
        colors[len(rows) - len(g):] = ["#7f7f7f"] * len(g)
        ax.barh(y, mean, xerr=[low, high], color=colors, alpha=0.8, error_kw={"lw": 1, "capsize": 2})
        ax.set_yticks(y, rows["label"])
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{conditions.label(cond)} vs baseline")
        ax.set_xlabel(f"mean change of importance ({unit})")
    fig.suptitle("How the reasons moved: words that gained and lost importance, and word groups (95 % CI)")
    fig.tight_layout()
    return fig
