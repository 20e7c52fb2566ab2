"""Views of the lenses beside SHAP: the report section, its figure, and the notebooks' displays.

* :func:`plot_lens_agreement` — ``figures/lenses_agreement.png``: per condition and lens, Spearman ρ
  with SHAP (left: the explanations; right: the shifts from the baseline) with 95 % bootstrap
  intervals over examples, and SHAP's own agreement under re-estimation (the noise floor) as a black tick;
* :func:`report_section` — the report's "Do cheaper methods see the same change?" section;
* :func:`attention_heatmap` — targets × input tokens of one example's attention lens;
* :func:`lens_text_plots_html` — shap text plots of SHAP and each gradient lens side by side.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import conditions
from .conditions import BASELINE, NOISE_FLOOR
from .figures import condition_label, figure_png, img_html, save_figure
from .lenses import LENSES_SUMMARY_FILE, load_lens, read_lens_summary, stored_lenses
from .store import RunStore, load_explanations
from .textplot import text_plot_html

FIGURE = "lenses_agreement.png"
LENS_LABELS = {"input_x_gradient": "input × gradient", "integrated_gradients": "integrated gradients",
               "attention": "attention (last layer)", "attention_rollout": "attention rollout"}
KIND_TITLES = {"agreement": "explanation: lens vs SHAP", "shift": "shift from the baseline: lens vs SHAP"}


def plot_lens_agreement(summary: pd.DataFrame, store: RunStore) -> Path:
    """Draw ``figures/lenses_agreement.png`` from a lens summary (:func:`shapshift.lenses.summarize_lenses`)."""
    import matplotlib.pyplot as plt

    rho = summary[(summary["metric"] == "spearman") & (summary["method"] != "shap")]
    lenses = sorted(rho["method"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    width = 0.8 / max(1, len(lenses))
    for ax, kind in zip(axes, ("agreement", "shift")):
        part = rho[rho["kind"] == kind]
        conds = conditions.ordered(part["condition"])
        for j, lens in enumerate(lenses):
            rows = part[part["method"] == lens].set_index("condition").reindex(conds)
            x = np.arange(len(conds)) + (j - (len(lenses) - 1) / 2) * width
            err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]).clip(min=0)
            ax.bar(x, rows["mean"], width, yerr=np.nan_to_num(err), capsize=3, label=LENS_LABELS.get(lens, lens))
        floors = part.groupby("condition")["floor_mean"].first().reindex(conds)
        ax.scatter(np.arange(len(conds)), floors, marker="_", s=900, color="black", zorder=3,
                   label="SHAP vs its rerun (noise floor)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(np.arange(len(conds)), [condition_label(c) for c in conds])
        ax.set_title(KIND_TITLES[kind])
        ax.set_ylim(-1.05, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Spearman ρ with SHAP (95 % CI)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, store, FIGURE)


def _timing(store: RunStore) -> pd.DataFrame:
    """Mean seconds per example of each method over every condition it explained (from the manifest)."""
    stats = store.manifest().get("explain_stats", {})
    rows = [{"method": st.get("method"), "stem": stem, "seconds": st.get("seconds")}
            for stem, per in stats.items() if not stem.startswith("02_baseline_rerun") for st in per]
    df = pd.DataFrame(rows, columns=["method", "stem", "seconds"])
    if df.empty:
        return df
    df["lens"] = df["stem"].str.contains("__")
    return df.groupby(["lens", "method"], sort=False)["seconds"].agg(["mean", "count"]).reset_index()


def completeness_gaps(store: RunStore) -> dict[str, float]:
    """Per gradient lens, the median over examples of ``Σ|gap| / Σ|f(x) - f(reference)|`` (from the run's ``explain_stats``).

    ``f(0)`` is the stats' ``score_baseline``, or for runs that did not record it the stored explanation's
    ``base_values`` (the stats of a stem are in the order of its stored examples).
    """
    out: dict[str, list[float]] = {}
    for stem, per in store.manifest().get("explain_stats", {}).items():
        if not any("completeness_gap" in st for st in per):
            continue
        bases = [st.get("score_baseline") for st in per]
        if any(b is None for b in bases) and store.path(f"{stem}.parquet").exists():
            bases = [e.base_values for e in load_explanations(store, stem)[1]]
        for st, base in zip(per, bases, strict=False):
            if "completeness_gap" in st and base is not None:
                span = np.abs(np.asarray(st["score_full"]) - np.asarray(base)).sum()
                out.setdefault(st["method"], []).append(float(np.abs(st["completeness_gap"]).sum() / max(span, 1e-12)))
    return {m: float(np.median(v)) for m, v in out.items()}


def _fmt(x: Any) -> str:
    return "—" if x is None or not np.isfinite(float(x)) else f"{float(x):.2f}"


def lens_table_html(summary: pd.DataFrame) -> str:
    """Per condition × lens: ρ with SHAP and top-k overlap, of the explanation and of the shift, with the floor."""
    rows = []
    part = summary[summary["method"] != "shap"]
    for _, r in part.sort_values(["kind", "condition", "method"], key=lambda s: s.map(
            lambda c: conditions.order_key(c)[0]) if s.name == "condition" else s).iterrows():
        what = "ρ" if r["metric"] == "spearman" else f"top-{r['k_spec']} overlap"
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        p = r["wilcoxon_p"]
        rows.append(f"<tr><td class=l>{html.escape(condition_label(r['condition']))}</td><td class=l>{r['kind']}</td>"
                    f"<td class=l>{html.escape(LENS_LABELS.get(r['method'], r['method']))}</td><td class=l>{what}</td>"
                    f"<td>{_fmt(r['mean'])}</td><td>{ci}</td><td>{int(r['n'])}</td><td>{_fmt(r['floor_mean'])}</td>"
                    f"<td>{'—' if not np.isfinite(p) else f'{p:.3f}'}</td></tr>")
    head = ("<tr><th class=l>condition</th><th class=l>compared</th><th class=l>lens</th><th class=l>metric</th>"
            "<th>mean</th><th>95% CI</th><th>n</th><th>noise floor</th><th>Wilcoxon p vs floor</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def report_section(run_dir: str | Path) -> str:
    """The report's section "Do cheaper methods see the same change?" ("" for a run without lenses)."""
    store = RunStore(run_dir)
    summary = read_lens_summary(run_dir)
    if summary is None or summary.empty:
        return ""
    fig = plot_lens_agreement(summary, store)
    shift = summary[(summary["method"] == "shap") & (summary["metric"] == "shift_to_noise")]
    noise = "".join(f"<li>{html.escape(c)}: SHAP's shift is {_fmt(m)}× its re-estimation noise</li>"
                    for c, m in zip(shift["condition"], shift["mean"]))
    timing = _timing(store)
    times = "".join(f"<li>{html.escape(LENS_LABELS.get(r.method, str(r.method)))}: {r.mean:.2f} s per example</li>"
                    for r in timing.itertuples()) if len(timing) else ""
    gaps = "".join(f"<li>{html.escape(LENS_LABELS.get(m, m))}: median gap {_fmt(g)} of |f(x) − f(reference)|</li>"
                   for m, g in completeness_gaps(store).items())
    return f"""<h2>Do cheaper methods see the same change?</h2>
<p>Every condition was also explained by the lenses {", ".join(html.escape(LENS_LABELS.get(m, m)) for m in stored_lenses(store))}
(gradients and attention: one or a few backward or forward passes instead of SHAP's many). Left: how well each
lens's explanation ranks the input tokens like SHAP's (Spearman ρ of |value|, summed over the generated tokens).
Right: whether the lens sees the same <b>change</b> from the baseline to each condition as SHAP (Spearman ρ of the
per-token changes, with their signs). The black tick is SHAP's agreement with itself when only its estimation noise
differs (the baseline explained again with another seed): a lens there agrees with SHAP as well as SHAP agrees with
itself; a lens near 0 sees something else. These values are not Shapley values: efficiency does not hold for them
(see the README's section on the lenses).</p>
{img_html(fig, "lens agreement with SHAP")}
<ul>{noise}</ul><p>Time per example:</p><ul>{times}</ul>
<p>How far the gradient values are from adding up to the score's change from their reference input
(integrated gradients: its completeness gap against the pad-token reference, which shrinks with more steps;
input × gradient: its first-order error against the all-zero embedding):</p><ul>{gaps}</ul>
<details><summary>Every lens × condition × metric (also in <code>{LENSES_SUMMARY_FILE}</code>)</summary>
{lens_table_html(summary)}</details>
"""


# -- notebook displays ------------------------------------------------------------------------------
def attention_heatmap(run_dir: str | Path, condition: str = BASELINE, example_id: int | None = None,
                      lens: str = "attention") -> Any:
    """A matplotlib figure: one example's attention lens, generated tokens (rows) × input tokens (columns)."""
    import matplotlib.pyplot as plt

    exps = load_lens(RunStore(run_dir), condition, lens)
    if not exps:
        return None
    ex_id = example_id if example_id is not None else sorted(exps)[0]
    e = exps[ex_id]
    values = np.asarray(e.values).T  # (n_out, n_in)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * values.shape[1] + 2), max(1.6, 0.4 * values.shape[0] + 1.2)))
    im = ax.imshow(values, cmap="Purples", aspect="auto", vmin=0)
    ax.set_xticks(range(values.shape[1]), [repr(str(t))[1:-1] for t in e.data], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), [repr(str(t))[1:-1] for t in e.output_names], fontsize=8)
    ax.set_title(f"{LENS_LABELS.get(lens, lens)}, {condition}, example {ex_id}", fontsize=9)
    fig.colorbar(im, ax=ax, label="attention weight")
    fig.tight_layout()
    return fig


def lens_text_plots_html(run_dir: str | Path, condition: str = BASELINE, n_examples: int = 2,
                         lenses: tuple[str, ...] = ("integrated_gradients", "input_x_gradient")) -> str:
    """shap text plots (summed over the generated tokens) of SHAP and each stored gradient lens, per example.

    Each plot has its own colour scale: the lenses' values are in the score's units but not Shapley values.
    """
    store = RunStore(run_dir)
    shap_exps = load_lens(store, condition)
    views = {"SHAP": shap_exps, **{LENS_LABELS[m]: load_lens(store, condition, m) for m in lenses}}
    views = {k: v for k, v in views.items() if v}
    parts = []
    for ex_id in sorted(shap_exps)[:n_examples]:
        cells = "".join(f"<div style='display:inline-block;vertical-align:top;margin-right:1em'><h4>{html.escape(k)}</h4>"
                        f"{text_plot_html(v[ex_id], how='sum')}</div>" for k, v in views.items() if ex_id in v)
        parts.append(f"<h3>Example {ex_id} ({html.escape(condition)})</h3>{cells}")
    return "".join(parts)


def show_lens_views(run_dir: str | Path, conditions: tuple[str, ...] = (BASELINE,), n_examples: int = 2) -> None:
    """Notebooks 02/03: gradient text plots beside SHAP's and the attention heatmap, per condition (or a hint)."""
    from IPython.display import HTML, Markdown, display

    store = RunStore(run_dir)
    if not stored_lenses(store):
        display(Markdown("No lenses in this run. Add `explain.methods=[<shap method>, integrated_gradients, attention]` "
                         "to `extra_settings` in notebook 01 to see gradient and attention views here."))
        return
    for c in conditions:
        if c == NOISE_FLOOR:
            continue
        display(HTML(lens_text_plots_html(run_dir, c, n_examples)))
        fig = attention_heatmap(run_dir, c)
        if fig is not None:  # as PNG: the report module switches matplotlib to Agg, which has no inline display
            from IPython.display import Image

            display(Image(data=figure_png(fig), format="png"))


def show_lens_comparison(run_dir: str | Path) -> None:
    """Notebook 04: the lens summary (agreement and shift agreement with SHAP) and its figure, or a hint."""
    from IPython.display import HTML, Image, Markdown, display

    summary = read_lens_summary(run_dir)
    if summary is None or summary.empty:
        display(Markdown("No lenses in this run (`explain.methods` lists only the SHAP method)."))
        return
    display(HTML(lens_table_html(summary[summary["metric"] == "spearman"])))
    fig = Path(run_dir) / "figures" / FIGURE
    if fig.exists():
        display(Image(filename=str(fig)))
