"""Held-out perplexity after weight pruning: magnitude, Wanda, SparseGPT and DaSS at 50% unstructured, 2:4 and 4:8.

A results script, not a test: it prints a markdown table (and optionally writes JSON) with the dense perplexity
and, for each method and pattern, the perplexity of the pruned copy, its achieved sparsity and the seconds pruning
took. Every method calibrates on the same documents of the built-in corpus's training split; perplexity is read
on held-out documents of the same corpus, each document scored whole (they are shorter than the context).

    python bench/pruning.py --model builtin:toy-dense
    python bench/pruning.py --model smollm2-135m-instruct --calibration-documents 128 --heldout-documents 128
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import actkit
from actkit.builtin import corpus
from actkit.builtin.calibration import builtin_calibration
from actkit.compress.weights import METHODS, prune_weights
from actkit.evaluate.perplexity import nll

from machine import cpu_model


def _perplexity(model: Any, tokenizer: Any, texts: list[str]) -> tuple[float, int]:
    total, count = nll(model, tokenizer, texts)
    return math.exp(total / count), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:toy-dense")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--patterns", default="unstructured,4:8,2:4", help="comma-separated N:M patterns and "
                        "'unstructured'")
    parser.add_argument("--sparsity", type=float, default=0.5, help="target of the unstructured runs")
    parser.add_argument("--calibration-documents", type=int, default=128)
    parser.add_argument("--heldout-documents", type=int, default=256)
    parser.add_argument("--keep-attention-dense", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = actkit.load(args.model)
    heldout = corpus.texts(args.heldout_documents, split="heldout")
    calibration = builtin_calibration(documents=args.calibration_documents)
    start = time.perf_counter()
    dense, scored = _perplexity(model, tokenizer, heldout)
    rows: list[dict[str, Any]] = [{"method": "dense", "pattern": "-", "perplexity": dense, "sparsity": 0.0,
                                   "seconds": 0.0}]
    print(f"dense: {dense:.4f} ({time.perf_counter() - start:.1f} s)", flush=True)
    for pattern in args.patterns.split(","):
        for method in args.methods.split(","):
            nm = None if pattern == "unstructured" else pattern
            pruned, report = prune_weights(model, tokenizer, method, args.sparsity if nm is None else None, nm,
                                           calibration=calibration, keep_attention_dense=args.keep_attention_dense)
            ppl, _ = _perplexity(pruned, tokenizer, heldout)
            label = f"{pattern} {args.sparsity:.0%}" if nm is None else pattern
            rows.append({"method": method, "pattern": label, "perplexity": ppl,
                         "sparsity": report["achieved_sparsity"], "seconds": report["seconds"],
                         "calibration_tokens": (report["calibration"] or {}).get("tokens")})
            print(f"{method} {label}: {ppl:.4f} ({report['seconds']:.1f} s)", flush=True)
            del pruned

    tokens = next((r["calibration_tokens"] for r in rows if r.get("calibration_tokens")), None)
    print()
    print(f"model {args.model}; held-out: {len(heldout)} built-in documents, {scored} scored tokens, whole "
          f"documents; calibration: {args.calibration_documents} training documents ({tokens} tokens), seed 0; "
          f"{'MLP only' if args.keep_attention_dense else 'attention and MLP'} pruned")
    print(f"{cpu_model()}, {args.threads} thread(s), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, Python {platform.python_version()}")
    print()
    print("| method | pattern | perplexity | vs dense | achieved sparsity | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['method']} | {r['pattern']} | {r['perplexity']:.4f} | {r['perplexity'] / dense:.3f}x | "
              f"{r['sparsity']:.2%} | {r['seconds']:.1f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"model": args.model, "heldout_documents": len(heldout),
                                         "heldout_tokens": scored, "threads": args.threads,
                                         "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
