"""How the reasons moved: the words, and groups of words, whose importance rose or fell under each condition.

The verdicts (:mod:`shapshift.shift`) say *whether* a condition changed what the model relies on; this module
says *how*, over the explained examples, from the per-feature changes of ``04_changes.parquet``
(``delta = value_condition - value_baseline`` of each input feature, summed over the output tokens, in the
score's units: nats of log-probability by default; ``se_delta`` its standard error; ``changed`` its test
against the estimator's noise).

* **Words**: a feature's text, lower-cased and stripped of spaces and punctuation (``" Great!"`` → ``great``).
  Per condition and word: the mean change over the examples it occurs in (occurrences in one example
  add up), a 95 % bootstrap interval over those examples, and in how many of them it changed beyond noise.
* **Word groups**: content words and function words (:data:`FUNCTION_WORDS`, a closed class of English
  articles, pronouns, prepositions, conjunctions, auxiliaries and particles), and any list a user gives in
  ``compare.word_groups`` (e.g. a sentiment lexicon). Per example, a group's change is the sum of its
  words' changes, with the standard error ``sqrt(sum se^2)`` (the words' estimates treated as independent);
  it moved beyond noise in an example when ``|change| > 1.96 se`` (any change, for exact values).

:func:`answer_sentence` turns a condition's rows into the sentence the report and notebook 04 open with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .stats import bootstrap_mean_ci

#: English function words (closed classes); every other word with a letter in it is a content word.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no all both either neither such what which whose
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her hers
herself it its itself they them their theirs themselves who whom one ones
and or but nor so yet for if then than because although though while whereas unless until since as whether
of in on at by to from with without about above below over under into onto upon through during before after
between among against around across along behind beyond near off out up down via per
am is are was were be been being have has had having do does did doing will would shall should can could may
might must ought
not n't 's 're 've 'd 'll 'm there here very just too also only even quite rather more most less least much many
""".split())
#: The built-in groups every run reports.
CONTENT, FUNCTION = "content words", "function words"
#: Columns of ``04_movement.parquet``.
MOVEMENT_COLUMNS = ["condition", "kind", "name", "n_examples", "mean_change", "ci_low", "ci_high", "n_beyond_noise"]
_STRIP = re.compile(r"^[\W_]+|[\W_]+$")


def normalise_word(text: str) -> str:
    """A feature's text as a word key: lower-cased, surrounding spaces and punctuation removed ("" for none)."""
    return _STRIP.sub("", str(text).strip().lower())


def word_groups(words: Sequence[str], user_groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """Each group's name and the keys of ``words`` in it: content, function, then the user's lists (normalised)."""
    groups = {CONTENT: [w for w in words if w and w not in FUNCTION_WORDS and any(c.isalpha() for c in w)],
              FUNCTION: [w for w in words if w in FUNCTION_WORDS]}
    for name, members in (user_groups or {}).items():
        keys = {normalise_word(m) for m in members}
        groups[str(name)] = [w for w in words if w in keys]
    return groups


def movement(changes: pd.DataFrame, *, user_groups: Mapping[str, Sequence[str]] | None = None,
             n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Words and word groups by condition (:data:`MOVEMENT_COLUMNS`), from the per-feature changes against the
    baseline (columns of :data:`shapshift.shift.CHANGE_COLUMNS`). ``mean_change`` is in the score's units."""
    rows: list[dict] = []
    if changes.empty:
        return pd.DataFrame(columns=MOVEMENT_COLUMNS)
    df = changes.assign(word=changes["in_token"].map(normalise_word))
    df = df[df["word"] != ""]
    for cond, g in df.groupby("condition_b", sort=False):
        # one row per (example, word): occurrences in one example add up; se by root sum of squares
        per = g.groupby(["example_id", "word"]).agg(delta=("delta", "sum"), se2=("se_delta", lambda s: float((s ** 2).sum())),
                                                    changed=("changed", "any")).reset_index()
        for word, w in per.groupby("word"):
            rows.append(_row(cond, "word", word, w["delta"].to_numpy(float), int(w["changed"].sum()), n_bootstrap, seed))
        for name, members in word_groups(sorted(per["word"].unique()), user_groups).items():
            m = per[per["word"].isin(members)].groupby("example_id").agg(delta=("delta", "sum"), se2=("se2", "sum"))
            if m.empty:
                continue
            se = np.sqrt(m["se2"].to_numpy(float))
            d = m["delta"].to_numpy(float)
            beyond = np.where(se > 0, np.abs(d) > 1.96 * se, np.abs(d) > 1e-12)
            rows.append(_row(cond, "group", name, d, int(beyond.sum()), n_bootstrap, seed))
    return pd.DataFrame(rows, columns=MOVEMENT_COLUMNS)


def _row(cond: str, kind: str, name: str, deltas: np.ndarray, n_beyond: int, n_bootstrap: int, seed: int) -> dict:
    ci = bootstrap_mean_ci(deltas, n_bootstrap=n_bootstrap, seed=seed)
    return {"condition": cond, "kind": kind, "name": name, "n_examples": len(deltas), "mean_change": ci.mean,
            "ci_low": ci.low, "ci_high": ci.high, "n_beyond_noise": n_beyond}


def top_words(table: pd.DataFrame, condition: str, *, n: int = 3, min_examples: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The words of ``condition`` that rose and fell most: those seen in at least ``min_examples`` examples (all
    words when none is), whose interval excludes 0 first, by the size of the mean change."""
    w = table[(table["condition"] == condition) & (table["kind"] == "word")]
    if (w["n_examples"] >= min_examples).any():
        w = w[w["n_examples"] >= min_examples]
    sure = (w["ci_low"] > 0) | (w["ci_high"] < 0)
    w = w.assign(_sure=sure, _size=w["mean_change"].abs()).sort_values(["_sure", "_size"], ascending=False)
    rose = w[w["mean_change"] > 0].head(n)
    fell = w[w["mean_change"] < 0].head(n)
    return rose.drop(columns=["_sure", "_size"]), fell.drop(columns=["_sure", "_size"])


def _fmt_word(r: pd.Series, unit: str) -> str:
    ci = (f", 95 % CI {r['ci_low']:+.2f} to {r['ci_high']:+.2f}" if np.isfinite(r["ci_low"]) and r["n_examples"] > 1
          else "")
    return (f"'{r['name']}' ({r['mean_change']:+.2f} {unit}{ci}; beyond noise in {int(r['n_beyond_noise'])} of "
            f"{int(r['n_examples'])})")


def answer_sentence(table: pd.DataFrame, condition: str, label: str, *, unit: str = "nats") -> str:
    """One sentence on how ``condition`` (shown as ``label``) moved importance: onto which words, off which, and
    the content/function split, with intervals."""
    rose, fell = top_words(table, condition)
    if rose.empty and fell.empty:
        return f"Under the {label} condition no word's importance could be compared with the baseline's."
    parts = []
    if not rose.empty:
        parts.append("onto " + ", ".join(_fmt_word(r, unit) for _, r in rose.iterrows()))
    if not fell.empty:
        parts.append("off " + ", ".join(_fmt_word(r, unit) for _, r in fell.iterrows()))
    groups = table[(table["condition"] == condition) & (table["kind"] == "group")].set_index("name")
    split = []
    for name in groups.index:
        g = groups.loc[name]
        ci = f" (95 % CI {g['ci_low']:+.2f} to {g['ci_high']:+.2f})" if np.isfinite(g["ci_low"]) else ""
        split.append(f"{name} {g['mean_change']:+.2f}{ci}")
    tail = f"; per example, {', '.join(split)} {unit}" if split else ""
    return f"The {label} condition moved importance {' and '.join(parts)}{tail}."


def group_label_order(table: pd.DataFrame) -> list[str]:
    """Group names in the order the figure shows them: content, function, then the user's."""
    names = list(dict.fromkeys(table.loc[table["kind"] == "group", "name"]))
    return [n for n in (CONTENT, FUNCTION) if n in names] + [n for n in names if n not in (CONTENT, FUNCTION)]

