"""LoRA with peft: which layers to adapt in each architecture, and wrapping a model with adapters."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from .config import FinetuneConfig
from .errors import ConfigError

#: LoRA targets per ``config.model_type``: the attention projections of each family.
_TARGETS_BY_TYPE: dict[str, list[str]] = {
    "gpt_neo": ["q_proj", "v_proj"],  # transformer.h.N.attn.attention.{q,v}_proj
    "gpt2": ["c_attn"],  # fused qkv Conv1D
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
}
#: Fallback: leaf names that look like query/key/value projections.
_QKV_NAME = re.compile(r"^(q|k|v|query|key|value|[qkv]_proj|qkv|qkv_proj|query_key_value|c_attn|Wqkv|W_pack)$")


def _adaptable_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Full name → module for every Linear (and GPT-2 style Conv1D) layer."""
    from transformers.pytorch_utils import Conv1D

    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)}


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct leaf names of the Linear/Conv1D layers (``q_proj``, ``c_fc``, ``lm_head`` …), sorted."""
    return sorted({n.rsplit(".", 1)[-1] for n in _adaptable_layers(model)})


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """LoRA target module names for ``model``'s architecture.

    GPT-Neo: ``q_proj``, ``v_proj``; GPT-2: ``c_attn``; Llama-style: ``q_proj``, ``k_proj``,
    ``v_proj``, ``o_proj``; other architectures: the Linear layers named like query/key/value.
    """
    leaves = set(linear_module_names(model))
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = _TARGETS_BY_TYPE.get(model_type or "")
    if known and set(known) <= leaves:
        return list(known)
    found = sorted(n for n in leaves if _QKV_NAME.match(n))
    if not found:
        raise ConfigError(
            f"Could not find attention projection layers for LoRA in this {model_type or type(model).__name__} model.",
            f"Set adapt.finetune.target_modules to some of its Linear layer names: {', '.join(sorted(leaves))}.")
    return found


def check_target_modules(model: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """Return ``names`` when each matches a Linear/Conv1D layer (by full name or last part(s)); else ConfigError."""
    layers = list(_adaptable_layers(model))
    missing = [t for t in names if not any(n == t or n.endswith("." + t) for n in layers)]
    if missing or not names:
        raise ConfigError(
            f"adapt.finetune.target_modules names {missing or list(names)}, which this model does not have.",
            f"Its Linear layer names are: {', '.join(linear_module_names(model))}; or set target_modules to null "
            "for the architecture's default.")
    return list(names)


def wrap_lora(model: PreTrainedModel, cfg: FinetuneConfig) -> tuple[torch.nn.Module, list[str]]:
    """``model`` with LoRA adapters (``peft.get_peft_model``) on ``cfg.target_modules`` or the default ones.

    Returns (the ``PeftModel``, the target module names). GPT-2 style ``Conv1D`` layers get ``fan_in_fan_out``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = check_target_modules(model, cfg.target_modules) if cfg.target_modules else default_target_modules(model)
    layers = _adaptable_layers(model)
    fan_in_fan_out = any(isinstance(m, Conv1D) for n, m in layers.items()
                         if any(n == t or n.endswith("." + t) for t in targets))
    lora = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls deprecated transformers helpers; nothing for the user to do
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora), targets
