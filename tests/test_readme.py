"""The README is a test: every code line in README.md runs here, so a README that no longer runs fails.

How it works:

* README.md's fenced code blocks are parsed. ``FENCES`` says how each kind of block runs; a block of
  any other kind, a shell line whose program and verb are not in ``SHELL_LINES``, or an indented
  (unfenced) code block fails ``test_every_readme_code_line_is_known`` — a new example cannot
  escape testing, it needs a row in a table here first.
* Everything runs in a *clone*: a temporary folder whose top-level entries are symlinks to this
  checkout's (``Makefile``, ``configs/``, ``data/``, ``.venv`` …), except ``outputs/``, which is
  its own. So the README's lines run as written, with the relative paths a user has in a fresh clone
  (``configs/demo.yaml``, ``outputs/demo``, ``--out outputs/paris.html``), and write nothing into the checkout.
* ``make demo`` runs for real once per module (the ``clone`` fixture), with ``DEMO_ARGS`` holding
  ``SMALL`` (2 examples, 16 evaluations, 1 fine-tuning step: under a minute instead of several); every
  line that needs a run folder reuses its ``outputs/demo``.
* Python blocks run as written in a subprocess of this interpreter, cwd = the clone, after the
  substitutions in ``PYTHON_SUBSTITUTIONS`` (none today: the README's examples use the offline model,
  naming the hub ids in comments; ``shap.plots.text`` headless renders its HTML and prints the
  display object's repr, so it runs as is).
* Inline code spans that are commands (``make bench``, ``python benchmarks/x.py --flag``) run for
  minutes to hours, so ``test_inline_commands_exist`` checks only that their make target, script,
  subcommand and options exist.
* The notebooks' markdown (cells and ``#@markdown`` form lines) holds no code blocks today;
  ``test_notebook_markdown_has_no_code_blocks`` fails when one is added, until it is covered here.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent

#: Settings given to every README line that runs model stages (``make demo`` through DEMO_ARGS,
#: ``shapshift run|preprocess|explain|adapt``), before the line's own ``--set``s (:func:`with_small`): the
#: demo's pipeline on 2 examples in well under a minute, its format check on 2 rows.
SMALL = ["--set", "data.n_explain=2", "--set", "data.max_input_tokens=12", "--set", "explain.max_evals=16",
         "--set", "generation.max_new_tokens=1", "--set", "adapt.k_shot=2", "--set", "adapt.finetune.max_steps=1",
         "--set", "adapt.finetune.batch_size=2", "--set", "compare.n_bootstrap=100",
         # the prompt-format check on 2 rows with 1 demonstration (the demo's 8 rows x 4 demonstrations: ~15 s a run)
         "--set", "data.format_check_rows=2", "--set", "data.format_check_shots=1"]

#: How each kind of fenced block runs (the word after the opening fence).
FENCES = {"python": "python", "bash": "shell", "sh": "shell", "": "shell"}

#: Text replaced in Python blocks before they run: (README text, replacement, why). Each entry must
#: still match the README (a stale entry fails). Empty: every Python block runs exactly as written.
PYTHON_SUBSTITUTIONS: list[tuple[str, str, str]] = []

#: How each shell line runs, by (program, first argument). Anything else fails.
SHELL_LINES = {
    ("make", "demo"): "make_demo",        # run for real in the clone with DEMO_ARGS=SMALL (the clone fixture)
    ("make", "test"): "make_test",        # NOT run: it would run this suite inside itself (CI runs it);
                                          # `make -n test` must show the pytest call instead
    ("shapshift", "run"): "stage_resume",  # SMALL after --config (the line's own --set/--name win): the same
                                          # config as `make demo`'s run, so a plain re-run reuses outputs/demo
                                          # (checked in its log); one with settings of its own must not remove it
    ("shapshift", "preprocess"): "stage",  # SMALL after --config
    ("shapshift", "explain"): "stage",     # SMALL after --config
    ("shapshift", "adapt"): "stage",       # SMALL after --config
    ("shapshift", "compare"): "stage",     # SMALL after --config: compare refuses a run made under other settings
    ("shapshift", "report"): "stage",      # SMALL after --config (the same config as the demo run)
    ("shapshift", "explain-text"): "as_written",  # its --out file must exist afterwards
    ("accelerate", "launch"): "stage_resume",  # `-m shapshift run` in 2 processes, SMALL after --config: reuses outputs/demo
}

#: Inline code spans that are commands, by program: what is checked (they are not run).
INLINE_COMMANDS = {
    "make": "the target exists (`make -n TARGET` succeeds)",
    "python": "the script (or `-m` module) exists and its --help lists every --option used",
    "shapshift": "the subcommand exists and its --help lists every --option used",
}


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    text: str

    @property
    def id(self) -> str:
        return f"README.md:{self.line} {self.lang or 'plain'}"


@dataclass(frozen=True)
class ShellLine:
    line: int
    text: str

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def kind(self) -> str | None:
        words = self.words
        return SHELL_LINES.get((words[0], words[1] if len(words) > 1 else ""))

    @property
    def id(self) -> str:
        return f"README.md:{self.line} {' '.join(self.words[:2])}"


FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")


def split_markdown(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced blocks of a markdown text, and its other lines (1-based number, text)."""
    blocks, prose = [], []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            prose.append((i + 1, lines[i]))
            i += 1
            continue
        indent, fence, lang = len(m.group(1)), m.group(2), m.group(3).lower()
        body, j = [], i + 1
        while j < len(lines) and not re.fullmatch(rf" {{0,3}}{fence[0]}{{{len(fence)},}}\s*", lines[j]):
            body.append(re.sub(rf"^ {{0,{indent}}}", "", lines[j]))
            j += 1
        blocks.append(Block(lang, i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return blocks, prose


def indented_code(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines that start an indented code block: 4+ spaces (or a tab) after a blank line, not inside
    a list item or an indented paragraph."""
    found, before, last_text = [], "", ""
    for number, line in prose:
        if line.strip() and re.match(r"( {4,}|\t)", line) and not before.strip():
            if not (re.match(r"\s*([-*+]|\d+[.)])\s", last_text) or re.match(r"\s", last_text)):
                found.append((number, line))
        if line.strip():
            last_text = line
        before = line
    return found


def shell_lines(block: Block) -> list[ShellLine]:
    """The commands of a shell block: comment-only and blank lines dropped, continuations joined."""
    out, pending, start = [], "", 0
    for offset, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        if not pending:
            start = offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        text, pending = pending + raw, ""
        if shlex.split(text, comments=True):
            out.append(ShellLine(start, text.strip()))
    return out


BLOCKS, PROSE = split_markdown(README.read_text(encoding="utf-8"))
PYTHON_BLOCKS = [b for b in BLOCKS if FENCES.get(b.lang) == "python"]
SHELL = [s for b in BLOCKS if FENCES.get(b.lang) == "shell" for s in shell_lines(b)]


def test_every_readme_code_line_is_known():
    problems = [f"{b.id}: no rule for ```{b.lang} blocks (add one to FENCES)" for b in BLOCKS if b.lang not in FENCES]
    problems += [f"README.md:{s.line}: no rule to run {s.text!r} (add one to SHELL_LINES)" for s in SHELL if s.kind is None]
    problems += [f"README.md:{n}: indented code block {t.strip()!r}: use a fenced block the test runs"
                 for n, t in indented_code(PROSE)]
    assert not problems, "\n".join(problems)
    assert PYTHON_BLOCKS and SHELL, "the README lost its examples, or this parser lost them"
    for old, _, why in PYTHON_SUBSTITUTIONS:
        assert any(old in b.text for b in PYTHON_BLOCKS), f"stale substitution {old!r} ({why}): not in the README"


def test_parser_sees_every_kind_of_code():
    """The guard itself: fences of every kind, continuations, comments, indented code, list items."""
    text = ("# t\n\n```python\nx = 1\n```\n\n~~~bash\nmake demo  # c\n# only a comment\n"
            "shapshift run \\\n  --config a.yaml\n~~~\n\n````\nshapshift report\n````\n\n```yaml\na: 1\n```\n\n"
            "1. a list item\n\n    its indented paragraph\n\nprose\n\n    pip install x\n")
    blocks, prose = split_markdown(text)
    assert [(b.lang, b.line) for b in blocks] == [("python", 3), ("bash", 7), ("", 14), ("yaml", 18)]
    assert [(s.line, s.words, s.kind) for s in shell_lines(blocks[1])] == [
        (8, ["make", "demo"], "make_demo"), (10, ["shapshift", "run", "--config", "a.yaml"], "stage_resume")]
    assert [s.kind for s in shell_lines(blocks[2])] == ["stage"]
    assert "yaml" not in FENCES
    assert indented_code(prose) == [(28, "    pip install x")]
    assert ShellLine(1, "pip install shapshift").kind is None


def test_make_demo_keeps_its_plain_command():
    """With no DEMO_ARGS, `make demo` runs exactly the demo config (what the README promises)."""
    # --no-print-directory: under `make test` (MAKELEVEL=1) make would add "Leaving directory" lines
    dry = subprocess.run(["make", "--no-print-directory", "-n", "demo"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines()[-1].split() == [".venv/bin/shapshift", "run", "--config", "configs/demo.yaml"]


def make_vars() -> list[str]:
    """VENV pointing at this interpreter's environment when it is not the checkout's .venv."""
    prefix = Path(sys.prefix)
    same = (REPO / ".venv").exists() and (REPO / ".venv").resolve() == prefix.resolve()
    return [] if same else [f"VENV={prefix}"]


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"{shlex.join(cmd)} (in {cwd}) exited {done.returncode}\n"
                                  f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    return done


def demo_line() -> ShellLine:
    found = [s for s in SHELL if s.kind == "make_demo"]
    assert found, "the README no longer shows `make demo`; the lines that read outputs/demo need another source"
    return found[0]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A mirror of the checkout (top-level symlinks, its own outputs/) where the README's `make demo`
    has run with SMALL settings: outputs/demo is a finished run folder."""
    root = tmp_path_factory.mktemp("clone")
    for entry in REPO.iterdir():
        if entry.name not in {"outputs", ".git", ".pytest_cache", ".ruff_cache", ".hypothesis"}:
            (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    line = demo_line()
    # `-o STAMP`: the set-up counts as done. In the clone the venv is this checkout's (a symlink); re-running its
    # `pip install -e .` there (pyproject newer than the stamp) would point the shared venv at the temporary clone.
    venv = next((v.split("=", 1)[1] for v in make_vars() if v.startswith("VENV=")), ".venv")
    done = run([*line.words, *make_vars(), f"DEMO_ARGS={shlex.join(SMALL)}", "-o", f"{venv}/.shapshift-installed"], root)
    (root / "make_demo.log").write_text(done.stdout + done.stderr)
    (root / "demo_finished.json").write_text(json.dumps(finished_demo(root)))
    return root


def run_shell_line(line: ShellLine, root: Path) -> subprocess.CompletedProcess | None:
    words, kind = line.words, line.kind
    if kind == "make_demo":  # already run by the fixture, with these words
        return None
    if kind == "make_test":
        dry = run([*words[:1], "-n", *words[1:], *make_vars()], root)
        assert re.search(r"-m pytest\b.*\btests\b", dry.stdout), f"`make -n test` runs no pytest:\n{dry.stdout}"
        return None
    command = [str(BIN / words[0]), *words[1:]]
    if kind in ("stage", "stage_resume"):
        command = with_small(command)
    else:
        assert kind == "as_written", f"no rule to run {line.text!r}"
    return run(command, root)


def with_small(command: list[str]) -> list[str]:
    """SMALL inserted right after ``--config FILE`` (else appended): the line's own ``--set``s come later and win,
    so a line that changes a setting (``--set data.n_explain=4``) runs with that change, as a user's does."""
    at = command.index("--config") + 2 if "--config" in command else len(command)
    return [*command[:at], *SMALL, *command[at:]]


def own_settings(line: ShellLine) -> bool:
    """Whether the line names settings or a run folder of its own (then it need not reuse outputs/demo)."""
    return any(w in ("--set", "--name") or w.startswith(("--set=", "--name=")) for w in line.words)


def finished_demo(root: Path) -> dict[str, str]:
    """The finished results in outputs/demo, by name, with their recorded sha256 (what no README line may remove)."""
    manifest = json.loads((root / "outputs" / "demo" / "manifest.json").read_text())
    return {n: a["sha256"] for n, a in manifest["artifacts"].items() if n.startswith(("02_", "03_"))}


@pytest.mark.slow
def test_make_demo_writes_the_demo_run(clone):
    run_dir = clone / "outputs" / "demo"
    assert (run_dir / "report.html").is_file() and (run_dir / "04_summary.csv").is_file()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["data"]["n_explain"] == 2, "DEMO_ARGS did not reach the demo run"


@pytest.mark.slow
@pytest.mark.parametrize("line", SHELL, ids=lambda s: s.id)
def test_readme_shell_line(line, clone):
    assert line.kind is not None, f"no rule to run {line.text!r} (add one to SHELL_LINES)"
    done = run_shell_line(line, clone)
    if done is None:
        return
    words = line.words
    if "--out" in words:
        out = clone / words[words.index("--out") + 1]
        assert out.is_file() and out.stat().st_size > 0, f"{line.text!r} wrote no {out}"
    assert "wrote " in done.stdout or "results in " in done.stdout, done.stdout
    if line.kind == "stage_resume" and not own_settings(line):
        assert "stage explain: reused" in done.stderr, done.stderr[-3000:]
    # the lines run in order on the state the previous one left: none removes the demo run's finished results
    assert finished_demo(clone) == json.loads((clone / "demo_finished.json").read_text()), done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_readme_python_block(block, clone, tmp_path):
    code = block.text
    for old, new, _ in PYTHON_SUBSTITUTIONS:
        code = code.replace(old, new)
    script = tmp_path / f"readme_line{block.line}.py"
    script.write_text(code)
    run([sys.executable, str(script)], clone)


def inline_spans(prose: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """Inline code spans that are commands: two words or more, starting with a program of INLINE_COMMANDS,
    a python interpreter path or a ``.py`` script."""
    found = []
    for number, line in prose:
        for span in re.findall(r"`([^`]+)`", line):
            try:
                words = shlex.split(span)
            except ValueError:
                continue
            if len(words) >= 2 and (words[0] in INLINE_COMMANDS or re.search(r"(^|/)python3?$", words[0])
                                    or words[0].endswith(".py")):
                found.append((number, words))
    return found


def notebook_markdown() -> dict[str, str]:
    """Each notebook's markdown: its markdown cells and the ``#@markdown`` lines of its form cells."""
    texts = {}
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        parts = []
        for cell in cells:
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            if cell["cell_type"] == "markdown":
                parts.append(source)
            elif cell["cell_type"] == "code":
                parts += [ln.split("#@markdown", 1)[1] for ln in source.splitlines() if "#@markdown" in ln]
        texts[path.name] = "\n\n".join(parts)
    return texts


@pytest.mark.slow
def test_inline_commands_exist():
    spans = inline_spans(PROSE)
    for name, text in notebook_markdown().items():
        spans += [(f"{name}:{n}", w) for n, w in inline_spans(split_markdown(text)[1])]
    assert spans, "no inline commands found: the README's benchmark commands are gone, or the parser broke"
    helps: dict[tuple[str, ...], str] = {}
    problems = []
    for where, words in spans:
        if words[0] == "make":
            dry = subprocess.run(["make", "-n", words[1], *make_vars()], cwd=REPO, capture_output=True, text=True)
            if dry.returncode != 0:
                problems.append(f"{where}: `{shlex.join(words)}`: {dry.stderr.strip()}")
            continue
        if words[0] == "shapshift":
            key, options = (str(BIN / "shapshift"), words[1]), words[2:]
        elif re.search(r"(^|/)python3?$", words[0]) and words[1] == "-m" and len(words) > 2:  # a module's CLI
            # with its subcommand when it has one (`python -m pip wheel --no-deps ...`: pip wheel's --help)
            sub = words[3:4] if len(words) > 3 and re.fullmatch(r"[a-z][\w-]*", words[3]) else []
            key, options = (sys.executable, "-m", words[2], *sub), words[3 + len(sub):]
        else:
            script = words[1] if re.search(r"(^|/)python3?$", words[0]) else words[0]
            if not (REPO / script).is_file():
                problems.append(f"{where}: `{shlex.join(words)}`: no {script}")
                continue
            key, options = (sys.executable, script), words[2:] if script == words[1] else words[1:]
        if key not in helps:
            done = subprocess.run([*key, "--help"], cwd=REPO, capture_output=True, text=True)
            helps[key] = done.stdout if done.returncode == 0 else ""
            if done.returncode != 0:
                problems.append(f"{where}: `{shlex.join(words)}`: --help failed: {done.stderr.strip()[-500:]}")
        missing = [o.split("=")[0] for o in options
                   if o.startswith("--") and not re.search(rf"{re.escape(o.split('=')[0])}(?![\w-])", helps[key])]
        if missing:
            problems.append(f"{where}: `{shlex.join(words)}`: {key[-1]} has no {', '.join(missing)}")
    assert not problems, "\n".join(problems)


def test_notebook_markdown_has_no_code_blocks():
    """The notebooks' prose holds no code blocks to type today; one added later must be covered here."""
    problems = []
    for name, text in notebook_markdown().items():
        blocks, prose = split_markdown(text)
        problems += [f"{name}: fenced ```{b.lang} block: cover it in tests/test_readme.py" for b in blocks]
        problems += [f"{name}: indented code {t.strip()!r}: cover it in tests/test_readme.py" for _, t in indented_code(prose)]
        problems += [f"{name}: shell line {t.strip()!r}: cover it in tests/test_readme.py"
                     for _, t in prose if re.match(r"\s*(\$ |!(?!\[)|%)\S", t)]
    assert not problems, "\n".join(problems)
