"""Checks of a run or an explanation against what its backend declares, before any request is sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .capabilities import Capabilities

if TYPE_CHECKING:
    from ..config import RunConfig


def check_task(caps: Capabilities, *, unit: str, n_outputs: int, masking: str, spec: str = "the model") -> None:
    """Refuse what ``caps`` cannot explain: token features without the model's tokenizer, a longer target than its
    route scores, a masking it cannot apply."""
    if unit == "token" and not caps.model_tokenizer:
        raise ConfigError(f"{spec} is explained at the {caps.tier} tier without its own tokenizer (model.tokenizer is "
                          "unset), so its tokens are unknown here and cannot be the features.",
                          "Set explain.unit=word (or sentence), or model.tokenizer to the served model's tokenizer.")
    if caps.max_target_tokens is not None and n_outputs > caps.max_target_tokens:
        raise ConfigError(f"{spec} scores at most {caps.max_target_tokens} target token(s) over its {caps.route} route "
                          f"({caps.tier} tier); this target has {n_outputs}.",
                          "Explain a one-token target (a label: generation.max_new_tokens=1 or explain.target=reference),"
                          " or use model.route=completions.")
    if masking == "attention" and "attention" not in caps.maskings:
        raise ConfigError(f"masking='attention' is not possible for {spec}: attention masking needs the model's "
                          "attention mask, which a model behind an API does not expose.",
                          "Use masking 'delete' or 'replace' (explain.masking=delete in a run config).")
    if masking not in caps.maskings and masking not in ("auto", "shap_text"):
        raise ConfigError(f"masking={masking!r} is not possible for {spec} ({caps.backend} backend): it allows "
                          f"{', '.join(caps.maskings)}.", "Set explain.masking=delete.")


def check_config(cfg: RunConfig) -> None:
    """What a config can be refused before its server is probed: a forced weaker tier without the model's tokenizer
    cannot have token features."""
    m = cfg.model
    if m.access in ("top_logprobs", "text") and m.tokenizer is None and cfg.explain.unit == "token":
        raise ConfigError(f"model.access={m.access} without model.tokenizer: the served model's tokens are unknown "
                          "here, so they cannot be the features.",
                          "Set explain.unit=word (or sentence), or model.tokenizer to the served model's tokenizer.")
