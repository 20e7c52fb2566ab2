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

Over 400 lines on purpose: the figures of one report share their data loading, colours and labels.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import conditions as conds_registry  # noqa: E402
from . import overlap as ov  # noqa: E402
from . import textplot  # noqa: E402
from .backends.diagnostics import api_notes
from .compare import (  # noqa: E402
    CURVES_FILE,
    MOVEMENT_FILE,
    OVERLAP_FILE,
    STAGE,
    SUMMARY_FILE,
    VERDICT_SUMMARY_FILE,
    available_conditions,
    load_condition,
)
from .conditions import BASELINE, NOISE_FLOOR  # noqa: E402
from .config import (  # noqa: E402
    MASKING_MEANINGS,
    SCORE_UNITS,
    CompareConfig,
    ExplainConfig,
    resolve_masking,
)
from .errors import ArtifactError  # noqa: E402
from .formats import check_summary  # noqa: E402
from .movement_views import movement_figure  # noqa: E402
from .stats import bootstrap_curve_ci  # noqa: E402
from .store import RunStore, atomic_write_bytes  # noqa: E402

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
MOVEMENT_FIGURE = "movement.png"
REPORT_FILE = "report.html"
METRIC_LABELS = {"feature_agreement": "top-k overlap", "rank_agreement": "rank agreement",
                 "sign_agreement": "sign agreement", "signed_rank_agreement": "signed rank agreement",
                 "jaccard": "Jaccard of top-k", "spearman": "Spearman ρ of |value|", "kendall": "Kendall τ of |value|",
                 "pairwise_rank_agreement": "pairwise rank agreement", "cosine": "cosine similarity",
                 "rbo": "rank-biased overlap"}


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
    from .explainers.registry import masking_used

    masking = masking_used(explain_setting(store, "method"), resolve_masking(explain_setting(store, "masking")))
    return MASKING_MEANINGS.get(masking, masking)


def _label(condition: str) -> str:
    return conds_registry.label(condition)


def _pair_label(a: str, b: str) -> str:
    return f"{_label(a)} vs {_label(b)}"


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


def _vs_baseline(df: pd.DataFrame) -> list[str]:
    """The conditions compared with the baseline in ``df``, noise floor last."""
    cs = df.loc[df["condition_a"] == BASELINE, "condition_b"].unique().tolist()
    return conds_registry.ordered(cs)


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
        color, floor = conds_registry.color(cond), cond == NOISE_FLOOR
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
    conds = [c for c in conds_registry.ordered(set(s["condition_a"]) | set(s["condition_b"])) if c != NOISE_FLOOR]
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
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(d)), d, s=14, alpha=0.7, color=conds_registry.color(c), zorder=3)
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
                        max_tokens: int = 30, unit: str | None = None) -> Path:
    """``example_<id>_tokens.png``: aggregated value per input token (rows) per condition (bars).

    ``explanations``: ``{condition: shap.Explanation}`` of one example. Inputs longer than
    ``max_tokens`` show the ``max_tokens`` tokens of largest |value| under any condition, in text order.
    """
    conds = [c for c in conds_registry.ordered(explanations) if c != NOISE_FLOOR]
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
    errs = {c: aggregate_error(explanations[c], how) for c in conds}
    for i, c in enumerate(conds):
        err = None if errs[c] is None else errs[c][keep]
        ax.barh(y + (i - (len(conds) - 1) / 2) * height, vals[c][keep], height=height, color=conds_registry.color(c),
                label=_label(c), xerr=err, error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"})
    ax.set_yticks(y, [_token_label(tokens[p], int(p)) for p in keep], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    how_label = "sum over generated tokens" if how == "sum" else "mean |value| over generated tokens"
    ax.set_xlabel(f"SHAP value ({unit or score_unit(store)}, {how_label})")
    ax.set_ylabel("input token (position: text)")
    names = getattr(explanations[conds[0]], "output_names", None)
    outs = "".join(map(str, [] if names is None else names))
    shown = "" if len(keep) == n else f", top {len(keep)} of {n} tokens"
    if any(e is not None for e in errs.values()):
        shown += "; bars: ±1 standard error of the estimator"
    ax.set_title(f"Example {example_id}: attribution per input token{shown}\nexplained output: {outs!r}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, store, f"example_{example_id}_tokens.png")


def aggregate_error(explanation: Any, how: str = "sum") -> np.ndarray | None:
    """The standard error of :func:`shapshift.overlap.aggregate` per input token, from ``error_std``.

    ``error_std`` ``(n_in, n_out)`` is the estimator's standard error of each value (None or all NaN:
    an exact estimator, no error bars). Errors of the generated tokens are taken as independent:
    ``sum`` → sqrt(Σ err²); ``mean_abs`` → sqrt(Σ err²) / n_out (|·| does not enlarge an error).
    """
    err = getattr(explanation, "error_std", None)
    if err is None:
        return None
    err = np.asarray(err, dtype=np.float64)
    if err.ndim == 1:
        err = err[:, None]
    if not np.isfinite(err).any():
        return None
    total = np.sqrt(np.nansum(err ** 2, axis=1))
    return total if how == "sum" else total / max(1, err.shape[1])


# -- behaviour ------------------------------------------------------------------------------------
def plot_finetune_loss(record: dict[str, Any], store: RunStore) -> Path:
    """``finetune_loss.png``: the training loss per step (cross-entropy on the target tokens, nats)."""
    return save_figure(finetune_loss_figure(record), store, "finetune_loss.png")


def finetune_loss_figure(record: dict[str, Any]) -> plt.Figure:
    """The training loss per step of a fine-tuning record (``03_finetune.json``): the report's figure and
    the notebook's."""
    losses = np.asarray(record.get("losses") or [], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if losses.size:
        ax.plot(np.arange(1, losses.size + 1), losses, marker="o" if losses.size <= 40 else None, ms=3,
                color=conds_registry.color("finetuned"))
    ax.set(xlabel="optimizer step", ylabel="training loss (nats per target token)",
           title=f"Fine-tuning ({record.get('method', '?')}, {record.get('steps', losses.size)} steps)")
    ax.grid(alpha=0.3)
    return fig


def _metric_cell(x: Any) -> str:
    return _fmt(x) if isinstance(x, (int, float, np.number)) or x is None else html.escape(str(x))


def format_check_html(store: RunStore) -> str:
    """The prompt format the run used and the check that chose it (:mod:`shapshift.formats`)."""
    stage = store.manifest().get("stages", {}).get("preprocess", {})
    fmt = (stage.get("format") or {}).get("name")
    table, note = check_summary(stage)
    if not fmt:
        return ""
    said = f"<p>Prompt format: <b>{html.escape(fmt)}</b>"
    if table.empty:
        return said + " (no format check ran: data.format_check_rows is 0, or nothing to choose).</p>"
    n = int(pd.DataFrame(stage["format_check"])["n_rows"].iloc[0])
    rows = "".join("<tr><td class=l>" + html.escape(str(i)) + "</td>" + "".join(f"<td>{html.escape(str(v))}</td>"
                   for v in r) + "</tr>" for i, r in zip(table.index, table.itertuples(index=False)))
    head = "<tr><th class=l>format</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr>"
    return (said + f", chosen by the format check on {n} training rows (never the explained ones): the share of rows "
            "whose greedy generation starts with the reference as the format writes it, and its mean log-probability "
            "(nats), with the template alone and after demonstrations.</p>"
            + (f"<div class=note>{html.escape(note)}</div>" if note else "") + f"<table>{head}{rows}</table>")


def behaviour_html(store: RunStore, figures: dict[str, Path]) -> tuple[str, list[str]]:
    """The "What the model did" section, and its warnings (also shown at the top of the report)."""
    from . import behaviour as bh

    gens = bh.generations(store)
    if gens.empty:
        return "<p class=muted>No generations are recorded in this run folder.</p>", []
    summary = bh.condition_summary(gens)
    warnings = bh.behaviour_warnings(summary, _label)
    head = ("<tr><th class=l>condition</th><th>examples</th><th>label match</th>"
            "<th>mean log p(explained text)</th><th>≈ p per token</th></tr>")
    body = "".join(
        f"<tr><td class=l>{html.escape(_label(r.condition))}</td><td>{r.n}</td>"
        f"<td>{'—' if not r.n_with_reference else f'{int(r.label_matches)} / {r.n_with_reference}'}</td>"
        f"<td>{_fmt(r.mean_logprob, 2)}</td><td>{'—' if not np.isfinite(r.token_p) else f'{r.token_p:.2g}'}</td></tr>" for r in summary.itertuples())
    data = store.read_parquet("01_dataset.parquet").set_index("example_id")
    conds = list(summary["condition"])
    rows = []
    for ex_id in sorted(gens["example_id"].unique()):
        ref = data.loc[ex_id, "target_text"] if ex_id in data.index else None
        text = data.loc[ex_id, "source_text"] if ex_id in data.index else ""
        cells = []
        for c in conds:
            g = gens[(gens["condition"] == c) & (gens["example_id"] == ex_id)]
            if g.empty:
                cells.append("<td>—</td>")
                continue
            r = g.iloc[0]
            mark = "" if pd.isna(r["label_match"]) else (" ✓" if r["label_match"] else " ✗")
            cells.append(f"<td class=l><code>{html.escape(repr(str(r['generated_text'])))}</code>{mark}<br>"
                         f"<span class=muted>log p = {_fmt(r['explained_logprob'], 2)}</span></td>")
        rows.append(f"<tr><td>{int(ex_id)}</td><td class=l>{html.escape(str(text)[:160])}</td>"
                    f"<td class=l><code>{html.escape(repr(ref)) if ref is not None else '—'}</code></td>{''.join(cells)}</tr>")
    per_example = ("<table><tr><th>example</th><th class=l>input text</th><th class=l>reference</th>"
                   + "".join(f"<th class=l>{html.escape(_label(c))}</th>" for c in conds) + "</tr>"
                   + "".join(rows) + "</table>")
    parts = [format_check_html(store), f"<table>{head}{body}</table>",
             "<p class=muted>Label match: the generation starts with the reference output. log p: the "
             "log-probability (nats) of the explained text under the condition, summed over its tokens; "
             "≈ p per token is its geometric mean.</p>",
             "<details open><summary>What each condition generated, per explained example (✓ = starts with the "
             f"reference)</summary>{per_example}</details>"]
    record = bh.finetune_record(store)
    if record is not None:
        before, after = record.get("before") or {}, record.get("after") or {}
        keys = [k for k in dict.fromkeys([*before, *after]) if k != "n_rows"]
        table = "".join(f"<tr><td class=l>{html.escape(k)}</td><td>{_metric_cell(before.get(k))}</td>"
                        f"<td>{_metric_cell(after.get(k))}</td></tr>" for k in keys)
        where = html.escape(str(record.get("evaluated_on", "")))
        parts.append(f"<h3>Fine-tuning</h3><table><tr><th class=l>task metric</th><th>before</th><th>after</th></tr>"
                     f"{table}</table><p class=muted>Evaluated on {where} ({before.get('n_rows', '?')} rows); "
                     "accuracy: the reference label has the highest log-probability among the labels.</p>")
        if "finetune_loss" in figures:
            parts.append(_img(figures["finetune_loss"], "fine-tuning loss"))
    return "".join(parts), warnings


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
    moved_file = store.path(MOVEMENT_FILE)
    if moved_file.exists():
        fig = movement_figure(store.read_parquet(MOVEMENT_FILE))
        if fig is not None:
            out["movement"] = save_figure(fig, store, MOVEMENT_FIGURE)
    from .behaviour import finetune_record

    record = finetune_record(store)
    if record is not None:
        out["finetune_loss"] = plot_finetune_loss(record, store)
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
def _template():
    """The report's jinja2 template (``templates/report.html.j2``), HTML-escaping every value not marked safe."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("shapshift", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), keep_trailing_newline=True)
    return env.get_template("report.html.j2")


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


def movement_html(store: RunStore) -> str:
    """How the reasons moved (:mod:`shapshift.movement`): one sentence per condition and the figure."""
    sentences = store.manifest().get("stages", {}).get(STAGE, {}).get("movement") or []
    if not sentences:
        return ""
    items = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
    fig = store.path(f"{FIGURES_DIR}/{MOVEMENT_FIGURE}")
    img = _img(store.verify(f"{FIGURES_DIR}/{MOVEMENT_FIGURE}"), "how the reasons moved") if fig.exists() else ""
    return ("<h2>Answer: how the reasons moved</h2><ul>" + items + "</ul>" + img +
            "<p class=muted>Mean change of each word's value (the condition's minus the baseline's, summed over the "
            "explained tokens) over the examples it occurs in, with a 95 % bootstrap interval and the number of "
            "examples where it changed beyond the estimator's noise; word groups sum their words per example "
            "(<code>04_movement.parquet</code>; your own groups: <code>compare.word_groups</code>).</p>")


def verdicts_html(store: RunStore) -> str:
    """The answer first: how the reasons moved (:func:`movement_html`), then one sentence per condition
    (``04_verdicts.csv``) on whether it changed them beyond the noise, and their numbers in a table."""
    if not store.path(VERDICT_SUMMARY_FILE).exists():
        return ""
    v = pd.read_csv(store.verify(VERDICT_SUMMARY_FILE))
    sentences = "".join(f"<li>{html.escape(str(r['sentence']))}</li>" for _, r in v.iterrows())
    rows = "".join(
        f"<tr><td class=l>{html.escape(_label(r['condition_b']))}</td><td>{int(r['n_changed'])} of {int(r['n'])}</td>"
        f"<td>[{_fmt(r['share_ci_low'], 2)}, {_fmt(r['share_ci_high'], 2)}]</td><td>{_fmt(r['spearman'], 2)}</td>"
        f"<td>{_fmt(r['spearman_corrected'], 2)} [{_fmt(r['corrected_ci_low'], 2)}, {_fmt(r['corrected_ci_high'], 2)}]</td>"
        f"<td>{_fmt(r['reliability_b'], 2)}</td></tr>" for _, r in v.iterrows())
    return (movement_html(store) + f"<h2>Answer: what changed beyond the estimator's noise</h2><ul>{sentences}</ul>"
            "<table><tr><th class=l>vs baseline</th><th>examples changed</th><th>share 95% CI</th><th>Spearman ρ</th>"
            "<th>ρ corrected for noise [95% CI]</th><th>reliability</th></tr>" + rows + "</table>")


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows the report shows first: pairs with the baseline, aggregate scope, top-k overlap, RBO, ρ."""
    s = summary[(summary["condition_a"] == BASELINE) & (summary["scope"] == "aggregate")]
    return s[s["metric"].isin(["feature_agreement", "rbo", "spearman"])]


def _examples_html(examples: list[tuple[int, dict[str, Any]]], figures: dict[str, Path], how: str,
                   unit: str = "log-odds") -> str:
    parts = []
    for ex_id, exps in examples:
        cells, cmax, full = textplot.conditions_html(exps, how=how)
        what = (f"hover or click a generated token (top) to see the attribution of its {unit}"
                if full else f"values aggregated over the generated tokens ({how}); the input is too long for "
                             f"per-token plots (more than {textplot.MAX_CELLS} token pairs)")
        fig = figures.get(f"example_{ex_id}_tokens")
        parts.append(f"<h3>Example {ex_id}</h3>"
                     f"<p class=muted>SHAP text plots: {what}. One colour scale per example (|value| = "
                     f"{_fmt(cmax)} {unit} is full colour); red raises the score, blue lowers it.</p>"
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
    from .lens_views import report_section  # the lenses beside SHAP ("" when the run has none)

    lens_section = report_section(run_dir)
    man = store.manifest()
    behaviour, warnings = behaviour_html(store, figures)
    config = man.get("config") or {"compare": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    versions = man.get("versions") or man.get("packages") or {}
    doc = _template().render(
        name=store.dir.resolve().name, run_dir=str(store.dir), aggregate=cfg.aggregate, n_bootstrap=cfg.n_bootstrap,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=warnings + api_notes(man) + man.get("stages", {}).get(STAGE, {}).get("notes", []),
        verdicts=verdicts_html(store), behaviour=behaviour, unit=score_unit(store), masking=masking_meaning(store),
        feature=feature_name(store), contrast=explain_setting(store, "target") == "contrastive",
        rbo_p=f"{float(getattr(cfg, 'rbo_p', ov.RBO_P)):g}", fdr=f"{cfg.fdr:g}", min_change=f"{cfg.min_change:g}",
        headline=summary_table_html(headline(summary)), lens_section=lens_section,
        figures={k: _img(figures[k], k.replace("_", " ")) for k in ("overlap_at_k", "overlap_heatmap", "per_example")},
        examples=_examples_html(examples, figures, cfg.aggregate, score_unit(store)),
        n_summary_rows=len(summary), summary_file=SUMMARY_FILE, all_metrics=summary_table_html(summary),
        config_json=json.dumps(config, indent=2, sort_keys=True, default=str),
        versions_json=json.dumps({"versions": versions, "artifacts": man.get("artifacts", {})}, indent=2,
                                 sort_keys=True, default=str))
    path = atomic_write_bytes(store.path(REPORT_FILE), doc.encode("utf-8"))
    store.record(REPORT_FILE)
    log.info("wrote %s", path)
    return path
