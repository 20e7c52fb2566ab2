"""The report's figures (PNG, matplotlib Agg), drawn from the stage-4 artifacts into ``<run>/figures/``:

* ``overlap_at_k.png`` — mean top-k overlap of each condition with the baseline for k = 1..n
  (left: absolute k up to the shortest input; right: k as a fraction of the input's tokens), 95 %
  bootstrap bands over examples, the noise floor (baseline vs its rerun) and the chance level
  (two random top-k sets of n features share k/n on average);
* ``overlap_heatmap.png`` — condition × condition mean top-k overlap, one panel per k;
* ``per_example.png`` — the distribution over examples (box + points) of the headline metrics per condition
  (:data:`shapshift.overlap.METRICS` entries with ``headline``);
* ``example_<id>_tokens.png`` — for ``cfg.n_plot_examples`` examples, the aggregated value of each
  input token under every condition, with ±1 standard error (:mod:`shapshift.aggregation`);
* ``movement.png`` and ``finetune_loss.png`` when the run has them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import aggregation as agg
from . import conditions as conds_registry
from . import overlap as ov
from .behaviour import finetune_record
from .compare import (
    CURVES_FILE,
    MOVEMENT_FILE,
    OVERLAP_FILE,
    SUMMARY_FILE,
    available_conditions,
    load_condition,
)
from .conditions import BASELINE, NOISE_FLOOR
from .config import CompareConfig
from .errors import ArtifactError
from .explanation import Explanation
from .figures import FIGURES_DIR, MOVEMENT_FIGURE, condition_label, plt, save_figure, score_unit
from .movement_views import movement_figure
from .stats import bootstrap_curve_ci
from .store import RunStore

log = logging.getLogger(__name__)


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
        style = {"color": color, "ls": "--" if floor else "-", "lw": 1.8, "label": condition_label(cond)}
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
        ticks = [condition_label(c) for c in conds]
        ax.set_xticks(range(len(conds)), ticks, rotation=35, ha="right")
        ax.set_yticks(range(len(conds)), ticks if ax is axes[0][0] else [])
        floor = ss[(ss["condition_a"] == BASELINE) & (ss["condition_b"] == NOISE_FLOOR)]["mean"]
        floor_txt = f"\nnoise floor {floor.iloc[0]:.2f}" if len(floor) else ""
        ax.set_title(f"k = {spec}{floor_txt}", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"mean {ov.metric_label(metric)}")
    fig.suptitle(f"Mean {ov.metric_label(metric)} between conditions (aggregated over output tokens)",
                 y=1.02)
    return save_figure(fig, store, "overlap_heatmap.png")


# -- per-example distributions --------------------------------------------------------------------
def plot_per_example(overlap: pd.DataFrame, store: RunStore, *, seed: int = 0) -> Path:
    """``per_example.png``: box + jittered points over examples, per condition vs the baseline.

    Panels: each headline metric (:data:`shapshift.overlap.METRICS`) of the aggregate scope, at every k of the run
    for those evaluated at a k; its registered range bounds the axis.
    """
    agg_rows = overlap[(overlap["scope"] == "aggregate") & (overlap["condition_a"] == BASELINE)]
    heads = [m for m in ov.METRICS.values() if m.headline]
    panels = [(m.name, s) for m in heads if m.at_k for s in dict.fromkeys(agg_rows.loc[agg_rows["metric"] == m.name, "k_spec"])]
    panels += [(m.name, "all") for m in heads if not m.at_k]
    conds = _vs_baseline(agg_rows)
    ncol = min(4, len(panels))
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False, layout="constrained")
    rng = np.random.default_rng(seed)
    for ax, (metric, spec) in zip(axes.flat, panels, strict=False):
        data = [agg_rows[(agg_rows["condition_b"] == c) & (agg_rows["metric"] == metric) & (agg_rows["k_spec"] == spec)]["value"]
                .dropna().to_numpy() for c in conds]
        if any(len(d) for d in data):
            ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.5, showfliers=False,
                       medianprops={"color": "black"})
        for i, (c, d) in enumerate(zip(conds, data, strict=True)):
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(d)), d, s=14, alpha=0.7, color=conds_registry.color(c), zorder=3)
        ax.set_xticks(range(1, len(conds) + 1), [condition_label(c).replace(" (", "\n(") for c in conds], rotation=30,
                      ha="right", fontsize=8)
        title = ov.metric_label(metric) + (f" @ k = {spec}" if spec != "all" else "")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("value per example")
        lo, hi = ov.METRICS[metric].lo, ov.METRICS[metric].hi
        ax.set_ylim(lo - 0.025 * (hi - lo), hi + 0.025 * (hi - lo))
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

    ``explanations``: ``{condition: Explanation}`` of one example. Inputs longer than
    ``max_tokens`` show the ``max_tokens`` tokens of largest |value| under any condition, in text order.
    """
    conds = [c for c in conds_registry.ordered(explanations) if c != NOISE_FLOOR]
    vals = {c: agg.aggregate(explanations[c], how) for c in conds}
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
                label=condition_label(c), xerr=err, error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"})
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
    """The error bars of :func:`plot_example_tokens`: the standard error of the aggregated value per input feature
    (:func:`shapshift.aggregation.aggregate_error`, the formula the verdicts use), or None for exact values."""
    err = Explanation.coerce(explanation).error_std
    if err is None or not np.isfinite(err).any():
        return None
    return agg.aggregate_error(np.nan_to_num(err), how)


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


# -- all figures ----------------------------------------------------------------------------------
def examples_to_plot(run_dir: str | Path, cfg: CompareConfig) -> list[tuple[int, dict[str, Any]]]:
    """The first ``cfg.n_plot_examples`` examples (by id) explained under every available condition.

    Returns ``[(example_id, {condition: Explanation})]`` (the rerun excluded).
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
