import pytest
import torch

from shapshift.errors import ModelError
from shapshift.models import load_model, padding_side


def test_smollm2_answers_paris(smollm2):
    model, tok = smollm2
    assert tok.pad_token is not None and tok.padding_side == "right"
    assert not model.training
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" Paris")


def test_tiny_gpt_neo_generates_in_a_left_padded_batch(tiny_neo):
    model, tok = tiny_neo
    assert type(model).__name__ == "GPTNeoForCausalLM"
    assert model.config.attention_layers == ["global", "local"]
    assert tok.pad_token_id is not None and model.config.pad_token_id == tok.pad_token_id
    with padding_side(tok, "left"):
        batch = tok(["a short one", "a somewhat longer prompt here"], return_tensors="pt", padding=True)
    assert tok.padding_side == "right"
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)
    # left padding must not change a prompt's greedy continuation
    single = model.generate(**tok(["a short one"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert torch.equal(out[0, -3:], single[0, -3:])


def test_unknown_model_names_the_offline_default(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="smollm2-135m"):
        load_model("no-such-org/no-such-model-xyz")


def test_random_gpt_neo_125m_has_the_published_shape():
    # EleutherAI/gpt-neo-125m: 12 layers alternating global/local attention (window 256), width 768,
    # 125M parameters with its 50,257-token vocabulary (here the SmolLM2 tokenizer's 49,152)
    model, tok = load_model("gpt-neo-125m-random", device="cpu")
    assert type(model).__name__ == "GPTNeoForCausalLM"
    assert model.config.attention_layers == ["global", "local"] * 6 and model.config.window_size == 256
    assert model.config.hidden_size == 768 and model.config.vocab_size == len(tok)
    n_params = sum(p.numel() for p in model.parameters())
    assert 120e6 < n_params + (50257 - len(tok)) * 768 < 130e6
    with torch.no_grad():
        logits = model(**tok("a fine film", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_unknown_model_offline_fails_fast_and_says_so(tmp_path):
    """Item 8: offline, an unknown hub name fails within seconds with "offline, not found locally"
    (both with HF_HUB_OFFLINE set and without it, on a machine that cannot reach the hub)."""
    import os
    import subprocess
    import sys

    from shapshift.models import hub_reachable

    if hub_reachable(timeout=2.0) and not os.environ.get("HF_HUB_OFFLINE"):
        pytest.skip("the hub is reachable here: the offline path cannot be exercised")
    # the second call is timed: the first also pays for transformers' lazy imports on a busy machine
    code = ("import shapshift, time\n"
            "for attempt in range(2):\n"
            "    start = time.perf_counter()\n"
            "    try:\n        shapshift.load_model('no-such-org/no-such-model')\n"
            "    except shapshift.ShapshiftError as e:\n        message = e.message\n"
            "print(message)\nprint('SECONDS', time.perf_counter() - start)\n")
    for offline in ("1", None):
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        if offline:
            env["HF_HUB_OFFLINE"] = offline
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                              cwd=tmp_path)
        assert "offline, not found locally" in " ".join(done.stdout.split()), done.stdout + done.stderr[-2000:]
        seconds = float(done.stdout.split("SECONDS")[1])  # load_model alone, imports done
        assert seconds < 5, f"load_model took {seconds:.0f} s (HF_HUB_OFFLINE={offline})"
