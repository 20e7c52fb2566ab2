"""What every figure and HTML fragment of a run shares: matplotlib without a display, PNG files recorded in the
run folder, images inlined as base64, the conditions' labels, number formats and the run's units.

:mod:`shapshift.report`, :mod:`shapshift.report_plots`, :mod:`shapshift.lens_views` and :mod:`shapshift.display`
import it; it imports none of them.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files: no display needed (set before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import conditions as conds_registry  # noqa: E402
from .config import ExplainConfig  # noqa: E402
from .constants import MASKING_MEANINGS, SCORE_UNITS, resolve_masking  # noqa: E402
from .explainers.registry import masking_used  # noqa: E402
from .store import RunStore, atomic_write_bytes  # noqa: E402

FIGURES_DIR = "figures"
MOVEMENT_FIGURE = "movement.png"


def explain_setting(store: RunStore, key: str) -> str:
    """The run's ``explain.<key>`` as recorded in its manifest (the default when unrecorded)."""
    explain = (store.manifest().get("config") or {}).get("explain") or {}
    return str(explain.get(key, getattr(ExplainConfig, key)))


def score_unit(store: RunStore) -> str:
    """The unit of the run's SHAP values (``explain.score``)."""
    score = explain_setting(store, "score")
    return SCORE_UNITS.get(score, score)


def feature_name(store: RunStore) -> str:
    """What one feature of the run is: ``token``, ``word`` or ``sentence`` (``explain.unit``)."""
    return explain_setting(store, "unit")


def masking_meaning(store: RunStore) -> str:
    """What an absent feature was in the run (``explain.masking`` as ``explain.method`` ran it)."""
    masking = masking_used(explain_setting(store, "method"), resolve_masking(explain_setting(store, "masking")))
    return MASKING_MEANINGS.get(masking, masking)


def condition_label(condition: str) -> str:
    """A condition's display name (:func:`shapshift.conditions.label`)."""
    return conds_registry.label(condition)


def pair_label(a: str, b: str) -> str:
    return f"{condition_label(a)} vs {condition_label(b)}"


# -- figure files ---------------------------------------------------------------------------------
def figure_png(fig: plt.Figure, name: str = "") -> bytes:
    """``fig`` as PNG bytes (the figure is closed); its ``Description`` text chunk holds the titles and axis
    labels (readable without rendering, e.g. ``PIL.Image.open(path).text``)."""
    buf = io.BytesIO()
    texts = [fig.get_suptitle()]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight",
                metadata={"Title": name, "Description": " | ".join(t for t in texts if t)})
    plt.close(fig)
    return buf.getvalue()


def save_figure(fig: plt.Figure, store: RunStore, name: str) -> Path:
    """Write ``fig`` as PNG to ``<run>/figures/<name>`` atomically, record it, close it.

    The PNG's ``Description`` text chunk holds the figure's titles and axis labels (readable without
    rendering, e.g. ``PIL.Image.open(path).text``).
    """
    rel = f"{FIGURES_DIR}/{name}"
    path = atomic_write_bytes(store.path(rel), figure_png(fig, name))
    store.record(rel)
    return path


def img_html(path: Path, alt: str) -> str:
    """An ``<img>`` with the PNG at ``path`` inlined as base64 (the report loads no external resource)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def fmt_p(p: Any) -> str:
    if p is None or not np.isfinite(p):
        return "—"
    return "&lt;0.001" if p < 1e-3 else f"{p:.3f}"
