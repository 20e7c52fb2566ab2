"""GPU benchmark: ``auto`` to its default precision on GPT-Neo 125M and 1.3B, in fp16 and bf16, automatic batch size.

Every setting is the notebooks' (the Colab form's defaults, ``shapshift.form.FORM_DEFAULTS``, read through
``shapshift.form.config_from_form``, the same values as ``configs/colab_sst2.yaml``): the template
``Review: {input}\\nSentiment:``, inputs of at most ``data.max_input_tokens`` tokens, the model's greedy
continuation of ``generation.max_new_tokens`` tokens as the target, ``explain.method`` (``auto``),
``explain.max_evals`` as its cap, ``explain.precision`` unset (``auto``'s device default,
``shapshift.explainers.api.auto_precision``: 0.98 on a GPU) and ``explain.batch_size`` unset (chosen from the free
GPU memory, ``shapshift.scoring.auto_batch_size``). The sentences are SST-2 dev sentences (``../shared/datasets/sst2``,
``$SHAPSHIFT_SHARED`` elsewhere), the same ones for every model and dtype, each explained alone after one
untimed warm-up per model and dtype. Recorded per example: seconds to ``auto``'s default precision, evaluations,
precision reached, the batch size chosen (and the one used after any out-of-memory halving), peak GPU memory
(``torch.cuda.max_memory_allocated`` during the example, the weights included).

On the GPU machine (from the repository root)::

    .venv/bin/python benchmarks/bench_gpu.py                    # both models, fp16 and bf16, 8 sentences, cuda
    .venv/bin/python benchmarks/bench_gpu.py --random-weights   # no network: the same architectures, random weights

``--random-weights`` builds each model from its published configuration with random weights (and the hub
tokenizer when it is cached, else the bundled SmolLM2 tokenizer): the timings and memory are the architecture's, but
the evaluations ``auto`` needs depend on the values, so they are timing only, and the output says so. Without it the
weights come from the Hugging Face hub (or its local cache); when they cannot be had, the script stops and says how.

Check the script on a CPU (a random tiny GPT-Neo, one sentence; write elsewhere than the committed results)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gpu.py --device cpu --tiny --n 1 --out /tmp/bench_gpu

Other flags: ``--models`` and ``--dtypes`` (comma-separated), ``--n`` (sentences; default the form's
``data.n_explain``), ``--max-evals`` (auto's cap; default the form's ``explain.max_evals``), ``--seed`` (which sentences).

Writes ``GPU.md`` and ``bench_gpu.csv`` into ``--out`` (default ``benchmarks/``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_sst2, machine_info, markdown_table  # noqa: E402

from shapshift import explain  # noqa: E402
from shapshift import scoring as scoring_mod  # noqa: E402
from shapshift.errors import ShapshiftError  # noqa: E402
from shapshift.explainers.api import auto_precision  # noqa: E402
from shapshift.form import FORM_DEFAULTS, config_from_form  # noqa: E402
from shapshift.generation import generate  # noqa: E402
from shapshift.models import (  # noqa: E402
    GPT_NEO_125M_SHAPE,
    load_model,
    prepare_tokenizer,
    random_gpt_neo,
    smollm2_tokenizer,
)
from shapshift.prompting import build_prompt, encode_prompt  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench_gpu")

MODELS = ["EleutherAI/gpt-neo-125m", "EleutherAI/gpt-neo-1.3B"]
DTYPES = ["float16", "bfloat16"]
TINY = "tiny-gpt-neo"
#: The published shapes (the hub's config.json) of the models --random-weights builds.
SHAPES = {
    "EleutherAI/gpt-neo-125m": GPT_NEO_125M_SHAPE,
    "EleutherAI/gpt-neo-1.3B": {"hidden_size": 2048, "num_layers": 24, "num_heads": 16,
                                "attention_types": [[["global", "local"], 12]], "window_size": 256,
                                "max_position_embeddings": 2048, "intermediate_size": None},
}


def notebook_config():
    """The notebooks' run configuration (the form's defaults), without touching the network."""
    return config_from_form({}, tempfile.gettempdir())


def hub_tokenizer(spec: str):
    """The model's tokenizer from the local Hugging Face cache, or None."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError):
        return None


def random_model(spec: str, dtype: str, device: str):
    """``spec``'s architecture with random weights (seed 0) on ``device`` in ``dtype``; the tokenizer's name."""
    tokenizer = hub_tokenizer(spec)
    tok_name = spec if tokenizer is not None else "SmolLM2 (bundled; the hub's is not cached)"
    tokenizer = prepare_tokenizer(tokenizer if tokenizer is not None else smollm2_tokenizer())
    with torch.device(device):
        model, _ = random_gpt_neo(0, tokenizer, **SHAPES[spec])
    model = model.to(getattr(torch, dtype)).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, tok_name


def get_model(spec: str, dtype: str, device: str, random_weights: bool):
    """``(model, tokenizer, weights, tokenizer name)``; stops with what to do when the weights cannot be had."""
    if spec == TINY:
        model, tok = load_model(TINY, device=device, dtype=dtype)
        return model, tok, "random (tiny)", "SmolLM2 (bundled)"
    if random_weights:
        if spec not in SHAPES:
            raise SystemExit(f"--random-weights knows the shapes of {sorted(SHAPES)}, not {spec!r}.")
        model, tok, tok_name = random_model(spec, dtype, device)
        return model, tok, "random", tok_name
    try:
        model, tok = load_model(spec, device=device, dtype=dtype)
    except ShapshiftError as exc:
        raise SystemExit(
            f"Cannot load the weights of {spec}: {exc}\n"
            "This machine may have no network. Download them where there is one "
            f"(huggingface-cli download {spec}) into the Hugging Face cache this machine reads (HF_HOME), "
            "or run with --random-weights (the same architecture with random weights: timing only).") from None
    return model, tok, "pretrained", spec


def pick_sentences(tok, template: str, n: int, max_tokens: int, seed: int) -> list[str]:
    """``n`` SST-2 dev sentences (seeded order) of at most ``max_tokens`` input tokens."""
    dev = load_sst2("dev")
    out = []
    for i in np.random.default_rng(seed).permutation(len(dev)):
        s = dev.sentence[int(i)]
        if len(encode_prompt(build_prompt(s, template, tok, chat=False), tok).input_ids) <= max_tokens:
            out.append(s)
        if len(out) == n:
            return out
    raise SystemExit(f"SST-2 dev has fewer than {n} sentences of at most {max_tokens} tokens")


class BatchSizes:
    """Records the batch size ``scoring.auto_batch_size`` chose and the one each scorer ended with (halved on OOM)."""

    def __init__(self):
        self.chosen: list[int] = []
        self.scorers: list = []
        self._auto = scoring_mod.auto_batch_size
        self._init = scoring_mod.TeacherForcedScorer.__init__

    def __enter__(self):
        outer = self

        def auto(*a, **k):
            outer.chosen.append(outer._auto(*a, **k))
            return outer.chosen[-1]

        def init(scorer, *a, **k):
            outer._init(scorer, *a, **k)
            outer.scorers.append(scorer)

        scoring_mod.auto_batch_size = auto
        scoring_mod.TeacherForcedScorer.__init__ = init
        return self

    def __exit__(self, *exc):
        scoring_mod.auto_batch_size = self._auto
        scoring_mod.TeacherForcedScorer.__init__ = self._init
        return False


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def explain_one(model, tok, text: str, target: list[int], cfg, device: str, max_evals: int | None = None):
    """One example explained with the config's settings: (Explanation, seconds, BatchSizes, peak GPU MB)."""
    ex = cfg.explain
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with BatchSizes() as sizes:
        sync(device)
        start = time.perf_counter()
        [exp] = explain(model, tok, [text], targets=[target], context=cfg.data.template, method=ex.method,
                        score=ex.score, masking=ex.masking, max_evals=max_evals or ex.max_evals,
                        batch_size=ex.batch_size, seed=ex.seed, precision=ex.precision, unit=ex.unit,
                        options=dict(ex.options), progress=False)
        sync(device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    return exp, seconds, sizes, peak


def run_one(spec: str, dtype: str, args, cfg, n: int, chosen: dict) -> list[dict]:
    """One model in one dtype; ``chosen["sentences"]``: picked with the first model's tokenizer, then kept (the same
    sentences for every model: the GPT-Neos share one tokenizer)."""
    model, tok, weights, tok_name = get_model(spec, dtype, args.device, args.random_weights)
    template = cfg.data.template
    if "sentences" not in chosen:
        chosen["sentences"] = pick_sentences(tok, template, n, cfg.data.max_input_tokens, args.seed)
    sentences = chosen["sentences"]
    prompts = [encode_prompt(build_prompt(s, template, tok, chat=False), tok) for s in sentences]
    sync(args.device)
    start = time.perf_counter()
    targets = generate(model, tok, [p.ids for p in prompts], max_new_tokens=cfg.generation.max_new_tokens,
                       stop_at_newline=cfg.generation.stop_at_newline, progress=False)
    sync(args.device)
    gen_seconds = time.perf_counter() - start
    quiet = logging.getLogger("shapshift")
    level, quiet.level = quiet.level, logging.ERROR  # the warm-up's short budget misses the precision: no warning
    try:
        explain_one(model, tok, sentences[0], targets[0], cfg, args.device, max_evals=16)  # warm-up (not recorded)
    finally:
        quiet.setLevel(level)
    target_precision = cfg.explain.precision or auto_precision(model)
    rows = []
    for i, (s, p, t) in enumerate(zip(sentences, prompts, targets)):
        exp, seconds, sizes, peak = explain_one(model, tok, s, t, cfg, args.device)
        row = {"model": spec, "dtype": dtype, "weights": weights, "tokenizer": tok_name, "example": i,
               "n_in": len(p.input_ids), "n_out": len(t), "generated": repr(tok.decode(t)).replace("|", "\\|"), "method": exp.method,
               "seconds": round(seconds, 3), "n_evals": int(exp.n_evals), "precision": round(float(exp.precision), 4),
               "target_precision": target_precision,
               "batch_size": max(sizes.chosen) if sizes.chosen else cfg.explain.batch_size,
               "batch_size_used": min((sc.batch_size for sc in sizes.scorers), default=None),
               "peak_gpu_mb": round(peak, 1), "generation_seconds_all": round(gen_seconds, 3)}
        log.info("%s", row)
        rows.append(row)
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def summary(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["model", "dtype", "weights"], sort=False)
    return pd.DataFrame({
        "examples": g.size(), "mean s": g["seconds"].mean(), "median s": g["seconds"].median(),
        "mean evals": g["n_evals"].mean(), "evals/s": g["n_evals"].sum() / g["seconds"].sum(),
        "mean precision": g["precision"].mean(), "reached target": g.apply(
            lambda d: f"{int((d.precision >= d.target_precision - 1e-9).sum())}/{len(d)}", include_groups=False),
        "batch size": g["batch_size"].median(), "peak GPU MB": g["peak_gpu_mb"].max()})


def write(df: pd.DataFrame, args, cfg, command: str) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "bench_gpu.csv", index=False)
    random = (df["weights"] != "pretrained").any()
    ex = cfg.explain
    lines = [
        "# auto to its default precision on a GPU", "",
        f"{len(df['example'].unique())} SST-2 dev sentences of at most {cfg.data.max_input_tokens} input tokens in the "
        f"notebooks' settings (the Colab form's defaults): template {cfg.data.template!r} (plain prompts), the model's "
        f"{cfg.generation.max_new_tokens}-token greedy continuation as the target, explain.method={ex.method}, "
        f"max_evals={ex.max_evals} (the cap), precision={ex.precision} (auto's device default: "
        f"{', '.join(sorted({f'{p:g}' for p in df['target_precision']}))}), batch_size={ex.batch_size} (scoring.auto_batch_size: "
        f"from the free GPU memory on CUDA), score={ex.score}, masking={ex.masking}, unit={ex.unit}; each example explained alone after "
        f"one untimed warm-up per model and dtype, on {args.device}. Made by:", "",
        f"    {command}", "",
    ]
    if random:
        lines += ["**Random weights** (`--random-weights` or `--tiny`): the architectures' timings and memory only. "
                  "The evaluations auto spends to reach its precision depend on the values, so seconds and evaluations "
                  "per example are not those of the trained models.", ""]
    lines += ["## Per model and dtype", "",
              "Peak GPU MB: torch.cuda.max_memory_allocated during one example's explanation, the weights included.", "",
              markdown_table(summary(df)), "",
              "## Per example", "",
              markdown_table(df.drop(columns=["tokenizer", "generation_seconds_all", "target_precision"])), "",
              f"Tokenizers: {', '.join(sorted(set(df['tokenizer'])))}.", "",
              f"Machine: {machine_info()}", ""]
    (args.out / "GPU.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated hub ids (default: %(default)s)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated torch dtypes (default: %(default)s)")
    ap.add_argument("--n", type=int, default=None, help="SST-2 dev sentences (default: the form's data.n_explain)")
    ap.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
    ap.add_argument("--tiny", action="store_true", help="a random tiny GPT-Neo instead of --models (checks on a CPU)")
    ap.add_argument("--random-weights", action="store_true",
                    help="the models' architectures with random weights, no download (timing only)")
    ap.add_argument("--max-evals", type=int, default=None,
                    help="auto's cap of evaluations (default: the notebooks' explain.max_evals)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sentence selection")
    ap.add_argument("--out", type=Path, default=HERE, help="folder of GPU.md and bench_gpu.csv (default: benchmarks/)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here: run on a GPU machine, or check the script with "
                         "--device cpu --tiny --n 1 --out /tmp/bench_gpu")
    cfg = notebook_config()
    if args.max_evals:
        cfg.explain.max_evals = args.max_evals
    n = args.n or cfg.data.n_explain
    models = [TINY] if args.tiny else [m.strip() for m in args.models.split(",") if m.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if not isinstance(getattr(torch, d, None), torch.dtype):
            raise SystemExit(f"--dtypes: {d!r} is not a torch dtype (float16, bfloat16, float32)")
    log.info("notebook settings: %s; model.spec default %s", cfg.explain, FORM_DEFAULTS["model_spec"])
    rows, chosen = [], {}
    for spec in models:
        for dtype in dtypes:
            rows += run_one(spec, dtype, args, cfg, n, chosen)
    command = "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write(pd.DataFrame(rows), args, cfg, command.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
