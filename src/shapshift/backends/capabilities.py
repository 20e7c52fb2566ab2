"""What a model backend can do, declared once: the pipeline and validation read it instead of asking "is it remote?".

A leaf module (it imports nothing of shapshift's), so that every other module may read a model's
capabilities without an import cycle. :func:`capabilities` returns a model's declaration, or
:data:`LOCAL` for a model in this process (a ``transformers`` model declares nothing).

The tiers, strongest first (``model.access`` forces one; ``auto`` takes the strongest a server offers):

- ``prompt_logprobs``: the log-probability of every target token given the masked prompt, read from the
  prompt's own log-probabilities (a local model; vLLM's and llama-cpp-python's echo). Exact scores.
- ``top_logprobs``: the next-token distribution's top ``k`` after the prompt (and the target's earlier
  tokens): hosted chat APIs. A target token outside the top ``k`` is censored: bounded by the ``k``-th.
- ``text``: only the reply's text; a scalarizer scores it against the reference (any chat API).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: What a backend can score, strongest first.
TIERS = ("prompt_logprobs", "top_logprobs", "text")
#: ``model.access``'s choices: ``auto`` (the strongest tier the probe finds) or one tier forced.
ACCESS = ("auto", *TIERS)
#: ``model.route``'s choices for a server: ``auto`` (completions where the tier works there, else chat),
#: ``completions`` (``/v1/completions``, prompts as text) or ``chat`` (``/v1/chat/completions``, prompts as messages).
ROUTES = ("auto", "completions", "chat")
#: ``model.scalarizer``'s choices (the text tier's score of a reply: :mod:`shapshift.backends.scalarizers`).
SCALARIZERS = ("auto", "starts_with", "token_f1", "rouge_l", "embedding")


@dataclass(frozen=True)
class Capabilities:
    """One backend's declaration.

    ``backend``: its name (the module under :mod:`shapshift.backends` or ``remote``); ``tier``: what it scores
    (:data:`TIERS`); ``weights``: gradients, attention maps and fine-tuning are possible here;
    ``maskings``: what an absent feature may be (``attention`` needs the attention mask);
    ``model_tokenizer``: the local tokenizer is the model's own (else it only segments text into words and
    sentences, and token features are refused); ``context_length``: tokens, ``None`` if unknown;
    ``requests_per_eval``: requests one coalition costs per target token (0: none, a local model);
    ``per_target_token``: whether that count grows with the target's tokens (top-k over completions);
    ``max_target_tokens``: the longest target it can score (``None``: any); ``top_k``: the top-k list's length;
    ``deterministic``: the same prompt always gets the same score; ``route``: the server route it uses.
    """

    backend: str
    tier: str
    weights: bool = False
    maskings: tuple[str, ...] = ("delete", "replace")
    model_tokenizer: bool = True
    context_length: int | None = None
    requests_per_eval: int = 1
    per_target_token: bool = False
    max_target_tokens: int | None = None
    top_k: int | None = None
    deterministic: bool = True
    route: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        """Whether requests leave this process (and cost what an API bills)."""
        return self.requests_per_eval > 0

    def requests(self, n_evals: int, n_out: int) -> int:
        """Requests that scoring ``n_evals`` coalitions of a target of ``n_out`` tokens sends at most."""
        per = self.requests_per_eval * (n_out if self.per_target_token else 1)
        return n_evals * per

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: A model in this process: teacher-forced prompt log-probabilities, every masking, its own tokenizer, no requests.
LOCAL = Capabilities(backend="local", tier="prompt_logprobs", weights=True,
                     maskings=("attention", "delete", "replace"), requests_per_eval=0)


def capabilities(model: Any) -> Capabilities:
    """What ``model`` declares (its ``capabilities`` attribute), else :data:`LOCAL` (a model in this process)."""
    caps = getattr(model, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else LOCAL

