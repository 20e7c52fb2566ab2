"""How many forward tokens could coalitions that keep the same first tokens share under deletion (issue 27, item 4)?

Under deletion masking a coalition is scored as the row ``head + kept input tokens + tail`` (``scoring.py``:
``head`` the prefix's last token, ``tail`` the suffix and the target tokens but the last). Two rows whose kept
input tokens begin alike share the key/value cache of that common start: a scorer that orders each batch so
they meet could run it once. This counts, without a model, the forward tokens of the designs ``auto`` scores
(``quadrature``'s coalitions at its first round ``4n + 2`` and at its cap 512, and ``regression``'s), per row
today and with the sharing:

- ``trie``: every distinct start run once (a prefix tree over the rows: the most any sharing saves);
- ``groups of 2^j``: one shared start per group of rows that keep the same input tokens among the first ``j``
  positions, ``j`` the largest for which the average group still holds at least ``min_group`` rows (what one
  cached start per batch, broadcast as the fixed prefix is today, could do).

The tail (``tail`` tokens, here 3 of suffix plus 8 target tokens less one) follows the first difference, so it is
never shared. Counts are of tokens, not seconds: on a CPU the time of a forward pass is close to proportional to
its tokens at these lengths (``benchmarks/PREFIX_REUSE.md``: 1.13x fewer tokens gave 1.14x less time).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_prefix_sharing.py     # seconds; writes PREFIX_SHARING.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table  # noqa: E402

from shapshift.explainers import REGISTRY  # noqa: E402

HERE = Path(__file__).resolve().parent


class Recorder:
    """A scorer that records the coalitions asked for and returns zeros ``(m, 1)`` (the designs do not read scores)."""

    def __init__(self) -> None:
        self.masks: list[np.ndarray] = []
        self.n_evals = 0

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, bool)
        self.masks.extend(masks)
        self.n_evals += len(masks)
        return np.zeros((len(masks), 1))


def design(method: str, n: int, budget: int, seed: int) -> np.ndarray:
    """The distinct coalitions ``(m, n)`` that ``method`` scores at ``budget``."""
    rec = Recorder()
    task = SimpleNamespace(n_features=n, max_evals=budget, seed=seed, options={})
    REGISTRY[method]().attribute(task, rec)
    return np.unique(np.asarray(rec.masks, bool), axis=0)


def token_counts(masks: np.ndarray, head: int, tail: int, min_group: int) -> dict[str, float]:
    """Forward tokens of the rows of ``masks`` ``(m, n)`` today, with a prefix tree, and with groups of one start."""
    m, n = masks.shape
    kept = masks.sum(axis=1)
    today = float((head + kept + tail).sum())
    # prefix tree: a row's start is head + its kept tokens; distinct (position, kept-set-so-far) nodes are run once
    nodes = set()
    for row in masks:
        key = ()
        for i in np.flatnonzero(row):
            key = (*key, int(i))
            nodes.add(key)
    trie = float(head + len(nodes) + m * tail)
    # groups: rows keeping the same tokens among the first j positions share head + those tokens
    best_j = 0
    for j in range(1, n + 1):
        groups = len({row[:j].tobytes() for row in masks})
        if m / groups >= min_group:
            best_j = j
    starts = {row[:best_j].tobytes(): int(row[:best_j].sum()) for row in masks}
    grouped = float(sum(head + s for s in starts.values()) + (kept - masks[:, :best_j].sum(axis=1) + tail).sum())
    return {"rows": m, "tokens_today": today, "saved_trie": 1 - trie / today, "j": best_j,
            "saved_groups": 1 - grouped / today}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="12,20,30,50")
    ap.add_argument("--tail", type=int, default=10)
    ap.add_argument("--min-group", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    for n in map(int, args.lengths.split(",")):
        for method in ("quadrature", "regression"):
            for budget in (4 * n + 2, 512):
                res = [token_counts(design(method, n, budget, s), 1, args.tail, args.min_group)
                       for s in range(args.seeds)]
                rows.append({"n": n, "method": method, "budget": budget, "rows": res[0]["rows"],
                             "tokens per row today": round(np.mean([r["tokens_today"] for r in res]) / res[0]["rows"], 1),
                             "saved, trie": round(float(np.mean([r["saved_trie"] for r in res])), 3),
                             "j": res[0]["j"], "saved, groups": round(float(np.mean([r["saved_groups"] for r in res])), 3)})
    import pandas as pd

    text = "\n".join([
        "# Prefix sharing under deletion: forward tokens a shared start could save", "",
        f"No model: the coalitions `quadrature` and `regression` score, rows `head (1) + kept tokens + tail ({args.tail})`; "
        f"`trie`: every distinct start run once; `groups`: one start per group of rows that keep the same tokens among "
        f"the first j positions, groups of at least {args.min_group} rows on average; {args.seeds} seeds. Made by:", "",
        f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_prefix_sharing.py{' '.join([''] + sys.argv[1:])}", "",
        markdown_table(pd.DataFrame(rows)), "",
    ])
    (HERE / "PREFIX_SHARING.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
