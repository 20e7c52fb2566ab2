"""Shared fixtures: the real offline model and the tiny GPT-Neo are loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path:
    """``$SHAPSHIFT_SHARED/datasets``, else ``../shared/datasets`` beside the checkout, else this machine's
    ``/work/shared/datasets`` (a clean clone elsewhere, as CI makes, still finds the real data)."""
    candidates = [Path(os.environ["SHAPSHIFT_SHARED"])] if os.environ.get("SHAPSHIFT_SHARED") else []
    candidates += [REPO.parent / "shared", Path("/work/shared")]
    return next((c / "datasets" for c in candidates if (c / "datasets").is_dir()), candidates[0] / "datasets")


SHARED_DATASETS = shared_datasets()
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
def llama_server_spec(tmp_path_factory):
    """llama-cpp-python's server on the bundled SmolLM2 GGUF, started once for the session (tests/test_remote*.py and
    tests/test_api_tiers.py explain through it; each counts its own requests, through a proxy or the model's usage)."""
    from shapshift.remote.local_server import llama_server

    with llama_server(log_dir=tmp_path_factory.mktemp("llama_server")) as spec:
        yield spec


@pytest.fixture(scope="session")
def sst2_dev() -> Path:
    path = SHARED_DATASETS / "sst2" / "dev.tsv"
    if not path.exists():
        pytest.skip(f"{path} is not here: set SHAPSHIFT_SHARED to the folder that holds datasets/sst2")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine spin-wait in every op."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
