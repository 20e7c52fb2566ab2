"""The condition registry: a new condition is one registry entry; a user's own prompt or adapter is a config entry.

Each is run end to end on the tiny GPT-Neo and checked against an independent computation: the
explained log-probability a run stores for the condition equals the one computed by hand with the
condition's prompt or weights.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_pipeline import tiny_config

from shapshift import adapt, conditions
from shapshift.adapt import Setup, condition_parts
from shapshift.conditions import Condition, register
from shapshift.config import RunConfig
from shapshift.errors import ConfigError
from shapshift.pipeline import STAGES, load_condition, run
from shapshift.prompting import encode_prompt
from shapshift.report import REPORT_FILE
from shapshift.store import RunStore
from shapshift.validation import load_config


def _explained_logprob(model, tokenizer, parts, input_ids, target_ids) -> float:
    """log p(target | prompt), the whole sequence through the model by hand (no cache, no batching)."""
    prompt = encode_prompt(parts, tokenizer, input_ids=input_ids).ids
    ids = torch.tensor([prompt + list(target_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(target_ids)))


def _stored(cfg: RunConfig, condition: str) -> pd.DataFrame:
    store = RunStore(cfg.run_dir)
    gens = pd.concat([store.read_parquet("02_generations.parquet"), store.read_parquet("03_generations.parquet")])
    return gens[gens["condition"] == condition].set_index("example_id")


def test_a_users_prompt_is_a_condition(tmp_path, tiny_neo, one_thread):
    model, tokenizer = tiny_neo
    cfg = tiny_config(tmp_path, adapt__conditions=["terse"], adapt__prompts={"terse": "Answer in one word."},
                      explain__method="exact", explain__noise_floor=False, data__n_explain=2)
    run(cfg, STAGES)
    ids, exps = load_condition(cfg.run_dir, "terse")
    assert len(ids) == 2
    rows = RunStore(cfg.run_dir).read_parquet("01_dataset.parquet").set_index("example_id").loc[ids]
    parts = condition_parts(cfg, rows.reset_index(), tokenizer, instruction="Answer in one word.")
    stored = _stored(cfg, "terse")
    for p, (ex_id, r) in zip(parts, rows.iterrows()):
        assert "Answer in one word." in p.prefix
        want = _explained_logprob(model, tokenizer, p, list(r.input_ids), stored.loc[ex_id, "explained_ids"])
        assert stored.loc[ex_id, "explained_logprob"] == pytest.approx(want, abs=1e-4)
    page = (cfg.run_dir / REPORT_FILE).read_text()
    assert "terse" in page and "zero-shot" not in page


def test_a_users_adapter_is_a_condition(tmp_path, tiny_neo, one_thread):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tokenizer = tiny_neo
    torch.manual_seed(0)
    lora = get_peft_model(__import__("copy").deepcopy(model),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    folder = tmp_path / "my_adapter"
    lora.save_pretrained(folder)
    cfg = tiny_config(tmp_path, adapt__conditions=["mine"], adapt__adapters={"mine": str(folder)},
                      explain__method="exact", explain__noise_floor=False, data__n_explain=2)
    run(cfg, STAGES)
    adapted = PeftModel.from_pretrained(__import__("copy").deepcopy(model), str(folder)).eval()
    rows = RunStore(cfg.run_dir).read_parquet("01_dataset.parquet")
    rows = rows[rows["split"] == "explain"].set_index("example_id")
    stored, base = _stored(cfg, "mine"), _stored(cfg, "baseline")
    for ex_id, r in rows.iterrows():
        parts = adapt.base_parts(rows.loc[[ex_id]].reset_index())[0]
        want = _explained_logprob(adapted, tokenizer, parts, list(r.input_ids), stored.loc[ex_id, "explained_ids"])
        assert stored.loc[ex_id, "explained_logprob"] == pytest.approx(want, abs=1e-4)
        assert stored.loc[ex_id, "explained_logprob"] != pytest.approx(base.loc[ex_id, "explained_logprob"], abs=1e-3)
    assert RunStore(cfg.run_dir).manifest()["stages"]["adapt:mine"]["adapter"] == str(folder)


def test_a_new_condition_is_one_registry_entry(tmp_path, one_thread):
    """Registered here, in the test module only: the config accepts it, the run explains it, the report shows it."""
    def shout(s: Setup):
        return s.model, condition_parts(s.cfg, s.rows, s.tokenizer, instruction="ANSWER NOW.")

    entry = register(Condition("shouted", "shouted prompt", "#123456", "03_shouted", "an instruction in capitals",
                               shout))
    try:
        cfg = tiny_config(tmp_path, adapt__conditions=["shouted", "zero_shot"], explain__method="exact",
                          explain__noise_floor=False, data__n_explain=2)
        run(cfg, STAGES)
        assert len(load_condition(cfg.run_dir, "shouted")[0]) == 2
        summary = pd.read_csv(cfg.run_dir / "04_summary.csv")
        assert {"shouted", "zero_shot"} <= set(summary["condition_b"])
        assert "shouted prompt" in (cfg.run_dir / REPORT_FILE).read_text()
    finally:
        conditions.REGISTRY.pop(entry.name)


@pytest.mark.parametrize("adapt, message", [
    ({"conditions": ["fine_tuned"]}, "unknown names ['fine_tuned']"),
    ({"conditions": ["zero_shot"], "prompts": {"zero_shot": "x"}}, "reuse the name"),
    ({"conditions": ["a b"], "prompts": {"a b": "x"}}, "not plain names"),
])
def test_bad_condition_names_say_what_to_do(adapt, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config({"adapt": adapt})


def test_a_remote_model_cannot_have_weight_conditions():
    with pytest.raises(ConfigError, match="mine"):
        load_config({"model": {"spec": "openai-compatible:http://localhost:1/v1", "tokenizer": "x"},
                             "explain": {"masking": "delete"},
                             "adapt": {"conditions": ["zero_shot", "mine"], "adapters": {"mine": "/x"}}})
    cfg = load_config({"model": {"spec": "openai-compatible:http://localhost:1/v1", "tokenizer": "x"},
                               "explain": {"masking": "delete"},
                               "adapt": {"conditions": ["terse"], "prompts": {"terse": "Be brief."}}})
    assert cfg.adapt.conditions == ["terse"]


def test_labels_colours_and_order_come_from_the_registry():
    assert conditions.label("finetuned") == "fine-tuned" and conditions.stem("baseline_rerun") == "02_baseline_rerun"
    assert sorted(["finetuned", "mine", "baseline", "zero_shot"], key=conditions.order_key) == [
        "baseline", "zero_shot", "finetuned", "mine"]
    assert conditions.get("mine").stem == "03_mine" and conditions.color("mine").startswith("#")
