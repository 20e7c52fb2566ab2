"""A small real run whose numbers are stored in ``tests/data/reference_run/``: the guard of redesigns.

The run is the offline demo (``configs/demo.yaml``, SmolLM2-135M-Instruct) cut down to 3 explained
examples, 2 demonstrations and 2 LoRA steps, on one torch thread. :func:`numbers` reads every number
a run reports from its artifacts: the explanation tables (values, base values, standard errors) of
every condition and the noise-floor rerun, the generations' explained log-probabilities, the
fine-tuning losses and task metric, the overlap metrics and the verdicts.
``tests/test_reference_run.py`` runs it again and compares with the stored numbers within 1e-6.

Regenerate the stored numbers only when a change is meant to alter results, and say so in the commit:

    .venv/bin/python tests/reference_run.py --write
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from shapshift.validation import load_config

REPO = Path(__file__).resolve().parents[1]
STORED = REPO / "tests" / "data" / "reference_run"
OVERRIDES = [
    "data.n_explain=3", "adapt.k_shot=2", "adapt.finetune.max_steps=2", "adapt.finetune.batch_size=4",
    "explain.max_evals=48", "name=reference",
]
#: Condition stems whose values come from the fine-tuned model (compared apart: see the test).
FINETUNED = ("03_finetuned",)


def run_reference(out: Path) -> Path:
    """Run the reference configuration into ``out``; returns the run folder."""
    import torch

    from shapshift.pipeline import STAGES, run

    torch.set_num_threads(1)
    cfg = load_config(REPO / "configs" / "demo.yaml", [*OVERRIDES, f"output_dir={out}"])
    data = cfg.data.source
    if not Path(data).is_absolute():
        cfg = load_config(REPO / "configs" / "demo.yaml",
                                  [*OVERRIDES, f"output_dir={out}", f"data.source={REPO / data}"])
    return run(cfg, STAGES, fresh=True).dir


def numbers(run_dir: Path) -> dict[str, pd.DataFrame]:
    """Every number the run reports, as named tables with a stable row order."""
    run_dir = Path(run_dir)
    out = {}
    frames = []
    for stem in ("02_baseline", "02_baseline_rerun", "03_zero_shot", "03_few_shot", "03_finetuned"):
        df = pd.read_parquet(run_dir / f"{stem}.parquet")
        frames.append(df.assign(stem=stem)[["stem", "example_id", "out_pos", "in_pos", "in_token", "value",
                                            "base_value", "error_std"]])
    out["explanations"] = pd.concat(frames, ignore_index=True).sort_values(
        ["stem", "example_id", "out_pos", "in_pos"], ignore_index=True)
    gens = [pd.read_parquet(run_dir / name) for name in ("02_generations.parquet", "03_generations.parquet")]
    out["generations"] = pd.concat(gens, ignore_index=True)[
        ["condition", "example_id", "generated_text", "label_match", "explained_logprob"]
    ].sort_values(["condition", "example_id"], ignore_index=True)
    ft = json.loads((run_dir / "03_finetune.json").read_text())
    out["finetune"] = pd.DataFrame(
        [{"what": f"loss_{i}", "value": float(v)} for i, v in enumerate(ft["losses"])]
        + [{"what": f"{when}_{k}", "value": float(v)} for when in ("before", "after") for k, v in ft[when].items()
           if isinstance(v, int | float)])
    overlap = pd.read_parquet(run_dir / "04_overlap.parquet")
    keys = [c for c in ("example_id", "condition_a", "condition_b", "scope", "out_pos", "metric", "k_spec", "k")
            if c in overlap]
    out["overlap"] = overlap[[*keys, "value"]].sort_values(keys, ignore_index=True)
    verdicts = pd.read_parquet(run_dir / "04_verdicts.parquet")
    out["verdicts"] = verdicts.sort_values(list(verdicts.columns[:2]), ignore_index=True)
    return out


def write(tables: dict[str, pd.DataFrame]) -> None:
    STORED.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(STORED / f"{name}.parquet", index=False)


def stored() -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted(STORED.glob("*.parquet"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="store this run's numbers as the reference")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tables = numbers(run_reference(Path(tmp)))
    if args.write:
        write(tables)
        print(f"stored {', '.join(tables)} in {STORED}")
    else:
        for name, df in tables.items():
            print(name, df.shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
