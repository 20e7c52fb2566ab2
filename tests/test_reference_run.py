"""A redesign must not change results: the reference run (tests/reference_run.py) against its stored numbers.

Every number the run reports (explanation values, base values and standard errors of every condition
and of the noise-floor rerun, explained log-probabilities, fine-tuning losses and task metric,
overlap metrics, verdicts) must equal the stored ones within 1e-6; texts and tokens exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from reference_run import numbers, run_reference, stored

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, pd.DataFrame]:
    return numbers(run_reference(tmp_path_factory.mktemp("reference")))


def _differences(name: str, got: pd.DataFrame, want: pd.DataFrame) -> list[str]:
    if list(got.columns) != list(want.columns) or len(got) != len(want):
        return [f"{name}: shape or columns differ: {list(got.columns)} x {len(got)} vs {list(want.columns)} x {len(want)}"]
    problems = []
    for col in want.columns:
        a, b = got[col].to_numpy(), want[col].to_numpy()
        if pd.api.types.is_float_dtype(want[col]):
            bad = ~np.isclose(a.astype(float), b.astype(float), rtol=0, atol=TOLERANCE, equal_nan=True)
        else:
            bad = np.array([str(x) != str(y) for x, y in zip(a, b)])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            problems.append(f"{name}.{col}: {int(bad.sum())} of {len(bad)} rows differ, first at row {i}: "
                            f"{a[i]!r} vs stored {b[i]!r} ({want.iloc[i].to_dict()})")
    return problems


def test_stored_reference_is_complete():
    assert set(stored()) == {"explanations", "generations", "finetune", "overlap", "verdicts"}
    assert len(stored()["explanations"]["stem"].unique()) == 5


@pytest.mark.parametrize("table", ["explanations", "generations", "finetune", "overlap", "verdicts"])
def test_same_numbers_as_the_stored_reference_run(reference, table):
    problems = _differences(table, reference[table], stored()[table])
    assert not problems, ("The run's numbers changed. If the change is meant to alter results, regenerate the "
                          "reference (`.venv/bin/python tests/reference_run.py --write`) and say why in the commit.\n"
                          + "\n".join(problems))
