"""The weaker API tiers (top-k log-probabilities, text only) against a real llama-cpp-python server, and money and
faults: a true cost bound, a hard cap with a re-run that sends only what is missing, answers on disk, and a
fault-injecting proxy (tests/fault_proxy.py, a process of the test's own) in front of the real server.

Nothing is mocked. One server for the module; small examples (a few words, one-token targets).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from shapshift import load_model
from shapshift.config import RunConfig
from shapshift.errors import ConfigError
from shapshift.explainers import explain_tasks, make_task
from shapshift.explainers.costs import estimate_cost
from shapshift.pipeline import run
from shapshift.prompting import build_prompt, encode_prompt
from shapshift.remote.answers import AnswerCache, BudgetExhausted
from shapshift.remote.local_server import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "Review: {input}\nSentiment:"
TEXTS = ["a gorgeous, witty film", "the plot is thin and dull"]


@pytest.fixture(scope="module")
def server(llama_server_spec):
    """The session's server (conftest.py): started once for every test module that explains through it."""
    return llama_server_spec


class Proxy:
    """tests/fault_proxy.py on a free port in front of ``upstream``; ``stats()`` reads its counts."""

    def __init__(self, upstream_spec: str, *faults: str) -> None:
        self.port = free_port()
        upstream = upstream_spec.split(":", 1)[1].removesuffix("/v1")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fault_proxy.py"), upstream,
                                      str(self.port), *faults])
        self.spec = f"openai-compatible:http://127.0.0.1:{self.port}/v1"
        for _ in range(100):
            try:
                self.stats()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the fault proxy did not start")

    def stats(self) -> dict[str, int]:
        return httpx.get(f"http://127.0.0.1:{self.port}/_stats", timeout=5).json()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def word_tasks(model, tok, targets, texts=TEXTS, chat=False, **options):
    out = []
    for text, target in zip(texts, targets):
        parts = build_prompt(text, TEMPLATE, tok, chat=chat)
        prompt = encode_prompt(parts, tok)
        out.append(make_task(model, tok, parts, tok(target, add_special_tokens=False)["input_ids"],
                             input_ids=prompt.input_ids, masking="delete", seed=0, unit="word", **options))
    return out


def test_top_k_over_chat_explains_the_replys_first_token_and_counts_censored_scores(server):
    model, tok = load_model(server, access="top_logprobs", route="chat", top_k=5)
    caps = model.capabilities
    assert (caps.tier, caps.route, caps.max_target_tokens, caps.model_tokenizer) == ("top_logprobs", "chat", 1, False)
    # "A" is SmolLM2's likeliest first reply token here; "zebra" is never in the top 5: every score censored
    exps, stats = explain_tasks(word_tasks(model, tok, ["A", " zebra"], chat=True), "exact", progress=False)
    seen, never = stats[0]["diagnostics"], stats[1]["diagnostics"]
    assert seen["censored_scores"] < seen["scores"] and never["censored_scores"] == never["scores"] > 0
    for e in exps:  # efficiency holds for the scores read (bounds included)
        assert np.isfinite(e.values).all()
    with pytest.raises(ConfigError, match="one-token target"):  # a chat reply cannot be continued
        explain_tasks(word_tasks(model, tok, [" positive review"], chat=True)[:1], "exact", progress=False)
    with pytest.raises(ConfigError, match="explain.unit=word"):  # no model tokenizer: no token features
        task = word_tasks(model, tok, ["A"], chat=True)[0]
        task.groups = None
        explain_tasks([task], "exact", progress=False)
    model.close()


def test_text_tier_scores_replies_and_measures_the_apis_nondeterminism(server):
    model, tok = load_model(server, access="text", route="chat", scalarizer="token_f1", repeats=2)
    assert model.capabilities.tier == "text" and not model.capabilities.deterministic
    exps, stats = explain_tasks(word_tasks(model, tok, ["Positive", "Negative"], chat=True), "exact", progress=False)
    for e, st in zip(exps, stats):
        d = st["diagnostics"]
        assert d["repeat_requests"] == 6 and d["api_noise_sd"] == 0.0  # llama.cpp at temperature 0 repeats itself
        assert ((e.base_values >= 0) & (e.base_values + e.values.sum(0) <= 1)).all()  # scores in [0, 1]
    model.close()


def test_requests_never_exceed_the_announced_bound_under_precision_rounds(server):
    proxy = Proxy(server)
    try:
        model, tok = load_model(proxy.spec, access="top_logprobs", route="completions")
        texts = ["an utterly charming and hilarious film that never drags"]
        tasks = word_tasks(model, tok, [" positive review"], texts=texts, max_evals=40, precision=0.999)
        bound = estimate_cost(tasks, "kernel")["requests"]
        before = proxy.stats()["posts"]
        _, stats = explain_tasks(tasks, "kernel", progress=False)
        sent = proxy.stats()["posts"] - before
        print(f"sent {sent} requests, announced at most {bound}")
        assert stats[0]["n_evals"] > 4 * 9 + 2  # several rounds ran
        assert 0 < sent <= bound
        model.close()
    finally:
        proxy.close()


def test_faults_are_survived_with_the_same_values(server):
    clean, tok = load_model(server, access="top_logprobs", route="completions")
    want, _ = explain_tasks(word_tasks(clean, tok, [" positive", " negative"]), "exact", progress=False)
    clean.close()
    proxy = Proxy(server, "429", "503", "drop", "slow")
    try:
        model, tok = load_model(proxy.spec, access="top_logprobs", route="completions", timeout_s=3.0, concurrency=2)
        got, _ = explain_tasks(word_tasks(model, tok, [" positive", " negative"]), "exact", progress=False)
        assert proxy.stats()["faults"] == 4 and model.usage.retries >= 4
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.values, w.values, atol=1e-6)
        model.close()
    finally:
        proxy.close()


def run_config(tmp_path: Path, spec: str, *sets: str) -> RunConfig:
    text = (REPO / "configs" / "demo.yaml").read_text().replace("conditions: [zero_shot, few_shot, finetuned]",
                                                                "conditions: [zero_shot, few_shot]")
    path = tmp_path / "api.yaml"
    path.write_text(text)
    small = ["data.n_explain=2", "data.max_input_tokens=6", "data.format_check_rows=2", "data.format_check_shots=1",
             "explain.noise_floor=false",
             "adapt.k_shot=1", "explain.max_evals=24", "compare.n_bootstrap=50", "compare.ks=[1,3]"]
    return RunConfig.from_yaml(path, [f"model.spec={spec}", f"output_dir={tmp_path / 'out'}", *small, *sets])


def test_a_capped_run_stops_and_a_rerun_sends_only_what_was_missing(server, tmp_path):
    proxy = Proxy(server)
    try:
        sets = ("model.access=top_logprobs", "model.route=completions")
        with pytest.raises(BudgetExhausted):
            run(run_config(tmp_path, proxy.spec, *sets, "model.max_requests=120"))
        cache_file = tmp_path / "out" / "demo" / ".api_cache" / "answers.sqlite"
        kept = len(AnswerCache(cache_file))
        assert (tmp_path / "out" / "demo" / "02_baseline.parquet").is_file()  # stopped in a later stage; kept
        first = proxy.stats()["forwarded"]
        assert 0 < first <= 120 and kept == first  # every answer received is on disk
        store = run(run_config(tmp_path, proxy.spec, *sets))  # the cap is no setting of the results: it resumes
        second = proxy.stats()["forwarded"] - first
        print(f"capped run sent {first}, the re-run {second} (answers on disk: {kept}, then {len(AnswerCache(cache_file))})")
        assert second == len(AnswerCache(cache_file)) - kept  # nothing was sent twice
        manifest = json.loads((store.dir / "manifest.json").read_text())
        assert manifest["remote_usage"]["tier"] == "top_logprobs"
        for name in ("02_baseline.parquet", "03_zero_shot.parquet", "03_few_shot.parquet", "report.html"):
            assert (store.dir / name).is_file(), name
        diagnostics = [st["diagnostics"] for st in manifest["explain_stats"]["02_baseline"]]
        assert all("censored_scores" in d for d in diagnostics)
        assert "target-token scores" in (store.dir / "report.html").read_text()  # the report says what was censored
    finally:
        proxy.close()


def test_a_whole_run_over_the_text_tier_with_chat_messages_and_a_served_fine_tuned_model(server, tmp_path):
    """Zero- and few-shot as chat messages; a fine-tuned model behind the same API as a condition: another model id
    (llama-cpp-python answers an unknown id with its one model, so the proxy checks the id was sent)."""
    proxy = Proxy(server)
    try:
        sets = ("model.access=text", "model.route=chat", 'data.chat="yes"', "model.scalarizer=starts_with",
                "adapt.conditions=[zero_shot,few_shot,ft]", 'adapt.adapters={ft: "served:smollm2-ft"}')
        store = run(run_config(tmp_path, proxy.spec, *sets))
        assert proxy.stats()["models"].get("smollm2-ft", 0) > 0
    finally:
        proxy.close()
    assert (store.dir / "03_ft.parquet").is_file()
    manifest = json.loads((store.dir / "manifest.json").read_text())
    assert manifest["remote_usage"]["tier"] == "text" and manifest["remote_usage"]["prompts_as"] == "messages"
    for name in ("02_baseline.parquet", "03_zero_shot.parquet", "03_few_shot.parquet", "04_summary.csv", "report.html"):
        assert (store.dir / name).is_file(), name
    assert "scalarizer" in (store.dir / "report.html").read_text()
