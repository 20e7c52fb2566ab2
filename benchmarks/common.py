"""Shared pieces of the benchmark scripts: data, prompts, machine info, memory, alignment, metrics."""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shapshift.prompting import (
    Demonstration,
    EncodedPrompt,
    PromptParts,
    build_prompt,
    encode_prompt,
)

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "Review: {input}\nSentiment:"
ANSWERS = {0: " negative", 1: " positive"}


def sst2_path(split: str) -> Path:
    """``<shared>/datasets/sst2/<split>.tsv``: ``$SHAPSHIFT_SHARED``, else ``../shared`` beside the repository,
    else ``/work/shared``."""
    candidates = [Path(os.environ["SHAPSHIFT_SHARED"])] if os.environ.get("SHAPSHIFT_SHARED") else []
    candidates += [REPO.parent / "shared", Path("/work/shared")]
    shared = next((c for c in candidates if (c / "datasets").is_dir()), candidates[0])
    path = shared / "datasets" / "sst2" / f"{split}.tsv"
    if not path.exists():
        raise SystemExit(f"{path} is missing: the SST-2 files live in ../shared/datasets/sst2 beside the checkout")
    return path


def load_sst2(split: str) -> pd.DataFrame:
    df = pd.read_csv(sst2_path(split), sep="\t", quoting=3)
    df["sentence"] = df["sentence"].astype(str).str.strip()
    return df[df["sentence"].str.len() > 0].reset_index(drop=True)


@dataclass
class Example:
    """One explained input: its prompt parts, encoded prompt and the target (the model's greedy output)."""

    name: str
    set: str
    parts: PromptParts
    prompt: EncodedPrompt
    target_ids: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.prompt.input_ids)


def n_tokens(tok, sentence: str) -> int:
    return len(encode_prompt(build_prompt(sentence, TEMPLATE, tok, chat=True), tok).input_ids)


def pick_sentences(df: pd.DataFrame, tok, count: int, lo: int, hi: int, seed: int, exclude=()) -> list[int]:
    """``count`` row indices (seeded order) whose sentence has ``lo..hi`` tokens in the prompt."""
    out = []
    for i in np.random.default_rng(seed).permutation(len(df)):
        if int(i) in exclude:
            continue
        if lo <= n_tokens(tok, df.sentence[i]) <= hi:
            out.append(int(i))
        if len(out) == count:
            break
    return out


def sst2_example(tok, sentence: str, name: str, set_name: str = "sst2") -> Example:
    """The SmolLM2 chat template around ``Review: {input}\\nSentiment:``."""
    parts = build_prompt(sentence, TEMPLATE, tok, chat=True)
    return Example(name, set_name, parts, encode_prompt(parts, tok))


def fewshot_example(tok, sentence: str, name: str, train: pd.DataFrame, k: int, seed: int,
                    min_context: int = 300) -> Example:
    """``k`` (4..8) label-balanced demonstrations from train, more drawn until the context has ``min_context`` tokens."""
    rng = np.random.default_rng(seed)
    long_rows = train[train["sentence"].str.split().str.len() >= 12]
    pools = {lab: long_rows[long_rows["label"] == lab].sample(frac=1, random_state=int(rng.integers(1 << 30)))
             for lab in (0, 1)}
    demos: list[Demonstration] = []
    while True:
        lab = len(demos) % 2
        row = pools[lab].iloc[len(demos) // 2]
        demos.append(Demonstration(row.sentence, ANSWERS[int(row.label)]))
        if len(demos) < k:
            continue
        order = list(rng.permutation(len(demos)))
        shuffled = [demos[j] for j in order]
        parts = build_prompt(sentence, TEMPLATE, tok, chat=True, demonstrations=shuffled)
        prompt = encode_prompt(parts, tok)
        if len(prompt.prefix_ids) >= min_context or len(demos) >= 8:
            return Example(name, "fewshot", parts, prompt)


def machine_info() -> dict:
    """nproc, CPU model, memory, load, library versions: recorded with every result table."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        mem = -1
    info = {"nproc": os.cpu_count(), "cpu": cpu, "memory_mb": mem, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}
    for pkg in ("shapshift", "torch", "transformers", "shap", "captum", "numpy", "numba"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "-"
    return info


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "-"


def _rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """Peak extra memory of a block, in MB: resident set size sampled every 5 ms minus its value at entry.

    tracemalloc does not see torch's CPU tensors and ``ru_maxrss`` only ever rises, so a sampling
    thread over ``/proc/self/statm`` is used; on CUDA ``torch.cuda.max_memory_allocated`` is added.
    """

    def __enter__(self):
        self.start = _rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self._cuda0 = torch.cuda.memory_allocated()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.mb = (self.peak - self.start) / 2**20
        if torch.cuda.is_available():
            self.mb += (torch.cuda.max_memory_allocated() - self._cuda0) / 2**20
        return False


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def align_values(src_tokens: list[str], src_values: np.ndarray, dst_tokens: list[str]) -> np.ndarray:
    """Values ``(len(src), k)`` over one tokenisation moved onto another of the same text.

    Both token lists concatenate to the same string; each source token's value is shared among the
    destination tokens its characters overlap, in proportion to the overlap (identity when equal).
    """
    src_values = np.asarray(src_values, dtype=np.float64)
    if list(src_tokens) == list(dst_tokens):
        return src_values
    if "".join(src_tokens).strip() != "".join(dst_tokens).strip():
        raise ValueError(f"token lists spell different texts: {''.join(src_tokens)!r} vs {''.join(dst_tokens)!r}")
    shift = len("".join(dst_tokens)) - len("".join(dst_tokens).lstrip()) - (
        len("".join(src_tokens)) - len("".join(src_tokens).lstrip()))

    def spans(tokens, offset=0):
        out, pos = [], offset
        for t in tokens:
            out.append((pos, pos + len(t)))
            pos += len(t)
        return out

    s_spans, d_spans = spans(src_tokens, shift), spans(dst_tokens)
    out = np.zeros((len(dst_tokens),) + src_values.shape[1:])
    for (a, b), v in zip(s_spans, src_values):
        overlaps = [max(0, min(b, d) - max(a, c)) for c, d in d_spans]
        total = sum(overlaps)
        if total == 0:  # a zero-width or whitespace-only source token: give it to the nearest token
            j = int(np.argmin([abs(c - a) for c, _ in d_spans]))
            out[j] += v
            continue
        for j, o in enumerate(overlaps):
            if o:
                out[j] += v * o / total
    return out


def bootstrap_mean_ci(d: np.ndarray, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap CI of the mean of ``d`` (its entries resampled with replacement)."""
    boot = d[np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    return float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 3) -> float:
    """Shared tokens among the ``k`` largest ``|value|`` of ``a`` and of ``b``, as a fraction of ``k``."""
    k = min(k, len(a))
    ta = set(np.argsort(-np.abs(a), kind="stable")[:k])
    tb = set(np.argsort(-np.abs(b), kind="stable")[:k])
    return len(ta & tb) / k


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    """A GitHub markdown table of ``df`` (index included when it is named), without extra packages."""
    df = df.reset_index() if any(n is not None for n in df.index.names) else df

    def fmt(v):
        if isinstance(v, float | np.floating):
            return "–" if np.isnan(v) else floatfmt.format(v)
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
