"""Held-out perplexity under activation sparsity: TEAL against WINA (paper formulation and released-code variant).

For each model: the dense perplexity, then TEAL, WINA and WINA-code at each sparsity, on the same documents at a
fixed context: held-out documents of the built-in corpus (``--text heldout``, default) or the 40 short English
documents of varied register that ``actkit profile`` reads by default (``--text english``). TEAL's thresholds are
calibrated once per model on the built-in *training* split (never on the evaluated text) and reused for every
sparsity. Every token is sparsified (prefill included), the same for all three methods. Prints a table and, with
--json, the numbers.

    python bench/activation_quality.py [--models builtin:toy-dense smollm2-135m-instruct] [--documents 128]
                                       [--text heldout|english] [--context 256] [--calibration-documents 256]
                                       [--extra-teal 0.6 0.62 0.63] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch

import actkit
from actkit.builtin import corpus
from actkit.builtin.calibration import builtin_calibration
from actkit.compress.activation import METHODS, activation_sparsity, calibrate_teal, plan_activation_sparsity
from actkit.core.collect import context_length
from actkit.evaluate.perplexity import nll
from actkit.observe.default_text import default_texts

from machine import cpu_model

SPARSITIES = (0.25, 0.5, 0.65)


def evaluate(name: str, text: str, documents: int, context: int, calibration_documents: int,
             extra_teal: list[float]) -> dict[str, Any]:
    model, tokenizer = actkit.load(name)
    ctx = min(context, context_length(model, tokenizer))
    held = corpus.texts(documents, split="heldout") if text == "heldout" else default_texts()[:documents]
    start = time.perf_counter()
    total, count = nll(model, tokenizer, held, max_length=ctx)
    rows: list[dict[str, Any]] = [{"method": "dense", "sparsity": 0.0, "perplexity": math.exp(total / count),
                                   "achieved": 0.0}]
    teal = calibrate_teal(model, tokenizer, builtin_calibration(documents=calibration_documents), max_length=ctx)
    runs = [(m, s) for m in METHODS for s in SPARSITIES] + [("teal", s) for s in extra_teal]
    for method, s in runs:
        plan = plan_activation_sparsity(model, f"{method}:{s}", calibration=teal)
        with activation_sparsity(model, plan) as stats:
            total, n = nll(model, tokenizer, held, max_length=ctx)
        assert n == count
        rows.append({"method": method, "sparsity": s, "perplexity": math.exp(total / n), "achieved": stats.overall})
    return {"model": name, "text": text, "documents": len(held), "tokens": count, "context": ctx,
            "calibration": teal.record, "seconds": time.perf_counter() - start, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["builtin:toy-dense", "smollm2-135m-instruct"])
    parser.add_argument("--documents", type=int, default=128)
    parser.add_argument("--text", choices=["heldout", "english"], default="heldout")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--calibration-documents", type=int, default=256)
    parser.add_argument("--extra-teal", type=float, nargs="*", default=[],
                        help="More TEAL targets, to bracket WINA's achieved sparsity (TEAL overshoots its target).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    print(f"{cpu_model()} · {torch.get_num_threads()} threads · torch {torch.__version__}")
    for name in args.models:
        r = evaluate(name, args.text, args.documents, args.context, args.calibration_documents, args.extra_teal)
        results.append(r)
        dense = r["rows"][0]["perplexity"]
        cal = r["calibration"]
        print(f"\n{name}: {r['documents']} {r['text']} documents, {r['tokens']} predicted tokens, context "
              f"{r['context']}; TEAL calibrated on {cal['documents']} {cal['source']} documents "
              f"({cal['tokens']} tokens); dense perplexity {dense:.4f}; {r['seconds']:.0f} s")
        print(f"{'sparsity':>8} " + " ".join(f"{m:>18}" for m in METHODS))
        for s in SPARSITIES:
            cells = []
            for m in METHODS:
                row = next(x for x in r["rows"] if x["method"] == m and x["sparsity"] == s)
                cells.append(f"{row['perplexity']:9.4f} ({row['achieved']:.3f})")
            print(f"{s:8.2f} " + " ".join(f"{c:>18}" for c in cells))
        for s in args.extra_teal:
            row = next(x for x in r["rows"] if x["method"] == "teal" and x["sparsity"] == s)
            print(f"TEAL at target {s:.2f}: {row['perplexity']:.4f} (achieved {row['achieved']:.3f})")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
