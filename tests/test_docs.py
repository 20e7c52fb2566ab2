"""What the README and the notebooks state about the code is checked against the code where it can be
(issue 28, item 9): which estimator ``auto`` runs, the defaults they quote, the demo's measured time,
integrated gradients' reference and what the reference target is.

Prose is matched by patterns: a statement rephrased out of a pattern is no longer checked, so the
patterns are kept broad (whitespace and line breaks are normalised first).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shapshift.explainers.api import AUTO_PRECISION, AUTO_PRECISION_GPU
from shapshift.explainers.exact import EXACT_LIMIT
from shapshift.explainers.gradients import IG_BASELINE, IG_MAX_STEPS, IG_STEPS, IG_TOLERANCE
from shapshift.explainers.registry import REGISTRY, auto_candidates

REPO = Path(__file__).resolve().parents[1]


def notebook_prose(path: Path) -> str:
    """A notebook's markdown cells and ``#@markdown`` form lines."""
    parts = []
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            parts.append(source)
        else:
            parts += [ln.split("#@markdown", 1)[1] for ln in source.splitlines() if "#@markdown" in ln]
    return "\n\n".join(parts)


DOCS = {"README.md": (REPO / "README.md").read_text(encoding="utf-8"),
        **{p.name: notebook_prose(p) for p in sorted((REPO / "notebooks").glob("*.ipynb"))}}
FLAT = {name: " ".join(text.split()) for name, text in DOCS.items()}


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`(*])", text)


def test_what_the_docs_say_auto_runs_is_on_its_ladder():
    """'`auto` keeps kernel' (it runs quadrature): every estimator the docs say auto keeps/runs/uses is one it may choose."""
    ladder = {c.name for c in auto_candidates()}
    said = [(name, m.group(2)) for name, text in FLAT.items()
            for m in re.finditer(r"`?auto`? (keeps|runs|uses|chooses|picks) `?([a-z_]+)`?", text)
            if m.group(2) in REGISTRY]
    wrong = [(name, method) for name, method in said if method not in ladder]
    assert not wrong, f"the docs say auto runs {wrong}; its ladder is {sorted(ladder)}"
    # the README's table of estimators: "`exact` up to 5 tokens, `quadrature` ... up to 64 tokens; `hierarchical` beyond"
    row = re.search(r"\| `auto` \(default\) \| `(\w+)` up to (\d+) tokens, `(\w+)`.*? up to (\d+) tokens; `(\w+)` beyond",
                    FLAT["README.md"])
    assert row, "the README's auto row is gone or reworded"
    ladder_rows = [(c.name, c.auto_max_features) for c in auto_candidates()]
    first, n1, second, n2, last = row.groups()
    assert [(first, int(n1)), (second, int(n2)), (last, None)] == ladder_rows, (row.group(0), ladder_rows)


def demo_timing() -> dict[str, int]:
    """Whole-run seconds per method from benchmarks/DEMO_TIMING.md's table."""
    rows = re.findall(r"^\| (\w+) \| \d+ \| (\d+) \|", (REPO / "benchmarks" / "DEMO_TIMING.md").read_text(), re.M)
    return {method: int(seconds) for method, seconds in rows}


def test_the_demo_times_the_readme_quotes_are_the_measured_ones():
    """'the demo run takes 134 s' beside '229 s': a time quoted in the present tense is the measured one."""
    measured = demo_timing()
    assert "auto" in measured
    quoted = [(m.group(2), int(m.group(1))) for m in re.finditer(r"demo run takes (\d+) s with `(\w+)`", FLAT["README.md"])]
    quoted += [("auto", int(m.group(1))) for m in re.finditer(r"\((\d+) s measured, `benchmarks/DEMO_TIMING\.md`",
                                                                FLAT["README.md"])]
    assert quoted, "no quoted demo time found: the pattern or the README changed"
    assert all(measured.get(method) == seconds for method, seconds in quoted), (quoted, measured)


def test_integrated_gradients_reference_is_described_as_the_default():
    """Notebooks 02 and 03 said integrated gradients adds up to the difference 'from an all-zero input embedding'."""
    kinds = {"zero": r"all-zero|zero embedding", "pad": r"pad token", "mean": r"mean (token )?embedding"}
    claims = [(name, s) for name, text in FLAT.items() for s in sentences(text)
              if re.search(r"integrated gradients", s, re.I) and re.search(r"(adds up to|starts) .*from", s)]
    assert claims, "no statement of integrated gradients' reference found"
    for name, s in claims:
        named = [k for k, pattern in kinds.items() if re.search(pattern, s)]
        assert IG_BASELINE in named, f"{name}: {s!r} (default {IG_BASELINE!r})"


def test_the_reference_target_is_not_said_to_always_start_with_a_space():
    """Under a chat template the reference target has no leading space (data.target_prefix: auto)."""
    for name, text in FLAT.items():
        for s in sentences(text):
            if re.search(r"label name with a leading space", s):
                assert re.search(r"chat|plain prompt|prompt format", s), f"{name}: {s!r}"


@pytest.mark.parametrize("pattern,value", [
    (r"`n_steps`, default (\d+)", IG_STEPS),
    (r"`tolerance`, default (\d+) %", round(IG_TOLERANCE * 100)),
    (r"`max_steps`, default (\d+)", IG_MAX_STEPS),
    (r"refused past (\d+) features", EXACT_LIMIT),
    (r"default (0\.\d+) on CPU", AUTO_PRECISION),
    (r"(0\.\d+) on a GPU", AUTO_PRECISION_GPU),
])
def test_the_defaults_the_readme_quotes_are_the_codes(pattern, value):
    found = re.findall(pattern, FLAT["README.md"])
    assert found, f"{pattern!r} is no longer in the README"
    assert all(float(v) == value for v in found), (pattern, found, value)
