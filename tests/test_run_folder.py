"""What a run and the CLI leave on disk (issue 28, item 8): only the run folder and the caches a user asked for.

An empty ``SHAPSHIFT_CACHE`` is the default cache (not the current folder); a finished stage leaves no
empty ``.partial/``; a run that fails before it wrote anything leaves no folder holding only
``manifest.json``; the README's ``explain-text --out`` files go where git ignores them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from shapshift import stages
from shapshift.errors import ShapshiftError
from shapshift.models import cache_dir
from shapshift.pipeline import run
from shapshift.store import RunStore
from shapshift.validation import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_cache_setting_is_the_default_cache(monkeypatch, value):
    """SHAPSHIFT_CACHE="" wrote a 540 MB model copy into the current folder."""
    monkeypatch.setenv("SHAPSHIFT_CACHE", value)
    assert cache_dir() == Path.home() / ".cache" / "shapshift"
    monkeypatch.setenv("SHAPSHIFT_CACHE", "/tmp/elsewhere")
    assert cache_dir() == Path("/tmp/elsewhere")


def test_a_finished_stage_leaves_no_empty_partial_folder(tmp_path):
    store = RunStore(tmp_path / "run")
    store.path(".partial/02_baseline").mkdir(parents=True)
    (store.path(".partial/02_baseline") / "example-1.npz").write_bytes(b"x")
    stages.clear_partial(store, "explain")
    assert not store.path(".partial").exists()
    store.path(".partial/03_zero_shot").mkdir(parents=True)  # another stage's unfinished examples stay
    stages.clear_partial(store, "explain")
    assert store.path(".partial/03_zero_shot").is_dir()


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path):
    """A failed run left a folder holding only manifest.json."""
    cfg = load_config({"output_dir": str(tmp_path), "name": "broken", "model": {"spec": "tiny-gpt-neo"},
                               "data": {"source": str(tmp_path / "no-such-file.csv")}})
    with pytest.raises(ShapshiftError):
        run(cfg)
    assert not (tmp_path / "broken").exists(), list((tmp_path / "broken").iterdir())


def test_the_readmes_explain_text_files_are_git_ignored():
    """`explain-text --out paris.html` wrote into the repository root, which .gitignore did not cover."""
    outs = []
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if re.match(r"\s*shapshift explain-text ", line):
            words = shlex.split(line, comments=True)
            outs.append(words[words.index("--out") + 1])
    assert outs
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *outs], cwd=REPO, capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(outs), f"not ignored: {set(outs) - set(ignored.stdout.split())}"
