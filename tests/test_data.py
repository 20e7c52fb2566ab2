import pandas as pd
import pytest
from conftest import DEMO_DATA

from shapshift.config import DataConfig
from shapshift.data import DATASET_COLUMNS, load_table, preprocess
from shapshift.errors import DataError
from shapshift.store import RunStore
from shapshift.validation import load_config


def test_sst2_tsv_loads_through_the_datasets_loader(sst2_dev):
    df = load_table(str(sst2_dev))
    assert list(df.columns) == ["sentence", "label"]
    assert len(df) == 872
    assert set(df["label"]) == {0, 1}
    # TSV without quoting: sentences with quote characters are read whole
    assert df["sentence"].str.contains('"').any() or df["sentence"].str.contains("'").any()


def test_preprocess_sst2_with_label_names(smollm2, sst2_dev):
    _, tok = smollm2
    cfg = DataConfig(source=str(sst2_dev), input_column="sentence", target_column="label", label_column="label",
                     label_names={"0": "negative", "1": "positive"}, n_explain=5, max_rows=40, chat="no")
    df, report = preprocess(cfg, tok)
    assert list(df.columns) == DATASET_COLUMNS
    assert report.n_kept == 40 and report.splits == {"explain": 5, "train": 35}
    assert set(df["target_text"]) <= {" negative", " positive"}
    for r in df.itertuples():
        assert r.prompt_text == r.prompt_prefix + r.input_text + r.prompt_suffix
        assert list(r.input_ids) == tok(r.input_text, add_special_tokens=False)["input_ids"]
        assert len(r.input_tokens) == r.n_input_tokens == len(r.input_ids)


def test_template_per_model_family(smollm2, tiny_neo):
    _, tok = smollm2
    cfg = DataConfig(source=str(DEMO_DATA), n_explain=2, max_rows=4)
    chat_df, _ = preprocess(cfg, tok)  # instruct tokenizer: chat template
    assert chat_df["prompt_prefix"].str.startswith("<|im_start|>").all()
    assert chat_df["target_text"].isin(["positive", "negative"]).all()
    plain_df, _ = preprocess(DataConfig(source=str(DEMO_DATA), n_explain=2, max_rows=4, chat="no"), tok)
    assert plain_df["prompt_text"].str.startswith("Review: ").all()
    assert plain_df["target_text"].isin([" positive", " negative"]).all()


def _write(tmp_path, name, df):
    path = tmp_path / name
    if name.endswith(".parquet"):
        df.to_parquet(path)
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    elif name.endswith(".json"):
        df.to_json(path, orient="records")
    else:
        df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", ["d.csv", "d.json", "d.jsonl", "d.parquet"])
def test_every_local_format_loads(tmp_path, name):
    df = pd.DataFrame({"text": ["a good film", "a bad film"], "label": ["positive", "negative"]})
    assert load_table(str(_write(tmp_path, name, df)))["text"].tolist() == df["text"].tolist()


def test_missing_column_lists_the_columns(smollm2, tmp_path):
    path = _write(tmp_path, "d.csv", pd.DataFrame({"review": ["fine"], "label": ["positive"]}))
    with pytest.raises(DataError) as err:  # the message is wrapped at 100 columns: compare it unwrapped
        preprocess(DataConfig(source=str(path)), smollm2[1])
    assert "The columns there are ['review', 'label']" in " ".join(str(err.value).split())


def test_empty_texts_are_counted_and_all_empty_is_an_error(smollm2, tmp_path):
    tok = smollm2[1]
    df = pd.DataFrame({"text": ["a good film", "   ", "", "a bad film", None], "label": ["positive"] * 5})
    out, report = preprocess(DataConfig(source=str(_write(tmp_path, "d.csv", df)), n_explain=1), tok)
    assert report.n_empty == 3 and report.n_kept == 2 and len(out) == 2
    empty = pd.DataFrame({"text": [" ", "\t"], "label": ["positive"] * 2})
    with pytest.raises(DataError, match="empty"):
        preprocess(DataConfig(source=str(_write(tmp_path, "e.csv", empty))), tok)


def test_unreadable_and_missing_files(smollm2, tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="Could not read"):
        preprocess(DataConfig(source=str(bad)), smollm2[1])
    with pytest.raises(DataError, match="does not exist"):
        preprocess(DataConfig(source=str(tmp_path / "none.csv")), smollm2[1])


def test_too_long_inputs_are_truncated_dropped_or_refused(smollm2, tmp_path):
    tok = smollm2[1]
    long = " ".join(["word"] * 50)
    path = _write(tmp_path, "d.csv", pd.DataFrame({"text": [long, "short text"], "label": ["positive"] * 2}))
    out, rep = preprocess(DataConfig(source=str(path), max_input_tokens=8, n_explain=1), tok)
    assert rep.n_truncated == 1 and out["n_input_tokens"].max() <= 8 and out["truncated"].sum() == 1
    out, rep = preprocess(DataConfig(source=str(path), max_input_tokens=8, on_too_long="drop", n_explain=1), tok)
    assert rep.n_dropped_too_long == 1 and len(out) == 1
    with pytest.raises(DataError, match="max_input_tokens"):
        preprocess(DataConfig(source=str(path), max_input_tokens=8, on_too_long="error"), tok)


def test_dataset_parquet_round_trips(smollm2, tmp_path):
    df, _ = preprocess(DataConfig(source=str(DEMO_DATA), n_explain=3, max_rows=10), smollm2[1])
    store = RunStore(tmp_path)
    store.write_parquet(df, "01_dataset.parquet")
    back = store.read_parquet("01_dataset.parquet")
    assert back.columns.tolist() == df.columns.tolist()
    for col in df.columns:
        assert [list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in back[col]] == \
               [list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in df[col]], col


def test_n_explain_larger_than_the_data_is_refused(tiny_neo):
    """Item 2: 1,000 examples to explain out of 10 rows is refused at preprocess, naming the numbers."""
    _, tok = tiny_neo
    with pytest.raises(DataError, match=r"data.n_explain=1000, but only 10 example\(s\)"):
        preprocess(DataConfig(source=str(DEMO_DATA), n_explain=1000, max_rows=10), tok)


def test_too_few_training_rows_are_refused_before_any_explaining(tmp_path):
    """Item 2: every row in the explain split leaves nothing to fine-tune on: refused before stage 2."""
    from shapshift.pipeline import run

    cfg = load_config({"name": "r", "output_dir": str(tmp_path), "model": {"spec": "tiny-gpt-neo"},
                               "data": {"source": str(DEMO_DATA), "n_explain": 10, "max_rows": 10}})
    with pytest.raises(DataError) as err:
        run(cfg)
    assert "0 row(s) are left for training, but few_shot and finetuned need(s) at least 4" in err.value.problem
    # nothing was written: a failed first run leaves no folder (or, in a folder that held a run, no new stage)
    assert not cfg.run_dir.exists() or not any(p.name.startswith(("01_", "02_")) for p in cfg.run_dir.iterdir())


def test_latin1_csv_is_read_with_a_warning(tiny_neo, tmp_path, caplog):
    """Item 8: a Latin-1 CSV is read (the text intact) and the log names the encoding."""
    path = tmp_path / "latin1.csv"
    path.write_bytes('text,label\n"Café très bon",positive\n"naïve plot",negative\n'.encode("latin-1"))
    caplog.set_level("WARNING")
    df = load_table(str(path))
    assert df["text"].tolist() == ["Café très bon", "naïve plot"]
    assert "is not UTF-8" in caplog.text and "Latin-1" in caplog.text
    bad_json = tmp_path / "latin1.jsonl"
    bad_json.write_bytes('{"text": "Café", "label": "positive"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_table(str(bad_json))
