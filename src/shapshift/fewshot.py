"""Seeded, label-balanced selection of few-shot demonstrations from the train split.

Design choice: **one fixed demonstration set for every explained example.** The set is drawn once
(from the train split, with ``adapt``'s seed) after excluding every explained example, so the fixed
context in front of each example is identical and explanations of different examples are
comparable; only the example's own text changes. :func:`shared_demonstrations` is that entry
point. :func:`demonstrations_for` keeps the same set per example and only re-draws (for that one
example, with a warning) when the explained example would otherwise show up as its own
demonstration; ``per_example=True`` instead mixes the example id into the seed, giving each
example its own set.

Selection (:func:`select_demonstrations`): when the rows carry labels, demonstrations are taken
round-robin over the labels in a seeded order (``k=4`` with two labels gives 2 + 2), each label's
rows in a seeded order; the chosen demonstrations are then shuffled with the same generator, so the
order is deterministic but not grouped by label. The pool is sorted by ``example_id`` first, so the
result does not depend on the row order of the table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .prompting import Demonstration

log = logging.getLogger(__name__)


def select_demonstrations(train: pd.DataFrame, k: int, *, seed: int, exclude_ids: Iterable[int] = (),
                          text_column: str = "input_text", answer_column: str = "target_text",
                          label_column: str | None = "label", balance: bool = True) -> list[Demonstration]:
    """Draw ``k`` demonstrations from ``train`` with a fixed ``seed``.

    ``exclude_ids``: ``example_id`` values never used (the explained examples). ``balance``:
    round-robin over the labels when ``label_column`` holds labels; a pool with only one label is
    then a :class:`DataError` (pass ``balance=False`` to draw without regard to labels).
    Returns ``k`` :class:`Demonstration` (text stripped of surrounding whitespace, answer as stored,
    e.g. ``" positive"``) in a seeded shuffled order.
    """
    pool = _pool(train, exclude_ids, text_column, answer_column)
    ids = _select_ids(pool, k, rng=np.random.default_rng(seed), label_column=label_column, balance=balance)
    return _to_demonstrations(pool, ids, text_column, answer_column)


def demonstrations_for(example_id: int, train: pd.DataFrame, k: int, seed: int, *,
                       per_example: bool = False, exclude_ids: Iterable[int] = (),
                       text_column: str = "input_text", answer_column: str = "target_text",
                       label_column: str | None = "label", balance: bool = True) -> list[Demonstration]:
    """The demonstrations shown before example ``example_id``.

    ``per_example=False`` (default): the shared set drawn with ``seed`` after excluding
    ``exclude_ids`` (pass every explained id), identical for every example. Should
    ``example_id`` itself be in that set, it is re-drawn for this example with ``example_id``
    excluded too, and a warning says that this example's context differs.
    ``per_example=True``: a set of its own, seeded with ``(seed, example_id)``.
    """
    excluded = {int(i) for i in exclude_ids}
    pool_args = (text_column, answer_column)
    select = {"label_column": label_column, "balance": balance}
    if per_example:
        pool = _pool(train, excluded | {int(example_id)}, *pool_args)
        ids = _select_ids(pool, k, rng=np.random.default_rng([seed, int(example_id)]), **select)
        return _to_demonstrations(pool, ids, *pool_args)
    pool = _pool(train, excluded, *pool_args)
    ids = _select_ids(pool, k, rng=np.random.default_rng(seed), **select)
    if int(example_id) in ids:
        log.warning("example %d is in the shared demonstration set; drawing a set without it for this "
                    "example (pass every explained id as exclude_ids to keep one shared set)", example_id)
        pool = _pool(train, excluded | {int(example_id)}, *pool_args)
        ids = _select_ids(pool, k, rng=np.random.default_rng(seed), **select)
    return _to_demonstrations(pool, ids, *pool_args)


def shared_demonstrations(dataset: pd.DataFrame, k: int, seed: int, *, balance: bool = True,
                          text_column: str = "input_text", answer_column: str = "target_text",
                          label_column: str | None = "label") -> list[Demonstration]:
    """The one demonstration set of a run, from the stage-1 table (columns ``DATASET_COLUMNS``).

    Draws from the ``train`` split, never from an ``explain`` example, and never a train row whose
    text equals an explained example's text (a duplicate would show the model the answer).
    """
    if "split" not in dataset.columns:
        raise DataError("The dataset table has no 'split' column, so the explained examples are unknown.",
                        "Pass the stage-1 table (01_dataset.parquet), or call select_demonstrations with "
                        "the train rows and exclude_ids.")
    explain = dataset[dataset["split"] == "explain"]
    train = dataset[dataset["split"] == "train"]
    explained_texts = {_norm(t) for t in explain[text_column]}
    duplicates = train[train[text_column].map(_norm).isin(explained_texts)]
    if len(duplicates):
        log.info("leaving out %d train row(s) whose text equals an explained example's", len(duplicates))
    exclude = set(explain["example_id"].astype(int)) | set(duplicates["example_id"].astype(int))
    return select_demonstrations(train, k, seed=seed, exclude_ids=exclude, text_column=text_column,
                                 answer_column=answer_column, label_column=label_column, balance=balance)


# -- helpers ---------------------------------------------------------------------------------------
def _norm(text: object) -> str:
    return " ".join(str(text).split()).lower()


def _pool(train: pd.DataFrame, exclude_ids: Iterable[int], text_column: str, answer_column: str) -> pd.DataFrame:
    """Rows that may be demonstrations, indexed by ``example_id`` and sorted by it."""
    missing = [c for c in (text_column, answer_column) if c not in train.columns]
    if missing:
        raise DataError(f"The train rows lack the column(s) {missing} needed for few-shot demonstrations.",
                        f"Their columns are {list(train.columns)}; pass the stage-1 table or name the columns.")
    ids = train["example_id"].astype(int) if "example_id" in train.columns else pd.Series(train.index, index=train.index)
    pool = train.assign(_id=ids.to_numpy()).set_index("_id", drop=True).sort_index()
    pool = pool[~pool.index.isin([int(i) for i in exclude_ids])]
    no_answer = pool[answer_column].isna()
    if no_answer.all() and len(pool):
        raise DataError("Few-shot demonstrations need an answer for each train row, but the "
                        f"{answer_column!r} column is empty.",
                        "Set data.target_column to the column with the reference outputs (e.g. label), or "
                        "drop 'few_shot' from adapt.conditions.")
    return pool[~no_answer]


def _select_ids(pool: pd.DataFrame, k: int, *, rng: np.random.Generator, label_column: str | None,
                balance: bool) -> list[int]:
    """``k`` example ids from ``pool``, label round-robin when balanced, in a shuffled order."""
    if k < 1:
        raise ConfigError(f"adapt.k_shot={k} asks for no demonstrations.", "Set adapt.k_shot to 1 or more.")
    if k > len(pool):
        raise ConfigError(
            f"adapt.k_shot={k} asks for more demonstrations than the {len(pool)} train row(s) with an "
            "answer that are left after excluding the explained examples.",
            "Lower adapt.k_shot, or use more data (raise data.max_rows or lower data.n_explain).")
    labels = pool[label_column] if label_column and label_column in pool.columns else None
    if balance and labels is not None and labels.notna().any():
        chosen = _round_robin(labels.dropna().astype(str), k, rng)
        if len(chosen) < k:  # rows without a label fill up the rest
            rest = [i for i in pool.index if i not in set(chosen)]
            chosen += [rest[j] for j in rng.permutation(len(rest))[: k - len(chosen)]]
    else:
        chosen = [pool.index[j] for j in rng.choice(len(pool), size=k, replace=False)]
    return [int(chosen[j]) for j in rng.permutation(len(chosen))]


def _round_robin(labels: pd.Series, k: int, rng: np.random.Generator) -> list[int]:
    """Take ids label by label in a seeded label order; a label that runs out is skipped."""
    names = sorted(labels.unique())
    if len(names) < 2:
        raise DataError(
            f"The train split has only one label ({names[0]!r}), so label-balanced few-shot "
            "demonstrations cannot be drawn.",
            "Provide train rows of both (all) labels, lower adapt.k_shot, or draw without balancing "
            "(balance=False).")
    order = [names[j] for j in rng.permutation(len(names))]
    queues = {}
    for name in order:
        ids = labels.index[labels == name].to_numpy()
        queues[name] = [int(ids[j]) for j in rng.permutation(len(ids))]
    chosen: list[int] = []
    while len(chosen) < k and any(queues.values()):
        for name in order:
            if queues[name] and len(chosen) < k:
                chosen.append(queues[name].pop(0))
    return chosen


def _to_demonstrations(pool: pd.DataFrame, ids: list[int], text_column: str, answer_column: str) -> list[Demonstration]:
    return [Demonstration(text=str(pool.at[i, text_column]).strip(), answer=str(pool.at[i, answer_column]))
            for i in ids]
