"""LoRA (peft) and full fine-tuning of a causal LM on the train split, with the loss on target tokens only.

:func:`finetune` never touches the caller's model: it trains a deep copy. LoRA adapters are merged
into that copy, so the returned model is a plain ``PreTrainedModel`` that scores like any other;
the adapter weights (a few MB) stay in the result and are saved to ``out_dir/adapter`` (full
fine-tuning: the weights to ``out_dir/model``), next to ``training_log.json``.
:func:`load_finetuned` rebuilds the same model from those files.

A training example is ``prompt ids + target ids`` (the prompt encoded as the explainer encodes it,
part by part with :func:`shapshift.prompting.encode_prompt`); its labels are ``-100`` on the prompt
and the target ids on the target, so only the answer is learned.
:func:`evaluate_task` scores held-out rows teacher-forced: accuracy over the label texts and the
mean target log-probability.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import FinetuneConfig
from .errors import ArtifactError, ConfigError, DataError, ShapshiftError
from .models import model_device
from .prompting import PromptParts, encode_prompt
from .scoring import is_oom
from .store import honour_umask, write_json

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
TRAINING_LOG = "training_log.json"

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


# -- target modules ---------------------------------------------------------------------------------
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


# -- training examples -------------------------------------------------------------------------------
def _is_chat_prefix(prefix: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the prefix starts with a special token, as chat templates (and BOS-led prompts) do."""
    return any(tok and prefix.startswith(tok) for tok in tokenizer.all_special_tokens)


def _prompt_ids(row: Any, tokenizer: PreTrainedTokenizerBase, chat: bool | None) -> tuple[list[int], list[int], list[int]]:
    """(prefix, input, suffix) ids of a stage-1 row, encoded as the explainer encodes them."""
    parts = PromptParts(str(row.prompt_prefix), str(row.input_text), str(row.prompt_suffix))
    stored = getattr(row, "input_ids", None)
    input_ids = None if stored is None or (isinstance(stored, float) and np.isnan(stored)) else [int(i) for i in stored]
    use_chat = _is_chat_prefix(parts.prefix, tokenizer) if chat is None else chat
    enc = encode_prompt(parts, tokenizer, chat=use_chat, input_ids=input_ids)
    return enc.prefix_ids, enc.input_ids, enc.suffix_ids


def _target_ids(text: Any, tokenizer: PreTrainedTokenizerBase, row_id: Any) -> list[int]:
    if text is None or (isinstance(text, float) and np.isnan(text)) or str(text) == "":
        raise DataError(f"Row {row_id} has no target text to fine-tune on or evaluate.",
                        "Set data.target_column to the column with the reference outputs (e.g. label), or drop "
                        "'finetuned' from adapt.conditions.")
    return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def _fit(prefix: list[int], text: list[int], suffix: list[int], n_target: int, max_length: int | None) -> list[int]:
    """The prompt ids, cut to leave room for ``n_target`` tokens in ``max_length``.

    The input text loses tokens from its start first (as preprocessing truncates), so the template
    stays whole; only when the template alone is too long is the prompt cut from the left.
    """
    if max_length is None:
        return prefix + text + suffix
    room = max_length - n_target
    if room < 1:
        raise ConfigError(f"adapt.finetune.max_length={max_length} leaves no room for the prompt before a "
                          f"{n_target}-token target.", "Raise adapt.finetune.max_length.")
    over = len(prefix) + len(text) + len(suffix) - room
    if over > 0:
        text = text[min(over, len(text)):]
    ids = prefix + text + suffix
    return ids[-room:]


def build_training_examples(tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, max_length: int | None, *,
                            chat: bool | None = None, add_eos: bool = False) -> list[dict[str, Any]]:
    """One causal-LM example per row of the stage-1 table, the loss on the target tokens only.

    Each dict holds ``input_ids`` (prompt ids + target ids [+ EOS], length ≤ ``max_length``),
    ``labels`` (same length: ``-100`` on every prompt token, the token id on every target token),
    ``n_prompt`` and ``example_id``. The prompt is encoded with
    :func:`~shapshift.prompting.encode_prompt` from ``prompt_prefix``/``input_text``/``prompt_suffix``
    and the stored ``input_ids``; ``chat=None`` treats a prefix that starts with a special token as
    written by a chat template (no BOS added). Too-long prompts lose input tokens from the start.
    """
    examples, n_cut = [], 0
    for row in rows.itertuples(index=False):
        row_id = getattr(row, "example_id", "?")
        target = _target_ids(row.target_text, tokenizer, row_id)
        if add_eos and tokenizer.eos_token_id is not None:
            target = target + [int(tokenizer.eos_token_id)]
        prefix, text, suffix = _prompt_ids(row, tokenizer, chat)
        prompt = _fit(prefix, text, suffix, len(target), max_length)
        n_cut += len(prompt) < len(prefix) + len(text) + len(suffix)
        examples.append({
            "input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target,
            "n_prompt": len(prompt), "example_id": int(row_id) if row_id != "?" else None,
        })
    if n_cut:
        log.warning("cut %d of %d training prompt(s) to fit adapt.finetune.max_length=%s", n_cut, len(examples), max_length)
    return examples


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def collate(examples: Sequence[dict[str, Any]], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: ``input_ids``/``attention_mask``/``labels``, each ``(batch, length)``."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        attn[i, :n] = 1
        labels[i, :n] = torch.tensor(e["labels"])
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device), "labels": labels.to(device)}


# -- training ----------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """A fine-tuned model and how it was trained.

    ``model``: a plain model in eval mode (LoRA merged in), on the base model's device.
    ``losses``: mean target-token cross-entropy (nats/token) of each optimiser step.
    ``seconds``: wall time of the training loop. ``batch_size``: the micro-batch that fit in memory.
    ``adapter_state``/``peft_config``: the LoRA weights (CPU) and config, for :meth:`save`.
    """

    model: PreTrainedModel
    losses: list[float]
    steps: int
    seconds: float
    method: str
    config: FinetuneConfig
    seed: int
    n_examples: int
    batch_size: int
    target_modules: list[str] | None = None
    trainable_parameters: int = 0
    adapter_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    peft_config: Any = field(default=None, repr=False)

    def training_log(self) -> dict[str, Any]:
        return {
            "method": self.method, "config": asdict(self.config), "seed": self.seed, "steps": self.steps,
            "seconds": round(self.seconds, 3), "n_examples": self.n_examples, "micro_batch_size": self.batch_size,
            "target_modules": self.target_modules, "trainable_parameters": self.trainable_parameters,
            "losses": [float(x) for x in self.losses],
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write ``adapter/`` (LoRA) or ``model/`` (full) and ``training_log.json`` under ``out_dir``."""
        out_dir = Path(out_dir)
        if self.method == "lora":
            with _atomic_dir(out_dir / ADAPTER_DIR) as tmp:
                _write_adapter(self.adapter_state or {}, self.peft_config, tmp)
        else:
            with _atomic_dir(out_dir / MODEL_DIR) as tmp:
                self.model.save_pretrained(tmp)
        write_json(self.training_log(), out_dir / TRAINING_LOG)
        return out_dir


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a forked RNG state, so the caller's global RNG is left as it was."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _wrap_lora(model: PreTrainedModel, cfg: FinetuneConfig) -> tuple[torch.nn.Module, list[str]]:
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


def _plan_batches(n: int, batch_size: int, epochs: int, max_steps: int | None, seed: int) -> list[np.ndarray]:
    """Indices of each step's batch: seeded shuffles epoch after epoch; ``max_steps`` overrides ``epochs``."""
    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(n / batch_size)
    total = max_steps if max_steps is not None else epochs * per_epoch
    batches: list[np.ndarray] = []
    while len(batches) < total:
        order = rng.permutation(n)
        batches += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return batches[:total]


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
          batch: list[dict[str, Any]], pad_id: int, micro: int, device: torch.device) -> tuple[float, int]:
    """One optimiser step over ``batch`` in micro-batches of ``micro``, halving it on out-of-memory.

    The loss is the summed target-token cross-entropy over the whole batch divided by its number of
    target tokens, so splitting a batch into micro-batches gives the same gradient.
    Returns (loss in nats/token, the micro-batch size used).
    """
    n_tokens = max(1, sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in batch))
    while True:
        try:
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for start in range(0, len(batch), micro):
                enc = collate(batch[start:start + micro], pad_id, device)
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), enc["labels"][:, 1:].flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum")
                (loss / n_tokens).backward()
                total += float(loss.detach())
                del logits, loss
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            return total / n_tokens, micro
        except Exception as exc:
            if not is_oom(exc):
                raise
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if micro <= 1:
                raise ShapshiftError(
                    "Fine-tuning ran out of memory even with one example per batch.",
                    "Lower adapt.finetune.max_length (or adapt.finetune.batch_size), use method lora "
                    "instead of full, or a smaller model.") from None
            micro = max(1, micro // 2)
            log.warning("out of memory during fine-tuning; retrying the step with micro-batches of %d", micro)


def finetune(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: pd.DataFrame,
             cfg: FinetuneConfig, *, seed: int, out_dir: str | Path | None = None, chat: bool | None = None,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune a deep copy of ``model`` on ``train`` rows (stage-1 columns), loss on target tokens only.

    ``cfg.method``: ``lora`` (peft, rank ``r``, ``alpha``, ``dropout``, ``target_modules`` or the
    architecture's default) or ``full``. AdamW (no weight decay, gradient norm clipped at 1) with
    ``learning_rate``; ``max_steps`` steps, or ``epochs`` passes over the rows in seeded shuffles.
    The caller's ``model`` is never changed, nor torch's global RNG. With ``out_dir``, the adapter
    or weights and ``training_log.json`` are written there (see :meth:`FinetuneResult.save`).
    ``chat``: whether the prompt prefixes come from a chat template (None: detected per row).
    """
    cfg.validate()
    if "split" in train.columns and (train["split"] == "explain").any():
        log.warning("fine-tuning on %d row(s) of the explain split", int((train["split"] == "explain").sum()))
    examples = build_training_examples(tokenizer, train, cfg.max_length, chat=chat)
    if not examples:
        raise DataError("There are no train rows to fine-tune on.",
                        "Lower data.n_explain or use a larger dataset, or drop 'finetuned' from adapt.conditions.")
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    if cfg.method == "full" and dtype in (torch.float16, torch.bfloat16):
        log.warning("full fine-tuning in %s is imprecise; consider model.dtype=float32 or method lora", dtype)
    with _seeded(seed, device):
        work = copy.deepcopy(model)
        targets: list[str] | None = None
        if cfg.method == "lora":
            work, targets = _wrap_lora(work, cfg)
        else:
            work.requires_grad_(True)
        params = [p for p in work.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in params)
        log.info("fine-tuning (%s) %d of %d parameters on %d examples", cfg.method, n_trainable,
                 sum(p.numel() for p in work.parameters()), len(examples))
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        batches = _plan_batches(len(examples), cfg.batch_size, cfg.epochs, cfg.max_steps, seed)
        losses, micro, pad_id = [], cfg.batch_size, _pad_id(tokenizer)
        work.train()
        start = time.perf_counter()
        bar = tqdm(batches, desc=f"fine-tune ({cfg.method})", unit="step", disable=not progress)
        for i, idx in enumerate(bar):
            loss, micro = _step(work, optimizer, params, [examples[j] for j in idx], pad_id, micro, device)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
            log.info("fine-tune step %d/%d: loss %.4f", i + 1, len(batches), loss)
        seconds = time.perf_counter() - start
    work.eval()
    adapter_state, peft_config = None, None
    if cfg.method == "lora":
        from peft.utils import get_peft_model_state_dict

        adapter_state = {k: v.detach().cpu().clone().contiguous() for k, v in get_peft_model_state_dict(work).items()}
        peft_config = work.peft_config["default"]
        work = work.merge_and_unload()
    work.requires_grad_(False)
    result = FinetuneResult(model=work, losses=losses, steps=len(losses), seconds=seconds, method=cfg.method,
                            config=cfg, seed=seed, n_examples=len(examples), batch_size=micro,
                            target_modules=targets, trainable_parameters=n_trainable,
                            adapter_state=adapter_state, peft_config=peft_config)
    if out_dir is not None:
        result.save(out_dir)
    return result


# -- saving and loading -------------------------------------------------------------------------------
@contextlib.contextmanager
def _atomic_dir(folder: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``folder`` (never half-written)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        yield tmp
        honour_umask(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_adapter(state: dict[str, torch.Tensor], peft_config: Any, folder: Path) -> None:
    """The files ``PeftModel.save_pretrained`` writes: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    from safetensors.torch import save_file

    config = copy.deepcopy(peft_config)
    config.inference_mode = True
    config.save_pretrained(str(folder))
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


def load_finetuned(base_model: PreTrainedModel, out_dir: str | Path, cfg: FinetuneConfig) -> PreTrainedModel:
    """The fine-tuned model saved by :func:`finetune` under ``out_dir``, in eval mode on the base's device.

    LoRA: the adapter loaded onto a deep copy of ``base_model`` and merged (``base_model`` is not
    changed). Full: the saved weights, in the base model's dtype.
    """
    out_dir = Path(out_dir)
    folder = out_dir / (ADAPTER_DIR if cfg.method == "lora" else MODEL_DIR)
    marker = "adapter_config.json" if cfg.method == "lora" else "config.json"
    if not (folder / marker).exists():
        raise ArtifactError(f"No fine-tuned {cfg.method} weights in {folder} ({marker} is missing).",
                            "Run the adapt stage again (shapshift adapt), or check that "
                            "adapt.finetune.method matches the run that saved them.")
    device = model_device(base_model)
    if cfg.method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(folder)).merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=next(base_model.parameters()).dtype)
    model.requires_grad_(False)
    return model.to(device).eval()


# -- evaluation ------------------------------------------------------------------------------------------
def task_labels(rows: pd.DataFrame) -> list[str] | None:
    """The distinct target texts of labelled rows (e.g. ``[" negative", " positive"]``), or None."""
    if "label" not in rows.columns or rows["label"].isna().all():
        return None
    return sorted(rows.loc[rows["label"].notna(), "target_text"].dropna().astype(str).unique())


def sequence_logprobs(model: PreTrainedModel, pairs: Sequence[tuple[list[int], list[int]]], *, pad_id: int,
                      batch_size: int = 16, alternatives: bool = False) -> np.ndarray:
    """Sum of ``log p(target token | prompt, earlier target tokens)`` for each (prompt ids, target ids).

    Teacher-forced, right-padded batches; returns float64 ``(len(pairs),)`` in nats. Halves the batch
    on out-of-memory. ``alternatives=True``: the target ids are single-token alternatives for the
    next token, scored from one forward pass of the prompt; returns ``(len(pairs), n_alternatives)``.
    """
    device = model_device(model)
    out = np.zeros((len(pairs), len(pairs[0][1])) if alternatives and pairs else len(pairs))
    score = _score_alternatives if alternatives else _score_chunk
    start = 0
    while start < len(pairs):
        chunk = pairs[start:start + batch_size]
        try:
            out[start:start + len(chunk)] = score(model, chunk, pad_id, device)
        except Exception as exc:
            if not is_oom(exc) or batch_size == 1:
                raise
            batch_size //= 2
            log.warning("out of memory while evaluating; batch size %d", batch_size)
            continue
        start += len(chunk)
    return out


def _score_chunk(model: PreTrainedModel, chunk: Sequence[tuple[list[int], list[int]]], pad_id: int,
                 device: torch.device) -> np.ndarray:
    enc = collate([{"input_ids": p + t, "labels": p + t} for p, t in chunk], pad_id, device)
    with torch.inference_mode():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    rows = torch.cat([torch.full((len(t),), i) for i, (_, t) in enumerate(chunk)]).to(device)
    pos = torch.cat([torch.arange(len(p) - 1, len(p) + len(t) - 1) for p, t in chunk]).to(device)
    tgt = torch.cat([torch.tensor(t) for _, t in chunk]).to(device)
    logp = torch.log_softmax(logits[rows, pos].float(), dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(len(chunk), dtype=torch.float64, device=device).index_add_(0, rows, logp.double())
    return sums.cpu().numpy()


def _score_alternatives(model: PreTrainedModel, chunk: Sequence[tuple[list[int], list[int]]], pad_id: int,
                        device: torch.device) -> np.ndarray:
    enc = collate([{"input_ids": p, "labels": p} for p, _ in chunk], pad_id, device)
    with torch.inference_mode():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    last = torch.tensor([len(p) - 1 for p, _ in chunk], device=device)
    logp = torch.log_softmax(logits[torch.arange(len(chunk), device=device), last].float(), dim=-1)
    options = torch.tensor([t for _, t in chunk], device=device)
    return logp.gather(-1, options).double().cpu().numpy()


def evaluate_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: pd.DataFrame, *,
                  labels: list[str] | None, batch_size: int = 16, chat: bool | None = None,
                  max_length: int | None = None) -> dict[str, Any]:
    """A task metric on held-out ``rows`` (stage-1 columns), teacher-forced.

    ``labels``: the candidate target texts of a classification task (``[" negative", " positive"]``);
    ``accuracy`` is the fraction of rows whose ``target_text`` has the highest total log-probability
    among them (None without labels). ``mean_target_logprob``: mean over rows of the summed
    log-probability of the row's target tokens (nats). Also ``n_rows``. The model's train/eval
    mode is restored afterwards.
    """
    if rows.empty:
        raise DataError("There are no rows to evaluate the task on.", "Pass held-out rows with a target_text.")
    candidates = list(labels) if labels else []
    if candidates:
        unknown = sorted(set(rows["target_text"].dropna().astype(str)) - set(candidates))
        if unknown:
            raise DataError(f"Target text(s) {unknown[:5]} are not among the labels {candidates}.",
                            "Pass labels exactly as the target texts are written (with their leading space), "
                            "e.g. task_labels(rows).")
    label_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in candidates]
    prompts, target_ids, targets = [], [], []
    for row in rows.itertuples(index=False):
        target = _target_ids(row.target_text, tokenizer, getattr(row, "example_id", "?"))
        prompts.append(_fit(*_prompt_ids(row, tokenizer, chat), len(target), max_length))
        target_ids.append(target)
        targets.append(str(row.target_text))
    pad_id = _pad_id(tokenizer)
    was_training = model.training
    model.eval()
    try:
        if not candidates:
            scores = sequence_logprobs(model, list(zip(prompts, target_ids, strict=True)), pad_id=pad_id, batch_size=batch_size)
            return {"n_rows": len(rows), "accuracy": None, "mean_target_logprob": float(scores.mean())}
        if all(len(ids) == 1 for ids in label_ids):  # one pass per row, labels read at its last position
            options = [ids[0] for ids in label_ids]
            table = sequence_logprobs(model, [(p, options) for p in prompts], pad_id=pad_id,
                                      batch_size=batch_size, alternatives=True)
        else:
            pairs = [(p, ids) for p in prompts for ids in label_ids]
            table = sequence_logprobs(model, pairs, pad_id=pad_id, batch_size=batch_size).reshape(len(rows), -1)
    finally:
        model.train(was_training)
    truth = np.array([candidates.index(t) for t in targets])
    return {"n_rows": len(rows), "accuracy": float((table.argmax(axis=1) == truth).mean()),
            "mean_target_logprob": float(table[np.arange(len(rows)), truth].mean())}
