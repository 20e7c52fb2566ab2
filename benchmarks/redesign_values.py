"""Every estimator's values on two tiny random models, to compare two source trees (issue 15: a redesign
must leave results unchanged: same seeds, same values within 1e-6).

Run it under each tree, then compare::

    PYTHONPATH=OLD/src python benchmarks/redesign_values.py --out /tmp/before.npz
    PYTHONPATH=NEW/src python benchmarks/redesign_values.py --out /tmp/after.npz
    python benchmarks/redesign_values.py --compare /tmp/before.npz /tmp/after.npz

Covers exact, sampling, kernel, quadrature, hierarchical, auto (with and without precision rounds),
partition, the four lenses, word units with log-prob scores, and deletion masking; values, base values,
standard errors, evaluations and precision reached. Output of the last comparison: REDESIGN_VALUES.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TEXTS = ["a quiet film about two brothers",
         "The plot was dull, the acting wooden, and the ending far too long for me."]
CASES = [("exact", {}), ("sampling", {}), ("kernel", {}), ("quadrature", {}), ("hierarchical", {}), ("auto", {}),
         ("auto", {"precision": 0.9}), ("partition", {}), ("input_x_gradient", {}),
         ("integrated_gradients", {"options": {"n_steps": 8}}), ("attention", {}), ("attention_rollout", {}),
         ("kernel", {"unit": "word", "score": "log_prob"}), ("auto", {"masking": "delete", "seed": 3})]


def values() -> dict[str, np.ndarray]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_models import tiny

    import shapshift

    torch.set_num_threads(1)
    out = {}
    for arch in ("gpt2", "llama"):
        model, tok = tiny(arch)
        for i, (method, kw) in enumerate(CASES):
            texts = TEXTS[:1] if method in ("exact", "partition") else TEXTS
            exps = shapshift.explain(model, tok, texts, targets=[" good film"] * len(texts),
                                     context="Review:{input}\nSentiment:", method=method, max_evals=80,
                                     progress=False, **kw)
            for j, e in enumerate(exps):
                key = f"{arch}-{i}-{method}-{j}"
                out[f"{key}-values"], out[f"{key}-base"] = np.asarray(e.values), np.asarray(e.base_values)
                out[f"{key}-evals_precision"] = np.asarray([e.n_evals, e.precision])
                if e.error_std is not None:
                    out[f"{key}-error_std"] = np.asarray(e.error_std)
    return out


def compare(a_path: str, b_path: str) -> str:
    a, b = np.load(a_path), np.load(b_path)
    if set(a) != set(b):
        return f"different arrays: {sorted(set(a) ^ set(b))}"
    diffs = {k: float(np.nanmax(np.abs(a[k] - b[k]))) if a[k].size else 0.0 for k in a}
    nan_differ = [k for k in a if not np.array_equal(np.isnan(a[k]), np.isnan(b[k]))]
    worst = max(diffs, key=diffs.get)
    return (f"{len(a)} arrays ({len(CASES)} cases x 2 models), largest absolute difference {diffs[worst]:.3g} "
            f"({worst}); arrays whose NaNs differ: {nan_differ or 'none'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="write this tree's values here (.npz)")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = p.parse_args(argv)
    if args.out:
        np.savez(args.out, **values())
    if args.compare:
        print(compare(*args.compare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
