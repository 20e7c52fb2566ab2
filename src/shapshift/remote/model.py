"""A model behind an OpenAI-compatible completions server, used like a local one.

``load_remote("openai-compatible:http://HOST:PORT/v1")`` returns a :class:`RemoteModel` and the
tokenizer (loaded here, locally): the features are the local tokenizer's tokens, and every prompt
is sent as token ids when the server accepts them (vLLM), else as text (llama-cpp-python's server),
which the server tokenises again. Before anything is spent, one probe request checks that

- the server returns prompt log-probabilities (``echo`` with ``logprobs``);
- its tokens are the local tokenizer's (else: set ``model.tokenizer`` to the served model's);
- the log-probabilities are aligned with the tokens: llama-cpp-python's server pairs each prompt token
  with the next position's distribution unless the prompt starts with the model's BOS token (its
  issue #1983); where the probe sees that, every prompt that does not start with BOS is sent with
  BOS in front (logged once).

What the server is asked for is counted in :attr:`RemoteModel.usage` (requests, retries, tokens).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..backends.capabilities import Capabilities
from ..constants import REMOTE_MASKINGS, REMOTE_PREFIX
from ..errors import ConfigError, ModelError
from ..generation import trim_generation
from ..models import OFFLINE_DEFAULT, prepare_tokenizer, smollm2_tokenizer
from .client import CompletionsClient, HTTPStatusError
from .scorer import RemoteScorer
from .server_model import ServerModel

log = logging.getLogger(__name__)

#: Servers known to return prompt log-probabilities through /v1/completions.
KNOWN_SERVERS = ("vLLM (`vllm serve MODEL`), llama-cpp-python's server (`python -m llama_cpp.server --model "
                 "FILE.gguf`, whose logits_all is on by default)")
#: The probe's text: counting, which any language model continues with near certainty once it has begun
#: (smollm2-135m: mean log-prob of the last third -0.03 nats when each token is paired with the distribution
#: that predicts it, -14 when paired with the next position's, as llama-cpp-python does without BOS).
PROBE_TEXT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16"
#: Mean log-prob (nats) of the probe's last third above which the log-probs are aligned with the tokens.
ALIGNED_MIN_LOGPROB = -3.0


def parse_spec(spec: str) -> str:
    """The base URL (``http://HOST:PORT/v1``) of an ``openai-compatible:`` model spec."""
    url = spec[len(REMOTE_PREFIX):].strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"model.spec={spec!r} names no server URL.",
                          f"Write it as {REMOTE_PREFIX}http://HOST:PORT/v1 (the base URL of the /v1/completions route).")
    return url


class RemoteModel(ServerModel):
    """A causal LM behind ``base_url``'s ``/completions`` route (no weights here).

    It stands wherever the pipeline takes a model: :meth:`make_scorer` gives the scorer
    (:class:`shapshift.remote.scorer.RemoteScorer`), :meth:`generate_greedy` the continuations.
    """

    #: The echo tier: prompt log-probabilities over /v1/completions, the served model's tokens (the probe checks them).
    capabilities = Capabilities(backend="echo", tier="prompt_logprobs", maskings=REMOTE_MASKINGS, route="completions")

    def __init__(self, base_url: str, tokenizer: Any, *, served_name: str | None = None, api_key: str | None = None,
                 concurrency: int = 8, probe: bool = True, client: CompletionsClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokenizer = tokenizer
        self.client = client or CompletionsClient(self.base_url, api_key=api_key, concurrency=concurrency)
        self.served_name = served_name or self.first_served_name()
        self.accepts_ids = True
        self.prepend_bos: int | None = None
        self.n_retokenised = 0
        self._cache: dict[tuple[int, ...], np.ndarray] = {}
        self._specials = set(getattr(tokenizer, "all_special_ids", []) or [])
        if probe:
            self.probe()

    def usage_dict(self) -> dict[str, Any]:
        """Usage counters plus how prompts were sent (for the run manifest)."""
        return {**self.usage.as_dict(), "prompts_as": "token ids" if self.accepts_ids else "text",
                "bos_prepended": self.prepend_bos is not None, "retokenised_prompts": self.n_retokenised}

    def __repr__(self) -> str:
        return f"RemoteModel({self.spec!r}, served_name={self.served_name!r})"

    def forget(self) -> None:
        self._cache = {}

    # -- the probe ---------------------------------------------------------------------------------
    def probe(self) -> None:
        """One request (two or three at most) before any budget is spent; raises a clear error on any problem."""
        ids = self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        try:
            answer = self.client.post("/completions", self._payload(ids), max_retries=0)
        except HTTPStatusError as exc:  # llama-cpp-python answers 500 to a list of ids, vLLM 400 to what it lacks
            log.info("%s refused a prompt of token ids (%d); trying text", self.base_url, exc.status)
            self.accepts_ids = False  # a server that takes text prompts only
            answer = self._probe_text(ids)
            log.info("%s takes text prompts only; prompts are sent as text and tokenised by the server", self.base_url)
        if not self._aligned(self._probe_logprobs(answer, ids)):
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if bos is None:
                raise self._misaligned()
            again = self.client.post("/completions", self._payload([bos] + ids), max_retries=1)
            if not self._aligned(self._probe_logprobs(again, ids)):
                raise self._misaligned()
            self.prepend_bos = int(bos)
            log.warning("%s aligns prompt log-probabilities only after the BOS token (%r): prompts that do not start "
                        "with it are sent with it in front", self.base_url, self.tokenizer.bos_token)

    def _probe_logprobs(self, answer: dict, ids: list[int]) -> np.ndarray:
        """The echoed log-probs of the probe's tokens but the first, found by their strings (a server may echo BOS
        or not, and llama-cpp-python drops the last prompt token's entry when it misaligns)."""
        values, tokens, _ = self._echo(answer)
        mine = [self.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
        if tokens is None:
            log.warning("%s echoes no token strings: the tokenizer cannot be checked against the server's", self.base_url)
            start = 0
        else:
            start = next((o for o in range(3) if tokens[o:o + len(ids)] == mine), None)
            if start is None:
                raise ModelError(
                    f"The server's tokens differ from the local tokenizer's: the probe {PROBE_TEXT[:30]!r}... is "
                    f"{tokens[:8]} there and {mine[:8]} here, so the features would not be the tokens you see.",
                    "Set model.tokenizer to the served model's tokenizer (its hub id or a local folder), or serve the "
                    "model that matches it.")
        found = values[start + 1:start + len(ids)]
        if len(found) < len(ids) - 1 or any(v is None for v in found):
            raise self._no_logprobs(f"{sum(v is not None for v in found)} prompt log-probabilities for a "
                                    f"{len(ids)}-token prompt")
        return np.asarray(found, dtype=np.float64)

    def _probe_text(self, ids: list[int]) -> dict:
        try:
            return self.client.post("/completions", self._payload(ids), max_retries=1)
        except HTTPStatusError as exc:
            raise self._no_logprobs(exc.body) from None

    def _aligned(self, logp: np.ndarray) -> bool:
        third = (len(logp) + 1) * 2 // 3
        mean = float(np.mean(logp[third:]))
        log.info("probe: mean log-prob of the count's last third %.2f nats", mean)
        return mean > ALIGNED_MIN_LOGPROB

    def _no_logprobs(self, detail: str) -> ModelError:
        return ModelError(
            f"The server at {self.base_url} returned no prompt log-probabilities for a completion with echo and "
            f"logprobs ({detail[:300].strip() or 'an empty answer'}); a black-box SHAP value needs the log-probability "
            "of each target token given the masked prompt.",
            f"Use a server that returns them: {KNOWN_SERVERS}. llama.cpp's own llama-server and chat-only APIs do not.")

    def _misaligned(self) -> ModelError:
        return ModelError(
            f"The prompt log-probabilities of {self.base_url} do not match the prompt's tokens (the probe's "
            "predictable count scores low), so they cannot be used as scores.",
            f"Use a server known to return them aligned: {KNOWN_SERVERS}.")

    # -- requests ------------------------------------------------------------------------------------
    def _wire(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if self.prepend_bos is not None and (not ids or ids[0] != self.prepend_bos):
            ids = [self.prepend_bos] + ids
        return ids

    def _payload(self, ids: Sequence[int], *, max_tokens: int = 1, logprobs: bool = True) -> dict:
        prompt: Any = list(ids) if self.accepts_ids else self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)
        payload: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        if logprobs:
            payload.update(echo=True, logprobs=1)
        if self.served_name:
            payload["model"] = self.served_name
        return payload

    def _echo(self, answer: dict) -> tuple[list, list[str] | None, int]:
        """The echoed ``token_logprobs``, ``tokens`` (or None) and the number of generated tokens of an answer."""
        try:
            choice = answer["choices"][0]
            lp = choice.get("logprobs") or {}
            values = lp.get("token_logprobs")
            n_generated = int((answer.get("usage") or {}).get("completion_tokens") or 0)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self._no_logprobs(str(answer)[:300]) from None
        if not values:
            raise self._no_logprobs(f"no token_logprobs in {str(choice)[:200]}")
        tokens = lp.get("tokens")
        return list(values), list(tokens) if isinstance(tokens, list) else None, n_generated

    def _parse(self, answer: dict, ids: Sequence[int]) -> tuple[np.ndarray, list[str] | None]:
        """The prompt's log-probs ``(n_prompt - 1,)`` (first token has none) and the server's token strings."""
        values, tokens, n_generated = self._echo(answer)
        n_prompt = len(values) - n_generated
        tokens = tokens[:n_prompt] if tokens is not None else None
        if n_prompt < 2 or any(v is None for v in values[1:n_prompt]):
            raise self._no_logprobs(f"{n_prompt} prompt log-probabilities for a {len(ids)}-token prompt")
        # llama-cpp-python leaves BOS tokens out of its echo (a chat prompt's <|im_start|> included)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if not self.accepts_ids and n_prompt != sum(1 for i in ids if i != bos):
            self.n_retokenised += 1
        return np.asarray(values[1:n_prompt], dtype=np.float64), tokens

    def prompt_logprobs(self, rows: Sequence[Sequence[int]], n_last: int) -> tuple[np.ndarray, int]:
        """Log-probs ``(n_rows, n_last)`` (nats) of each row's last ``n_last`` tokens given the tokens before them.

        Identical rows are asked for once, and rows seen before (this model, any scorer) not at all.
        Returns the log-probs and the prompt tokens sent.
        """
        keys = [tuple(self._wire(r)) for r in rows]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        with self.client._lock:
            self.usage.cache_hits += len(keys) - len(todo)
        answers = self.client.post_many("/completions", [self._payload(k) for k in todo])
        for k, a in zip(todo, answers):
            logp, tokens = self._parse(a, k)
            if tokens is not None and not self.accepts_ids:
                self._check_tail(k, tokens, n_last)
            self._cache[k] = logp
        out = np.stack([self._cache[k][-n_last:] for k in keys]) if keys else np.empty((0, n_last))
        return out, sum(len(k) for k in todo)

    def _check_tail(self, ids: tuple[int, ...], tokens: list[str], n_last: int) -> None:
        """With text prompts the server tokenises again: the explained tokens must still end the prompt."""
        tail = ids[-n_last:]
        mine = [self.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in tail]
        theirs = tokens[-n_last:]
        if len(theirs) == n_last and all(t in self._specials or a == b for t, a, b in zip(tail, mine, theirs)):
            return
        raise ModelError(
            f"The server tokenised a text prompt so that it no longer ends with the explained tokens ({mine} here, "
            f"{theirs} there); this server takes no token ids, so the prompt went as text.",
            "Explain a target that starts a new word (e.g. with a leading space), or use a server that accepts token "
            "ids as the prompt (vLLM).")

    # -- what the pipeline calls ---------------------------------------------------------------------
    def make_scorer(self, prompt: Any, target_ids: Sequence[int], **options: Any):
        """The scorer of one example (:class:`shapshift.remote.scorer.RemoteScorer`); same options as the local one."""
        return RemoteScorer(self, prompt, target_ids, **options)

    def generate_greedy(self, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 8,
                        stop_at_newline: bool = True, progress: bool = True, **_: Any) -> list[list[int]]:
        """Greedy continuations (token ids, trimmed as :func:`shapshift.generation.trim_generation`) of each prompt.

        The server returns text; it is tokenised here. A continuation the server ended (EOS) before
        ``max_new_tokens`` gets the EOS token, so an immediately ending one is explained as EOS, as locally.
        """
        payloads = [self._payload(self._wire(p), max_tokens=max_new_tokens, logprobs=False) for p in prompt_ids]
        out = []
        answers = self.client.post_many("/completions", payloads)
        for a in tqdm(answers, desc="generate", disable=not progress, leave=False):
            choice = a["choices"][0]
            ids = self.tokenizer(choice.get("text") or "", add_special_tokens=False)["input_ids"][:max_new_tokens]
            if choice.get("finish_reason") == "stop" and len(ids) < max_new_tokens and self.tokenizer.eos_token_id is not None:
                ids = ids + [self.tokenizer.eos_token_id]
            out.append(trim_generation(ids, self.tokenizer, stop_at_newline=stop_at_newline))
        return out


def load_remote(spec: str, *, tokenizer: str | None = None, served_name: str | None = None,
                api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, probe: bool = True) -> tuple[RemoteModel, Any]:
    """A :class:`RemoteModel` for ``openai-compatible:URL`` and its local tokenizer.

    ``tokenizer``: a hub id or folder (``None`` or ``smollm2-135m``: the bundled SmolLM2 tokenizer);
    ``served_name``: the ``model`` field of each request (``None``: the first of the server's ``/models``);
    ``api_key_env``: the environment variable holding the API key (the key is read here and never stored).
    """
    base_url = parse_spec(spec)
    if tokenizer in (None, "", OFFLINE_DEFAULT):
        tok = smollm2_tokenizer()
    else:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(tokenizer)
        except (OSError, ValueError) as exc:
            raise ModelError(f"Could not load the tokenizer {tokenizer!r} ({type(exc).__name__}).",
                             "Set model.tokenizer to the served model's hub id or a local folder with its tokenizer.") from None
    prepare_tokenizer(tok)
    model = RemoteModel(base_url, tok, served_name=served_name, api_key=os.environ.get(api_key_env) or None,
                        concurrency=concurrency, probe=probe)
    log.info("remote model %s (served name %s, prompts as %s)", base_url, model.served_name,
             "token ids" if model.accepts_ids else "text")
    return model, tok
