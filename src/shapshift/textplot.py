"""SHAP text plots: one explanation, and one example under several conditions on one colour scale.

The one drawing path of the report (``report.html``) and the notebooks (:mod:`shapshift.display`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import aggregation as agg
from . import conditions

#: Above this many (input token × generated token) cells an example's text plots show the values
#: aggregated over the generated tokens: shap's per-token plot costs about 9 kB of HTML per cell.
MAX_CELLS = 160


_NP_REPR = re.compile(r"np\.(?:float|int|uint)\d*\(([^()]*)\)")
#: A CSS colour as shap writes it: ``rgba(r, g, b, a)`` with plain numbers.
RGBA = re.compile(r"rgba\(\s*[0-9.]+\s*,\s*[0-9.]+\s*,\s*[0-9.]+\s*,\s*[0-9.eE+-]+\s*\)")


#: The top axis of a shap text plot, and the labels written on it (tick values, base value, f(inputs)).
_AXIS_SVG = '<svg width="100%" height="80px">'
_AXIS_TEXT = re.compile(r'<text x="([0-9.eE+-]+)%" y="(10|27)"([^>]*)>(.*?)</text>', re.S)
#: Closer than this (in % of the plot's width), the base value and f(inputs) labels would collide.
LABEL_GAP = 30.0


def separate_axis_labels(text: str) -> str:
    """Keep the labels on a shap text plot's axis from overlapping.

    shap writes every tick value and the base value / f(inputs) labels centred on their x; in a
    narrow plot, or when base value and f(inputs) are close, they overlap. The plain tick values are
    dropped (the ticks stay), and a close base value / f(inputs) pair is anchored away from each
    other: the left one ends at its x, the right one starts there.
    """
    blocks = text.split(_AXIS_SVG)
    return _AXIS_SVG.join([blocks[0], *(_separate(block) for block in blocks[1:])])


def _separate(block: str) -> str:
    found = list(_AXIS_TEXT.finditer(block))
    base = next((m[1] for m in found if m[2] == "10" and m[4] == "base value"), None)
    f = next((m[1] for m in found if m[2] == "10" and m[4] != "base value"), None)

    def role(m: re.Match) -> str:
        if m[2] == "10":
            return "base" if m[4] == "base value" else "f"
        if "bold" in m[3]:
            return "f" if m[1] == f else "tick"
        return "base" if m[1] == base and "stroke:#ffffff" in m[3] or (m[1] == base and m[1] != f) else "tick"

    close = base is not None and f is not None and abs(float(base) - float(f)) < LABEL_GAP
    left = "base" if close and float(base) <= float(f) else "f"

    def relabel(m: re.Match) -> str:
        r = role(m)
        if r == "tick":
            return ""
        if not close:
            return m[0]
        return m[0].replace('text-anchor="middle"', f'text-anchor="{"end" if r == left else "start"}"')

    return _AXIS_TEXT.sub(relabel, block)


def fix_numpy_reprs(text: str) -> str:
    """Replace numpy-2 scalar reprs (``np.float64(0.5)``) by plain numbers, as CSS needs."""
    return _NP_REPR.sub(r"\1", text)


def text_plot_html(explanation: Any, *, cmax: float | None = None, how: str | None = None) -> str:
    """``shap.plots.text`` of one explanation as an HTML fragment with valid ``rgba(...)`` colours.

    ``how=None``: the full explanation, one selectable plot per generated token (values
    ``(n_in, n_out)``); ``how="sum"`` / ``"mean_abs"``: one plot of the values aggregated over the
    generated tokens (:func:`shapshift.overlap.aggregate`; base value summed for ``"sum"``, 0 for
    ``"mean_abs"``), about ``2 n_out`` times smaller. ``cmax``: the |value| drawn at full colour,
    shared across conditions so that colours compare (None: each plot its own maximum).

    Renders under ``numpy.printoptions(legacy="1.25")`` (shap ≤ 0.51 formats colours with ``str()``
    of numpy scalars, which numpy 2 prints as ``np.float64(...)``, and browsers then drop the
    colour) and strips any numpy repr left. Output token names are HTML-escaped (shap does not);
    so is ``&`` in input tokens (shap escapes only ``<`` and ``>``).
    """
    import shap

    values = agg.explanation_values(explanation)
    tokens = getattr(explanation, "data", None)
    tokens = range(values.shape[0]) if tokens is None else tokens
    data = np.asarray([str(t).replace("&", "&amp;") for t in tokens], dtype=object)
    base = getattr(explanation, "base_values", None)
    base = np.zeros(values.shape[1]) if base is None else np.asarray(base, dtype=np.float64).reshape(-1)
    if how is None:
        outs = getattr(explanation, "output_names", None)
        outs = [f"out {i}" for i in range(values.shape[1])] if outs is None else list(outs)
        exp = shap.Explanation(values=values, base_values=base, data=data,
                               output_names=[html.escape(str(o)) for o in outs])
    else:
        exp = shap.Explanation(values=agg.aggregate(values, how), data=data,
                               base_values=float(base.sum()) if how == "sum" else 0.0)
    with np.printoptions(legacy="1.25"):
        out = shap.plots.text(exp, display=False, cmax=cmax)
    return separate_axis_labels(fix_numpy_reprs(out))


def conditions_html(explanations: Mapping[str, Any], *, how: str = "sum", max_cells: int = MAX_CELLS,
                    per_token: bool | None = None, cell_class: str = "cond") -> tuple[str, float | None, bool]:
    """The text plots of one example under each condition (registry order), on one colour scale.

    ``explanations``: ``{condition: Explanation}`` of one example. ``per_token``: one selectable plot
    per generated token (True), one plot of the values aggregated over them with ``how`` (False), or
    per token up to ``max_cells`` (input × generated tokens) cells (None). Returns
    ``(html, cmax, per_token)``: ``cmax`` is the |value| drawn at full colour in every plot.
    """
    conds = sorted(explanations, key=conditions.order_key)
    values = {c: agg.explanation_values(explanations[c]) for c in conds}
    full = per_token if per_token is not None else max((v.size for v in values.values()), default=0) <= max_cells
    cmax = max((float(np.max(np.abs(v if full else agg.aggregate(v, how)))) if v.size else 0.0
                for v in values.values()), default=0.0) or None
    cells = "".join(f"<div class={cell_class}><h4>{html.escape(conditions.label(c))}</h4>"
                    f"{text_plot_html(explanations[c], cmax=cmax, how=None if full else how)}</div>" for c in conds)
    return cells, cmax, full
