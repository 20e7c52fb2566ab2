"""One self-contained ``report.html`` of a run (stage 4), from its artifacts and figures.

The report embeds the figures (:mod:`shapshift.report_plots`) as base64 PNG, inlines ``shap.plots.text`` of every
condition for the same examples (interactive, one shared colour scale per example), the answer first (how the
reasons moved, what changed beyond the estimator's noise), what the model did under each condition, the run's
configuration from ``manifest.json``, and the summary table with CIs and p-values. It loads no external resource.
"""

from __future__ import annotations

import html
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import behaviour as bh
from . import overlap as ov
from . import textplot
from .backends.diagnostics import api_notes
from .compare import STAGE, SUMMARY_FILE, VERDICT_SUMMARY_FILE
from .conditions import BASELINE
from .config import CompareConfig
from .figures import (
    FIGURES_DIR,
    MOVEMENT_FIGURE,
    condition_label,
    explain_setting,
    feature_name,
    fmt,
    fmt_p,
    img_html,
    masking_meaning,
    pair_label,
    score_unit,
)
from .formats import check_summary
from .lens_views import report_section
from .report_plots import examples_to_plot, make_figures, read_summary
from .store import RunStore, atomic_write_bytes

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"


def _metric_cell(x: Any) -> str:
    return fmt(x) if isinstance(x, (int, float, np.number)) or x is None else html.escape(str(x))


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
    gens = bh.generations(store)
    if gens.empty:
        return "<p class=muted>No generations are recorded in this run folder.</p>", []
    summary = bh.condition_summary(gens)
    warnings = bh.behaviour_warnings(summary, condition_label)
    head = ("<tr><th class=l>condition</th><th>examples</th><th>label match</th>"
            "<th>mean log p(explained text)</th><th>≈ p per token</th></tr>")
    body = "".join(
        f"<tr><td class=l>{html.escape(condition_label(r.condition))}</td><td>{r.n}</td>"
        f"<td>{'—' if not r.n_with_reference else f'{int(r.label_matches)} / {r.n_with_reference}'}</td>"
        f"<td>{fmt(r.mean_logprob, 2)}</td><td>{'—' if not np.isfinite(r.token_p) else f'{r.token_p:.2g}'}</td></tr>" for r in summary.itertuples())
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
                         f"<span class=muted>log p = {fmt(r['explained_logprob'], 2)}</span></td>")
        rows.append(f"<tr><td>{int(ex_id)}</td><td class=l>{html.escape(str(text)[:160])}</td>"
                    f"<td class=l><code>{html.escape(repr(ref)) if ref is not None else '—'}</code></td>{''.join(cells)}</tr>")
    per_example = ("<table><tr><th>example</th><th class=l>input text</th><th class=l>reference</th>"
                   + "".join(f"<th class=l>{html.escape(condition_label(c))}</th>" for c in conds) + "</tr>"
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
            parts.append(img_html(figures["finetune_loss"], "fine-tuning loss"))
    return "".join(parts), warnings


# -- the HTML report ------------------------------------------------------------------------------
def _template():
    """The report's jinja2 template (``templates/report.html.j2``), HTML-escaping every value not marked safe."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("shapshift", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), keep_trailing_newline=True)
    return env.get_template("report.html.j2")


def _k_label(row: pd.Series) -> str:
    spec = str(row["k_spec"])
    return f"{spec} (k≈{row['k_mean']:.1f})" if spec.endswith("%") and np.isfinite(row["k_mean"]) else spec


def summary_table_html(summary: pd.DataFrame) -> str:
    """An HTML table of a summary frame: pair, scope, metric, k, mean [95% CI], n, floor, p-values."""
    head = ("<tr><th class=l>pair</th><th class=l>scope</th><th class=l>metric</th><th>k</th><th>mean</th>"
            "<th>95% CI</th><th>n</th><th>noise floor</th><th>Δ vs floor</th><th>Wilcoxon p</th><th>p (Holm)</th></tr>")
    body = []
    for _, r in summary.iterrows():
        ci = f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]" if np.isfinite(r["ci_low"]) else "—"
        body.append(
            f"<tr><td class=l>{html.escape(pair_label(r['condition_a'], r['condition_b']))}</td>"
            f"<td class=l>{r['scope']}</td><td class=l>{html.escape(ov.metric_label(r['metric']))}</td>"
            f"<td>{html.escape(_k_label(r))}</td><td>{fmt(r['mean'])}</td><td>{ci}</td><td>{fmt(int(r['n']))}</td>"
            f"<td>{fmt(r['noise_floor_mean'])}</td><td>{fmt(r['delta_vs_floor'])}</td>"
            f"<td>{fmt_p(r['wilcoxon_p'])}</td><td>{fmt_p(r['wilcoxon_p_holm'])}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def movement_html(store: RunStore) -> str:
    """How the reasons moved (:mod:`shapshift.movement`): one sentence per condition and the figure."""
    sentences = store.manifest().get("stages", {}).get(STAGE, {}).get("movement") or []
    if not sentences:
        return ""
    items = "".join(f"<li>{html.escape(s)}</li>" for s in sentences)
    fig = store.path(f"{FIGURES_DIR}/{MOVEMENT_FIGURE}")
    img = img_html(store.verify(f"{FIGURES_DIR}/{MOVEMENT_FIGURE}"), "how the reasons moved") if fig.exists() else ""
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
        f"<tr><td class=l>{html.escape(condition_label(r['condition_b']))}</td><td>{int(r['n_changed'])} of {int(r['n'])}</td>"
        f"<td>[{fmt(r['share_ci_low'], 2)}, {fmt(r['share_ci_high'], 2)}]</td><td>{fmt(r['spearman'], 2)}</td>"
        f"<td>{fmt(r['spearman_corrected'], 2)} [{fmt(r['corrected_ci_low'], 2)}, {fmt(r['corrected_ci_high'], 2)}]</td>"
        f"<td>{fmt(r['reliability_b'], 2)}</td></tr>" for _, r in v.iterrows())
    return (movement_html(store) + f"<h2>Answer: what changed beyond the estimator's noise</h2><ul>{sentences}</ul>"
            "<table><tr><th class=l>vs baseline</th><th>examples changed</th><th>share 95% CI</th><th>Spearman ρ</th>"
            "<th>ρ corrected for noise [95% CI]</th><th>reliability</th></tr>" + rows + "</table>")


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows the report shows first: pairs with the baseline, aggregate scope, the headline metrics
    (:data:`shapshift.overlap.METRICS`)."""
    s = summary[(summary["condition_a"] == BASELINE) & (summary["scope"] == "aggregate")]
    return s[s["metric"].isin([m.name for m in ov.METRICS.values() if m.headline])]


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
                     f"{fmt(cmax)} {unit} is full colour); red raises the score, blue lowers it.</p>"
                     f"<div class=grid>{cells}</div>" + (img_html(fig, f"example {ex_id} tokens") if fig else ""))
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
        figures={k: img_html(figures[k], k.replace("_", " ")) for k in ("overlap_at_k", "overlap_heatmap", "per_example")},
        examples=_examples_html(examples, figures, cfg.aggregate, score_unit(store)),
        n_summary_rows=len(summary), summary_file=SUMMARY_FILE, all_metrics=summary_table_html(summary),
        config_json=json.dumps(config, indent=2, sort_keys=True, default=str),
        versions_json=json.dumps({"versions": versions, "artifacts": man.get("artifacts", {})}, indent=2,
                                 sort_keys=True, default=str))
    path = atomic_write_bytes(store.path(REPORT_FILE), doc.encode("utf-8"))
    store.record(REPORT_FILE)
    log.info("wrote %s", path)
    return path
