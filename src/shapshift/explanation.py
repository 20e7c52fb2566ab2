"""The package's explanation of one generation: :class:`Explanation`, what :func:`shapshift.explain` returns and
every stage reads, stores and draws.

One :class:`Explanation` holds the SHAP values of one example (every generated token with respect to every input
feature), their standard errors, the features and their tokens, the explained outputs, the estimator that ran,
the model evaluations it spent, the precision it reached and the settings that made it. It saves and loads itself
(:meth:`save` / :meth:`load`: a Parquet table, the source of truth, with its facts in the file's metadata), converts
to the long table of a run (:data:`TABLE_COLUMNS`, one row per input feature × generated token) and to the
``.npz`` of a per-example checkpoint, gives ``shap.Explanation`` for shap's plots (:meth:`to_shap`; ``shap``'s own
objects, e.g. from an older run folder, are read by :meth:`from_shap`), and draws itself as a SHAP text plot
(:mod:`shapshift.textplot`, the report's and the notebooks' one drawing path; ``_repr_html_`` in a notebook).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .textplot import MAX_CELLS, text_plot_html

#: The long table's columns (the explanation contract in DESIGN.md), then the optional ones:
#: ``error_std`` (NaN when exact), ``in_tokens`` (the tokens of a word or sentence feature) and the
#: per-example facts ``method``, ``n_evals``, ``precision``.
TABLE_COLUMNS = ["example_id", "condition", "out_pos", "out_token", "in_pos", "in_token", "value", "base_value"]
META = ("method", "n_evals", "precision")
#: The Parquet metadata key of :meth:`Explanation.save` (the facts that are not per row).
PARQUET_KEY = b"shapshift.explanation"


@dataclass
class Explanation:
    """SHAP values of one example: every generated token with respect to every input feature.

    ``values``: ``(n_features, n_outputs)`` in the score's units (log-odds or log-probability of each
    generated token); ``base_values``: ``(n_outputs,)``, the score of the fully masked input, so
    ``base_values + values.sum(0)`` is the full input's score; ``error_std``: ``(n_features, n_outputs)``
    standard errors (None for exact values); ``features``: each input feature's text (a token, word or
    sentence); ``feature_tokens``: the tokens of each feature when features are words or sentences;
    ``outputs``: the generated (explained) tokens; ``method``: the estimator that ran; ``n_evals``: the
    model evaluations it spent; ``precision``: the expected rank agreement of two independent runs it
    reached (:mod:`shapshift.explainers.precision`; 1 for exact values); ``settings``: those that made it (score,
    masking, unit, seed, budget, precision target, options); ``diagnostics``: what a backend counted for this example
    (e.g. requests); ``seconds``: the wall time it took (not stored with a run's results, which must not depend on
    it). ``data`` and ``output_names`` are shap's names of ``features`` and ``outputs``.
    """

    values: np.ndarray
    base_values: np.ndarray
    features: list[str]
    outputs: list[str]
    error_std: np.ndarray | None = None
    feature_tokens: list[list[str]] | None = None
    method: str | None = None
    n_evals: int | None = None
    precision: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim == 1:
            self.values = self.values[:, None]
        self.base_values = np.asarray(self.base_values, dtype=np.float64).reshape(-1)
        self.features = [str(t) for t in self.features]
        self.outputs = [str(t) for t in self.outputs]
        if self.error_std is not None:
            self.error_std = np.asarray(self.error_std, dtype=np.float64).reshape(self.values.shape)
        if self.feature_tokens is not None:
            self.feature_tokens = [[str(t) for t in g] for g in self.feature_tokens]
        n_in, n_out = self.values.shape
        if len(self.features) != n_in or len(self.outputs) != n_out or self.base_values.shape != (n_out,):
            raise ValueError(f"values {self.values.shape} do not match {len(self.features)} features, "
                             f"{len(self.outputs)} outputs and base values {self.base_values.shape}")

    # -- what it says ----------------------------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        """The features as shap names them (an object array of texts)."""
        return np.asarray(self.features, dtype=object)

    @property
    def output_names(self) -> list[str]:
        """The explained outputs as shap names them."""
        return list(self.outputs)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_features, n_outputs)``."""
        return self.values.shape

    @property
    def target(self) -> str:
        """The explained continuation: its outputs' texts joined."""
        return "".join(self.outputs)

    def __getitem__(self, key: Any) -> Any:
        """A slice of :meth:`to_shap` (``exp[:, 0]``: the first output's values): shap's plots slice what they are
        given, so ``shap.plots.text(exp)`` draws this object as it would shap's own."""
        return self.to_shap()[key]

    def stored(self) -> Explanation:
        """This explanation as a run stores it: everything but the wall time (equal results, equal bytes)."""
        return dataclasses.replace(self, seconds=None)

    def __repr__(self) -> str:
        return (f"Explanation({len(self.features)} features × {len(self.outputs)} outputs, target={self.target!r}, "
                f"method={self.method!r}, n_evals={self.n_evals}, precision={self.precision})")

    # -- shap --------------------------------------------------------------------------------------
    @classmethod
    def coerce(cls, exp: Any) -> Explanation:
        """``exp`` itself when it is an :class:`Explanation`, else :meth:`from_shap` of it (a ``shap.Explanation``, e.g.
        from a run folder written before this type)."""
        return exp if isinstance(exp, cls) else cls.from_shap(exp)

    @classmethod
    def from_shap(cls, exp: Any, **meta: Any) -> Explanation:
        """From a ``shap.Explanation`` (values ``(n_in, n_out)``); ``meta`` overrides its method/n_evals/precision."""
        outs = getattr(exp, "output_names", None)
        values = np.asarray(exp.values, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        found = {k: getattr(exp, k, None) for k in META}
        found = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in found.items()}
        return cls(values=values, base_values=exp.base_values, features=list(exp.data),
                   outputs=list(outs) if outs is not None else [f"out {i}" for i in range(values.shape[1])],
                   error_std=getattr(exp, "error_std", None), feature_tokens=getattr(exp, "unit_tokens", None),
                   **{**found, **meta})

    def to_shap(self) -> Any:
        """A ``shap.Explanation`` for shap's plots (``shap.plots.text(exp.to_shap())``); its ``unit_tokens``,
        ``method``, ``n_evals`` and ``precision`` attributes carry what shap has no field for."""
        import shap

        exp = shap.Explanation(values=self.values, base_values=self.base_values,
                               data=np.asarray(self.features, dtype=object), output_names=list(self.outputs),
                               error_std=self.error_std)
        if self.feature_tokens is not None:
            exp.unit_tokens = self.feature_tokens
        for k in META:
            if getattr(self, k) is not None:
                setattr(exp, k, getattr(self, k))
        return exp

    # -- the long table ------------------------------------------------------------------------------
    def to_frame(self, example_id: int, condition: str) -> pd.DataFrame:
        """One row per (output token, input feature): :data:`TABLE_COLUMNS`, ``error_std`` and the optional columns."""
        n_in, n_out = self.values.shape
        err = self.error_std if self.error_std is not None else np.full_like(self.values, np.nan)
        columns = {
            "example_id": np.full(n_in * n_out, int(example_id), dtype=np.int64), "condition": condition,
            "out_pos": np.tile(np.arange(n_out), n_in), "out_token": np.tile(np.asarray(self.outputs, dtype=object), n_in),
            "in_pos": np.repeat(np.arange(n_in), n_out), "in_token": np.repeat(np.asarray(self.features, dtype=object), n_out),
            "value": self.values.reshape(-1), "base_value": np.tile(self.base_values, n_in), "error_std": err.reshape(-1),
        }
        if self.feature_tokens is not None:
            columns["in_tokens"] = np.repeat(_object_array(self.feature_tokens), n_out)
        columns["method"] = self.method
        columns["n_evals"] = np.nan if self.n_evals is None else float(self.n_evals)
        columns["precision"] = np.nan if self.precision is None else float(self.precision)
        return pd.DataFrame(columns)

    @classmethod
    def from_frame(cls, rows: pd.DataFrame) -> Explanation:
        """From the rows of one example in the long table (any row order)."""
        g = rows.sort_values(["in_pos", "out_pos"])
        n_in, n_out = int(g["in_pos"].max()) + 1, int(g["out_pos"].max()) + 1
        first_in, first_out = g[g["in_pos"] == 0], g[g["out_pos"] == 0]
        err = g["error_std"].to_numpy(np.float64).reshape(n_in, n_out) if "error_std" in g else None
        tokens = None
        if "in_tokens" in g and first_out["in_tokens"].notna().all():
            tokens = [list(t) for t in first_out["in_tokens"]]
        meta = {k: _scalar(g[k].iloc[0]) if k in g else None for k in META}
        if meta["n_evals"] is not None:
            meta["n_evals"] = int(meta["n_evals"])
        return cls(values=g["value"].to_numpy(np.float64).reshape(n_in, n_out),
                   base_values=first_in["base_value"].to_numpy(np.float64), features=first_out["in_token"].tolist(),
                   outputs=first_in["out_token"].tolist(),
                   error_std=None if err is None or np.isnan(err).all() else err, feature_tokens=tokens, **meta)

    # -- a checkpoint file ---------------------------------------------------------------------------
    def to_npz(self, **extra_json: Any) -> bytes:
        """Plain arrays (no pickle): the checkpoint of one finished example; ``extra_json`` is kept beside it."""
        buf = io.BytesIO()
        # texts go in the JSON: numpy's fixed-width strings would drop a token's trailing NUL characters
        np.savez(buf, values=self.values, base_values=self.base_values,
                 error_std=np.asarray([] if self.error_std is None else self.error_std, dtype=np.float64),
                 meta=np.asarray(json.dumps({"features": self.features, "outputs": self.outputs,
                                             "feature_tokens": self.feature_tokens, "settings": self.settings,
                                             "diagnostics": self.diagnostics,
                                             **{k: getattr(self, k) for k in META}, **extra_json}, default=float)))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes | Any) -> tuple[Explanation, dict[str, Any]]:
        """The explanation and the extra JSON saved by :meth:`to_npz`."""
        with np.load(io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            err = z["error_std"]
            exp = cls(values=z["values"], base_values=z["base_values"], features=meta.pop("features"),
                      outputs=meta.pop("outputs"), error_std=err if err.size else None,
                      feature_tokens=meta.pop("feature_tokens", None), settings=meta.pop("settings", None) or {},
                      diagnostics=meta.pop("diagnostics", None) or {}, **{k: meta.pop(k, None) for k in META})
        return exp, meta

    # -- a file of its own --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write this explanation to ``path`` as Parquet: the long table (:meth:`to_frame`, example 0) with the facts
        that are not per row (settings, diagnostics, feature tokens) in the file's metadata; returns the path."""
        path = Path(path)
        table = pa.Table.from_pandas(self.to_frame(0, ""), preserve_index=False)
        facts = {"settings": self.settings, "diagnostics": self.diagnostics, "seconds": self.seconds,
                 "feature_tokens": self.feature_tokens}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               PARQUET_KEY: json.dumps(facts, default=float).encode()})
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)  # atomic: a reader sees the old file or the new one
        return path

    @classmethod
    def load(cls, path: str | Path) -> Explanation:
        """The explanation :meth:`save` wrote to ``path``."""
        table = pq.read_table(path)
        facts = json.loads((table.schema.metadata or {}).get(PARQUET_KEY, b"{}"))
        exp = cls.from_frame(table.to_pandas())
        return dataclasses.replace(exp, settings=facts.get("settings") or {}, diagnostics=facts.get("diagnostics") or {},
                                   seconds=facts.get("seconds"),
                                   feature_tokens=facts.get("feature_tokens", exp.feature_tokens))

    # -- drawing -------------------------------------------------------------------------------------
    def text_plot_html(self, *, cmax: float | None = None, how: str | None = None) -> str:
        """``shap.plots.text`` as HTML (:func:`shapshift.textplot.text_plot_html`): one selectable plot per
        generated token (``how=None``) or one of the values aggregated over them (``"sum"``, ``"mean_abs"``)."""
        return text_plot_html(self, cmax=cmax, how=how)

    def _repr_html_(self) -> str:
        """A notebook shows an explanation as its text plot: one per generated token, or, past
        :data:`shapshift.textplot.MAX_CELLS` value cells, one of the values summed over the generated tokens."""
        return self.text_plot_html(how=None if self.values.size <= MAX_CELLS else "sum")


def _scalar(v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def _object_array(lists: Sequence[Sequence[str]]) -> np.ndarray:
    """A 1-d object array of lists (numpy would make equal-length lists a 2-d array)."""
    out = np.empty(len(lists), dtype=object)
    for i, item in enumerate(lists):
        out[i] = [str(t) for t in item]
    return out
