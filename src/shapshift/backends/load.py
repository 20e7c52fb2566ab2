"""Choosing a model's backend from its spec, and for a server the strongest tier it offers.

``load_model(spec)`` (what :func:`shapshift.load_model` calls): a hub id, a folder or a bundled name is a
model in this process (:func:`shapshift.models.load_model`); ``openai-compatible:URL`` is a server, probed
tier by tier, strongest first (:data:`~shapshift.backends.capabilities.TIERS`): the echo of prompt
log-probabilities (:class:`shapshift.remote.RemoteModel`), top-k log-probabilities of generated tokens
(:class:`~shapshift.backends.topk.TopKModel`), text (:class:`~shapshift.backends.text.TextModel`); each over
``/v1/completions`` first, then ``/v1/chat/completions`` (``route`` forces one). ``access`` forces a tier, so a
user can see what a weaker API would give. Probing costs one or two requests per tier tried.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..constants import is_remote
from ..errors import ConfigError, ModelError
from ..models import OFFLINE_DEFAULT, prepare_tokenizer, smollm2_tokenizer
from ..models import load_model as load_local
from ..remote.answers import AnswerCache, RequestCap
from ..remote.client import TIMEOUT_S, CompletionsClient
from ..remote.model import RemoteModel, parse_spec
from .capabilities import ACCESS, ROUTES, TIERS
from .text import TextModel
from .topk import TopKModel

log = logging.getLogger(__name__)

#: The answer cache's file inside a run folder.
CACHE_FILE = ".api_cache/answers.sqlite"

_M = ModelConfig()


def api_tokenizer(name: str | None) -> tuple[Any, bool]:
    """The local tokenizer for a server's prompts and whether it was named (then taken as the served model's own).

    ``None``: SmolLM2's, which then only segments text into words and sentences (a hosted model's is rarely public).
    """
    if name in (None, "", OFFLINE_DEFAULT):
        return prepare_tokenizer(smollm2_tokenizer()), name == OFFLINE_DEFAULT
    from transformers import AutoTokenizer

    try:
        return prepare_tokenizer(AutoTokenizer.from_pretrained(name)), True
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not load the tokenizer {name!r} ({type(exc).__name__}).",
                         "Set model.tokenizer to the served model's hub id or a local folder with its tokenizer.") from None


def load_model(spec: str = OFFLINE_DEFAULT, *, access: str = _M.access, route: str = _M.route, top_k: int = _M.top_k,
               scalarizer: str = _M.scalarizer, repeats: int = _M.repeats, max_requests: int | None = _M.max_requests,
               max_tokens: int | None = _M.max_tokens, cache_dir: str | Path | None = None,
               tokenizer: str | None = _M.tokenizer, served_name: str | None = _M.served_name,
               api_key_env: str = _M.api_key_env, concurrency: int = _M.concurrency, seed: int = 0,
               timeout_s: float = TIMEOUT_S, **local: Any) -> tuple[Any, Any]:
    """A model and tokenizer for ``spec``, its backend chosen from the spec (see the module docstring).

    A server's options: ``access`` (``auto`` or a tier), ``route`` (``auto``, ``completions``, ``chat``), ``top_k``
    (the top-k tier's list length), ``scalarizer`` and ``repeats`` (the text tier), ``max_requests`` /
    ``max_tokens`` (a hard cap: :class:`~shapshift.remote.answers.BudgetExhausted` before passing it),
    ``cache_dir`` (answers kept on disk there; a run keeps them in its folder), ``tokenizer``, ``served_name``,
    ``api_key_env`` (the variable holding the key; the key is never stored), ``concurrency``, ``seed``,
    ``timeout_s`` (seconds one request may take before it is retried).
    ``local``: :func:`shapshift.models.load_model`'s options (``device``, ``dtype``, ``trust_remote_code``).
    """
    if access not in ACCESS or route not in ROUTES:
        raise ConfigError(f"access={access!r}, route={route!r}: access is one of {ACCESS}, route one of {ROUTES}.")
    if not is_remote(spec):
        if access not in ("auto", "prompt_logprobs"):
            raise ConfigError(f"access={access!r} applies to a model behind an API; {spec} runs here and scores "
                              "prompt log-probabilities.", "Serve it (python -m llama_cpp.server) to try a weaker tier.")
        return load_local(spec, **local)
    base_url = parse_spec(spec)
    tok, named = api_tokenizer(tokenizer)
    cache = AnswerCache(Path(cache_dir) / "answers.sqlite") if cache_dir is not None else None
    cap = RequestCap(max_requests, max_tokens) if (max_requests or max_tokens) else None
    client = CompletionsClient(base_url, api_key=os.environ.get(api_key_env) or None, concurrency=concurrency,
                               cache=cache, cap=cap, timeout_s=timeout_s)
    common = {"served_name": served_name, "seed": seed}
    routes = ("completions", "chat") if route == "auto" else (route,)
    failed: list[str] = []
    errors: list[ModelError] = []
    for tier in TIERS if access == "auto" else (access,):
        for r in routes:
            try:
                if tier == "prompt_logprobs":
                    if r == "chat":
                        continue  # no chat API echoes its prompt's log-probabilities
                    model: Any = RemoteModel(base_url, tok, served_name=served_name, client=client)
                elif tier == "top_logprobs":
                    model = TopKModel(base_url, tok, client, route=r, top_k=top_k, model_tokenizer=named, **common)
                else:
                    model = TextModel(base_url, tok, client, route=r, scalarizer=scalarizer, repeats=repeats,
                                      model_tokenizer=named, **common)
            except ModelError as exc:
                errors.append(exc)
                failed.append(f"{tier} over {r}: {exc.args[0] if exc.args else exc}")
                log.info("%s: no %s over %s (%s)", base_url, tier, r, failed[-1][:200])
                continue
            log.info("%s: %s tier over %s (requests so far: %d)", base_url, tier, "/v1/completions" if r ==
                     "completions" else "/v1/chat/completions", client.usage.requests)
            return model, tok
    client.close()
    if len(errors) == 1:  # one tier tried (a forced one): its own message and hint
        raise errors[0]
    raise ModelError(f"{base_url} offers none of the tiers tried:\n  " + "\n  ".join(failed),
                     "Check the URL, the key's variable (model.api_key_env) and model.served_name; model.access=text "
                     "needs only a chat route.")


def load_config_model(m: ModelConfig, run_dir: str | Path | None = None, **local: Any) -> tuple[Any, Any]:
    """The model of a config's ``model`` section; a server's answers are cached in ``run_dir``'s ``.api_cache``."""
    cache = Path(run_dir) / Path(CACHE_FILE).parent if run_dir is not None and is_remote(m.spec) else None
    return load_model(m.spec, access=m.access, route=m.route, top_k=m.top_k, scalarizer=m.scalarizer,
                      repeats=m.repeats, max_requests=m.max_requests, max_tokens=m.max_tokens, cache_dir=cache,
                      tokenizer=m.tokenizer, served_name=m.served_name, api_key_env=m.api_key_env,
                      concurrency=m.concurrency, **local)
