"""Stage-4 figures (PNG, matplotlib Agg) and one self-contained ``report.html``.

Figures, written to ``<run>/figures/`` and recorded in the manifest:

* ``overlap_at_k.png`` — mean top-k overlap of each condition with the baseline for k = 1..n
  (left: absolute k up to the shortest input; right: k as a fraction of the input's tokens), 95 %
  bootstrap bands over examples, the noise floor (baseline vs its rerun) and the chance level
  (two random top-k sets of n features share k/n on average);
* ``overlap_heatmap.png`` — condition × condition mean top-k overlap, one panel per k;
* ``per_example.png`` — the distribution over examples (box + points) of a few metrics per condition;
* ``example_<id>_tokens.png`` — for ``cfg.n_plot_examples`` examples, the aggregated value of each
  input token under every condition.

The report embeds these as base64 PNG, inlines ``shap.plots.text`` of every condition for the same
examples (interactive, one shared colour scale per example), the run's configuration from
``manifest.json``, and the summary table with CIs and p-values. It loads no external resource.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import overlap as ov  # noqa: E402
from .compare import (  # noqa: E402
    BASELINE,
    CONDITION_STEMS,
    CURVES_FILE,
    NOISE_FLOOR,
    OVERLAP_FILE,
    STAGE,
    SUMMARY_FILE,
    VERDICT_SUMMARY_FILE,
    available_conditions,
    load_condition,
)
from .config import CompareConfig  # noqa: E402
from .errors import ArtifactError  # noqa: E402
from .stats import bootstrap_curve_ci  # noqa: E402
from .store import RunStore, atomic_write_bytes  # noqa: E402

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
REPORT_FILE = "report.html"
#: A colour per condition, the same in every figure.
COLORS = {"zero_shot": "#1f77b4", "few_shot": "#ff7f0e", "finetuned": "#2ca02c", BASELINE: "#7f7f7f",
          NOISE_FLOOR: "#000000"}
LABELS = {BASELINE: "baseline", NOISE_FLOOR: "noise floor (baseline rerun)", "zero_shot": "zero-shot",
          "few_shot": "few-shot", "finetuned": "fine-tuned"}
METRIC_LABELS = {"feature_agreement": "top-k overlap", "rank_agreement": "rank agreement",
                 "sign_agreement": "sign agreement", "signed_rank_agreement": "signed rank agreement",
                 "jaccard": "Jaccard of top-k", "spearman": "Spearman ρ of |value|", "kendall": "Kendall τ of |value|",
                 "pairwise_rank_agreement": "pairwise rank agreement", "cosine": "cosine similarity",
                 "rbo": "rank-biased overlap"}
_NP_REPR = re.compile(r"np\.(?:float|int|uint)\d*\(([^()]*)\)")
#: A CSS colour as shap writes it: ``rgba(r, g, b, a)`` with plain numbers.
RGBA = re.compile(r"rgba\(\s*[0-9.]+\s*,\s*[0-9.]+\s*,\s*[0-9.]+\s*,\s*[0-9.eE+-]+\s*\)")


def _label(condition: str) -> str:
    return LABELS.get(condition, condition)


def _pair_label(a: str, b: str) -> str:
    return f"{_label(a)} vs {_label(b)}"


# -- figure files ---------------------------------------------------------------------------------
def save_figure(fig: plt.Figure, store: RunStore, name: str) -> Path:
    """Write ``fig`` as PNG to ``<run>/figures/<name>`` atomically, record it, close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    rel = f"{FIGURES_DIR}/{name}"
    path = atomic_write_bytes(store.path(rel), buf.getvalue())
    store.record(rel)
    return path


def _vs_baseline(df: pd.DataFrame) -> list[str]:
    """The conditions compared with the baseline in ``df``, noise floor last."""
    cs = df.loc[df["condition_a"] == BASELINE, "condition_b"].unique().tolist()
    order = list(CONDITION_STEMS)
    return sorted(cs, key=lambda c: order.index(c) if c in order else len(order))


# -- overlap@k curves -----------------------------------------------------------------------------
def _curve_matrix(g: pd.DataFrame, kmax: int) -> np.ndarray:
    """``(n_examples, kmax)`` overlap at k = 1..kmax (NaN where an example has fewer features)."""
    piv = g.pivot_table(index="example_id", columns="k", values="value")
    return piv.reindex(columns=range(1, kmax + 1)).to_numpy(np.float64)


def _fraction_matrix(g: pd.DataFrame, fractions: np.ndarray) -> np.ndarray:
    """``(n_examples, len(fractions))`` overlap at k = ceil(f n) for each fraction f."""
    rows = []
    for _, e in g.groupby("example_id", sort=True):
        curve = e.sort_values("k")["value"].to_numpy()
        rows.append([curve[ov.fraction_k(curve.size, f) - 1] for f in fractions])
    return np.asarray(rows, dtype=np.float64)


def plot_overlap_curves(curves: pd.DataFrame, store: RunStore, *, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """``overlap_at_k.png``: mean top-k overlap with the baseline vs k, bootstrap bands, floor, chance."""
    fig, (ax_k, ax_f) = plt.subplots(1, 2, figsize=(12, 4.6))
    base = curves[curves["condition_a"] == BASELINE]
    fractions = np.linspace(0.05, 1.0, 20)
    kmax = int(base.groupby("example_id")["n_features"].first().min()) if len(base) else 0
    for cond in _vs_baseline(base):
        g = base[base["condition_b"] == cond]
        color, floor = COLORS.get(cond, None), cond == NOISE_FLOOR
        style = {"color": color, "ls": "--" if floor else "-", "lw": 1.8, "label": _label(cond)}
        if kmax:
            m, lo, hi = bootstrap_curve_ci(_curve_matrix(g, kmax), n_bootstrap=n_bootstrap, seed=seed)
            ks = np.arange(1, kmax + 1)
            ax_k.plot(ks, m, marker="o" if kmax <= 30 else None, ms=3, **style)
            ax_k.fill_between(ks, lo, hi, color=color, alpha=0.15, lw=0)
        m, lo, hi = bootstrap_curve_ci(_fraction_matrix(g, fractions), n_bootstrap=n_bootstrap, seed=seed)
        ax_f.plot(fractions, m, marker="o", ms=3, **style)
        ax_f.fill_between(fractions, lo, hi, color=color, alpha=0.15, lw=0)
    if len(base):
        n = base.groupby("example_id")["n_features"].first().to_numpy()
        if kmax:
            ax_k.plot(np.arange(1, kmax + 1), [np.mean(k / n) for k in range(1, kmax + 1)], color="#999999", ls=":",
                      label="chance (random top-k)")
        ax_f.plot(fractions, [np.mean([ov.fraction_k(int(x), f) / x for x in n]) for f in fractions], color="#999999",
                  ls=":", label="chance (random top-k)")
    ax_k.set(xlabel="k (top-k input tokens by |SHAP value|)", ylabel="top-k overlap with the baseline",
             title=f"Overlap@k, k = 1..{kmax} (shortest input)", ylim=(-0.02, 1.02))
    ax_f.set(xlabel="k as a fraction of the input's tokens (k = ⌈f·n⌉)", ylabel="top-k overlap with the baseline",
             title="Overlap@k relative to input length", ylim=(-0.02, 1.02), xlim=(0, 1.02))
    if kmax and kmax <= 30:
        ax_k.set_xticks(np.arange(1, kmax + 1, max(1, kmax // 10)))
    for ax in (ax_k, ax_f):
        ax.grid(alpha=0.3)
    handles, labels = ax_f.get_legend_handles_labels()
    if handles:
        ax_f.legend(handles, labels, loc="lower right", fontsize=9)
    else:
        for ax in (ax_k, ax_f):
            ax.text(0.5, 0.5, "no condition was compared with the baseline", ha="center", va="center",
                    transform=ax.transAxes, color="#777777")
    fig.suptitle("Explanation overlap with the baseline (mean over examples, 95% bootstrap band)")
    return save_figure(fig, store, "overlap_at_k.png")


# -- heatmap --------------------------------------------------------------------------------------
def plot_heatmap(summary: pd.DataFrame, store: RunStore, *, metric: str = "feature_agreement") -> Path:
    """``overlap_heatmap.png``: condition × condition mean ``metric`` (aggregate scope), one panel per k."""
    s = summary[(summary["scope"] == "aggregate") & (summary["metric"] == metric)]
    conds = [c for c in CONDITION_STEMS if c != NOISE_FLOOR and (c in set(s["condition_a"]) | set(s["condition_b"]))]
    conds = conds or [BASELINE]
    specs = list(dict.fromkeys(s["k_spec"])) or ["all"]
    fig, axes = plt.subplots(1, len(specs), figsize=(2.9 * len(specs) + 2.4, 3.6), squeeze=False)
    im = None
    for ax, spec in zip(axes[0], specs, strict=True):
        m = np.eye(len(conds))
        ss = s[s["k_spec"] == spec]
        for _, r in ss.iterrows():
            if r["condition_a"] in conds and r["condition_b"] in conds:
                i, j = conds.index(r["condition_a"]), conds.index(r["condition_b"])
                m[i, j] = m[j, i] = r["mean"]
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        for i in range(len(conds)):
            for j in range(len(conds)):
                ax.text(j, i, "—" if np.isnan(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center",
                        color="white" if (np.isnan(m[i, j]) or m[i, j] < 0.6) else "black", fontsize=9)
        ticks = [_label(c) for c in conds]
        ax.set_xticks(range(len(conds)), ticks, rotation=35, ha="right")
        ax.set_yticks(range(len(conds)), ticks if ax is axes[0][0] else [])
        floor = ss[(ss["condition_a"] == BASELINE) & (ss["condition_b"] == NOISE_FLOOR)]["mean"]
        floor_txt = f"\nnoise floor {floor.iloc[0]:.2f}" if len(floor) else ""
        ax.set_title(f"k = {spec}{floor_txt}", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"mean {METRIC_LABELS.get(metric, metric)}")
    fig.suptitle(f"Mean {METRIC_LABELS.get(metric, metric)} between conditions (aggregated over output tokens)",
                 y=1.02)
    return save_figure(fig, store, "overlap_heatmap.png")


# -- per-example distributions --------------------------------------------------------------------
def plot_per_example(overlap: pd.DataFrame, store: RunStore, *, seed: int = 0) -> Path:
    """``per_example.png``: box + jittered points over examples, per condition vs the baseline.

    Panels: the top-k overlap at every k of the run, Spearman ρ and RBO (aggregate scope).
    """
    agg = overlap[(overlap["scope"] == "aggregate") & (overlap["condition_a"] == BASELINE)]
    panels = [("feature_agreement", s) for s in dict.fromkeys(agg.loc[agg["metric"] == "feature_agreement", "k_spec"])]
    panels += [("spearman", "all"), ("rbo", "all")]
    conds = _vs_baseline(agg)
    ncol = min(4, len(panels))
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False, layout="constrained")
    rng = np.random.default_rng(seed)
    for ax, (metric, spec) in zip(axes.flat, panels, strict=False):
        data = [agg[(agg["condition_b"] == c) & (agg["metric"] == metric) & (agg["k_spec"] == spec)]["value"]
                .dropna().to_numpy() for c in conds]
        if any(len(d) for d in data):
            ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.5, showfliers=False,
                       medianprops={"color": "black"})
        for i, (c, d) in enumerate(zip(conds, data, strict=True)):
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(d)), d, s=14, alpha=0.7, color=COLORS.get(c), zorder=3)
        ax.set_xticks(range(1, len(conds) + 1), [_label(c).replace(" (", "\n(") for c in conds], rotation=30,
                      ha="right", fontsize=8)
        title = METRIC_LABELS.get(metric, metric) + (f" @ k = {spec}" if spec != "all" else "")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("value per example")
        ax.set_ylim(-1.05 if metric == "spearman" else -0.02, 1.05)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Agreement with the baseline, one point per example (aggregated over output tokens)")
    return save_figure(fig, store, "per_example.png")


# -- per-example token bars -----------------------------------------------------------------------
def _token_label(tok: Any, pos: int) -> str:
    text = repr(str(tok))
    return f"{pos}: {text if len(text) <= 22 else text[:20] + '…'}"


def plot_example_tokens(explanations: dict[str, Any], example_id: int, store: RunStore, *, how: str = "sum",
                        max_tokens: int = 30) -> Path:
    """``example_<id>_tokens.png``: aggregated value per input token (rows) per condition (bars).

    ``explanations``: ``{condition: shap.Explanation}`` of one example. Inputs longer than
    ``max_tokens`` show the ``max_tokens`` tokens of largest |value| under any condition, in text order.
    """
    conds = [c for c in CONDITION_STEMS if c in explanations and c != NOISE_FLOOR]
    vals = {c: ov.aggregate(explanations[c], how) for c in conds}
    data = getattr(explanations[conds[0]], "data", None)
    tokens = [str(t) for t in (range(len(vals[conds[0]])) if data is None else data)]
    n = len(tokens)
    keep = np.arange(n)
    if n > max_tokens:
        score = np.max(np.abs(np.vstack(list(vals.values()))), axis=0)
        keep = np.sort(ov.ranking(score)[:max_tokens])
    height = 0.8 / max(1, len(conds))
    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.075 * len(keep) * max(2, len(conds))))
    y = np.arange(len(keep))
    for i, c in enumerate(conds):
        ax.barh(y + (i - (len(conds) - 1) / 2) * height, vals[c][keep], height=height, color=COLORS.get(c),
                label=_label(c))
    ax.set_yticks(y, [_token_label(tokens[p], int(p)) for p in keep], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    unit = "sum over generated tokens" if how == "sum" else "mean |value| over generated tokens"
    ax.set_xlabel(f"SHAP value ({unit}; score units, e.g. log-odds)")
    ax.set_ylabel("input token (position: text)")
    names = getattr(explanations[conds[0]], "output_names", None)
    outs = "".join(map(str, [] if names is None else names))
    shown = "" if len(keep) == n else f", top {len(keep)} of {n} tokens"
    ax.set_title(f"Example {example_id}: attribution per input token{shown}\nexplained output: {outs!r}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, store, f"example_{example_id}_tokens.png")


# -- shap text plots ------------------------------------------------------------------------------
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

    values = ov.explanation_values(explanation)
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
        exp = shap.Explanation(values=ov.aggregate(values, how), data=data,
                               base_values=float(base.sum()) if how == "sum" else 0.0)
    with np.printoptions(legacy="1.25"):
        out = shap.plots.text(exp, display=False, cmax=cmax)
    return fix_numpy_reprs(out)


# -- all figures ----------------------------------------------------------------------------------
def examples_to_plot(run_dir: str | Path, cfg: CompareConfig) -> list[tuple[int, dict[str, Any]]]:
    """The first ``cfg.n_plot_examples`` examples (by id) explained under every available condition.

    Returns ``[(example_id, {condition: shap.Explanation})]`` (the rerun excluded).
    """
    store = RunStore(run_dir)
    conds = [c for c in available_conditions(store) if c != NOISE_FLOOR]
    loaded = {c: load_condition(store, c) for c in conds}
    if BASELINE not in loaded:
        return []
    ids = sorted(loaded[BASELINE])[: max(0, cfg.n_plot_examples)]
    return [(i, {c: loaded[c][i] for c in conds if i in loaded[c]}) for i in ids]


def make_figures(run_dir: str | Path, cfg: CompareConfig | None = None,
                 examples: list[tuple[int, dict[str, Any]]] | None = None) -> dict[str, Path]:
    """Draw every figure from the stage-4 artifacts; returns ``{figure name: path}``."""
    cfg = cfg or CompareConfig()
    store = RunStore(run_dir)
    summary = read_summary(store)
    overlap = store.read_parquet(OVERLAP_FILE)
    curves = store.read_parquet(CURVES_FILE)
    seed = int(getattr(cfg, "seed", 0))
    out = {
        "overlap_at_k": plot_overlap_curves(curves, store, n_bootstrap=cfg.n_bootstrap, seed=seed),
        "overlap_heatmap": plot_heatmap(summary, store),
        "per_example": plot_per_example(overlap, store, seed=seed),
    }
    for ex_id, exps in examples if examples is not None else examples_to_plot(run_dir, cfg):
        out[f"example_{ex_id}_tokens"] = plot_example_tokens(exps, ex_id, store, how=cfg.aggregate)
    log.info("wrote %d figures to %s", len(out), store.path(FIGURES_DIR))
    return out


def read_summary(store: RunStore) -> pd.DataFrame:
    """``04_summary.csv`` after its sha256 check (``k_spec`` kept as text)."""
    try:
        return pd.read_csv(store.verify(SUMMARY_FILE), dtype={"k_spec": str, "note": str}, keep_default_na=True)
    except ArtifactError as exc:
        raise ArtifactError(exc.problem, "Run the compare stage first (`shapshift compare`).") from None


# -- the HTML report ------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0} th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} img{max-width:100%;border:1px solid #eee}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:12px}
.cond{border:1px solid #ddd;border-radius:6px;padding:6px;overflow-x:auto} .cond h4{margin:.2em 0 .4em}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.4em 0}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:12px} .muted{color:#777;font-size:13px}
"""

_HOW_TO_READ = """
<p>Each explanation gives every <b>input token</b> of an example a SHAP value per <b>generated token</b>:
how much that input token moves the model's score (log-odds by default) of the generated token,
relative to the fully masked input. The same features (the tokens of the example's own input) are
explained under every condition, so the explanations can be compared feature by feature.</p>
<ul>
<li><b>Top-k overlap</b> (feature agreement, Krishna et al. 2022): the share of the k most important
input tokens (largest |value|) that two explanations have in common. 1 = the same top-k tokens; two
random rankings share k/n on average (the dotted "chance" line). <code>k = 20%</code> uses the top
⌈0.2·n⌉ tokens of each input.</li>
<li><b>Rank / sign / signed rank agreement</b>: the same tokens also at the same rank, with the same
sign, or both. <b>Spearman ρ, Kendall τ</b>: rank correlation of |value| over all tokens.
<b>RBO</b>: rank-biased overlap (p = {rbo_p:g}), a top-weighted similarity of the whole rankings.
<b>Cosine</b>: similarity of the signed value vectors.</li>
<li><b>Aggregate</b> rows compare one value per input token (summed or mean-|value| over the generated
tokens); <b>token</b> rows compare each generated token separately and average per example.</li>
<li><b>Noise floor</b>: the baseline explained twice with <i>independent</i> seeds: how far two
explanations of the same model disagree through estimator noise alone. The conditions are explained
with the baseline's own seed (the same coalitions: common random numbers), so a condition that did not
change the model agrees with the baseline <i>above</i> the floor, and an overlap at the floor already
means a change. <code>wilcoxon_p</code> is the paired (over examples) two-sided Wilcoxon signed-rank test of the
condition's overlap against the floor's; <code>p (Holm)</code> adjusts it over the conditions tested.</li>
<li><b>Changed beyond noise</b> (the answer at the top): per example and input token, the change of its
value between the baseline and the condition is tested against both values' standard errors (a z-test
that treats them as independent, conservative under common random numbers; Benjamini-Hochberg over
the example's tokens at FDR {fdr:g}), and counts only when it is also at least {min_change:g} × the example's
largest |value|. The baseline rerun gets the same test: its count is the test's false alarms.
<b>Corrected ρ</b> divides the observed Spearman ρ by the square root of both explanations'
reliabilities (the expected ρ of two independent runs, from their standard errors; Spearman 1904).</li>
<li>Intervals are 95% percentile bootstrap intervals over examples; with few examples they are wide.</li>
</ul>
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def _fmt_p(p: Any) -> str:
    if p is None or not np.isfinite(p):
        return "—"
    return "&lt;0.001" if p < 1e-3 else f"{p:.3f}"


def _k_label(row: pd.Series) -> str:
    spec = str(row["k_spec"])
    return f"{spec} (k≈{row['k_mean']:.1f})" if spec.endswith("%") and np.isfinite(row["k_mean"]) else spec


def summary_table_html(summary: pd.DataFrame) -> str:
    """An HTML table of a summary frame: pair, scope, metric, k, mean [95% CI], n, floor, p-values."""
    head = ("<tr><th class=l>pair</th><th class=l>scope</th><th class=l>metric</th><th>k</th><th>mean</th>"
            "<th>95% CI</th><th>n</th><th>noise floor</th><th>Δ vs floor</th><th>Wilcoxon p</th><th>p (Holm)</th></tr>")
    body = []
    for _, r in summary.iterrows():
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if np.isfinite(r["ci_low"]) else "—"
        body.append(
            f"<tr><td class=l>{html.escape(_pair_label(r['condition_a'], r['condition_b']))}</td>"
            f"<td class=l>{r['scope']}</td><td class=l>{html.escape(METRIC_LABELS.get(r['metric'], r['metric']))}</td>"
            f"<td>{html.escape(_k_label(r))}</td><td>{_fmt(r['mean'])}</td><td>{ci}</td><td>{_fmt(int(r['n']))}</td>"
            f"<td>{_fmt(r['noise_floor_mean'])}</td><td>{_fmt(r['delta_vs_floor'])}</td>"
            f"<td>{_fmt_p(r['wilcoxon_p'])}</td><td>{_fmt_p(r['wilcoxon_p_holm'])}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def verdicts_html(store: RunStore) -> str:
    """The answer first: one sentence per condition (``04_verdicts.csv``) and their numbers in a table."""
    if not store.path(VERDICT_SUMMARY_FILE).exists():
        return ""
    v = pd.read_csv(store.verify(VERDICT_SUMMARY_FILE))
    sentences = "".join(f"<li>{html.escape(str(r['sentence']))}</li>" for _, r in v.iterrows())
    rows = "".join(
        f"<tr><td class=l>{html.escape(_label(r['condition_b']))}</td><td>{int(r['n_changed'])} of {int(r['n'])}</td>"
        f"<td>[{_fmt(r['share_ci_low'], 2)}, {_fmt(r['share_ci_high'], 2)}]</td><td>{_fmt(r['spearman'], 2)}</td>"
        f"<td>{_fmt(r['spearman_corrected'], 2)} [{_fmt(r['corrected_ci_low'], 2)}, {_fmt(r['corrected_ci_high'], 2)}]</td>"
        f"<td>{_fmt(r['reliability_b'], 2)}</td></tr>" for _, r in v.iterrows())
    return (f"<h2>Answer: what changed beyond the estimator's noise</h2><ul>{sentences}</ul>"
            "<table><tr><th class=l>vs baseline</th><th>examples changed</th><th>share 95% CI</th><th>Spearman ρ</th>"
            "<th>ρ corrected for noise [95% CI]</th><th>reliability</th></tr>" + rows + "</table>")


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows the report shows first: pairs with the baseline, aggregate scope, top-k overlap, RBO, ρ."""
    s = summary[(summary["condition_a"] == BASELINE) & (summary["scope"] == "aggregate")]
    return s[s["metric"].isin(["feature_agreement", "rbo", "spearman"])]


#: Above this many (input token × generated token) cells an example's text plots show the values
#: aggregated over the generated tokens: shap's per-token plot costs about 9 kB of HTML per cell.
TEXT_PLOT_MAX_CELLS = 160


def _examples_html(examples: list[tuple[int, dict[str, Any]]], figures: dict[str, Path], how: str) -> str:
    parts = []
    for ex_id, exps in examples:
        conds = [c for c in CONDITION_STEMS if c in exps]
        values = {c: ov.explanation_values(exps[c]) for c in conds}
        full = max(v.size for v in values.values()) <= TEXT_PLOT_MAX_CELLS
        scale = [np.abs(v) if full else np.abs(ov.aggregate(v, how)) for v in values.values()]
        cmax = max(float(np.max(v)) if v.size else 0.0 for v in scale) or None
        cells = "".join(f"<div class=cond><h4>{html.escape(_label(c))}</h4>"
                        f"{text_plot_html(exps[c], cmax=cmax, how=None if full else how)}</div>" for c in conds)
        what = ("hover or click a generated token (top) to see the attribution of its log-odds"
                if full else f"values aggregated over the generated tokens ({how}); the input is too long for "
                             f"per-token plots (more than {TEXT_PLOT_MAX_CELLS} token pairs)")
        fig = figures.get(f"example_{ex_id}_tokens")
        parts.append(f"<h3>Example {ex_id}</h3>"
                     f"<p class=muted>SHAP text plots: {what}. One colour scale per example (|value| = "
                     f"{_fmt(cmax)} is full colour); red raises the score, blue lowers it.</p>"
                     f"<div class=grid>{cells}</div>" + (_img(fig, f"example {ex_id} tokens") if fig else ""))
    return "".join(parts)


def write_report(run_dir: str | Path, cfg: CompareConfig | None = None) -> Path:
    """Draw the figures and write ``<run>/report.html``, one self-contained file; returns its path.

    Needs the stage-4 artifacts (:func:`shapshift.compare.run_compare`). The file embeds the figures
    as base64 PNG and the SHAP text plots inline, and references no external URL, so it opens offline.
    """
    cfg = cfg or CompareConfig()
    store = RunStore(run_dir)
    summary = read_summary(store)
    examples = examples_to_plot(run_dir, cfg)
    figures = make_figures(run_dir, cfg, examples)
    man = store.manifest()
    notes = man.get("stages", {}).get(STAGE, {}).get("notes", [])
    config = man.get("config") or {"compare": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    versions = man.get("versions") or man.get("packages") or {}
    artifacts = man.get("artifacts", {})
    name = html.escape(store.dir.resolve().name)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>shapshift report: {name}</title>
<style>{_CSS}</style></head><body>
<h1>shapshift report: {name}</h1>
<p class=muted>Generated {datetime.now(timezone.utc).isoformat(timespec="seconds")} from <code>{html.escape(str(store.dir))}</code>.
Aggregation over generated tokens: <b>{html.escape(cfg.aggregate)}</b>; bootstrap resamples: {cfg.n_bootstrap}.</p>
{"".join(f'<div class=note>{html.escape(n)}</div>' for n in notes)}
{verdicts_html(store)}
<h2>How to read this</h2>{_HOW_TO_READ.replace("{rbo_p:g}", f"{float(getattr(cfg, 'rbo_p', ov.RBO_P)):g}")
                          .replace("{fdr:g}", f"{cfg.fdr:g}").replace("{min_change:g}", f"{cfg.min_change:g}")}
<h2>Headline: agreement with the baseline</h2>
{summary_table_html(headline(summary))}
<h2>Overlap@k</h2>{_img(figures["overlap_at_k"], "overlap at k")}
<h2>Conditions against each other</h2>{_img(figures["overlap_heatmap"], "overlap heatmap")}
<h2>Per-example distributions</h2>{_img(figures["per_example"], "per-example distributions")}
<h2>Examples</h2>{_examples_html(examples, figures, cfg.aggregate)}
<h2>All metrics</h2>
<details><summary>Every condition pair × scope × metric × k ({len(summary)} rows; also in <code>{SUMMARY_FILE}</code>)</summary>
{summary_table_html(summary)}</details>
<h2>Run configuration</h2>
<details open><summary>From <code>manifest.json</code></summary><pre>{html.escape(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre></details>
<details><summary>Package versions and artifact hashes</summary><pre>{html.escape(json.dumps({"versions": versions, "artifacts": artifacts}, indent=2, sort_keys=True, default=str))}</pre></details>
</body></html>
"""
    path = atomic_write_bytes(store.path(REPORT_FILE), doc.encode("utf-8"))
    store.record(REPORT_FILE)
    log.info("wrote %s", path)
    return path
