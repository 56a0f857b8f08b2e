"""Out-of-distribution detection on the toy corpus's six domains, each held out in turn: AUROC per domain.

For each domain D: the coverage model (`actkit.monitor.ood.fit_coverage`, NAC-style, every ``mlp_hidden`` site) is
fitted on training-split plain-text documents of the five other domains; the test set is held-out-split documents:
`--test` of the five (in-distribution, label 0) and `--test` of D (label 1). Scored by coverage and by the two
baselines from the same forward pass (maximum softmax probability, perplexity). Note the models were trained on all
six domains, so "out of distribution" means out of the *fitted* text, the case of a monitor calibrated on the
traffic it expects.

    python bench/monitor_ood.py [--models builtin:toy-dense builtin:toy-moe] [--fit 300] [--test 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

import actkit
from actkit.builtin import corpus
from actkit.monitor import auroc
from actkit.monitor.ood import SCORES, fit_coverage, ood_scores

from machine import cpu_model


def domain_texts(split: str, keep: Any, n: int) -> list[str]:
    out: list[str] = []
    for doc in corpus.iter_documents(split, 0, ("domain",)):  # type: ignore[arg-type]
        if keep(doc.domain):
            out.append(doc.text)
        if len(out) == n:
            return out
    return out


def measure(name: str, fit: int, test: int, bins: int) -> dict[str, Any]:
    model, tokenizer = actkit.load(name)
    per_domain: dict[str, dict[str, float]] = {}
    seconds = 0.0
    for held in sorted(corpus.DOMAINS):
        start = time.perf_counter()
        coverage = fit_coverage(model, tokenizer, domain_texts("train", lambda d, h=held: d != h, fit), bins=bins)
        inside = domain_texts("heldout", lambda d, h=held: d != h, test)
        outside = domain_texts("heldout", lambda d, h=held: d == h, test)
        scores = ood_scores(model, tokenizer, inside + outside, coverage)
        seconds += time.perf_counter() - start
        labels = [0] * len(inside) + [1] * len(outside)
        per_domain[held] = {s: auroc(scores[s], labels) for s in SCORES}
    mean = {s: sum(d[s] for d in per_domain.values()) / len(per_domain) for s in SCORES}
    return {"model": name, "per_domain": per_domain, "mean": mean, "fit_docs": fit, "test_docs": 2 * test,
            "bins": bins, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["builtin:toy-dense", "builtin:toy-moe"])
    parser.add_argument("--fit", type=int, default=300)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--bins", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(m, args.fit, args.test, args.bins) for m in args.models]
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model()}
    if args.json:
        print(json.dumps({"results": results, **info}, indent=2))
        return
    print(f"torch {info['torch']}, {info['threads']} threads, {info['cpu']}")
    for r in results:
        print(f"{r['model']} ({r['seconds']:.0f} s): held-out domain | " + " | ".join(SCORES))
        for domain, row in r["per_domain"].items():
            print(f"  {domain} | " + " | ".join(f"{row[s]:.3f}" for s in SCORES))
        print("  mean | " + " | ".join(f"{r['mean'][s]:.3f}" for s in SCORES))


if __name__ == "__main__":
    main()
