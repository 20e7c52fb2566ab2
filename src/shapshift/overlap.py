"""Agreement between two explanations of the same features ("explanation overlap").

Every metric takes two attribution vectors ``a`` and ``b`` of the same ``n`` features (1-D float
arrays, e.g. SHAP values of the input tokens in log-odds) and returns a float in a fixed range.
The top-k metrics follow Krishna et al. (2022), *The Disagreement Problem in Explainable Machine
Learning*, Sec. 3; the rank-biased overlap follows Webber, Moffat & Zobel (2010).

Conventions (the same in every function):

* **Importance** is ``|value|``: the top-k features are the k features of largest absolute value.
* **Ties** are broken deterministically by feature index: the ranking is a stable argsort of
  ``-|v|``, so of two equally important features the earlier one (lower index) ranks first.
  Consequently metrics are invariant to a joint permutation of the features whenever there are no
  ties in ``|a|`` or ``|b|``; with ties at the top-k boundary the tie-break decides membership.
* **k** larger than ``n`` is clipped to ``n`` (:func:`clip_k`); callers report the clipped value.
* **Signs** compare ``numpy.sign``: a zero agrees only with a zero.
* **Undefined values are NaN, never an exception**: Spearman ρ and Kendall τ of a constant vector
  (e.g. all zeros) or of ``n < 2`` features, cosine similarity of a zero vector, pairwise rank
  agreement of ``n < 2`` features.
* **Rank correlations** (Spearman ρ, Kendall τ-b, pairwise rank agreement) are computed on the
  importance ``|value|`` by default (``by="abs"``), as Krishna et al.'s rank correlation is over
  the ranks of feature importance; ``by="signed"`` ranks the signed values instead. Tied values get
  average ranks (``scipy.stats.rankdata``), so these three need no tie-break.
* **Cosine similarity** uses the signed values.
* **RBO** is Webber et al.'s extrapolated ``RBO_ext`` (their Eq. 32) for two rankings of equal
  length ``n`` (here: all features, ranked by importance). Because both rankings hold the same
  ``n`` items, agreement at depth ``n`` is 1, so ``RBO_ext = (1-p) Σ_{d=1..n} p^{d-1} A_d + p^n``:
  identical rankings give exactly 1, and the minimum for ``n`` features is above 0.

The metrics are declared in :data:`METRICS` (:class:`Metric`: name, label, range, direction, whether it is
evaluated at each k, whether the report's headline and the lenses show it). Compare, the lenses and the report
iterate it: a new metric is one :func:`register_metric` call. Built in: ``feature_agreement`` (the top-k
"explanation overlap"), ``rank_agreement``, ``sign_agreement``, ``signed_rank_agreement``, ``jaccard`` (all at a
k), and ``spearman``, ``kendall``, ``pairwise_rank_agreement``, ``cosine``, ``rbo`` (over all features).

Over 400 lines on purpose: every agreement metric sits beside the registry that declares it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _sstats

from .aggregation import aggregate, explanation_values
from .registries import Registry

#: Default fraction of the features for the length-adaptive k (k = ceil(0.2 n), at least 1).
TOP_FRACTION = 0.2
#: Default persistence of rank-biased overlap (the weight of the top d ranks is 1 - p^d).
RBO_P = 0.9
#: Columns of :func:`compare_explanations`' tidy table.
COMPARE_COLUMNS = ["scope", "out_pos", "metric", "k_spec", "k", "k_used", "n_features", "value"]


# -- inputs ---------------------------------------------------------------------------------------
def as_vector(v: Any, name: str = "v") -> np.ndarray:
    """``v`` as a finite 1-D float64 array; ValueError for NaN/inf or another number of dimensions."""
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per feature), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_vector(a, "a"), as_vector(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must explain the same features, got {a.shape[0]} and {b.shape[0]}.")
    return a, b


def clip_k(k: int, n: int) -> int:
    """``k`` clipped to ``[1, n]`` (``0`` when there are no features)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    return min(int(k), int(n))


def fraction_k(n: int, fraction: float = TOP_FRACTION) -> int:
    """The length-adaptive k: ``ceil(fraction * n)``, at least 1 (and at most ``n``)."""
    if n < 1:
        return 0
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def ranking(v: Any, by: str = "abs") -> np.ndarray:
    """Feature indices, most important first: stable argsort of ``-|v|`` (``by="abs"``) or ``-v``.

    Ties keep feature order (lower index first), so the ranking is deterministic.
    """
    return np.argsort(-_key(as_vector(v), by), kind="stable")


def _key(v: np.ndarray, by: str) -> np.ndarray:
    """The importance key that is ranked: ``|v|`` (``by="abs"``) or ``v`` (``by="signed"``)."""
    if by not in ("abs", "signed"):
        raise ValueError(f"by={by!r} is not 'abs' or 'signed'.")
    return np.abs(v) if by == "abs" else v


# -- top-k metrics (Krishna et al. 2022, Sec. 3) --------------------------------------------------
def topk_counts(a: Any, b: Any) -> dict[str, np.ndarray]:
    """Counts behind every top-k metric, for every k = 1..n at once; each array has shape ``(n,)``.

    Element ``k-1`` of ``common`` is ``|T_a ∩ T_b|`` at k; ``common_same_sign`` counts the common
    features with equal sign; ``same_rank`` the ranks ``< k`` holding the same feature in both;
    ``same_rank_sign`` those that also have equal sign. A feature is in both top-k sets exactly when
    its worse rank of the two is below k, so ``common`` is a cumulative histogram of that rank.
    """
    a, b = _pair(a, b)
    n = a.size
    ra, rb = ranking(a), ranking(b)
    pos_a, pos_b = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    pos_a[ra], pos_b[rb] = np.arange(n), np.arange(n)
    worse = np.maximum(pos_a, pos_b)  # the depth from which each feature is in both top sets
    same_sign = np.sign(a) == np.sign(b)
    same_rank = ra == rb
    return {
        "common": np.cumsum(np.bincount(worse, minlength=n)),
        "common_same_sign": np.cumsum(np.bincount(worse[same_sign], minlength=n)),
        "same_rank": np.cumsum(same_rank),
        "same_rank_sign": np.cumsum(same_rank & same_sign[ra]),
    }


def _share(counts: dict[str, np.ndarray], key: str, k: int) -> float:
    """``counts[key]`` at (clipped) ``k`` over k; NaN without features."""
    n = counts["common"].size
    if n == 0:
        return math.nan
    k = clip_k(k, n)
    return float(counts[key][k - 1]) / k


def _jaccard(counts: dict[str, np.ndarray], k: int) -> float:
    n = counts["common"].size
    if n == 0:
        return math.nan
    k = clip_k(k, n)
    c = float(counts["common"][k - 1])
    return c / (2 * k - c)


def feature_agreement(a: Any, b: Any, k: int) -> float:
    """Top-k overlap ``|T_a ∩ T_b| / k`` in [0, 1] (k clipped to n): the explanation overlap."""
    return _share(topk_counts(a, b), "common", k)


def rank_agreement(a: Any, b: Any, k: int) -> float:
    """Fraction of the k top ranks holding the same feature in both rankings, in [0, 1]."""
    return _share(topk_counts(a, b), "same_rank", k)


def sign_agreement(a: Any, b: Any, k: int) -> float:
    """Features in both top-k sets with the same sign, over k, in [0, 1]."""
    return _share(topk_counts(a, b), "common_same_sign", k)


def signed_rank_agreement(a: Any, b: Any, k: int) -> float:
    """Top ranks with the same feature and the same sign in both, over k, in [0, 1]."""
    return _share(topk_counts(a, b), "same_rank_sign", k)


def jaccard(a: Any, b: Any, k: int) -> float:
    """Jaccard index of the top-k sets ``|T_a ∩ T_b| / |T_a ∪ T_b|``, in [0, 1]."""
    return _jaccard(topk_counts(a, b), k)


def overlap_curve(a: Any, b: Any) -> np.ndarray:
    """Top-k overlap for every k = 1..n: array ``(n,)`` whose element ``k-1`` is ``feature_agreement(a, b, k)``."""
    common = topk_counts(a, b)["common"]
    return common / np.arange(1, common.size + 1)


# -- metrics over all features --------------------------------------------------------------------
def _constant(x: np.ndarray) -> bool:
    return x.size < 2 or bool(np.all(x == x[0]))


def spearman(a: Any, b: Any, by: str = "abs") -> float:
    """Spearman ρ of the importances (``|value|``; ``by="signed"``: the values), in [-1, 1].

    Average ranks for ties. NaN when either vector is constant (e.g. all zeros) or ``n < 2``.
    """
    a, b = _pair(a, b)
    ka, kb = _key(a, by), _key(b, by)
    if _constant(ka) or _constant(kb):
        return math.nan
    ra, rb = _sstats.rankdata(ka), _sstats.rankdata(kb)
    return float(np.clip(np.corrcoef(ra, rb)[0, 1], -1.0, 1.0))


def _pair_signs(a: np.ndarray, b: np.ndarray, by: str) -> tuple[np.ndarray, np.ndarray]:
    """``sign(key_i - key_j)`` of every feature pair ``i < j`` under both explanations."""
    ka, kb = _key(a, by), _key(b, by)
    i, j = np.triu_indices(a.size, k=1)
    return np.sign(ka[i] - ka[j]), np.sign(kb[i] - kb[j])


def kendall(a: Any, b: Any, by: str = "abs") -> float:
    """Kendall τ-b of the importances (``|value|``; ``by="signed"``: the values), in [-1, 1].

    ``τ_b = Σ s_a s_b / sqrt(#untied pairs in a · #untied pairs in b)`` over feature pairs, with
    ``s = sign`` of the pair's difference (the same as ``scipy.stats.kendalltau``). NaN when either
    vector is constant or ``n < 2``.
    """
    a, b = _pair(a, b)
    if _constant(_key(a, by)) or _constant(_key(b, by)):
        return math.nan
    sa, sb = _pair_signs(a, b, by)
    return float(np.clip(np.dot(sa, sb) / math.sqrt(np.count_nonzero(sa) * np.count_nonzero(sb)), -1.0, 1.0))


def pairwise_rank_agreement(a: Any, b: Any, by: str = "abs") -> float:
    """Fraction of the ``n(n-1)/2`` feature pairs ordered the same way by both, in [0, 1].

    Order compares importances (``|value|`` by default); a pair tied in both counts as agreeing, a
    pair tied in one only as disagreeing. NaN when ``n < 2`` (there are no pairs).
    """
    a, b = _pair(a, b)
    if a.size < 2:
        return math.nan
    sa, sb = _pair_signs(a, b, by)
    return float(np.mean(sa == sb))


def cosine_similarity(a: Any, b: Any) -> float:
    """Cosine of the angle between the signed value vectors, in [-1, 1]; NaN if either is all zeros."""
    a, b = _pair(a, b)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return math.nan
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def rbo(a: Any, b: Any, p: float = RBO_P) -> float:
    """Rank-biased overlap ``RBO_ext`` (Webber et al. 2010, Eq. 32) of the importance rankings, in (0, 1].

    ``p`` in (0, 1) is the persistence: the top ``d`` ranks carry weight ``1 - p^d`` (p = 0.9: the
    top 10 carry 65 %). With ``A_d`` the top-d overlap (:func:`overlap_curve`) and ``n`` features,
    ``RBO_ext = A_n p^n + (1-p)/p Σ_{d=1..n} A_d p^d``; ``A_n = 1`` as both rankings hold all
    ``n`` features. NaN when ``n = 0``.
    """
    return _rbo_from_curve(overlap_curve(a, b), p)


def _rbo_from_curve(curve: np.ndarray, p: float) -> float:
    """``RBO_ext`` from the top-d overlaps ``A_1..A_n`` (see :func:`rbo`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"RBO persistence p must be in (0, 1), got {p}.")
    n = curve.size
    if n == 0:
        return math.nan
    weights = (1.0 - p) * p ** np.arange(n)  # (1-p)/p * p^d for d = 1..n
    return float(min(1.0, curve[-1] * p**n + np.dot(weights, curve)))


# -- the registry of metrics -----------------------------------------------------------------------
@dataclass
class Pair:
    """Two attribution vectors ``(n,)`` compared by every metric, with what several metrics share computed once."""

    a: np.ndarray
    b: np.ndarray
    rbo_p: float = RBO_P
    by: str = "abs"  # what the rank correlations rank: |value| or the signed values

    @cached_property
    def counts(self) -> dict[str, np.ndarray]:
        return topk_counts(self.a, self.b)


@dataclass(frozen=True)
class Metric:
    """One agreement metric of two explanations, declared once.

    ``compute(pair, k)``: the value for a :class:`Pair` (``k`` is the top-k size when ``at_k``, else None);
    ``lo``/``hi``: its range; ``higher_is_similar``: its direction; ``headline``: the report shows it first;
    ``in_lenses``: the lenses' comparison with SHAP uses it; ``label``: how tables and figures name it.
    """

    name: str
    label: str
    compute: Callable[[Pair, int | None], float]
    at_k: bool = False
    lo: float = 0.0
    hi: float = 1.0
    higher_is_similar: bool = True
    headline: bool = False
    in_lenses: bool = False


METRICS: Registry[Metric] = Registry("metric")
#: Add a :class:`Metric` (its name must be new): every later comparison, the summary and the report carry it.
register_metric = METRICS.register


def metric_label(name: str) -> str:
    """How tables and figures name a metric (its name when unregistered, e.g. from an older run)."""
    return METRICS[name].label if name in METRICS else name


for _m in (
    Metric("feature_agreement", "top-k overlap", lambda p, k: _share(p.counts, "common", k), at_k=True,
           headline=True, in_lenses=True),
    Metric("rank_agreement", "rank agreement", lambda p, k: _share(p.counts, "same_rank", k), at_k=True),
    Metric("sign_agreement", "sign agreement", lambda p, k: _share(p.counts, "common_same_sign", k), at_k=True),
    Metric("signed_rank_agreement", "signed rank agreement", lambda p, k: _share(p.counts, "same_rank_sign", k),
           at_k=True),
    Metric("jaccard", "Jaccard of top-k", lambda p, k: _jaccard(p.counts, k), at_k=True),
    Metric("spearman", "Spearman ρ of |value|", lambda p, k: spearman(p.a, p.b, by=p.by), lo=-1.0, headline=True,
           in_lenses=True),
    Metric("kendall", "Kendall τ of |value|", lambda p, k: kendall(p.a, p.b, by=p.by), lo=-1.0),
    Metric("pairwise_rank_agreement", "pairwise rank agreement", lambda p, k: pairwise_rank_agreement(p.a, p.b, by=p.by)),
    Metric("cosine", "cosine similarity", lambda p, k: cosine_similarity(p.a, p.b), lo=-1.0),
    Metric("rbo", "rank-biased overlap", lambda p, k: _rbo_from_curve(
        p.counts["common"] / np.arange(1, p.counts["common"].size + 1), p.rbo_p), headline=True),
):
    register_metric(_m)


def k_specs(ks: Iterable[int], top_fraction: float | None = TOP_FRACTION) -> list[str]:
    """The k labels of a comparison: each fixed k (sorted, unique) and ``"20%"`` for the adaptive one."""
    specs = [str(k) for k in sorted({int(k) for k in ks})]
    if top_fraction:
        specs.append(f"{100 * top_fraction:g}%")
    return specs


def compare_vectors(a: Any, b: Any, ks: Sequence[int] = (1, 3, 5), *, top_fraction: float | None = TOP_FRACTION,
                    rbo_p: float = RBO_P) -> list[dict[str, Any]]:
    """Every metric of two attribution vectors: rows ``metric, k_spec, k, k_used, n_features, value``.

    Top-k metrics are evaluated at each ``k`` in ``ks`` (``k_spec`` its string, ``k_used`` clipped to
    ``n``) and at ``k = ceil(top_fraction * n)`` (``k_spec`` e.g. ``"20%"``); the global metrics have
    ``k_spec = "all"`` and ``k = k_used = None``.
    """
    a, b = _pair(a, b)
    n = a.size
    chosen: list[tuple[str, int]] = [(str(k), int(k)) for k in sorted({int(k) for k in ks})]
    if top_fraction:
        chosen.append((k_specs([], top_fraction)[0], fraction_k(n, top_fraction)))
    pair = Pair(a, b, rbo_p=rbo_p)
    rows: list[dict[str, Any]] = []
    for spec, k in chosen:
        rows += [{"metric": m.name, "k_spec": spec, "k": k, "k_used": clip_k(k, n), "n_features": n,
                  "value": m.compute(pair, k)} for m in METRICS.values() if m.at_k]
    rows += [{"metric": m.name, "k_spec": "all", "k": None, "k_used": None, "n_features": n, "value": m.compute(pair, None)}
             for m in METRICS.values() if not m.at_k]
    return rows


def compare_explanations(exp_a: Any, exp_b: Any, ks: Sequence[int] = (1, 3, 5), *, how: str = "sum",
                         per_token: bool = True, top_fraction: float | None = TOP_FRACTION,
                         rbo_p: float = RBO_P) -> pd.DataFrame:
    """Tidy table of every metric between two explanations of the same input tokens.

    ``exp_a``, ``exp_b``: ``shap.Explanation`` (or arrays) with values ``(n_in, n_out)``; ``n_in``
    must match, ``n_out`` may differ. Rows have ``scope="aggregate"`` (values aggregated over the
    generated tokens with :func:`aggregate` ``how``; ``out_pos`` is missing) and, when
    ``per_token``, ``scope="token"`` for each output position of the common prefix
    ``out_pos < min(n_out_a, n_out_b)``. Columns: :data:`COMPARE_COLUMNS`.
    """
    rows = explanation_rows(exp_a, exp_b, ks, how=how, per_token=per_token, top_fraction=top_fraction, rbo_p=rbo_p)
    return tidy(pd.DataFrame(rows, columns=COMPARE_COLUMNS))


def explanation_rows(exp_a: Any, exp_b: Any, ks: Sequence[int] = (1, 3, 5), *, how: str = "sum",
                     per_token: bool = True, top_fraction: float | None = TOP_FRACTION,
                     rbo_p: float = RBO_P) -> list[dict[str, Any]]:
    """The rows of :func:`compare_explanations` as dicts (cheaper to collect over many examples)."""
    va, vb = explanation_values(exp_a), explanation_values(exp_b)
    if va.shape[0] != vb.shape[0]:
        raise ValueError(f"the explanations have {va.shape[0]} and {vb.shape[0]} input tokens; "
                         "overlap needs the same features.")
    rows = [{"scope": "aggregate", "out_pos": None, **r}
            for r in compare_vectors(aggregate(va, how), aggregate(vb, how), ks, top_fraction=top_fraction, rbo_p=rbo_p)]
    if per_token:
        for pos in range(min(va.shape[1], vb.shape[1])):
            rows += [{"scope": "token", "out_pos": pos, **r}
                     for r in compare_vectors(va[:, pos], vb[:, pos], ks, top_fraction=top_fraction, rbo_p=rbo_p)]
    return rows


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Column dtypes of a comparison table: nullable ints for ``out_pos``, ``k``, ``k_used``."""
    df = df.copy()
    for col in ("out_pos", "k", "k_used"):
        if col in df:
            df[col] = df[col].astype("Int64")
    if "n_features" in df:
        df["n_features"] = df["n_features"].astype("int64")
    df["value"] = df["value"].astype("float64")
    return df
