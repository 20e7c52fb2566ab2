"""Few-shot demonstrations: seeded, label-balanced, never the explained example, clear errors."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from shapshift.errors import ConfigError, DataError
from shapshift.fewshot import demonstrations_for, select_demonstrations, shared_demonstrations
from shapshift.prompting import Demonstration, build_prompt


def _table(n: int = 20, labels: tuple[str | None, ...] = ("negative", "positive"), n_explain: int = 4) -> pd.DataFrame:
    """A stage-1 style table: ids 0..n-1, labels cycling, the first ``n_explain`` rows explained."""
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        rows.append({
            "example_id": i, "split": "explain" if i < n_explain else "train",
            "input_text": f" review number {i} is {label}.", "target_text": None if label is None else f" {label}",
            "label": label,
        })
    return pd.DataFrame(rows)


def _ids(demos: list[Demonstration]) -> list[int]:
    return [int(d.text.split()[2]) for d in demos]


def _train(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["split"] == "train"]


def test_never_includes_excluded_ids():
    table = _table(12, n_explain=0)
    for seed in range(20):
        demos = select_demonstrations(table, 4, seed=seed, exclude_ids=[0, 1, 2, 3, 4, 5])
        assert not set(_ids(demos)) & {0, 1, 2, 3, 4, 5}
    # k equal to what is left uses exactly the rest
    assert sorted(_ids(select_demonstrations(table, 6, seed=0, exclude_ids=range(6)))) == [6, 7, 8, 9, 10, 11]


def test_label_balanced_round_robin():
    train = _train(_table(30))
    for seed in range(10):
        demos = select_demonstrations(train, 4, seed=seed)
        assert Counter(d.answer for d in demos) == {" negative": 2, " positive": 2}
        odd = Counter(d.answer for d in select_demonstrations(train, 5, seed=seed))
        assert sorted(odd.values()) == [2, 3]
    three = _train(_table(30, labels=("a", "b", "c")))
    assert Counter(d.answer for d in select_demonstrations(three, 6, seed=1)) == {" a": 2, " b": 2, " c": 2}


def test_label_that_runs_out_is_topped_up_by_the_others():
    table = pd.concat([_table(2, labels=("positive",), n_explain=0),
                       _table(12, labels=("negative",), n_explain=0).assign(example_id=lambda d: d.example_id + 2)])
    demos = select_demonstrations(table, 5, seed=0)
    assert Counter(d.answer for d in demos) == {" positive": 2, " negative": 3}


def test_seeded_and_independent_of_row_order():
    train = _train(_table(40))
    a = select_demonstrations(train, 4, seed=7)
    assert a == select_demonstrations(train, 4, seed=7)
    assert a == select_demonstrations(train.sample(frac=1.0, random_state=3), 4, seed=7)
    assert a != select_demonstrations(train, 4, seed=8)
    # the order is shuffled, not grouped by label, for some seed
    orders = {tuple(d.answer for d in select_demonstrations(train, 4, seed=s)) for s in range(10)}
    assert len(orders) > 1


def test_demonstrations_are_stripped_and_fit_the_template():
    demos = select_demonstrations(_train(_table()), 2, seed=0)
    assert all(d.text == d.text.strip() for d in demos)
    parts = build_prompt("Great.", "Review: {input}\nSentiment:", demonstrations=demos)
    first = demos[0]
    assert parts.prefix.startswith(f"Review: {first.text}\nSentiment:{first.answer}\n\n")
    assert "  " not in parts.prefix


def test_k_too_large_is_a_config_error():
    with pytest.raises(ConfigError, match="adapt.k_shot=20") as info:
        select_demonstrations(_train(_table(20)), 20, seed=0)
    assert "16 train row" in str(info.value) and "Lower adapt.k_shot" in str(info.value)
    with pytest.raises(ConfigError, match="adapt.k_shot"):
        select_demonstrations(_train(_table(20)), 0, seed=0)


def test_one_label_is_a_data_error_unless_unbalanced():
    train = _train(_table(10, labels=("positive",)))
    with pytest.raises(DataError, match="only one label") as info:
        select_demonstrations(train, 2, seed=0)
    assert "adapt.k_shot" in str(info.value) and "balance=False" in str(info.value)
    demos = select_demonstrations(train, 2, seed=0, balance=False)
    assert len(demos) == 2 and all(d.answer == " positive" for d in demos)


def test_rows_without_labels_are_drawn_at_random():
    table = _table(10, n_explain=0).assign(label=None)
    demos = select_demonstrations(table, 3, seed=0)
    assert len(set(_ids(demos))) == 3


def test_rows_without_answers_are_a_data_error():
    table = _table(10, n_explain=0).assign(target_text=None)
    with pytest.raises(DataError, match="data.target_column"):
        select_demonstrations(table, 2, seed=0)


def test_shared_set_excludes_explained_rows_and_their_duplicates():
    table = _table(20)
    # row 10 (train) repeats the text of explained row 0
    table.loc[table.example_id == 10, "input_text"] = table.loc[table.example_id == 0, "input_text"].iloc[0]
    seen: set[int] = set()
    for seed in range(30):
        ids = _ids(shared_demonstrations(table, 4, seed))
        assert not set(ids) & {0, 1, 2, 3}
        seen |= set(ids)
    assert 10 not in seen and len(seen) > 8
    assert shared_demonstrations(table, 4, 0) == select_demonstrations(
        _train(table), 4, seed=0, exclude_ids=[0, 1, 2, 3, 10])
    with pytest.raises(DataError, match="split"):
        shared_demonstrations(table.drop(columns="split"), 4, 0)


def test_demonstrations_for_shares_one_set_and_never_shows_the_example():
    table = _table(20, n_explain=0)
    shared = select_demonstrations(table, 4, seed=3)
    outside = [i for i in range(20) if i not in _ids(shared)]
    assert all(demonstrations_for(i, table, 4, 3) == shared for i in outside[:5])
    inside = _ids(shared)[0]
    redrawn = demonstrations_for(inside, table, 4, 3)
    assert inside not in _ids(redrawn) and len(redrawn) == 4
    per = {tuple(_ids(demonstrations_for(i, table, 4, 3, per_example=True))) for i in range(8)}
    assert len(per) > 1
    assert all(i not in _ids(demonstrations_for(i, table, 4, 3, per_example=True)) for i in range(20))
