"""A model behind a real llama-cpp-python server (the SmolLM2 GGUF the offline default de-quantises).

Nothing is mocked: the server is ``python -m llama_cpp.server`` on a free port (tests/llama_server.py),
and the local model of the same file is the reference.
"""

from __future__ import annotations

import http.server
import threading

import httpx
import numpy as np
import pytest
from scipy.stats import spearmanr

from shapshift import explain, load_model
from shapshift.errors import ConfigError, ModelError
from shapshift.explainers import explain_tasks, make_task
from shapshift.generation import generate
from shapshift.prompting import build_prompt, encode_prompt
from shapshift.remote import RemoteModel
from shapshift.remote.local_server import llama_server, smollm2_float32_gguf
from shapshift.scoring import TeacherForcedScorer, scores_from_logprobs, token_scores
from shapshift.validation import load_config

pytestmark = pytest.mark.slow

SENTENCES = ["a gorgeous, witty film", "the plot is thin", "it never comes together", "an utterly charming delight"]
TEMPLATE = "Review: {input}\nSentiment:"


@pytest.fixture(scope="module")
def server(llama_server_spec):
    """The session's server (conftest.py): started once for every test module that explains through it."""
    return llama_server_spec


@pytest.fixture(scope="module")
def remote(server):
    model, tokenizer = load_model(server)
    yield model, tokenizer
    model.close()


def test_scores_from_logprobs_are_token_scores():
    """The remote scores are the local formula's, from the target's log-prob alone."""
    import torch

    logits = torch.randn(7, 50, dtype=torch.float64) * 4
    logits[0, 3] = 40.0  # p close to 1
    targets = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    logp = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0].numpy()
    for score in ("log_prob", "log_odds"):
        np.testing.assert_allclose(scores_from_logprobs(logp, score), token_scores(logits, targets, score).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_the_probe_sees_a_text_only_server_that_needs_bos(remote):
    model, tokenizer = remote
    assert isinstance(model, RemoteModel) and model.spec.startswith("openai-compatible:http://127.0.0.1:")
    # llama-cpp-python's server takes text prompts only, and aligns prompt log-probs only after BOS
    assert not model.accepts_ids
    assert model.prepend_bos == tokenizer.bos_token_id


#: Two SST-2 dev sentences of 12-13 tokens, each a whole word with its space: llama-cpp-python's server takes text,
#: and deleting such tokens leaves text that tokenises into exactly the kept tokens (so both sides see the same ones).
AGREEMENT = [("the movie fails to live up to the sum of its parts .", " negative"),
             ("minority report is exactly what the title indicates , a report .", " positive")]


#: With the quantised file: 0.989 and 0.993 measured on these two sentences (the float32 copy: 1.000 and 1.000).
QUANTISED_MIN_SPEARMAN = 0.98


def kernel_tasks(model, tokenizer, bos: int | None):
    out = []
    for text, answer in AGREEMENT:
        parts = build_prompt(text, TEMPLATE, tokenizer, chat=False)
        task = make_task(model, tokenizer, parts, tokenizer(answer, add_special_tokens=False)["input_ids"],
                         score="log_odds", masking="delete", max_evals=2 * len(tokenizer(text)["input_ids"]) + 2, seed=0)
        if bos is not None:
            task.prompt.prefix_ids.insert(0, bos)
        out.append(task)
    return out


def agreement(model, local, tokenizer) -> list[float]:
    """Spearman correlations, per example, of KernelSHAP values (same seed, so the same coalitions) under deletion
    masking through the server and from the local model, on the same tokens."""
    remote_exps, _ = explain_tasks(kernel_tasks(model, tokenizer, None), "kernel", progress=False)
    # the server puts BOS in front of these plain prompts (its log-probs are aligned only after it): so does the local model
    local_exps, _ = explain_tasks(kernel_tasks(local, tokenizer, model.prepend_bos), "kernel", progress=False)
    out = []
    for r, lo in zip(remote_exps, local_exps):
        assert r.values.shape == lo.values.shape and r.values.shape[0] >= 12
        out.append(spearmanr(r.values.ravel(), lo.values.ravel()).statistic)
        print(f"spearman={out[-1]:.4f} max|diff|={np.abs(r.values - lo.values).max():.4f} "
              f"base {r.base_values[0]:.4f} vs {lo.base_values[0]:.4f}")
    return out


@pytest.fixture(scope="module")
def float32_remote(tmp_path_factory):
    """The server on the float32 copy of the GGUF: exactly the local model's weights, float32 kernels."""
    with llama_server(model_path=smollm2_float32_gguf(), log_dir=tmp_path_factory.mktemp("f32")) as spec:
        model, tokenizer = load_model(spec)
        yield model, tokenizer
        model.close()


def test_remote_deletion_values_equal_the_local_models_on_the_same_weights(float32_remote, smollm2):
    """On the same weights the remote path adds nothing: the same values up to float32 summation order."""
    model, tokenizer = float32_remote
    rhos = agreement(model, smollm2[0], tokenizer)
    assert min(rhos) >= 0.99
    assert model.n_retokenised == 0


def test_remote_deletion_values_agree_with_the_local_model_despite_quantised_kernels(remote, smollm2):
    """The server on the quantised file itself (the offline default's): llama.cpp's Q4_1 kernels round the
    activations to 8 bits, which moves each score by tenths of a nat, so close values may swap ranks."""
    model, tokenizer = remote
    local, _ = smollm2
    rhos = agreement(model, local, tokenizer)
    assert min(rhos) >= QUANTISED_MIN_SPEARMAN


def test_replace_masking_and_log_prob_agree_with_the_local_model(float32_remote, smollm2):
    """Replacement masking in a chat prompt (its inner <|im_start|> tokens are not echoed by llama-cpp-python)."""
    model, tokenizer = float32_remote
    local, _ = smollm2
    parts = build_prompt(SENTENCES[1], TEMPLATE, tokenizer, chat=True)
    prompt = encode_prompt(parts, tokenizer)
    target = tokenizer(" negative", add_special_tokens=False)["input_ids"]
    masks = np.random.default_rng(0).random((6, len(prompt.input_ids))) < 0.5
    mine = model.make_scorer(prompt, target, score="log_prob", masking="replace")(masks)
    ref = TeacherForcedScorer(local, prompt, target, score="log_prob", masking="replace")(masks)
    np.testing.assert_allclose(mine, ref, atol=0.05)
    assert spearmanr(mine.ravel(), ref.ravel()).statistic >= 0.98


def test_text_prompts_the_server_tokenises_differently_are_counted(remote):
    """Deleting part of a hyphenated word leaves text the server tokenises into other tokens: counted, not hidden."""
    model, tokenizer = remote
    prompt = encode_prompt(build_prompt("good old-fashioned slash-and-hack is back !", TEMPLATE, tokenizer, chat=False),
                           tokenizer)
    target = tokenizer(" positive", add_special_tokens=False)["input_ids"]
    before = model.n_retokenised
    masks = np.ones((3, len(prompt.input_ids)), dtype=bool)
    masks[0, 2] = masks[1, 4] = masks[2, 6] = False  # "-" or "fashioned" or "-" gone: neighbours merge
    model.make_scorer(prompt, target)(masks)
    assert model.n_retokenised > before
    assert model.usage_dict()["retokenised_prompts"] == model.n_retokenised


def test_identical_prompts_are_sent_once(remote):
    model, tokenizer = remote
    prompt = encode_prompt(build_prompt(SENTENCES[2], TEMPLATE, tokenizer, chat=False), tokenizer)
    target = tokenizer(" negative", add_special_tokens=False)["input_ids"]
    scorer = model.make_scorer(prompt, target, score="log_odds")
    masks = np.random.default_rng(1).random((6, len(prompt.input_ids))) < 0.5
    masks = np.concatenate([masks, masks])  # every coalition twice
    before = model.usage.requests
    first = scorer(masks)
    sent = model.usage.requests - before
    assert sent == len({m.tobytes() for m in masks})
    again = scorer(masks)
    assert model.usage.requests - before == sent  # all from the cache
    np.testing.assert_array_equal(first, again)
    assert scorer.n_evals == 2 * len(masks) and scorer.n_forward_tokens > 0


def test_attention_masking_and_partition_are_refused(remote):
    model, tokenizer = remote
    with pytest.raises(ConfigError, match="attention mask"):
        explain(model, tokenizer, [SENTENCES[0]], targets=[" positive"], masking="attention", progress=False)
    with pytest.raises(ConfigError, match="partition"):
        explain(model, tokenizer, [SENTENCES[0]], targets=[" positive"], masking="delete", method="partition",
                progress=False)


def test_a_remote_config_refuses_finetuning_and_attention_masking_before_any_request():
    spec = "openai-compatible:http://127.0.0.1:9/v1"  # nothing listens there: validation alone must refuse
    with pytest.raises(ConfigError, match="fine-tuned"):
        load_config({"model": {"spec": spec}, "explain": {"masking": "delete"}})
    with pytest.raises(ConfigError, match="explain.masking=delete"):  # asked for explicitly
        load_config({"model": {"spec": spec}, "explain": {"masking": "attention"},
                             "adapt": {"conditions": ["zero_shot"]}})
    load_config({"model": {"spec": spec}, "adapt": {"conditions": ["zero_shot"]}})  # auto: deletion
    with pytest.raises(ConfigError, match="needs its weights|need its weights"):
        load_config({"model": {"spec": spec}, "explain": {"masking": "delete", "methods": ["auto", "attention"]},
                             "adapt": {"conditions": ["zero_shot"]}})
    cfg = load_config({"model": {"spec": spec}, "explain": {"masking": "delete"},
                               "adapt": {"conditions": ["zero_shot", "few_shot"]}})
    assert "api_key" not in str(cfg.to_dict()).replace("api_key_env", "")


def test_explain_through_the_server_generates_and_explains(remote, smollm2):
    """explain() with no targets: greedy generation through the server, then kernel SHAP; efficiency holds."""
    model, tokenizer = remote
    local, _ = smollm2
    [exp] = explain(model, tokenizer, [SENTENCES[3]], context=TEMPLATE, max_new_tokens=2, progress=False)  # defaults
    assert exp.values.shape[1] >= 1
    full = exp.base_values + exp.values.sum(0)
    prompt = encode_prompt(build_prompt(SENTENCES[3], TEMPLATE, tokenizer, chat=False), tokenizer)
    # the generation is the local model's greedy continuation too (same weights, quantised kernels), given the
    # same tokens: the server's BOS in front
    [local_gen] = generate(local, tokenizer, [[model.prepend_bos, *prompt.ids]], max_new_tokens=2, progress=False)
    [remote_gen] = generate(model, tokenizer, [prompt.ids], max_new_tokens=2, progress=False)
    assert remote_gen == local_gen
    ref = model.make_scorer(prompt, remote_gen).full()  # the default score, as explain()'s
    np.testing.assert_allclose(full, ref, atol=1e-6)


class FlakyProxy:
    """A real HTTP server in front of the llama server that answers 503 to every other request (then forwards)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _forward(self, method: str) -> None:
                outer.seen += 1
                if outer.seen % 2 == 1 and self.path.endswith("/completions"):
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                r = httpx.request(method, outer.upstream + self.path, content=body,
                                  headers={"Content-Type": "application/json"}, timeout=300)
                self.send_response(r.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_failed_requests_are_retried_and_counted(remote, server):
    model, tokenizer = remote
    upstream = server.split(":", 1)[1].rsplit("/v1", 1)[0]
    proxy = FlakyProxy(upstream)
    try:
        flaky = RemoteModel(f"http://127.0.0.1:{proxy.port}/v1", tokenizer)
        flaky.client.backoff_s = 0.01
        prompt = encode_prompt(build_prompt(SENTENCES[0], TEMPLATE, tokenizer, chat=False), tokenizer)
        target = tokenizer(" positive", add_special_tokens=False)["input_ids"]
        masks = np.random.default_rng(2).random((4, len(prompt.input_ids))) < 0.5
        got = flaky.make_scorer(prompt, target)(masks)
        ref = model.make_scorer(prompt, target)(masks)
        np.testing.assert_allclose(got, ref, atol=1e-6)
        assert flaky.usage.retries >= 4 and flaky.usage.requests >= 8
        flaky.close()
    finally:
        proxy.httpd.shutdown()


def test_a_server_without_prompt_logprobs_gets_the_clear_error(tmp_path):
    with llama_server("--logits_all", "false", log_dir=tmp_path) as spec:
        with pytest.raises(ModelError) as info:
            load_model(spec, access="prompt_logprobs")
        # access auto: the strongest tier this server offers (issue 26): without logits_all it returns no
        # log-probabilities at all, so text
        model, _ = load_model(spec)
        assert model.capabilities.tier == "text"
        model.close()
    message = str(info.value)
    print(message)
    assert "no prompt log-probabilities" in message and "vLLM" in message and "llama-cpp-python" in message


def test_a_tokenizer_that_is_not_the_servers_is_refused(server):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from shapshift.remote.model import PROBE_TEXT

    words = sorted(set(PROBE_TEXT.split()))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *words])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>")
    with pytest.raises(ModelError, match="model.tokenizer"):
        RemoteModel(server.split(":", 1)[1], other)
