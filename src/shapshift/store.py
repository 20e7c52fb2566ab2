"""Artifacts of a run: atomic writes, sha256 in a manifest, and explanations as Parquet and pickle.

A run folder holds numbered artifacts (``01_dataset.parquet``, ``02_baseline.parquet`` …) and
``manifest.json`` with the config, package versions, timings and the sha256 of every artifact.
Every write goes to a temporary file in the same folder, is fsynced, then renamed into place, so
a crash never leaves a half-written file under an artifact's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ArtifactError
from .explanation import TABLE_COLUMNS, Explanation
from .parallel import is_main

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Columns of the long explanation table (one row per example × output token × input token).
EXPLANATION_COLUMNS = TABLE_COLUMNS  # the long table's contract columns (shapshift.explanation)
_PACKAGES = ("shapshift", "torch", "transformers", "shap", "datasets", "peft", "numpy", "pandas", "pyarrow")


# -- atomic files -------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename."""
    return atomic_write(path, lambda f: f.write(data))


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it races with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path) -> None:
    """Give a file made by ``tempfile`` (mode 0600, folders 0700) the mode an ordinary ``open`` would:
    0666 (folders and their contents recursively: 0777 for folders) less the umask."""
    path, mask = Path(path), current_umask()
    if path.is_dir():
        for p in [path, *path.rglob("*")]:
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; artifacts get the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, lambda f: df.to_parquet(f, index=False))


def write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- manifest -------------------------------------------------------------------------------------
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class RunStore:
    """The run folder: artifacts, their hashes, and the manifest.

    ``writer``: whether this process writes artifacts and the manifest (default: unless it is one of
    several processes other than the main one, see :mod:`shapshift.parallel`). A store that is not
    the writer reads as usual, and its writes (manifest, records, Parquet tables, explanations) do nothing.
    """

    def __init__(self, run_dir: str | Path, *, writer: bool | None = None) -> None:
        self.dir = Path(run_dir)
        self.writer = is_main() if writer is None else writer

    def path(self, name: str) -> Path:
        return self.dir / name

    def manifest(self) -> dict[str, Any]:
        path = self.path(MANIFEST)
        if not path.exists():
            return {"artifacts": {}, "stages": {}}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path} is not valid JSON ({exc}).",
                                "The run folder is damaged; delete it (or the manifest) and run again.") from None

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        man = self.manifest()
        if not self.writer:
            return man
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(man.get(key), dict):
                man[key].update(value)
            else:
                man[key] = value
        man["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(man, self.path(MANIFEST))
        return man

    def record(self, *names: str) -> None:
        """Put the sha256 and size of the named artifacts into the manifest."""
        if not self.writer:
            return
        self.update_manifest(artifacts={n: {"sha256": sha256_file(self.path(n)), "bytes": self.path(n).stat().st_size}
                                        for n in names})

    def verify(self, name: str) -> Path:
        """The artifact's path, after checking its sha256 against the manifest."""
        path = self.path(name)
        if not path.exists():
            raise ArtifactError(f"Artifact {path} does not exist.", "Run the stage that writes it first (see `shapshift --help`).")
        expected = self.manifest().get("artifacts", {}).get(name, {}).get("sha256")
        if expected is None:
            raise ArtifactError(f"Artifact {path} is not recorded in {self.path(MANIFEST)}.",
                                "Re-run the stage that writes it so its hash is recorded.")
        if sha256_file(path) != expected:
            raise ArtifactError(f"Artifact {path} does not match the sha256 in the manifest: it was truncated or edited.",
                                "Re-run the stage that writes it (delete the file first).")
        return path

    def read_parquet(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.verify(name))

    def write_parquet(self, df: pd.DataFrame, name: str) -> Path:
        if not self.writer:
            return self.path(name)
        path = write_parquet(df, self.path(name))
        self.record(name)
        return path

    @contextlib.contextmanager
    def timed(self, stage: str, **info: Any) -> Iterator[dict[str, Any]]:
        """Record the stage's wall time and ``info`` (updated by the caller) in the manifest."""
        start = time.perf_counter()
        yield info
        info["seconds"] = round(time.perf_counter() - start, 3)
        self.update_manifest(stages={stage: info})


# -- explanations ---------------------------------------------------------------------------------
def explanations_to_frame(explanations: Sequence[Any], example_ids: Sequence[int], condition: str) -> pd.DataFrame:
    """The long table: one row per (example, output token, input token), columns :data:`EXPLANATION_COLUMNS`
    and the optional ones of :meth:`shapshift.explanation.Explanation.to_frame`."""
    frames = [Explanation.coerce(exp).to_frame(ex_id, condition)
              for ex_id, exp in zip(example_ids, explanations, strict=True)]
    if not frames:
        return pd.DataFrame(columns=[*EXPLANATION_COLUMNS, "error_std"])
    return pd.concat(frames, ignore_index=True)


def frame_to_explanations(df: pd.DataFrame) -> tuple[list[int], list[Explanation]]:
    """Rebuild the explanations (values ``(n_in, n_out)``) from the long table alone."""
    ids, out = [], []
    for ex_id, g in df.groupby("example_id", sort=False):
        out.append(Explanation.from_frame(g))
        ids.append(int(ex_id))
    return ids, out


def save_explanations(store: RunStore, stem: str, explanations: Sequence[Any], example_ids: Sequence[int],
                      condition: str, meta: dict[str, Any] | None = None) -> None:
    """Write ``<stem>.parquet`` (long table) and ``<stem>.pkl`` (the :class:`Explanation` objects) and record both.

    An explanation without a ``method`` gets ``meta["method"]`` (unless ``auto``) as the one that produced it.
    """
    if not store.writer:
        return
    explanations = [Explanation.coerce(e).stored() for e in explanations]
    method = (meta or {}).get("method")
    for e in explanations:
        if getattr(e, "method", None) is None and isinstance(method, str) and method != "auto":
            e.method = method
    store.write_parquet(explanations_to_frame(explanations, example_ids, condition), f"{stem}.parquet")
    payload = {"condition": condition, "example_ids": [int(i) for i in example_ids],
               "explanations": explanations, "meta": meta or {}}
    atomic_write_bytes(store.path(f"{stem}.pkl"), pickle.dumps(payload, protocol=4))
    store.record(f"{stem}.pkl")


def load_explanations(store: RunStore, stem: str, *, trust_pickle: bool = False) -> tuple[list[int], list[Any]]:
    """The stored explanations of one condition.

    Both files of the condition (``<stem>.pkl`` and ``<stem>.parquet``) are checked against their
    sha256 in the manifest before anything is read, whichever of them is then used: a damaged or
    edited file stops the read with an :class:`ArtifactError` that names it (a pickle that fails the
    check is never loaded: loading a pickle runs code). ``trust_pickle`` skips the pickle's check.
    The pickle is read when present, else the explanations are rebuilt from the Parquet table.
    """
    pkl, table = f"{stem}.pkl", f"{stem}.parquet"
    recorded = store.manifest().get("artifacts", {})
    for name in (pkl, table):
        if (name in recorded or store.path(name).exists()) and not (trust_pickle and name == pkl):
            store.verify(name)
    if store.path(pkl).exists():
        payload = pickle.loads(store.path(pkl).read_bytes())
        # a run folder written before this package had its own type holds shap.Explanation objects: read as ours
        return payload["example_ids"], [Explanation.coerce(e) for e in payload["explanations"]]
    return frame_to_explanations(store.read_parquet(table))


def stored_methods(store: RunStore, stem: str) -> list[str]:
    """The methods that produced a condition's explanations: its table's ``method`` column (checked against
    the manifest first); empty when the table has none (runs written before the column existed)."""
    name = f"{stem}.parquet"
    if not store.path(name).exists():
        return []
    table = store.read_parquet(name)
    return sorted(set(table["method"].dropna().astype(str))) if "method" in table else []


# -- per-example checkpoints (resume) ---------------------------------------------------------------
class ExampleCheckpoint:
    """Finished examples of a stage in progress, one ``.npz`` each (no pickle), under a config fingerprint.

    A stage saves each example as soon as it is explained; a resumed run loads them and skips those
    examples. Results made under another fingerprint are never mixed in: ``load`` refuses them.
    """

    def __init__(self, folder: str | Path, fingerprint: str) -> None:
        self.dir = Path(folder)
        self.fingerprint = fingerprint

    def _fp_file(self) -> Path:
        return self.dir / "fingerprint.txt"

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, resume: bool) -> dict[int, tuple[Any, dict]]:
        """The examples already done (when resuming under the same fingerprint); else a fresh folder.

        Unfinished results made under another fingerprint are discarded (and the log says so): they
        can never be mixed into this configuration's results.
        """
        if resume and self.dir.exists():
            found = self._fp_file().read_text().strip() if self._fp_file().exists() else None
            if found == self.fingerprint:
                return self.load()
            n = len(list(self.dir.glob("example-*.npz")))
            if n:
                log.info("%s: %d unfinished example(s) were made with other settings (fingerprint %s, now %s); "
                         "they are discarded and this stage starts afresh", self.dir, n, found, self.fingerprint)
        self.clear()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._fp_file(), self.fingerprint.encode())
        return {}

    def save(self, example_id: int, exp: Explanation, stats: dict) -> None:
        data = Explanation.coerce(exp).stored().to_npz(stats=json.loads(json.dumps(stats, default=_json_default)))
        atomic_write_bytes(self.dir / f"example-{int(example_id)}.npz", data)

    def count(self) -> int:
        """How many examples are saved (by every process writing here)."""
        return sum(1 for _ in self.dir.glob("example-*.npz"))

    def load(self) -> dict[int, tuple[Any, dict]]:
        done = {}
        for path in sorted(self.dir.glob("example-*.npz")):
            try:
                exp, extra = Explanation.from_npz(path.read_bytes())
                done[int(path.stem.split("-")[1])] = (exp, extra["stats"])
            except (OSError, ValueError, KeyError):  # a damaged checkpoint is redone, never trusted
                path.unlink(missing_ok=True)
        return done
