"""Concept detection: held-out AUROC of difference-of-means, logistic and PCA probes (AxBench's comparison).

For each model and data set (contrast-pair files: each pair gives a positive text, label 1, and a negative one,
label 0), the activations of every block (``resid_post``, last token) are read once; then for each method and each
of `--seeds` stratified splits (a quarter of each class held out), `probe_from_features` picks the block on a
validation part of the training split, fits there, and is measured on the held-out texts. Reported: mean and
minimum held-out AUROC and mean accuracy over the seeds, and the blocks picked.

    python bench/monitor_concepts.py [--seeds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

import actkit
from actkit.monitor import METHODS
from actkit.monitor.probe import probe_from_features, text_activations
from actkit.steer import read_pairs
from actkit.steer.pairs import pairs_path

from machine import cpu_model

CASES = {"builtin:toy-dense": ["toy-refusal", "toy-sentiment"], "builtin:toy-moe": ["toy-refusal", "toy-sentiment"],
         "smollm2-135m-instruct": ["sentiment", "weddings"]}


def measure(name: str, datasets: list[str], seeds: int) -> list[dict[str, Any]]:
    model, tokenizer = actkit.load(name)
    out = []
    for data in datasets:
        pairs = read_pairs(pairs_path(f"builtin:{data}"))
        texts = [p.positive for p in pairs] + [p.negative for p in pairs]
        labels = torch.tensor([1] * len(pairs) + [0] * len(pairs))
        start = time.perf_counter()
        feats = text_activations(model, tokenizer, texts, None)
        read_seconds = time.perf_counter() - start
        for method in METHODS:
            probes = [probe_from_features(feats, labels, method=method, seed=s) for s in range(seeds)]
            aurocs = [p.metadata["auroc"] for p in probes]
            out.append({"model": name, "data": data, "method": method, "texts": len(texts),
                        "held_out": probes[0].metadata["n_held_out"], "auroc_mean": sum(aurocs) / seeds,
                        "auroc_min": min(aurocs),
                        "accuracy_mean": sum(p.metadata["accuracy"] for p in probes) / seeds,
                        "blocks": [p.layer for p in probes], "read_seconds": read_seconds})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CASES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [r for m in args.models for r in measure(m, CASES[m], args.seeds)]
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model()}
    if args.json:
        print(json.dumps({"results": rows, **info}, indent=2))
        return
    print(f"torch {info['torch']}, {info['threads']} threads, {info['cpu']}")
    print("model | data | method | texts (held out) | AUROC mean | AUROC min | accuracy mean | blocks")
    for r in rows:
        print(f"{r['model']} | {r['data']} | {r['method']} | {r['texts']} ({r['held_out']}) | {r['auroc_mean']:.3f} | "
              f"{r['auroc_min']:.3f} | {r['accuracy_mean']:.3f} | {r['blocks']}")


if __name__ == "__main__":
    main()
