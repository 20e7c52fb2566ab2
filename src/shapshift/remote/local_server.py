"""llama-cpp-python's server for the bundled SmolLM2 GGUF (the file the offline default de-quantises).

``with llama_server() as spec: load_model(spec)`` serves it on a free local port for as long as the
block runs: the tests (tests/test_remote*.py) and benchmarks/bench_remote.py explain through it. It
needs the optional extra ``shapshift[server]`` (``make test`` installs it).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: Seconds to wait for the server to answer /v1/models.
START_TIMEOUT_S = 180


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(*extra: str, log_dir: Path | None = None, n_threads: int = 1) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` on a free port; yields its ``openai-compatible:`` spec, stops it after.

    ``extra``: more server options (``--logits_all false`` ...); the log goes to ``log_dir`` (default:
    the temporary folder).
    """
    import httpx

    from ..models import smollm2_gguf_path

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", str(n_threads), "--verbose", "false", *extra]
    log_path = Path(log_dir or tempfile.gettempdir()) / f"llama_server_{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not answer in {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield f"openai-compatible:http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
