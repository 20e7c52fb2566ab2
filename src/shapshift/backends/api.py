"""What the hosted-API backends share: a client, prompts as text or messages, greedy replies, usage.

A hosted model's tokenizer is rarely public: here the local tokenizer (the served model's when
``model.tokenizer`` names it, else SmolLM2's) only segments the input into words and sentences and
renders the prompt; prompts go to the server as text (``/v1/completions``) or as chat messages
(``/v1/chat/completions``), which the server tokenises itself. A prompt rendered in a ChatML chat template
(``<|im_start|>role ... <|im_end|>``, SmolLM2's and Qwen's) becomes those messages; any other prompt becomes one
user message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from ..errors import ModelError
from ..generation import trim_generation
from ..remote.client import CompletionsClient, HTTPStatusError
from ..remote.server_model import ServerModel
from .capabilities import Capabilities

log = logging.getLogger(__name__)

#: One turn of a ChatML rendering: ``<|im_start|>ROLE\nCONTENT<|im_end|>``.
_CHATML_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>\s*", re.S)
#: The generation prompt that ends a ChatML rendering (the reply follows it).
_CHATML_REPLY = "<|im_start|>assistant\n"
#: Seconds a probe request may take before the tier is taken as unavailable.
PROBE_TIMEOUT_S = 120.0
#: The default top-k list length asked for (OpenAI's chat API allows at most 20).
TOP_K = 20


def to_messages(text: str) -> list[dict[str, str]]:
    """Chat messages of a prompt's text: the turns of a ChatML rendering (its trailing generation prompt dropped),
    else the whole text as one user message."""
    if "<|im_start|>" not in text:
        return [{"role": "user", "content": text}]
    body = text.removesuffix(_CHATML_REPLY) if text.endswith(_CHATML_REPLY) else text
    turns = [{"role": r, "content": c} for r, c in _CHATML_TURN.findall(body)]
    rest = _CHATML_TURN.sub("", body).strip()
    if rest:  # an unfinished last turn (a reply already begun) cannot be sent as a message
        raise ModelError(f"The chat prompt ends with text after its last turn ({rest[:60]!r}); a chat API cannot "
                         "continue a reply it did not write.", "Explain the reply's first token (a label), or use "
                         "model.route=completions.")
    return turns


class ApiModel(ServerModel):
    """A model behind an OpenAI-compatible server that returns no prompt log-probabilities (a base class).

    ``route``: ``completions`` or ``chat``; ``tokenizer``: the local tokenizer (``model_tokenizer``: it is the
    served model's own); ``seed``: sent with every request (APIs that take one answer more reproducibly);
    ``client``: a :class:`~shapshift.remote.client.CompletionsClient` (its disk cache and cap included).
    """

    backend = "api"
    tier = "text"

    def __init__(self, base_url: str, tokenizer: Any, client: CompletionsClient, *, route: str = "chat",
                 served_name: str | None = None, model_tokenizer: bool = False, seed: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokenizer = tokenizer
        self.client = client
        self.route = route
        self.model_tokenizer = model_tokenizer
        self.seed = seed
        self.served_name = served_name or self.first_served_name()

    # -- what the pipeline reads ---------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(backend=self.backend, tier=self.tier, model_tokenizer=self.model_tokenizer,
                            route=self.route, **self._declared())

    def _declared(self) -> dict[str, Any]:
        return {}

    def usage_dict(self) -> dict[str, Any]:
        """Usage counters and the tier reached (for the run manifest)."""
        return {**self.usage.as_dict(), "tier": self.tier, "route": self.route, "prompts_as":
                "messages" if self.route == "chat" else "text", "served_name": self.served_name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, served_name={self.served_name!r}, route={self.route!r})"

    # -- requests -------------------------------------------------------------------------------------
    def text_of(self, ids: Sequence[int]) -> str:
        """The prompt's text as the server is sent it (special tokens of a chat template written out)."""
        return self.tokenizer.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)

    def payload(self, ids: Sequence[int], *, max_tokens: int, top_k: int | None = None, tag: str | None = None) -> dict:
        """One request's JSON: greedy (temperature 0, the seed), ``max_tokens`` generated, ``top_k`` log-probs.

        ``tag``: sent as the ``user`` field, so that a repeat of the same prompt is a distinct request (and cache key).
        """
        text = self.text_of(ids)
        body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0.0, "seed": self.seed}
        if self.route == "chat":
            body["messages"] = to_messages(text)
            if top_k:
                body.update(logprobs=True, top_logprobs=top_k)
        else:
            body["prompt"] = text
            if top_k:
                body["logprobs"] = top_k
        if self.served_name:
            body["model"] = self.served_name
        if tag:
            body["user"] = tag
        return body

    @property
    def path(self) -> str:
        return "/chat/completions" if self.route == "chat" else "/completions"

    @staticmethod
    def reply_text(answer: dict) -> tuple[str, str | None]:
        """The reply's text and finish reason of an answer of either route."""
        try:
            choice = answer["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise ModelError(f"The server's answer has no choices: {str(answer)[:300]}") from None
        text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
        return str(text or ""), choice.get("finish_reason")

    def replies(self, prompts: Sequence[Sequence[int]], *, max_tokens: int, tag: str | None = None) -> list[str]:
        """The greedy reply text to each prompt (token ids rendered as text or messages); one request each."""
        answers = self.client.post_many(self.path, [self.payload(p, max_tokens=max_tokens, tag=tag) for p in prompts])
        return [self.reply_text(a)[0] for a in answers]

    def probe_request(self, body: dict) -> dict:
        """One request that decides whether this tier works here (no retries of a refusal)."""
        try:
            return self.client.post(self.path, body, max_retries=1)
        except HTTPStatusError as exc:
            raise ModelError(f"{self.base_url}{self.path} refused the {self.tier} probe ({exc.status}: "
                             f"{exc.body[:200]}).") from None

    def generate_greedy(self, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 8,
                        stop_at_newline: bool = True, progress: bool = True, **_: Any) -> list[list[int]]:
        """Greedy continuations (local token ids, trimmed as :func:`shapshift.generation.trim_generation`).

        A reply the server ended (EOS) before ``max_new_tokens`` gets the EOS token, as locally.
        """
        payloads = [self.payload(p, max_tokens=max_new_tokens) for p in prompt_ids]
        out = []
        for a in tqdm(self.client.post_many(self.path, payloads), desc="generate", disable=not progress, leave=False):
            text, finish = self.reply_text(a)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]
            if finish == "stop" and len(ids) < max_new_tokens and self.tokenizer.eos_token_id is not None:
                ids = ids + [self.tokenizer.eos_token_id]
            out.append(trim_generation(ids, self.tokenizer, stop_at_newline=stop_at_newline))
        return out
