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

from ..models import cache_dir, smollm2_gguf_path

#: Seconds to wait for the server to answer /v1/models.
START_TIMEOUT_S = 180


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def float32_gguf(src: Path, dst: Path) -> Path:
    """A copy of the GGUF file ``src`` with every tensor de-quantised to float32 (the weights the local model has).

    Served, it runs float32 kernels on exactly the local model's weights, so its scores differ from the
    local model's only by summation order; the quantised file runs llama.cpp's quantised kernels
    (activations rounded to 8 bits), which move scores by tenths of a nat. Written once, then reused.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, dequantize

    if dst.exists():
        return dst
    reader = GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".partial")
    writer = GGUFWriter(str(tmp), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = 0 if field.name == "general.file_type" else field.contents()  # 0: all float32
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub)
    for t in reader.tensors:
        data = np.asarray(t.data) if t.tensor_type == GGMLQuantizationType.F32 else dequantize(t.data, t.tensor_type)
        writer.add_tensor(t.name, np.ascontiguousarray(data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist()))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(dst)
    return dst


def smollm2_float32_gguf() -> Path:
    """The bundled SmolLM2 GGUF de-quantised to float32 (:func:`float32_gguf`), kept in shapshift's cache folder."""
    return float32_gguf(smollm2_gguf_path(), cache_dir() / "smollm2-135m-instruct-f32.gguf")


@contextlib.contextmanager
def llama_server(*extra: str, log_dir: Path | None = None, n_threads: int = 1,
                 model_path: Path | None = None) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` on a free port; yields its ``openai-compatible:`` spec, stops it after.

    ``model_path``: the GGUF file served (default: the bundled SmolLM2 file); ``extra``: more server
    options (``--logits_all false`` ...); the log goes to ``log_dir`` (default: the temporary folder).
    """
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path or smollm2_gguf_path()), "--host", "127.0.0.1",
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
