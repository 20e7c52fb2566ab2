"""Prompts as three parts: fixed ``prefix``, the example's ``text`` (the features), fixed ``suffix``.

Templates hold an ``{input}`` slot. Zero-shot instructions and few-shot demonstrations are more fixed
context before the example: plain text for a base model, turns of its chat template for a chat model
(the instruction as the system message, each demonstration a user and an assistant turn).
Only ``text`` is ever masked or attributed, so every condition explains the same features.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .errors import ConfigError

log = logging.getLogger(__name__)

_SLOT = "\x00SHAPSHIFT_INPUT\x00"


@dataclass(frozen=True)
class PromptParts:
    """A prompt split around the example's own text; ``prefix + text + suffix`` is the prompt."""

    prefix: str
    text: str
    suffix: str

    @property
    def prompt(self) -> str:
        return self.prefix + self.text + self.suffix


@dataclass(frozen=True)
class Demonstration:
    """One few-shot example: its input text and the answer shown after the template."""

    text: str
    answer: str


def check_template(template: str) -> None:
    if template.count("{input}") != 1:
        raise ConfigError(f"Template {template!r} must contain the slot {{input}} exactly once.",
                          "Write it like 'Review: {input}\\nSentiment:'.")


def build_prompt(text: str, template: str, tokenizer: PreTrainedTokenizerBase | None = None, *,
                 chat: bool = False, instruction: str | None = None,
                 demonstrations: Sequence[Demonstration] = ()) -> PromptParts:
    """Wrap ``text`` into the template, after an optional instruction and demonstrations.

    Plain (``chat=False``): ``instruction\\n\\n`` + each ``template(demo) + answer\\n\\n`` + template(text),
    the format a base model continues.
    Chat (``chat=True``): turns in the tokenizer's chat template, as an instruct model was trained on
    them: the instruction as the system message (in the first user turn when the template has no
    system role), each demonstration as a user turn ``template(demo)`` and an assistant turn (its answer,
    leading whitespace dropped: a reply starts without one), the example as the last user turn, then the
    generation prompt, so that the target is the beginning of the assistant's reply.
    Whitespace at the end of the prefix moves to the start of the text, so that the text's first
    token carries its leading space as it would in the joint tokenisation.
    """
    check_template(template)
    if chat:
        content = _chat_prompt(template, tokenizer, instruction, demonstrations)
    else:
        pieces = []
        if instruction:
            pieces.append(instruction.strip() + "\n\n")
        for demo in demonstrations:
            pieces.append(template.replace("{input}", demo.text) + demo.answer + "\n\n")
        pieces.append(template.replace("{input}", _SLOT))
        content = "".join(pieces)
    prefix, suffix = content.split(_SLOT)
    stripped = prefix.rstrip(" ")
    moved = prefix[len(stripped):]
    return PromptParts(prefix=stripped, text=moved + text, suffix=suffix)


def _chat_prompt(template: str, tokenizer: PreTrainedTokenizerBase | None, instruction: str | None,
                 demonstrations: Sequence[Demonstration]) -> str:
    """The chat-template text of the turns :func:`build_prompt` describes, with :data:`_SLOT` for the input."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.chat is 'yes' but the tokenizer has no chat template.",
                          "Set data.chat to 'no' (plain completion prompts) or 'auto'.")
    turns: list[dict[str, str]] = []
    for demo in demonstrations:
        turns += [{"role": "user", "content": template.replace("{input}", demo.text)},
                  {"role": "assistant", "content": demo.answer.lstrip()}]
    turns.append({"role": "user", "content": template.replace("{input}", _SLOT)})
    if instruction:
        if has_system_role(tokenizer):
            turns.insert(0, {"role": "system", "content": instruction.strip()})
        else:
            turns[0] = {"role": "user", "content": instruction.strip() + "\n\n" + turns[0]["content"]}
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def has_system_role(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template writes a system message (some refuse one, some drop it)."""
    probe = "\x00system probe\x00"
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": probe}, {"role": "user", "content": "hi"}],
                                             tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates raise their own errors for an unsupported role
        return False
    return probe in text


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of the prompt parts: ``prefix_ids + input_ids + suffix_ids`` is the prompt."""

    prefix_ids: list[int]
    input_ids: list[int]
    suffix_ids: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prefix_ids + self.input_ids + self.suffix_ids


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token a prompt starts with when no text precedes its input: the model's BOS token, else its EOS.

    A causal LM predicts every token from the tokens before it, so an input with nothing before it
    (no template text, or every input token masked) needs one token to stand before the first
    target token. The model's own convention is its BOS token (Llama's ``<s>``, SmolLM2's
    ``<|im_start|>``); GPT-2 and GPT-Neo mark the start of a document with ``<|endoftext|>``, which
    their tokenizers name both BOS and EOS; a tokenizer without a BOS token falls back to its EOS token.
    The same token stands there for every coalition and every estimator, so ``base_value`` is the
    score of the target after this token and the fixed context alone.
    """
    for name in ("bos_token_id", "eos_token_id"):
        token = getattr(tokenizer, name, None)
        if token is not None:
            return int(token)
    raise ConfigError(f"The tokenizer {type(tokenizer).__name__} has neither a BOS nor an EOS token, so an input "
                      "with no text before it has no token to be predicted from.",
                      "Give the input a context with text before it, e.g. the template 'Text: {input}'.")


def starts_with_special_token(prefix: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a prompt's prefix starts with a special token, as a chat template writes it (``<|im_start|>``)."""
    return any(t and prefix.startswith(t) for t in getattr(tokenizer, "all_special_tokens", []))


def encode_prompt(parts: PromptParts, tokenizer: PreTrainedTokenizerBase, *, chat: bool | None = None,
                  input_ids: Sequence[int] | None = None) -> EncodedPrompt:
    """Tokenise each part on its own, so the features are exactly the text's tokens.

    The prefix gets the tokenizer's special tokens (BOS) unless it comes from a chat template,
    which writes its own (``chat=None``: detected by the prefix starting with a special token).
    A prefix that would be empty is the model's start token (:func:`start_token_id`), so the
    prefix always holds at least one token. ``input_ids`` reuses a stored tokenisation of the text.
    """
    if chat is None:
        chat = starts_with_special_token(parts.prefix, tokenizer)
    prefix = tokenizer(parts.prefix, add_special_tokens=not chat)["input_ids"] if (parts.prefix or not chat) else []
    if not prefix:
        prefix = [start_token_id(tokenizer)]
    if input_ids is None:
        input_ids = tokenizer(parts.text, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(parts.suffix, add_special_tokens=False)["input_ids"] if parts.suffix else []
    return EncodedPrompt(list(prefix), list(input_ids), list(suffix))


def token_strings(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Each token decoded on its own (leading spaces kept), as ``shap.plots.text`` shows them."""
    return [tokenizer.decode([int(i)], clean_up_tokenization_spaces=False) for i in ids]


def tokenises_apart(tokenizer: PreTrainedTokenizerBase, prompt_ids: Sequence[int], target_ids: Sequence[int]) -> bool:
    """Whether the target's tokens (tokenised alone) differ from how the prompt's text followed by the
    target's text tokenises: e.g. ``"Paris"`` after a prompt ending in a space, or a word that merges
    with the prompt's last characters."""
    prompt_text = tokenizer.decode(list(prompt_ids), clean_up_tokenization_spaces=False)
    target_text = tokenizer.decode(list(target_ids), clean_up_tokenization_spaces=False)
    alone = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    joint = tokenizer(prompt_text + target_text, add_special_tokens=False)["input_ids"]
    return joint[:len(alone)] != alone or joint[len(alone):] != list(target_ids)


def encode_targets(tokenizer: PreTrainedTokenizerBase, targets: Sequence[str | None],
                   prompts: Sequence[Sequence[int]]) -> list[list[int] | None]:
    """Token ids of each target text, tokenised on its own: these tokens are the ones explained.

    When a target would tokenise differently as a continuation of its prompt (``prompts``: the
    prompt's token ids), the model is scored on tokens it would not produce itself; one warning
    counts those targets and shows the first, with the fix.
    """
    encoded = [None if t is None else list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets]
    apart = [i for i, (ids, p) in enumerate(zip(encoded, prompts)) if ids and tokenises_apart(tokenizer, p, ids)]
    if apart:
        first = apart[0]
        joint = tokenizer(tokenizer.decode(list(prompts[first])) + str(targets[first]), add_special_tokens=False)["input_ids"]
        log.warning(
            "%d of %d targets tokenise differently after their prompt than alone, e.g. %r: alone %s, while "
            "prompt + target ends in %s. The tokens alone are explained. If that is not what the "
            "model would write, start the target with the space the model writes (data.target_prefix) or end "
            "the template without a trailing space.", len(apart), len(targets), targets[first],
            token_strings(tokenizer, encoded[first]), token_strings(tokenizer, joint[-len(encoded[first]) - 1:]))
    return encoded


#: Where a sentence ends: ., ! or ? (closing quotes and brackets kept with it) before whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def token_spans(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> tuple[str, list[tuple[int, int] | None]]:
    """The text of ``ids`` decoded together, and each token's character span ``[start, end)`` in it.

    Spans come from decoding growing prefixes, so they hold for any tokenizer (byte-level BPE,
    SentencePiece) without offset mappings. A token that ends inside a multi-byte character (it
    decodes to the replacement character until a later token completes it) has no span (None);
    the token that completes the character gets the character.
    """
    text, spans, ids = "", [], [int(i) for i in ids]
    for k in range(len(ids)):
        longer = tokenizer.decode(ids[:k + 1], clean_up_tokenization_spaces=False)
        if longer.endswith("\ufffd") and k + 1 < len(ids):
            spans.append(None)
            continue
        start = len(text) if longer.startswith(text) else len(os.path.commonprefix([text, longer]))
        spans.append((start, len(longer)))
        text = longer
    return text, spans


def feature_groups(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], unit: str = "token") -> list[list[int]]:
    """The features of an input as groups of its token positions, in order; every token in exactly one.

    ``unit``: ``token`` (one group per token), ``word`` (whitespace-delimited words, punctuation
    attached, as a reader deletes a word: ``" friendly."`` is one word of two tokens) or ``sentence``
    (split after ``.``, ``!`` or ``?`` followed by whitespace). A token belongs to the unit of its first
    non-space character; a token of whitespace only (or a part of a character) joins the next unit (the last one at the end).
    """
    if unit == "token":
        return [[i] for i in range(len(ids))]
    text, spans = token_spans(tokenizer, ids)
    if unit == "word":
        starts = [m.start() for m in re.finditer(r"\S+", text)]
    elif unit == "sentence":
        starts = [0] + [m.end() for m in _SENTENCE_END.finditer(text) if m.end() < len(text)]
    else:
        raise ConfigError(f"unit={unit!r} is unknown.", "Use token, word or sentence.")
    unit_of, pending = [], []
    for k, span in enumerate(spans):
        first = None if span is None else next((c for c in range(*span) if not text[c].isspace()), None)
        if first is None:
            pending.append(k)
            continue
        u = max(bisect.bisect_right(starts, first) - 1, 0)
        unit_of += [u] * (len(pending) + 1)
        pending = []
    unit_of += [unit_of[-1] if unit_of else 0] * len(pending)
    groups: dict[int, list[int]] = {}
    for k, u in enumerate(unit_of):
        groups.setdefault(u, []).append(k)
    return list(groups.values())
