"""The design choices of the ``regression`` estimator (issue 27), measured on recorded coalition tables.

Replays ``benchmarks/tables`` (attention masking, log-odds: the tables every choice was made on; the deletion
tables of ``benchmarks/tables_delete_log_prob`` are kept for the report of ``study_estimators.py``) without a
model. Per budget ``c * n + 2`` (c = 4, 8, 16), mean relative error over tables and seeds of:

- ``regression`` with its defaults, with pairwise proxy terms (``pair_scale``), and with other allocations of
  the pairs over the size classes (1 / sqrt(t (n - t)), the Shapley kernel's weights; the default is uniform over sizes);
- a variant not kept: the same proxy with an unbiased correction from antithetic permutation chains (marginal
  contributions of the residual) instead of size-stratified complementary pairs;
- the coverage of regression's 95 % intervals for ``SE_CALIBRATION`` 1 and its default;
- the residual left by least-squares fits on *all* ``2^n`` coalitions (linear + size terms; with pairwise terms),
  the floor no proxy of those terms goes below.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_regression.py            # ~2 min; writes REGRESSION_DESIGN.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_estimators import load_tables, table_task  # noqa: E402

import shapshift.explainers.regression as reg  # noqa: E402
from shapshift.explainers import REGISTRY  # noqa: E402
from shapshift.explainers.exact import all_coalitions  # noqa: E402
from shapshift.scoring import TableScorer  # noqa: E402

HERE = Path(__file__).resolve().parent
PER_FEATURE = (4, 8, 16)


def rel_error(values: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(values - exact) / np.linalg.norm(exact))


def codes(masks: np.ndarray) -> np.ndarray:
    """Row of each coalition ``(m, n)`` in a bit-indexed table."""
    return (masks.astype(np.int64) << np.arange(masks.shape[1])).sum(axis=1)


def run_variant(tables: list[dict], seeds: int, make, per_feature=PER_FEATURE) -> dict[int, tuple[float, float]]:
    """Mean relative error and coverage per budget of ``make(table, budget, seed) -> (values, error_std)``."""
    out = {}
    for c in per_feature:
        errs, cover = [], []
        for t in tables:
            budget = c * t["n"] + 2
            if budget >= 2 ** t["n"]:
                continue
            for seed in range(seeds):
                values, se = make(t, budget, seed)
                errs.append(rel_error(values, t["exact"]))
                if se is not None and np.all(np.isfinite(se)):
                    cover.append(np.mean(np.abs(values - t["exact"]) <= 1.96 * se))
        out[c] = (float(np.mean(errs)), float(np.mean(cover)) if cover else float("nan"))
    return out


def estimator(name: str, options: dict | None = None):
    def make(t, budget, seed):
        att = REGISTRY[name](options or {}).attribute(table_task(t["table"], budget, seed), TableScorer(t["table"]))
        return att.values, att.error_std
    return make


def with_shares(exponent: float):
    """regression with pairs allocated to the classes by ``sum_t (t (n - t))^-exponent`` (0: uniform over sizes)."""
    def shares(n: int) -> np.ndarray:
        w = np.array([sum((t * (n - t)) ** -exponent for t in c) for c in reg.size_classes(n)])
        return w / w.sum()

    def make(t, budget, seed):
        saved, reg.class_shares = reg.class_shares, shares
        try:
            return estimator("regression")(t, budget, seed)
        finally:
            reg.class_shares = saved
    return make


def with_calibration(factor: float):
    def make(t, budget, seed):
        values, se = estimator("regression")(t, budget, seed)
        return values, se / reg.SE_CALIBRATION * factor
    return make


def size_effects(z: np.ndarray, options: reg.RegressionOptions) -> np.ndarray:
    """``D_i(t)`` summed over every size ``t = 1 .. n - 1`` of the proxy's kernel functions ``(n, m)``."""
    n = z.shape[1]
    zt = z.T.astype(np.float64)
    size = zt.sum(axis=0)
    base = (n * zt - size) / (n - 1)
    q_z = reg._size_features(size, n, options.slope_degree) * reg._slope_scales(options.slope_scale, options.slope_degree)
    q_all = reg._size_features(np.arange(1, n), n, options.slope_degree).sum(axis=0)
    return base * (q_z @ q_all)[None, :]


def permutation_variant(t: dict, budget: int, seed: int) -> tuple[np.ndarray, None]:
    """Not kept: the same (linear, size-modulated) proxy, and the unbiased correction from the marginal contributions
    of its residual along antithetic permutation chains, each chain's proxy fitted without its pair of chains."""
    table, n = t["table"], t["n"]
    options = reg.RegressionOptions()
    rng = np.random.default_rng(seed)
    fixed = np.concatenate([np.zeros((1, n), bool), np.ones((1, n), bool)])
    n_pairs = max(1, (budget - 2) // (2 * (n - 1)))
    chains = []
    for _ in range(n_pairs):
        order = rng.permutation(n)
        for o in (order, order[::-1]):
            ranks = np.empty(n, int)
            ranks[o] = np.arange(n)
            chains.append(ranks[None, :] < np.arange(n + 1)[:, None])  # sizes 0..n
    z = np.concatenate([fixed, *[c[1:n] for c in chains]])
    group = np.repeat(np.arange(2 * n_pairs) // 2, n - 1)
    y = table[codes(z)]
    y0 = y[:2].mean(axis=0)
    p = np.linalg.inv(reg.proxy_kernel(z, z, options) + options.ridge * n / 2 * np.eye(len(z)))
    alpha = p @ (y - y0)
    eff = size_effects(z, options)
    ends = reg.proxy_kernel(fixed, z, options)
    estimates = []
    for j in range(n_pairs):
        rows = 2 + np.where(group == j)[0]
        a = alpha - p[:, rows] @ np.linalg.solve(p[np.ix_(rows, rows)], alpha[rows])
        phi_h = (eff @ a + (ends[1] - ends[0]) @ a) / n
        for chain in chains[2 * j: 2 * j + 2]:
            resid = table[codes(chain)] - (reg.proxy_kernel(chain, z, options) @ a + y0)
            marginal = np.zeros((n, table.shape[1]))
            marginal[np.argmax(np.diff(chain.astype(int), axis=0), axis=1)] = np.diff(resid, axis=0)
            estimates.append(phi_h + marginal)
    return np.mean(estimates, axis=0), None


def residual_floor(t: dict) -> tuple[float, float]:
    """Residual rms over the middle sizes of least squares on every coalition: (linear + size one-hot + linear
    effects varying linearly and quadratically with the size) and the same with every pairwise term."""
    n, table = t["n"], t["table"]
    x = all_coalitions(n).astype(float)
    size = x.sum(axis=1)
    leg = np.polynomial.legendre.legvander(2 * size / n - 1, 2)
    base = np.c_[np.eye(n + 1)[size.astype(int)], x, x * leg[:, 1:2], x * leg[:, 2:3]]
    pairs = np.stack([x[:, i] * x[:, j] for i in range(n) for j in range(i + 1, n)], axis=1)
    mid = (size > 1) & (size < n - 1)
    out = []
    for a in (base, np.c_[base, pairs]):
        r = table - a @ np.linalg.lstsq(a, table, rcond=None)[0]
        out.append(float(np.sqrt((r[mid] ** 2).mean())))
    return out[0], out[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", type=Path, default=HERE / "tables")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=HERE / "REGRESSION_DESIGN.md")
    args = ap.parse_args(argv)
    tables = load_tables(args.tables)
    variants = {
        "kernel": estimator("kernel"),
        "quadrature": estimator("quadrature"),
        "regression (defaults)": estimator("regression"),
        "regression, pair_scale=0.5": estimator("regression", {"pair_scale": 0.5}),
        "regression, pair_scale=2": estimator("regression", {"pair_scale": 2.0}),
        "regression, slope_degree=0 (linear proxy)": estimator("regression", {"slope_degree": 0}),
        "regression, pairs by 1 / sqrt(t (n - t))": with_shares(0.5),
        "regression, pairs by kernel weight": with_shares(1.0),
        "regression, SE_CALIBRATION=1": with_calibration(1.0),
        "not kept: permutation-chain correction": permutation_variant,
    }
    results = {name: run_variant(tables, args.seeds, make) for name, make in variants.items()}
    head = "| variant | " + " | ".join(f"error {c}n+2 | coverage {c}n+2" for c in PER_FEATURE) + " |"
    lines = [
        "# regression's design choices on recorded coalition tables", "",
        f"{len(tables)} tables of `{args.tables.relative_to(HERE.parent) if args.tables.is_relative_to(HERE.parent) else args.tables}`"
        f" (n = {', '.join(str(t['n']) for t in tables)}), {args.seeds} seeds per budget; relative error of the "
        "values against the exact ones and coverage of the 95 % intervals. Made by:", "",
        f"    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/study_regression.py{' '.join([''] + sys.argv[1:])}", "",
        head, "|" + "---|" * (1 + 2 * len(PER_FEATURE)),
    ]
    for name, res in results.items():
        cells = " | ".join(f"{res[c][0]:.4f} | {res[c][1]:.3f}" for c in PER_FEATURE)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "## The residual no proxy of these terms goes below", "",
              "Residual rms of the values over the middle sizes, least squares on all 2^n coalitions:", "",
              "| table | linear + size terms | with every pairwise term | ratio |", "|---|---|---|---|"]
    for t in tables:
        lin, pair = residual_floor(t)
        lines.append(f"| {t['name']} | {lin:.3f} | {pair:.3f} | {pair / lin:.2f} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
