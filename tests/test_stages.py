"""The table of stages: what each writes is found by its prefixes, a redone stage removes the later ones' results,
a missing input names the stage (and notebook) to run, and the CLI's verbs are the table's."""

from __future__ import annotations

import pytest

from shapshift import stages
from shapshift.cli import build_parser
from shapshift.errors import ArtifactError, ConfigError
from shapshift.store import RunStore
from shapshift.validation import load_config

FILES = ["01_dataset.parquet", "02_generations.parquet", "02_baseline.parquet", "02_baseline__attention.parquet",
         "03_zero_shot.pkl", "03_mine.parquet", "03_generations.parquet", "adapters/adapter/a.bin",
         "04_overlap.parquet", "figures/x.png", "report.html", ".partial/02_baseline/example-1.npz",
         ".partial/03_mine/example-1.npz", "notes.txt"]


@pytest.fixture
def folder(tmp_path):
    store = RunStore(tmp_path / "run")
    for name in FILES:
        store.path(name).parent.mkdir(parents=True, exist_ok=True)
        store.path(name).write_bytes(name.encode())
    store.record(*[n for n in FILES if not n.startswith(".partial")])
    store.update_manifest(stages={s: {"complete": True} for s in ("preprocess", "explain", "adapt", "adapt:mine",
                                                                  "compare")})
    return store


def _left(store: RunStore) -> set[str]:
    return {str(p.relative_to(store.dir)) for p in store.dir.rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_redoing_adapt_removes_its_and_compares_results_only(folder):
    removed = stages.invalidate_from(folder, "adapt")
    assert set(removed) == {"03_zero_shot.pkl", "03_mine.parquet", "03_generations.parquet", "adapters/",
                            "04_overlap.parquet", "figures/", "report.html"}
    assert _left(folder) == {"01_dataset.parquet", "02_generations.parquet", "02_baseline.parquet",
                             "02_baseline__attention.parquet", ".partial/02_baseline/example-1.npz",
                             ".partial/03_mine/example-1.npz", "notes.txt"}
    man = folder.manifest()
    assert set(man["stages"]) == {"preprocess", "explain"}
    assert all(not n.startswith(("03_", "04_", "adapters/", "figures/")) for n in man["artifacts"])


def test_a_fresh_explain_also_drops_the_unfinished_examples(folder):
    stages.invalidate_from(folder, "explain", partial=True)
    assert _left(folder) == {"01_dataset.parquet", "notes.txt"}


def test_each_artifact_belongs_to_one_stage():
    assert stages.stage_of("02_baseline__integrated_gradients.pkl").name == "explain"
    assert stages.stage_of("03_my_prompt.parquet").name == "adapt"
    assert stages.stage_of("report.html").name == "compare" and stages.stage_of("manifest.json") is None


def test_missing_inputs_name_the_stage_and_notebook_to_run(tmp_path):
    cfg = load_config({"output_dir": str(tmp_path)})
    with pytest.raises(ArtifactError, match="stage preprocess .*01_preprocess.ipynb"):
        stages.require_inputs(cfg, "explain")
    with pytest.raises(ArtifactError, match="stage explain"):
        stages.require_inputs(cfg, "compare")
    stages.require_inputs(cfg, "preprocess")
    with pytest.raises(ConfigError, match="Use one of preprocess, explain, adapt, compare"):
        stages.get("train")


def test_the_cli_has_one_verb_per_stage():
    verbs = set(build_parser()._subparsers._group_actions[0].choices)
    assert set(stages.STAGES) | {"run", "report", "explain-text"} == verbs
