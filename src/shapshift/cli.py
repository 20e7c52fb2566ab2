"""``shapshift run | preprocess | explain | adapt | compare | report | explain-text``."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from .coerce import unescape
from .config import ExplainConfig, GenerationConfig, RunConfig
from .constants import EXPLAIN_MASKINGS, SCORES, UNITS
from .errors import ConfigError, ShapshiftError
from .stages import STAGES, TABLE

log = logging.getLogger("shapshift")

DEFAULT_CONFIG = "configs/demo.yaml"


def _config(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.set or [])
    if args.name:
        overrides.append(f"name={args.name}")
    if args.config is None and not Path(DEFAULT_CONFIG).exists():
        return _load_config(None, overrides)
    return _load_config(args.config or DEFAULT_CONFIG, overrides)


def _load_config(source: str | Path | None, overrides: list[str]) -> RunConfig:
    # imported when a verb runs, not with the CLI: validation reads the estimators' registry, which loads torch
    # (`shapshift --help` stays instant; tests/test_registry.py::test_importing_the_config_stays_cheap)
    from .validation import load_config

    return load_config(source, overrides)


def _stage_command(stages):
    def command(args: argparse.Namespace) -> int:
        from .pipeline import run

        cfg = _config(args)
        try:
            store = run(cfg, stages, fresh=args.fresh, replace=args.replace)
        except KeyboardInterrupt:
            again = shlex.join(["shapshift", *[a for a in sys.argv[1:] if a != "--fresh"]])
            print(f"shapshift: interrupted; the finished stages and examples are kept in {cfg.run_dir}. "
                  f"To continue where it stopped, run the same command again: {again}  "
                  "(add --fresh to start over instead).", file=sys.stderr)
            return 130
        if store.writer:  # under accelerate launch: the main process says it, once
            print(f"results in {store.dir}")
        return 0

    return command


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    cfg = _config(args)
    print(f"wrote {write_report(cfg.run_dir, cfg.compare)}")
    return 0


#: What ``explain-text --out`` writes, by extension.
EXPLAIN_TEXT_OUTPUTS = {".html": "the SHAP text plot", ".parquet": "the explanation (shapshift.Explanation.load reads it)",
                        ".pkl": "the shapshift.Explanation (pickle)"}


def _explain_text(args: argparse.Namespace) -> int:
    import pickle

    from . import explain, load_model
    from .store import atomic_write_bytes

    out = Path(args.out)
    if out.suffix not in EXPLAIN_TEXT_OUTPUTS:
        raise ConfigError(f"--out {out}: cannot write a {out.suffix or 'extension-less'} file.",
                          "Name it " + ", ".join(f"{k} ({v})" for k, v in EXPLAIN_TEXT_OUTPUTS.items()) + ".")
    if args.target is None:  # refuse a bad generation setting before the model is loaded
        GenerationConfig(max_new_tokens=args.max_new_tokens).validate()
    from .explainers.registry import check_installed

    check_installed([args.method])  # a lens's missing package: said before the model loads
    model, tokenizer = load_model(args.model)
    # text typed on the command line follows --set's rule: \n and \t typed as two characters are a newline and a tab
    text, target, context = (None if v is None else unescape(v) for v in (args.text, args.target, args.context))
    [exp] = explain(model, tokenizer, [text], targets=None if target is None else [target],
                    context=context, method=args.method, score=args.score, masking=args.masking,
                    unit=args.unit, precision=args.precision, max_evals=args.max_evals, seed=args.seed,
                    max_new_tokens=args.max_new_tokens)
    if out.suffix == ".html":
        atomic_write_bytes(out, exp.text_plot_html().encode())
    elif out.suffix == ".parquet":
        exp.save(out)
    else:
        atomic_write_bytes(out, pickle.dumps(exp, protocol=4))
    print("output tokens:", exp.target)
    top = sorted(zip(exp.features, exp.values.sum(axis=1)), key=lambda t: -abs(t[1]))[:5]
    print("largest |value| (summed over output tokens):", ", ".join(f"{t!r} {v:+.3g}" for t, v in top))
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shapshift", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    verbs = {"run": ("all four stages", STAGES)}
    verbs.update({s.name: (f"stage {i}: {s.title} -> {', '.join(w + '*' for w in s.writes)}", (s.name,))
                  for i, s in enumerate(TABLE, start=1)})
    for name, (help_text, stage_list) in verbs.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=_stage_command(stage_list))
    p = sub.add_parser("report", help="rewrite report.html from the stored stage-4 results")
    p.set_defaults(func=_report)
    for p in list(sub.choices.values()):
        p.add_argument("--config", help=f"YAML run config (default {DEFAULT_CONFIG})")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. data.n_explain=4")
        p.add_argument("--name", help="run name (folder under output_dir)")
        p.add_argument("--fresh", action="store_true",
                       help="start over: remove this stage's results (and later stages') instead of reusing them")
        p.add_argument("--replace", action="store_true",
                       help="redo finished stages whose settings changed, removing their results (without it such a "
                            "run is refused: use another --name to keep both)")
        p.add_argument("--resume", action="store_true",
                       help="accepted for compatibility; reusing what finished under the same config is the default")
    p = sub.add_parser("explain-text", help="explain one ad-hoc text")
    p.add_argument("--model", default="smollm2-135m", help="hub id, folder, smollm2-135m, tiny-gpt-neo, gpt-neo-125m-random "
                   "or openai-compatible:http://HOST:PORT/v1 (a completions server)")
    p.add_argument("--text", required=True, help="the input whose tokens are the features")
    p.add_argument("--target", help="the continuation to explain (default: greedy generation)")
    p.add_argument("--context", help="fixed template around the text, with an {input} slot "
                   "(\\n typed as two characters is a newline, as in --set)")
    # defaults: the run configuration's (explain.* and generation.*), as for shapshift.explain()
    ex, gen = ExplainConfig(), GenerationConfig()
    # checked when run (the estimators' registry loads torch; --help stays quick)
    p.add_argument("--method", default=ex.method,
                   help="auto, or any estimator or lens of shapshift.explainers.method_choices() (checked when run)")
    p.add_argument("--score", default=ex.score, choices=SCORES, help="what is explained per output token (nats)")
    p.add_argument("--masking", default=ex.masking, choices=EXPLAIN_MASKINGS,
                   help="what an absent feature is (auto: deleted from the text)")
    p.add_argument("--unit", default=ex.unit, choices=UNITS, help="the features: tokens, words or sentences")
    p.add_argument("--precision", type=float, default=ex.precision,
                   help="explain until two runs would rank the features alike at this Spearman (auto: its default, "
                        "shapshift.explainers.api.AUTO_PRECISION on CPU)")
    p.add_argument("--max-evals", type=int, default=ex.max_evals, help="budget of masked inputs (sampling estimators)")
    p.add_argument("--seed", type=int, default=ex.seed)
    p.add_argument("--max-new-tokens", type=int, default=gen.max_new_tokens, help="when no --target is given")
    p.add_argument("--out", required=True, help="; ".join(f"{k}: {v}" for k, v in EXPLAIN_TEXT_OUTPUTS.items()))
    p.set_defaults(func=_explain_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from . import parallel

    if parallel.launched() and not parallel.is_main():  # several processes: the main one reports progress
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ShapshiftError as exc:
        print(f"shapshift: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shapshift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
