"""Shared fixtures: the real offline model and the tiny GPT-Neo are loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
DEMO_DATA = REPO / "data" / "demo_reviews.csv"


@pytest.fixture(scope="session")
def smollm2():
    from shapshift import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_neo():
    from shapshift import load_model

    return load_model("tiny-gpt-neo")


@pytest.fixture(scope="session")
def sst2_dev() -> Path:
    path = SHARED_DATASETS / "sst2" / "dev.tsv"
    if not path.exists():
        pytest.skip(f"{path} is not here (../shared/datasets lies beside the checkout in CI)")
    return path
