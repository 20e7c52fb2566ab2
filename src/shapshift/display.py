"""What the notebooks show: tables and plots of a run folder, drawn by the same code as report.html.

Each function reads the run folder (the artifacts are checked against the manifest) and returns a
table, an IPython object or ``{title: object}`` for :func:`show`. Text plots come from
:func:`shapshift.textplot.conditions_html`, the report's own path; figures are the report's PNGs.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import conditions as cond_registry
from . import stages, textplot
from .conditions import BASELINE, NOISE_FLOOR
from .errors import ArtifactError
from .formats import check_summary
from .store import MANIFEST, RunStore


# -- display helpers -----------------------------------------------------------------------------------
def _display(*objs: Any) -> None:
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with every notebook
        for o in objs:
            print(o)
        return
    display(*objs)


def _heading(text: str) -> Any:
    from IPython.display import Markdown

    return Markdown(f"**{text}**")


def show(tables: Mapping[str, Any]) -> None:
    """Display ``{title: table, figure or text}`` in order, each under a bold title."""
    from IPython.display import HTML

    for title, obj in tables.items():
        _display(_heading(title))
        _display(HTML(f"<pre>{html.escape(obj)}</pre>") if isinstance(obj, str) else obj)


def _read_parquet(run_dir: str | os.PathLike, name: str) -> pd.DataFrame:
    return RunStore(run_dir).read_parquet(name)


def label(condition: str) -> str:
    """A condition's display name (``zero_shot`` → ``zero-shot``), as in the report."""
    return cond_registry.label(condition)


# -- stage 1 -------------------------------------------------------------------------------------------
def dataset_tables(run_dir: str | os.PathLike, n_rows: int = 8) -> dict[str, Any]:
    """Stage-1 overview: counts per split and label, input lengths, the explained examples, one full prompt."""
    df = _read_parquet(run_dir, "01_dataset.parquet")
    counts = df.groupby("split").agg(examples=("example_id", "size"), truncated=("truncated", "sum"),
                                     mean_tokens=("n_input_tokens", "mean"), max_tokens=("n_input_tokens", "max"))
    counts["mean_tokens"] = counts["mean_tokens"].round(1)
    out: dict[str, Any] = {"Examples per split (explain: explained in every stage; train: fine-tuning and "
                           "few-shot demonstrations)": counts}
    if df["label"].notna().any():
        out["Labels per split"] = pd.crosstab(df["label"].fillna("—"), df["split"])
    explain = df[df["split"] == "explain"]
    cols = ["example_id", "source_text", "target_text", "n_input_tokens", "truncated"]
    out[f"The examples that are explained (first {min(n_rows, len(explain))} of {len(explain)})"] = \
        explain[cols].head(n_rows).rename(columns={"source_text": "input text (the features)",
                                                   "target_text": "reference output"}).set_index("example_id")
    stage = RunStore(run_dir).manifest().get("stages", {}).get("preprocess", {})
    check, note = check_summary(stage)
    if len(check):
        out[f"The prompt format check on {int(pd.DataFrame(stage['format_check'])['n_rows'].iloc[0])} training rows "
            "(share of rows where the model writes the reference first; chosen: ✓)"] = check
    if note:
        out["No prompt format works"] = note
    if len(explain):
        first = explain.iloc[0]
        out["The full prompt of the first one, as the model reads it (only the input text is explained)"] = \
            str(first["prompt_text"])
    return out


# -- stages 2 and 3: generations -----------------------------------------------------------------------
def _generations(run_dir: str | os.PathLike, conditions: Sequence[str] | None) -> pd.DataFrame:
    store = RunStore(run_dir)
    frames = [store.read_parquet("02_generations.parquet")]
    if store.path("03_generations.parquet").exists():
        frames.append(store.read_parquet("03_generations.parquet"))
    gens = pd.concat(frames, ignore_index=True)
    return gens if conditions is None else gens[gens["condition"].isin(list(conditions))]


def generation_tables(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`generations_by_condition` and :func:`accuracy_table`, titled for :func:`show`."""
    return {"What the model generated for each explained example (✓ = starts with the reference output)":
            generations_by_condition(run_dir, conditions),
            "Per condition: share of label matches, mean log-probability of the explained text":
            accuracy_table(run_dir, conditions)}


def generations_by_condition(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per explained example: input, reference, and per condition the generation and its label match.

    Reads ``02_generations.parquet`` (baseline) and, when present, ``03_generations.parquet``.
    ``conditions``: the ones to show (default: all found). ✓ = the generation starts with the reference.
    """
    gens = _generations(run_dir, conditions)
    data = RunStore(run_dir).read_parquet("01_dataset.parquet").set_index("example_id")
    order = list(dict.fromkeys(gens["condition"]))
    ids = list(dict.fromkeys(gens["example_id"]))
    out = pd.DataFrame({"input text": data.loc[ids, "source_text"].to_numpy(),
                        "reference": data.loc[ids, "target_text"].to_numpy()}, index=pd.Index(ids, name="example_id"))
    for cond in order:
        g = gens[gens["condition"] == cond].set_index("example_id")
        marks = g["label_match"].map(lambda m: "" if pd.isna(m) else (" ✓" if m else " ✗"))
        out[f"{label(cond)}: generated"] = (g["generated_text"].map(repr) + marks).reindex(ids).to_numpy()
    return out


def accuracy_table(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None) -> pd.DataFrame:
    """Per condition: how often the generation starts with the reference, and the mean log-prob of the explained text."""
    gens = _generations(run_dir, conditions)
    out = gens.groupby("condition", sort=False).agg(
        examples=("example_id", "size"), label_match=("label_match", "mean"),
        explained_logprob=("explained_logprob", "mean"))
    out.index = out.index.map(label)
    out["label_match"] = out["label_match"].round(3)
    out["explained_logprob"] = out["explained_logprob"].round(3)
    return out.rename(columns={"label_match": "label match (share)",
                               "explained_logprob": "mean log p(explained text)"})


# -- SHAP text plots ---------------------------------------------------------------------------------------
TEXT_PLOT_CLASS = "shapshift-text-plot"
_TEXT_PLOT_CSS = (f"<style>.{TEXT_PLOT_CLASS} .ss-cond{{border:1px solid #ddd;border-radius:6px;padding:6px;"
                  f"margin:6px 0;overflow-x:auto}} .{TEXT_PLOT_CLASS} h4{{margin:.3em 0}}"
                  f" .{TEXT_PLOT_CLASS} .ss-note{{color:#666;font-size:12px}}</style>")


#: Above this many (input token × generated token) cells, :func:`text_plots_html` draws one plot of the
#: values summed over the generated tokens: shap's per-token plot costs about 9 kB of HTML per cell.
NOTEBOOK_MAX_CELLS = 96


def text_plots_html(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None,
                    n_examples: int = 3, example_ids: Sequence[int] | None = None, *,
                    per_token: bool | None = None) -> str:
    """``shap.plots.text`` of the stored explanations, one block per example with every condition.

    ``conditions``: e.g. ``["baseline"]`` (default: all in the run folder, the rerun excluded);
    examples: ``example_ids`` or the first ``n_examples`` of the baseline. The conditions of one
    example share one colour scale, so colours compare across them. ``per_token``: one selectable
    plot per generated token (True), one plot of the values summed over the generated tokens
    (False, about ``2 n_out`` times less HTML), or per token up to :data:`NOTEBOOK_MAX_CELLS`
    cells (None). Colours are valid CSS under numpy 2 (:func:`shapshift.textplot.text_plot_html`).
    """
    from .compare import available_conditions, load_condition
    from .figures import score_unit

    store = RunStore(run_dir)
    found = [c for c in available_conditions(store) if c != NOISE_FLOOR]
    conds = [c for c in (conditions if conditions is not None else found) if c in found]
    if not conds:
        raise ArtifactError(f"No stored explanations of {list(conditions or [])} in {run_dir}.",
                            "Run the stage that explains them first.")
    loaded = {c: load_condition(store, c) for c in conds}
    first = loaded[BASELINE] if BASELINE in loaded else loaded[conds[0]]
    ids = list(example_ids) if example_ids is not None else sorted(first)[: max(0, n_examples)]
    data = store.read_parquet("01_dataset.parquet").set_index("example_id")
    parts = [_TEXT_PLOT_CSS, f"<div class='{TEXT_PLOT_CLASS}'>"]
    for ex_id in ids:
        exps = {c: loaded[c][ex_id] for c in conds if ex_id in loaded[c]}
        if not exps:
            continue
        cells, cmax, full = textplot.conditions_html(exps, how="sum", max_cells=NOTEBOOK_MAX_CELLS,
                                                     per_token=per_token, cell_class="'ss-cond'")
        names = getattr(next(iter(exps.values())), "output_names", None)
        out_text = "".join(map(str, [] if names is None else list(names)))
        ref = data.loc[ex_id, "target_text"] if ex_id in data.index else None
        how = ("click a generated token at the top of a plot to see what drove it"
               if full else "one plot per condition of the values summed over the generated tokens")
        parts.append(f"<h3>Example {ex_id}</h3><p class='ss-note'>Explained output: <b>{html.escape(repr(out_text))}</b>"
                     f"{'' if ref is None else f' (reference: {html.escape(repr(ref))})'}. Red tokens raise the "
                     f"{score_unit(store)} of the output, blue lower it; {how}. Full colour at |value| = "
                     f"{0 if cmax is None else cmax:.3g}.</p>{cells}")
    parts.append("</div>")
    return "".join(parts)


def show_text_plots(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None, n_examples: int = 3, *,
                    per_token: bool | None = None) -> Any:
    """:func:`text_plots_html` as an IPython HTML object (the cell's output)."""
    from IPython.display import HTML

    return HTML(text_plots_html(run_dir, conditions, n_examples, per_token=per_token))


def top_tokens_table(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None, n_examples: int = 3,
                     top: int = 5) -> pd.DataFrame:
    """The ``top`` input tokens by |value summed over generated tokens|, per example and condition."""
    import numpy as np

    from .aggregation import aggregate
    from .compare import available_conditions, load_condition

    store = RunStore(run_dir)
    conds = [c for c in (conditions or available_conditions(store)) if c in available_conditions(store)
             and c != NOISE_FLOOR]
    rows = []
    for c in conds:
        exps = load_condition(store, c)
        for ex_id in sorted(exps)[:n_examples]:
            e = exps[ex_id]
            agg = aggregate(e, "sum")
            best = np.argsort(-np.abs(agg), kind="stable")[:top]
            rows.append({"example_id": ex_id, "condition": label(c),
                         "top tokens (value)": ", ".join(f"{str(e.data[i])!r} {agg[i]:+.2f}" for i in best)})
    return pd.DataFrame(rows).set_index(["example_id", "condition"]).sort_index(level=0, sort_remaining=False) \
        if rows else pd.DataFrame()


# -- stage 3: fine-tuning ------------------------------------------------------------------------------
def finetune_tables(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The task metric before/after fine-tuning, the loss per step (table and figure), the few-shot demonstrations."""
    import json

    store = RunStore(run_dir)
    out: dict[str, Any] = {}
    if store.path("03_finetune.json").exists():
        summary = json.loads(store.verify("03_finetune.json").read_text())
        keys = [k for k in summary.get("before", {}) if k in summary.get("after", {})]
        out[f"Task metric on the explained examples, before and after fine-tuning ({summary.get('method')}, "
            f"{summary.get('steps')} steps, {summary.get('seconds', 0):.0f} s)"] = pd.DataFrame(
            {"before": [summary["before"][k] for k in keys], "after": [summary["after"][k] for k in keys]},
            index=pd.Index(keys, name="metric"))
        if summary.get("losses"):
            out["Training loss per step (cross-entropy of the target tokens)"] = loss_figure(summary)
    recorded = store.manifest().get("stages", {})
    demos = recorded.get("adapt:few_shot", {}).get("demonstrations")
    if demos:
        out["Few-shot demonstrations (the same for every example)"] = pd.DataFrame(demos)
    return out


def loss_figure(record: Mapping[str, Any]) -> Any:
    """The report's loss figure (:func:`shapshift.report.finetune_loss_figure`) as an IPython PNG image."""
    from IPython.display import Image

    from .figures import figure_png
    from .report_plots import finetune_loss_figure

    return Image(data=figure_png(finetune_loss_figure(dict(record))), format="png")


# -- stage 4 -------------------------------------------------------------------------------------------
def overlap_tables(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The headline of ``04_summary.csv`` (each condition vs the baseline) and the run's notes."""
    from .compare import STAGE
    from .overlap import metric_label
    from .report import headline
    from .report_plots import read_summary

    store = RunStore(run_dir)
    summary = read_summary(store)
    head = headline(summary).copy()
    table = pd.DataFrame({
        "condition": head["condition_b"].map(label), "metric": head["metric"].map(metric_label),
        "k": head["k_spec"], "mean": head["mean"].round(3),
        "95% CI": [f"[{lo:.2f}, {hi:.2f}]" if pd.notna(lo) else "—" for lo, hi in zip(head["ci_low"], head["ci_high"])],
        "n": head["n"], "noise floor": head["noise_floor_mean"].round(3),
        "Δ vs floor": head["delta_vs_floor"].round(3), "p (Holm)": head["wilcoxon_p_holm"].round(4),
    }).reset_index(drop=True)
    out: dict[str, Any] = {"Agreement of each condition with the baseline (aggregated over generated tokens)": table}
    notes = store.manifest().get("stages", {}).get(STAGE, {}).get("notes", [])
    if notes:
        out["Notes"] = "\n".join(notes)
    return out


def figure_paths(run_dir: str | os.PathLike) -> list[Path]:
    """The stage-4 figures: how the reasons moved, overlap@k, heatmap, per-example distributions, then one per
    plotted example."""
    folder = Path(run_dir) / "figures"
    first = ["movement.png", "overlap_at_k.png", "overlap_heatmap.png", "per_example.png", "finetune_loss.png"]
    found = sorted(folder.glob("*.png"), key=figure_order) if folder.is_dir() else []
    return [folder / n for n in first if (folder / n).exists()] + [p for p in found if p.name not in first]


def figure_order(path: Path) -> tuple:
    """Sort key of figure files: numbers in the name compare as numbers (example_2 before example_10)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name))


FIGURE_CAPTIONS = {
    "movement.png": "How the reasons moved: per condition, the words whose importance rose and fell most (mean change "
                    "over the examples, 95 % CI) and the word groups.",
    "overlap_at_k.png": "Top-k overlap of each condition with the baseline for every k (left: k tokens; right: k as "
                        "a share of the input). Above the noise floor = no more change than estimator noise.",
    "overlap_heatmap.png": "Mean top-k overlap between every pair of conditions.",
    "per_example.png": "The spread over examples of a few agreement metrics per condition.",
    "finetune_loss.png": "The fine-tuning loss per optimizer step.",
}


def show_figures(run_dir: str | os.PathLike) -> None:
    """Display every stage-4 figure with a caption."""
    from IPython.display import Image

    for path in figure_paths(run_dir):
        caption = FIGURE_CAPTIONS.get(path.name, f"{path.stem.replace('_', ' ')}: the value of each input token "
                                                 "under every condition (summed over the generated tokens).")
        _display(_heading(caption), Image(filename=str(path)))


# -- artifacts -----------------------------------------------------------------------------------------
def artifacts_table(run_dir: str | os.PathLike, stage: str | None = None) -> pd.DataFrame:
    """The run folder's recorded artifacts (those of ``stage`` only, when given): size and sha256 check."""
    store = RunStore(run_dir)
    recorded = store.manifest().get("artifacts", {})
    prefixes = stages.get(stage).writes if stage else ("",)
    rows = []
    for name in sorted(recorded):
        if not name.startswith(prefixes):
            continue
        try:
            store.verify(name)
            status = "ok"
        except ArtifactError:
            status = "missing" if not store.path(name).exists() else "changed since written"
        rows.append({"artifact": name, "bytes": recorded[name].get("bytes"), "sha256": status})
    if store.path(MANIFEST).exists():
        rows.append({"artifact": MANIFEST, "bytes": store.path(MANIFEST).stat().st_size, "sha256": "(the index)"})
    return pd.DataFrame(rows, columns=["artifact", "bytes", "sha256"]).set_index("artifact")


# -- the lenses beside SHAP (explain.methods; shapshift.lens_views) --------------------------------------
def show_lens_views(run_dir: str | os.PathLike, conditions: Sequence[str] = ("baseline",), n_examples: int = 2) -> None:
    """Gradient text plots beside SHAP's and the attention heatmap (targets × input tokens) per condition."""
    from .lens_views import show_lens_views as _show

    _show(run_dir, tuple(conditions), n_examples)


def show_lens_comparison(run_dir: str | os.PathLike) -> None:
    """Each lens's agreement with SHAP and with SHAP's shift, per condition, and the figure."""
    from .lens_views import show_lens_comparison as _show

    _show(run_dir)


def show_answer(run_dir: str | os.PathLike) -> None:
    """The answer first, as the report opens: per condition, what changed beyond the estimator's noise
    (``04_verdicts.csv``), in one sentence and a table."""
    from IPython.display import HTML

    from .report import verdicts_html

    _display(HTML(verdicts_html(RunStore(run_dir)) or "<p>No verdicts yet: run stage 4 (compare) first.</p>"))
