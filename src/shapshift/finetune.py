"""LoRA (peft) and full fine-tuning of a causal LM on the train split, with the loss on target tokens only.

:func:`finetune` never touches the caller's model: ``transformers.Trainer`` trains a deep copy.
The adapter is saved with ``PeftModel.save_pretrained`` to ``out_dir/adapter`` (full fine-tuning:
the weights to ``out_dir/model``), next to ``training_log.json``, and then merged into the copy,
so the returned model is a plain ``PreTrainedModel`` that scores like any other.
:func:`load_finetuned` rebuilds the same model from those files.

A training example is ``prompt ids + target ids`` (the prompt encoded as the explainer encodes it,
part by part with :func:`shapshift.prompting.encode_prompt`); its labels are ``-100`` on the prompt
and the target ids on the target, so only the answer is learned.
:func:`evaluate_task` scores held-out rows teacher-forced: accuracy over the label texts and the
mean target log-probability.

(Over 400 lines because building the examples, training and evaluating share one prompt encoding
and truncation, :func:`_prompt_ids` and :func:`_fit`; the LoRA target choice is in :mod:`shapshift.lora`.)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .backoff import halving
from .config import FinetuneConfig
from .errors import ArtifactError, ConfigError, DataError, ShapshiftError
from .lora import wrap_lora
from .models import model_device
from .prompting import PromptParts, encode_prompt, starts_with_special_token
from .scoring import token_logprobs
from .store import honour_umask, write_json

if TYPE_CHECKING:
    from transformers import TrainingArguments

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
TRAINING_LOG = "training_log.json"

# -- training examples -------------------------------------------------------------------------------
def _prompt_ids(row: Any, tokenizer: PreTrainedTokenizerBase, chat: bool | None) -> tuple[list[int], list[int], list[int]]:
    """(prefix, input, suffix) ids of a stage-1 row, encoded as the explainer encodes them."""
    parts = PromptParts(str(row.prompt_prefix), str(row.input_text), str(row.prompt_suffix))
    stored = getattr(row, "input_ids", None)
    input_ids = None if stored is None or (isinstance(stored, float) and np.isnan(stored)) else [int(i) for i in stored]
    use_chat = starts_with_special_token(parts.prefix, tokenizer) if chat is None else chat
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


def collate(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example: ``input_ids``/``attention_mask``/``labels``, each ``(batch, length)``.

    The training data collator. (transformers' ``DataCollatorForSeq2Seq`` pads on the tokenizer's
    side, which is the left for some chat models, and needs a pad token; right padding with the
    EOS fallback of :func:`_pad_id` keeps every token at the position it has unpadded.)
    """
    def pad(key: str, value: int) -> torch.Tensor:
        rows = [torch.as_tensor(e[key], dtype=torch.long) for e in examples]
        return pad_sequence(rows, batch_first=True, padding_value=value)

    ids = pad("input_ids", pad_id)
    attn = pad_sequence([torch.ones(len(e["input_ids"]), dtype=torch.long) for e in examples], batch_first=True)
    return {"input_ids": ids, "attention_mask": attn, "labels": pad("labels", IGNORE_INDEX)}


# -- training ----------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """A fine-tuned model and how it was trained.

    ``model``: a plain model in eval mode (LoRA merged in), on the base model's device.
    ``losses``: mean target-token cross-entropy (nats/token) of each optimiser step.
    ``seconds``: wall time of ``Trainer.train``. ``batch_size``: the micro-batch that fit in memory
    (gradients are accumulated over ``config.batch_size // batch_size`` of them per step).
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

    def training_log(self) -> dict[str, Any]:
        return {
            "method": self.method, "config": asdict(self.config), "seed": self.seed, "steps": self.steps,
            "seconds": round(self.seconds, 3), "n_examples": self.n_examples, "micro_batch_size": self.batch_size,
            "target_modules": self.target_modules, "trainable_parameters": self.trainable_parameters,
            "losses": [float(x) for x in self.losses],
        }


@contextlib.contextmanager
def _own_rng() -> Iterator[None]:
    """Leave the caller's RNGs (Python, numpy, torch CPU and CUDA) as they were: ``Trainer`` seeds them all."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def _training_args(cfg: FinetuneConfig, seed: int, micro: int, device: torch.device, folder: str,
                   progress: bool) -> TrainingArguments:
    """The old hand loop's settings: AdamW (no weight decay), constant learning rate, gradients clipped at 1."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=folder, seed=seed, data_seed=seed, learning_rate=cfg.learning_rate, weight_decay=0.0,
        optim="adamw_torch", lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        per_device_train_batch_size=micro, gradient_accumulation_steps=cfg.batch_size // micro,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1, num_train_epochs=cfg.epochs,
        logging_strategy="steps", logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        remove_unused_columns=False, dataloader_pin_memory=device.type == "cuda", use_cpu=device.type == "cpu",
        disable_tqdm=not progress)


def _train(model: PreTrainedModel, examples: list[dict[str, Any]], cfg: FinetuneConfig, *, seed: int, micro: int,
           pad_id: int, progress: bool) -> tuple[torch.nn.Module, list[float], float, list[str] | None]:
    """One attempt with micro-batches of ``micro``: a fresh seeded copy of ``model`` through ``Trainer``.

    Returns (trained copy, per-step losses, seconds, LoRA target modules or None).
    """
    from transformers import PrinterCallback, Trainer, set_seed

    device = model_device(model)
    set_seed(seed)  # the LoRA weights' initialisation too, not only Trainer's
    work = copy.deepcopy(model)
    targets = None
    if cfg.method == "lora":
        work, targets = wrap_lora(work, cfg)
    else:
        work.requires_grad_(True)
    with tempfile.TemporaryDirectory(prefix="shapshift-trainer-") as folder:
        trainer = Trainer(model=work, args=_training_args(cfg, seed, micro, device, folder, progress),
                          train_dataset=examples, data_collator=functools.partial(collate, pad_id=pad_id))
        trainer.remove_callback(PrinterCallback)  # it prints each step's log to stdout without a progress bar
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return trainer.model, losses, seconds, targets


def finetune(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train: pd.DataFrame,
             cfg: FinetuneConfig, *, seed: int, out_dir: str | Path | None = None, chat: bool | None = None,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune a deep copy of ``model`` on ``train`` rows (stage-1 columns), loss on target tokens only.

    ``cfg.method``: ``lora`` (peft, rank ``r``, ``alpha``, ``dropout``, ``target_modules`` or the
    architecture's default) or ``full``. ``transformers.Trainer`` with AdamW (no weight decay,
    gradient norm clipped at 1) at a constant ``learning_rate``; ``max_steps`` steps, or ``epochs``
    passes over the rows in seeded shuffles, ``batch_size`` rows per step. Out of memory restarts
    training with micro-batches of a divisor of ``batch_size`` (gradients accumulated, so a step
    still sees ``batch_size`` rows). The caller's ``model`` is never changed, nor the global RNGs.
    With ``out_dir``, the adapter (``PeftModel.save_pretrained``) or weights and
    ``training_log.json`` are written there. ``chat``: whether the prompt prefixes come from a chat
    template (None: detected per row).
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
    inputs = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    used: list[int] = []

    def attempt(micro: int) -> tuple[torch.nn.Module, list[float], float, list[str] | None]:
        used.append(micro)
        return _train(model, inputs, cfg, seed=seed, micro=micro, pad_id=_pad_id(tokenizer), progress=progress)

    too_big = ShapshiftError("Fine-tuning ran out of memory even with one example per batch.",
                             "Lower adapt.finetune.max_length (or adapt.finetune.batch_size), use method lora "
                             "instead of full, or a smaller model.")
    with _own_rng():
        work, losses, seconds, targets = halving(attempt, cfg.batch_size, "fine-tuning", divides=cfg.batch_size,
                                                 at_one=too_big)()
    n_trainable = sum(p.numel() for p in work.parameters() if p.requires_grad)
    log.info("fine-tuned (%s) %d parameters on %d examples: losses %s", cfg.method, n_trainable, len(examples),
             [round(x, 4) for x in losses])
    work.eval()
    if out_dir is not None:
        with _atomic_dir(Path(out_dir) / (ADAPTER_DIR if cfg.method == "lora" else MODEL_DIR)) as tmp:
            work.save_pretrained(tmp)  # PeftModel: adapter_config.json + adapter_model.safetensors
    if cfg.method == "lora":
        work = work.merge_and_unload()
    work.requires_grad_(False)
    work.to(device)
    result = FinetuneResult(model=work, losses=losses, steps=len(losses), seconds=seconds, method=cfg.method,
                            config=cfg, seed=seed, n_examples=len(examples), batch_size=used[-1],
                            target_modules=targets, trainable_parameters=n_trainable)
    if out_dir is not None:
        write_json(result.training_log(), Path(out_dir) / TRAINING_LOG)
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
    on out-of-memory (:mod:`shapshift.backoff`). ``alternatives=True``: the target ids are single-token
    alternatives for the next token, scored from one forward pass of the prompt; returns
    ``(len(pairs), n_alternatives)``. Log-probabilities: :func:`shapshift.scoring.token_logprobs`.
    """
    device = model_device(model)
    out = np.zeros((len(pairs), len(pairs[0][1])) if alternatives and pairs else len(pairs))
    score = _score_alternatives if alternatives else _score_chunk
    done = 0

    def run(size: int) -> None:
        nonlocal done
        while done < len(pairs):
            chunk = pairs[done:done + size]
            out[done:done + len(chunk)] = score(model, chunk, pad_id, device)
            done += len(chunk)

    halving(run, batch_size, "task evaluation")()
    return out


def _score_chunk(model: PreTrainedModel, chunk: Sequence[tuple[list[int], list[int]]], pad_id: int,
                 device: torch.device) -> np.ndarray:
    enc = collate([{"input_ids": p + t, "labels": p + t} for p, t in chunk], pad_id)
    with torch.inference_mode():
        logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
    rows = torch.cat([torch.full((len(t),), i) for i, (_, t) in enumerate(chunk)]).to(device)
    pos = torch.cat([torch.arange(len(p) - 1, len(p) + len(t) - 1) for p, t in chunk]).to(device)
    tgt = torch.cat([torch.tensor(t) for _, t in chunk]).to(device)
    logp = token_logprobs(logits[rows, pos], tgt)
    sums = torch.zeros(len(chunk), dtype=torch.float64, device=device).index_add_(0, rows, logp.double())
    return sums.cpu().numpy()


def _score_alternatives(model: PreTrainedModel, chunk: Sequence[tuple[list[int], list[int]]], pad_id: int,
                        device: torch.device) -> np.ndarray:
    enc = collate([{"input_ids": p, "labels": p} for p, _ in chunk], pad_id)
    with torch.inference_mode():
        logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
    last = torch.tensor([len(p) - 1 for p, _ in chunk], device=device)
    options = torch.tensor([t for _, t in chunk], device=device)
    last_logits = logits[torch.arange(len(chunk), device=device), last]
    return token_logprobs(last_logits.unsqueeze(1).expand(-1, options.shape[1], -1), options).double().cpu().numpy()


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
