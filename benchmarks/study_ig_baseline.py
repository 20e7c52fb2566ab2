"""Integrated gradients' completeness gap on SmolLM2 by reference input (zero, pad, mean embedding) and steps.

Two SST-2-style sentences in the SmolLM2 chat template around ``Review: {input}\\nSentiment:``, target
`` positive``; prints the seconds, the gap ``f(x) - f(reference) - Σ values`` and ``f(x) - f(reference)``.

    .venv/bin/python benchmarks/study_ig_baseline.py > benchmarks/study_ig_baseline.txt   # ~10 min, one thread
"""

from __future__ import annotations

import time

import numpy as np
import torch

import shapshift
from shapshift.explainers import explain_tasks, make_task
from shapshift.explainers.api import to_parts

torch.set_num_threads(1)
model, tok = shapshift.load_model("smollm2-135m")
for text in ["a warm , funny and moving film", "the plot was dull and the acting felt wooden ."]:
    parts = to_parts(text, "Review: {input}\nSentiment:", tok, chat=True)
    target = tok(" positive", add_special_tokens=False)["input_ids"]
    for baseline in ("zero", "pad", "mean"):
        for steps in (32, 128):
            task = make_task(model, tok, parts, target, options={"n_steps": steps, "baseline": baseline})
            start = time.time()
            [e], [st] = explain_tasks([task], "integrated_gradients", progress=False)
            span = np.asarray(st["score_full"]) - e.base_values
            print(text[:10], baseline, steps, round(time.time() - start, 1), "gap", np.round(st["completeness_gap"], 3),
                  "span", np.round(span, 3), flush=True)
