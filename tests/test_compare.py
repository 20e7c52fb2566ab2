"""Stage 4 on a synthetic run folder: statistics, artifacts, numbers recomputed from stored values, report."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import shap
from hypothesis import given, settings
from hypothesis import strategies as st

from shapshift import compare, report, textplot
from shapshift.conditions import stem as condition_stem
from shapshift.config import CompareConfig
from shapshift.errors import ArtifactError
from shapshift.stats import bootstrap_mean_ci, holm, wilcoxon_paired
from shapshift.store import RunStore, save_explanations, sha256_file

WORDS = "the movie <b>was</b> & great fun and not boring at all but the ending felt rushed".split()
NOISE = {"baseline_rerun": 0.1, "zero_shot": 0.4, "few_shot": 0.8, "finetuned": 2.0}
CFG = CompareConfig(ks=[1, 3, 5], n_bootstrap=200, n_plot_examples=1)


# -- statistics -----------------------------------------------------------------------------------
def test_bootstrap_is_seeded():
    x = np.random.default_rng(0).normal(size=30)
    assert bootstrap_mean_ci(x, seed=3) == bootstrap_mean_ci(x, seed=3)
    assert bootstrap_mean_ci(x, seed=3) != bootstrap_mean_ci(x, seed=4)
    assert bootstrap_mean_ci(x, seed=3).mean == pytest.approx(x.mean())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=40), st.integers(0, 1000))
def test_bootstrap_ci_contains_the_mean(values, seed):
    ci = bootstrap_mean_ci(values, n_bootstrap=300, seed=seed)
    assert ci.n == len(values)
    assert ci.low - 1e-9 <= ci.mean <= ci.high + 1e-9


def test_bootstrap_edge_cases():
    assert bootstrap_mean_ci([2.0, np.nan, 4.0]).n == 2  # NaN dropped
    one = bootstrap_mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and one.n == 1
    assert math.isnan(bootstrap_mean_ci([]).mean)
    const = bootstrap_mean_ci([0.5] * 6)
    assert const.low == const.high == 0.5


def test_wilcoxon():
    assert wilcoxon_paired([1, 1, 0.5], [1, 1, 0.5]) == 1.0  # all differences zero
    assert math.isnan(wilcoxon_paired([np.nan], [1.0]))
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=10), rng.normal(size=10)
    assert wilcoxon_paired(x, y) == pytest.approx(scipy.stats.wilcoxon(x - y, method="exact").pvalue)
    x, y = rng.normal(size=40), rng.normal(size=40)  # beyond the exact limit: normal approximation
    assert wilcoxon_paired(x, y) == pytest.approx(scipy.stats.wilcoxon(x - y, method="asymptotic").pvalue)
    # ties and zeros (overlaps are multiples of 1/k): exact sign-flip p stays a probability
    p = wilcoxon_paired([1, 2 / 3, 2 / 3, 1 / 3, 1, 1], [1, 1, 1, 1, 1, 2 / 3])
    assert 0 < p <= 1
    assert wilcoxon_paired([0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]) == pytest.approx(2 / 64)


def test_holm():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = holm([0.2, np.nan, 0.9])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.4) and out[2] == pytest.approx(0.9)


# -- a synthetic run folder -----------------------------------------------------------------------
def make_run(path, *, conditions=NOISE, n_examples=7, seed=0, meta=None) -> RunStore:
    """Baseline explanations plus noisier copies per condition, saved as the explain stages would."""
    rng = np.random.default_rng(seed)
    store = RunStore(path)
    base = {}
    for i in range(n_examples):
        n_in = int(rng.integers(5, 14))
        base[i] = rng.normal(size=(n_in, 3)) * rng.exponential(1.0, size=(n_in, 1))

    def explanations(scale: float, short: bool = False) -> list:
        out = []
        for i, v in base.items():
            vv = v + scale * rng.normal(size=v.shape)
            if short and i == 0:
                vv = vv[:, :2]  # one condition explains a shorter output for example 0
            out.append(shap.Explanation(
                values=vv, base_values=rng.normal(size=vv.shape[1]),
                data=np.array([" " + WORDS[j % len(WORDS)] for j in range(v.shape[0])], dtype=object),
                output_names=[" pos", "itive", "\n"][: vv.shape[1]]))
        return out

    ids = [10 + i for i in base]
    save_explanations(store, "02_baseline", explanations(0.0), ids, "baseline", meta)
    for cond, scale in conditions.items():
        save_explanations(store, condition_stem(cond), explanations(scale, short=cond == "finetuned"), ids,
                          cond)
    return store


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    store = make_run(path)
    summary = compare.run_compare(path, CFG)
    html_path = report.write_report(path, CFG)
    return store, summary, html_path


def stored_long(store: RunStore, condition: str) -> pd.DataFrame:
    return store.read_parquet(f"{condition_stem(condition)}.parquet")


def recomputed(store: RunStore, cond_a: str, cond_b: str, k: int | None, metric: str) -> float:
    """A summary mean recomputed from the long Parquet tables alone, without shapshift.overlap."""
    sums = {c: stored_long(store, c).groupby(["example_id", "in_pos"])["value"].sum() for c in (cond_a, cond_b)}
    values = []
    for ex_id in sorted(sums[cond_a].index.get_level_values(0).unique()):
        a, b = sums[cond_a].loc[ex_id].to_numpy(), sums[cond_b].loc[ex_id].to_numpy()
        if metric == "spearman":
            values.append(scipy.stats.spearmanr(np.abs(a), np.abs(b)).statistic)
            continue
        kk = min(k if k else math.ceil(0.2 * len(a)), len(a))
        top = [set(sorted(range(len(v)), key=lambda i, v=v: (-abs(v[i]), i))[:kk]) for v in (a, b)]
        values.append(len(top[0] & top[1]) / kk)
    return float(np.mean(values))


def row(summary: pd.DataFrame, a: str, b: str, metric: str, k_spec: str, scope: str = "aggregate") -> pd.Series:
    sel = summary[(summary["condition_a"] == a) & (summary["condition_b"] == b) & (summary["metric"] == metric)
                  & (summary["k_spec"].astype(str) == k_spec) & (summary["scope"] == scope)]
    assert len(sel) == 1, (a, b, metric, k_spec, scope)
    return sel.iloc[0]


# -- compare --------------------------------------------------------------------------------------
def test_artifacts_are_written_and_recorded(run):
    store, summary, _ = run
    manifest = store.manifest()
    for name in (compare.OVERLAP_FILE, compare.CURVES_FILE, compare.SUMMARY_FILE, report.REPORT_FILE):
        assert manifest["artifacts"][name]["sha256"] == sha256_file(store.path(name))
    overlap = store.read_parquet(compare.OVERLAP_FILE)
    assert list(overlap.columns) == compare.OVERLAP_COLUMNS
    assert list(summary.columns) == compare.SUMMARY_COLUMNS
    on_disk = pd.read_csv(store.path(compare.SUMMARY_FILE), dtype={"k_spec": str})
    pd.testing.assert_frame_equal(on_disk[["mean", "n"]], summary[["mean", "n"]], check_dtype=False)
    pairs = set(map(tuple, summary[["condition_a", "condition_b"]].drop_duplicates().to_numpy()))
    assert pairs == {("baseline", "zero_shot"), ("baseline", "few_shot"), ("baseline", "finetuned"),
                     ("zero_shot", "few_shot"), ("zero_shot", "finetuned"), ("few_shot", "finetuned"),
                     ("baseline", "baseline_rerun")}
    assert manifest["stages"][compare.STAGE]["n_examples"] == 7


@pytest.mark.parametrize(("pair", "k_spec", "metric"), [
    (("baseline", "zero_shot"), "3", "feature_agreement"),
    (("baseline", "finetuned"), "1", "feature_agreement"),
    (("few_shot", "finetuned"), "20%", "feature_agreement"),
    (("baseline", "baseline_rerun"), "5", "feature_agreement"),
    (("baseline", "few_shot"), "all", "spearman"),
])
def test_summary_means_match_stored_values(run, pair, k_spec, metric):
    store, summary, _ = run
    k = None if k_spec in ("20%", "all") else int(k_spec)
    expected = recomputed(store, *pair, k, metric)
    got = row(summary, *pair, metric, k_spec)
    assert got["mean"] == pytest.approx(expected, abs=1e-12)
    assert got["n"] == 7
    assert got["ci_low"] <= got["mean"] <= got["ci_high"]


def test_noise_floor_columns(run):
    _, summary, _ = run
    floor = row(summary, "baseline", "baseline_rerun", "rbo", "all")
    r = row(summary, "baseline", "finetuned", "rbo", "all")
    assert r["noise_floor_mean"] == pytest.approx(floor["mean"])
    assert r["delta_vs_floor"] == pytest.approx(r["mean"] - floor["mean"])
    assert r["mean"] < floor["mean"] and 0 < r["wilcoxon_p"] < 0.05  # large noise vs a small one
    other = row(summary, "zero_shot", "few_shot", "rbo", "all")
    assert math.isnan(other["noise_floor_mean"]) and math.isnan(other["wilcoxon_p"])
    assert math.isnan(floor["wilcoxon_p"])


def test_token_scope_uses_common_prefix(run):
    store, summary, _ = run
    overlap = store.read_parquet(compare.OVERLAP_FILE)
    tok = overlap[(overlap["scope"] == "token") & (overlap["condition_b"] == "finetuned")
                  & (overlap["condition_a"] == "baseline")]
    assert sorted(tok.loc[tok["example_id"] == 10, "out_pos"].unique().tolist()) == [0, 1]
    assert sorted(tok.loc[tok["example_id"] == 11, "out_pos"].unique().tolist()) == [0, 1, 2]
    # token scope: per-example mean over positions, then the mean over examples
    sel = tok[(tok["metric"] == "feature_agreement") & (tok["k_spec"] == "3")]
    expected = sel.groupby("example_id")["value"].mean().mean()
    assert row(summary, "baseline", "finetuned", "feature_agreement", "3", "token")["mean"] == pytest.approx(expected)


def test_without_rerun_the_floor_is_nan(tmp_path):
    conds = {c: s for c, s in NOISE.items() if c != "baseline_rerun"}
    make_run(tmp_path, conditions=conds, n_examples=4)
    summary = compare.run_compare(tmp_path, CFG)
    r = row(summary, "baseline", "zero_shot", "feature_agreement", "3")
    assert math.isnan(r["noise_floor_mean"]) and math.isnan(r["wilcoxon_p"])
    assert "NaN" in r["note"]
    notes = RunStore(tmp_path).manifest()["stages"][compare.STAGE]["notes"]
    assert any("noise floor is NaN" in n for n in notes)


def test_deterministic_estimator_floor_is_one(tmp_path):
    make_run(tmp_path, conditions={"zero_shot": 0.5}, n_examples=5, meta={"method": "exact"})
    summary = compare.run_compare(tmp_path, CFG)
    r = row(summary, "baseline", "zero_shot", "rbo", "all")
    assert r["noise_floor_mean"] == 1.0 and 0 < r["wilcoxon_p"] <= 1
    assert "deterministic" in r["note"]


def test_identical_condition_agrees_with_baseline(tmp_path):
    make_run(tmp_path, conditions={"zero_shot": 0.0, "baseline_rerun": 0.0}, n_examples=4)
    summary = compare.run_compare(tmp_path, CFG)
    sel = summary[(summary["condition_b"] == "zero_shot") & summary["metric"].isin(
        ["feature_agreement", "rank_agreement", "sign_agreement", "signed_rank_agreement", "rbo", "cosine"])]
    np.testing.assert_allclose(sel["mean"], 1.0)
    assert (sel["wilcoxon_p"] == 1.0).all()  # every difference to the floor is zero


def test_missing_baseline_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="baseline"):
        compare.run_compare(tmp_path, CFG)


# -- report ---------------------------------------------------------------------------------------
RGBA_ANY = re.compile(r"rgba\([^)]*\)")


def test_figures_exist_and_are_not_trivial(run):
    store, _, _ = run
    names = ["overlap_at_k.png", "overlap_heatmap.png", "per_example.png", "example_10_tokens.png"]
    for name in names:
        path = store.path(f"{report.FIGURES_DIR}/{name}")
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert store.manifest()["artifacts"][f"{report.FIGURES_DIR}/{name}"]["sha256"] == sha256_file(path)


def test_report_is_self_contained_with_valid_colours(run):
    store, summary, html_path = run
    text = html_path.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 5  # overlap@k, heatmap, per example, movement, one example
    assert "how the reasons moved" in text
    assert "np.float64" not in text and "np.float" not in text
    colours = RGBA_ANY.findall(text)
    assert colours and all(textplot.RGBA.fullmatch(c) for c in colours)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text
    assert "How to read this" in text and "Wilcoxon" in text
    # the headline numbers are those of the summary, which match the stored values
    r = row(summary, "baseline", "zero_shot", "feature_agreement", "3")
    assert f"<td>{r['mean']:.3f}</td>" in text
    assert f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]" in text
    # shap text plots of every condition, with the output token names escaped
    assert text.count("<h4>fine-tuned</h4>") == 1
    assert "&lt;b&gt;was&lt;/b&gt;" in text and "<b>was</b>" not in text
    assert json.loads(store.path("manifest.json").read_text())["artifacts"][report.REPORT_FILE]


def test_text_plot_html_colours_and_escaping():
    exp = shap.Explanation(values=np.array([[0.5, -1.0], [2.0, 0.25]]), base_values=np.zeros(2),
                           data=np.array(["a&b", "<c>"], dtype=object), output_names=["<|endoftext|>", " x"])
    html = textplot.text_plot_html(exp, cmax=2.0)
    assert "np.float64" not in html
    colours = RGBA_ANY.findall(html)
    assert len(colours) >= 4 and all(textplot.RGBA.fullmatch(c) for c in colours)
    assert "&lt;|endoftext|&gt;" in html and "<|endoftext|>" not in html
    assert "a&amp;b" in html
    agg = textplot.text_plot_html(exp, how="sum")
    assert all(textplot.RGBA.fullmatch(c) for c in RGBA_ANY.findall(agg))
    assert textplot.fix_numpy_reprs("rgba(np.float64(255.0), np.float64(1.0), 0, np.float32(0.5))") == \
        "rgba(255.0, 1.0, 0, 0.5)"


def test_report_needs_compare_first(tmp_path):
    make_run(tmp_path, conditions={}, n_examples=2)
    with pytest.raises(ArtifactError, match="compare"):
        report.write_report(tmp_path, CFG)


def test_text_plot_axis_labels_do_not_overlap():
    """Item 6: base value and f(inputs) close together are anchored apart; tick values that collide in a
    narrow plot are dropped (the ticks stay)."""
    exp = shap.Explanation(values=np.array([[0.01], [-0.008], [0.002]]), base_values=np.array([-10.6]),
                           data=np.array(["a", "b", "c"], dtype=object), output_names=["x"])
    out = textplot.text_plot_html(exp)
    labels = re.findall(r'<text x="([0-9.]+)%" y="(?:10|27)"[^>]*text-anchor="(\w+)"[^>]*>(.*?)</text>', out)
    by_text = {t: (float(x), a) for x, a, t in labels}
    base_x, base_anchor = by_text["base value"]
    f_x, f_anchor = next(v for t, v in by_text.items() if t.startswith("f<tspan"))
    assert abs(base_x - f_x) < textplot.LABEL_GAP
    assert (base_anchor, f_anchor) == (("end", "start") if base_x <= f_x else ("start", "end"))
    numbers = [t for _, _, t in labels if re.fullmatch(r"-?[0-9.]+", t)]
    assert set(numbers) == {"-10.6", "-10.596"}, numbers  # base value and f(inputs) only, no tick values
    assert out.count('y2="37"') >= 3  # the tick marks themselves stay


def test_a_new_metric_is_one_registry_entry(tmp_path):
    """Registered here, in the test module alone: the overlap table, the summary and the report carry it, and its
    values are the brute-force ones (the share of features whose sign agrees, over all features)."""
    from shapshift import overlap as ov

    def sign_share(pair, k):
        return float(np.mean(np.sign(pair.a) == np.sign(pair.b)))

    entry = ov.register_metric(ov.Metric("sign_share", "share of equal signs", sign_share, headline=True))
    try:
        store = make_run(tmp_path / "run", conditions={"baseline_rerun": 0.1, "zero_shot": 0.5}, n_examples=4)
        compare.run_compare(store.dir, CFG)
        overlap = store.read_parquet(compare.OVERLAP_FILE)
        mine = overlap[(overlap["metric"] == "sign_share") & (overlap["scope"] == "aggregate")
                       & (overlap["condition_b"] == "zero_shot")].sort_values("example_id")
        sums = {c: stored_long(store, c).groupby(["example_id", "in_pos"])["value"].sum() for c in ("baseline", "zero_shot")}
        want = [float(np.mean(np.sign(sums["baseline"].loc[i].to_numpy()) == np.sign(sums["zero_shot"].loc[i].to_numpy())))
                for i in sorted(mine["example_id"])]
        np.testing.assert_allclose(mine["value"].to_numpy(), want)
        assert "sign_share" in set(pd.read_csv(store.path(compare.SUMMARY_FILE))["metric"])
        page = report.write_report(store.dir, CFG).read_text()
        assert page.count("share of equal signs") >= 2  # in the headline table and in the table of every metric
    finally:
        ov.METRICS.pop(entry.name)


def test_the_notes_say_when_levels_left_groups_whole():
    run_notes = compare.run_notes
    stats = {"02_baseline": [{"method": "levels", "n_features": 40, "features_refined": 30},
                             {"method": "levels", "n_features": 50, "features_refined": 50}],
             "03_zero_shot": [{"method": "quadrature", "n_features": 12}]}
    [note] = [n for n in run_notes(["baseline"], None, [], stats) if n.startswith("levels")]
    assert "1 of 2 explanations" in note and "11%" in note  # 10 of the 90 features levels explained
    assert not [n for n in run_notes(["baseline"], None, [], {"x": stats["02_baseline"][1:]}) if n.startswith("levels")]
