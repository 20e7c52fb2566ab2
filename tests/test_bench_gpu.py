"""benchmarks/bench_gpu.py runs end to end on a CPU in its --tiny mode (the GPU run is the same code on CUDA)."""

from __future__ import annotations

import sys

import pandas as pd
from conftest import REPO


def test_bench_gpu_tiny_mode_writes_its_table(tmp_path, sst2_dev, one_thread):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert bench_gpu.main(["--device", "cpu", "--tiny", "--n", "1", "--dtypes", "bfloat16", "--max-evals", "40",
                           "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "bench_gpu.csv")
    assert len(df) == 1 and df.loc[0, "model"] == "tiny-gpt-neo" and df.loc[0, "dtype"] == "bfloat16"
    row = df.iloc[0]
    assert 0 < row.n_evals <= 40 and 0 < row.precision <= 1 and row.batch_size >= 1 and row.seconds > 0
    assert "Random weights" in (tmp_path / "GPU.md").read_text()
