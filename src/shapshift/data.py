"""Stage 1: load a dataset, turn each example into a prompt, tokenise, split, write Parquet.

Local files (CSV/TSV/JSON/JSONL/Parquet) go through the same ``datasets.load_dataset`` call as hub
names, with the matching packaged builder, so a local SST-2 file and ``stanfordnlp/sst2`` behave alike.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from .config import DataConfig
from .errors import DataError
from .formats import PromptFormat, candidate_formats, check_formats, default_format
from .prompting import build_prompt, check_template, token_strings

log = logging.getLogger(__name__)

_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

#: Columns of ``01_dataset.parquet`` (documented in the README).
DATASET_COLUMNS = [
    "example_id", "split", "source_text", "input_text", "prompt_prefix", "prompt_suffix", "prompt_text", "prompt_chat",
    "target_text", "reference_text", "label", "input_ids", "input_tokens", "n_input_tokens", "truncated",
]


def load_table(source: str, *, hub_split: str = "train") -> pd.DataFrame:
    """Read a dataset into a DataFrame: a local file by its extension, anything else as a hub name."""
    import datasets

    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in _BUILDERS:
        if not path.exists():
            raise DataError(f"Dataset file {path} does not exist.",
                            "Check the path (relative paths start from the folder you run in), or name a hub dataset such as stanfordnlp/sst2.")
        kwargs: dict = {}
        if suffix == ".tsv":
            kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        bad = None if suffix == ".parquet" else _utf8_problem(path)
        if bad is not None and _BUILDERS[suffix] != "csv":
            raise DataError(f"{path} is not UTF-8 text ({bad}).",
                            "Save the file with UTF-8 encoding (e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`).")
        if bad is not None:
            log.warning("%s is not UTF-8 (%s); reading it as Latin-1 (ISO-8859-1). If characters look wrong, save "
                        "the file as UTF-8.", path, bad)
            kwargs["encoding"] = "latin-1"
        try:
            ds = datasets.load_dataset(_BUILDERS[suffix], data_files=str(path), split="train", **kwargs)
        except Exception as exc:  # datasets raises many types for unreadable files
            raise DataError(f"Could not read {path} as {suffix[1:].upper()} ({type(exc).__name__}: {str(exc)[:200]}).",
                            "Check that the file is valid and its extension matches its format.") from None
    else:
        try:
            ds = datasets.load_dataset(source, split=hub_split)
        except Exception as exc:
            raise DataError(f"Could not load dataset {source!r} (split {hub_split!r}) from the hub "
                            f"({type(exc).__name__}: {str(exc)[:200]}).",
                            "Check the name, the split and the network; offline, point data.source at a local "
                            "file such as data/demo_reviews.csv.") from None
    return ds.to_pandas()


def _utf8_problem(path: Path) -> str | None:
    """Why ``path`` is not valid UTF-8 (the first bad byte), or None when it is."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return f"byte 0x{block[exc.start]:02x} at offset {offset + exc.start} is not UTF-8"
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "the file ends inside a UTF-8 character"
    return None


@dataclass
class PreprocessReport:
    """What preprocessing kept, skipped and changed; written into the run manifest."""

    n_rows: int = 0
    n_empty: int = 0
    n_truncated: int = 0
    n_dropped_too_long: int = 0
    n_kept: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    format: dict = field(default_factory=dict)  # the prompt format used (formats.PromptFormat.to_dict)
    format_check: list[dict] = field(default_factory=list)  # the format check's table (formats.CHECK_COLUMNS)
    format_note: str | None = None  # set when no format made the model write the reference
    format_check_seconds: float = 0.0  # wall time of the format check (model evaluations on train rows)


def _references(df: pd.DataFrame, cfg: DataConfig) -> pd.Series:
    """The reference output of each row as the dataset writes it (label names applied), None where absent."""
    if not cfg.target_column:
        return pd.Series([None] * len(df), index=df.index, dtype=object)
    raw = df[cfg.target_column]
    if cfg.label_names:
        raw = raw.map(lambda v: cfg.label_names.get(str(v), str(v)))
    return raw.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())


def preprocess(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, table: pd.DataFrame | None = None, *,
               model: Any = None) -> tuple[pd.DataFrame, PreprocessReport]:
    """Build the stage-1 table (columns :data:`DATASET_COLUMNS`) and a report of what was skipped.

    The explain split holds ``cfg.n_explain`` examples drawn with ``cfg.seed``; the rest is train.
    Inputs longer than ``cfg.max_input_tokens`` are truncated from the left (the end is kept),
    dropped, or refused, as ``cfg.on_too_long`` says; each case is counted. The prompt format is
    :func:`~shapshift.formats.default_format`, or with ``model`` (and ``cfg.format_check_rows`` > 0, a
    reference column and more than one candidate) the one :func:`~shapshift.formats.check_formats` picks
    on the train rows; the report carries the format and the check's table.
    """
    fmt = default_format(cfg, tokenizer)
    check_template(cfg.template)
    table = load_table(cfg.source, hub_split=cfg.hub_split) if table is None else table  # read once
    out, report = _build(cfg, tokenizer, table, fmt)
    train = out[out["split"] == "train"]
    candidates = candidate_formats(cfg, tokenizer, sorted(set(train["reference_text"].dropna())))
    if model is not None and cfg.format_check_rows and train["reference_text"].notna().any() and len(candidates) > 1:
        start = time.perf_counter()
        check = check_formats(model, tokenizer, train, cfg, candidates)
        report.format_check_seconds = round(time.perf_counter() - start, 3)
        report.format_check, report.format_note = check.records(), check.note
        if check.chosen != fmt:
            fmt = check.chosen
            out, _ = _build(cfg, tokenizer, table, fmt)
    report.format = fmt.to_dict()
    return out, report


def _build(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, df: pd.DataFrame,
           fmt: PromptFormat) -> tuple[pd.DataFrame, PreprocessReport]:
    """:func:`preprocess` of the loaded table ``df`` under one prompt format."""
    needed = [c for c in (cfg.input_column, cfg.target_column, cfg.label_column) if c]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"Column(s) {missing} are not in the dataset {cfg.source}.",
                        f"The columns there are {list(df.columns)}; set data.input_column / data.target_column / "
                        "data.label_column (null for none) to match.")
    report = PreprocessReport(n_rows=len(df))
    df = df.reset_index(drop=True)
    df["row_id"] = np.arange(len(df))
    texts = df[cfg.input_column].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    empty = texts.str.strip().eq("")
    report.n_empty = int(empty.sum())
    if report.n_empty == len(df):
        raise DataError(f"Every one of the {len(df)} rows of {cfg.source} has an empty {cfg.input_column!r}.",
                        "Point data.input_column at the column that holds the text.")
    df = df[~empty].copy()
    df["input_text"] = texts[~empty].map(lambda s: " ".join(s.split()))
    if cfg.max_rows is not None and len(df) > cfg.max_rows:
        df = df.sample(n=cfg.max_rows, random_state=cfg.seed).sort_values("row_id")

    chat = fmt.chat
    rows = []
    for rec, reference, label in zip(df.itertuples(index=False), _references(df, cfg),
                                  df[cfg.label_column] if cfg.label_column else [None] * len(df)):
        parts = build_prompt(rec.input_text, cfg.template, tokenizer, chat=chat)
        ids = tokenizer(parts.text, add_special_tokens=False)["input_ids"]
        truncated = False
        if len(ids) > cfg.max_input_tokens:
            if cfg.on_too_long == "error":
                raise DataError(f"Example {rec.row_id} has {len(ids)} input tokens, more than data.max_input_tokens={cfg.max_input_tokens}.",
                                "Raise data.max_input_tokens, or set data.on_too_long to truncate or drop.")
            if cfg.on_too_long == "drop":
                report.n_dropped_too_long += 1
                continue
            ids = ids[-cfg.max_input_tokens:]
            truncated = True
            report.n_truncated += 1
            text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
            parts = build_prompt(text.lstrip(" "), cfg.template, tokenizer, chat=chat)
            parts_ids = tokenizer(parts.text, add_special_tokens=False)["input_ids"]
            ids = parts_ids if len(parts_ids) <= cfg.max_input_tokens else ids
        rows.append({
            "example_id": int(rec.row_id), "source_text": rec.input_text if not truncated else text.lstrip(" "),
            "input_text": parts.text, "prompt_prefix": parts.prefix,
            "prompt_suffix": parts.suffix, "prompt_text": parts.prompt, "prompt_chat": chat,
            "target_text": fmt.target(reference),
            "reference_text": reference,
            "label": None if label is None else str(label), "input_ids": [int(i) for i in ids],
            "input_tokens": token_strings(tokenizer, ids), "n_input_tokens": len(ids), "truncated": truncated,
        })
    if not rows:
        raise DataError(f"No example of {cfg.source} is left after preprocessing.",
                        "Raise data.max_input_tokens or set data.on_too_long=truncate.")
    out = pd.DataFrame(rows)
    if cfg.n_explain > len(out):
        raise DataError(f"data.n_explain={cfg.n_explain}, but only {len(out)} example(s) of {cfg.source} are usable "
                        f"({report.n_rows} rows before skipping empty or too long inputs and applying data.max_rows).",
                        f"Set data.n_explain to at most {len(out)} (and leave some rows for training and few-shot "
                        "demonstrations), or use a larger dataset.")
    rng = np.random.default_rng(cfg.seed)
    n_explain = cfg.n_explain
    explain_idx = set(rng.choice(len(out), size=n_explain, replace=False).tolist())
    out["split"] = ["explain" if i in explain_idx else "train" for i in range(len(out))]
    out = out[DATASET_COLUMNS]
    report.n_kept = len(out)
    report.splits = out["split"].value_counts().to_dict()
    if report.n_empty:
        log.warning("skipped %d empty or whitespace-only input(s)", report.n_empty)
    if report.n_truncated:
        log.warning("truncated %d input(s) to their last %d tokens", report.n_truncated, cfg.max_input_tokens)
    return out, report
