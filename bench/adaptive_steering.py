"""Dynamic composition and steering with backtracking beside fixed mean-difference steering, on builtin:toy-dense.

Prompts: 12 held-out reviews cued negative ("..., 1 stars:") and 12 without stars (as in docs/steering.md's
sentiment table), and 12 held-out benign requests; 12 new tokens, greedy. Vectors: mean-diff at block 1 from
`builtin:toy-sentiment` and `builtin:toy-refusal`, relative coefficients. Numbers per method: the positive rate of
the reviews, the refusal rate of the benign requests (for the two-vector composition), the perplexity of the
continuations under the plain model (a fluency proxy: how ordinary the steered text reads to the unsteered
model), the mean coefficient actually applied per generated token, and the seconds taken.

Methods: plain; fixed (mean-diff at a fixed coefficient on every token); dynamic (Dynamic Activation Composition,
`actkit.steer.dynamic`, with the fixed coefficient as alpha_max); backtrack (`actkit.steer.backtrack`: the
sentiment direction's projection at block 1 as the probe, threshold half-way between the mean projections of the
pairs' negative and positive sides; below it, 4 tokens back and the vector on from there).

    python bench/adaptive_steering.py [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch

from actkit import generate, load
from actkit.builtin.corpus import eval_set
from actkit.core.collect import next_token_nll
from actkit.evaluate.behaviours import is_refusal, sentiment_label
from actkit.steer import combine, read_activations, read_pairs, steering_writes, train_vector
from actkit.steer.backtrack import backtrack_generate, vector_probe
from actkit.steer.cli import DATA_DIR
from actkit.steer.dynamic import dynamic_generate

MAX_NEW = 12


def fluency(model: Any, tok: Any, texts: list[str]) -> float:
    nll, count = next_token_nll(model, [t for t in texts if t.strip()], tok, limit=None)
    return math.exp(nll / max(count, 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load("builtin:toy-dense")
    sentiment_pairs = read_pairs(DATA_DIR / "toy-sentiment.jsonl")
    sentiment = train_vector(model, tok, sentiment_pairs, [1])
    refusal = train_vector(model, tok, read_pairs(DATA_DIR / "toy-refusal.jsonl"), [1])
    reviews = ([d.prompt for d in eval_set("review", 12, label="negative")]
               + [d.prompt for d in eval_set("review", 12, label="none")])
    requests = [d.prompt for d in eval_set("request", 12, label="benign")]
    rows: list[dict[str, Any]] = []

    def record(method: str, coef: float, texts: list[str], alpha: float | None, seconds: float,
               extra: dict[str, Any] | None = None) -> None:
        review_texts, request_texts = texts[:len(reviews)], texts[len(reviews):]
        row = {"method": method, "coef": coef,
               "positive": sum(sentiment_label(t) == "positive" for t in review_texts) / len(review_texts),
               "refusal": (sum(is_refusal(t) for t in request_texts) / len(request_texts)) if request_texts
               else None,
               "perplexity": round(fluency(model, tok, texts), 3), "mean_coef": alpha,
               "seconds": round(seconds, 1), **(extra or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)

    # one property: sentiment on the reviews
    start = time.perf_counter()
    record("plain", 0.0, generate(model, tok, reviews, max_new_tokens=MAX_NEW), 0.0, time.perf_counter() - start)
    for coef in (0.4, 0.8):
        start = time.perf_counter()
        texts = generate(model, tok, reviews, writes=steering_writes(sentiment, coef, relative=True),
                         max_new_tokens=MAX_NEW)
        record("fixed", coef, texts, coef, time.perf_counter() - start)
    for coef in (0.8, 2.0):
        start = time.perf_counter()
        result = dynamic_generate(model, tok, reviews, [sentiment], alpha_max=coef, relative=True,
                                  max_new_tokens=MAX_NEW)
        applied = [a[0] for row in result.alphas for a in row]
        record("dynamic", coef, result.texts, sum(applied) / max(len(applied), 1), time.perf_counter() - start,
               {"max_kl": max(k[0] for row in result.kls for k in row)})
    # the probe's threshold: half-way between the mean projection of the tokens of held-out positive and
    # negative reviews (whole documents: the probe watches generated tokens, not prompts' last tokens)
    unit = sentiment.directions[1].double() / sentiment.directions[1].double().norm()
    means = []
    for label in ("positive", "negative"):
        docs = [d.text for d in eval_set("review", 12, seed=1, label=label)]
        acts, _ = read_activations(model, tok, docs, [1], read_position="all")
        means.append(float((acts[1] @ unit).mean()))
    threshold = sum(means) / 2
    probe = vector_probe(sentiment, 1, threshold)
    for coef, reduce in ((0.8, "token"), (0.8, "mean")):
        start = time.perf_counter()
        back = backtrack_generate(model, tok, reviews, probe, sentiment, coef=coef, relative=True, k=4,
                                  when="below", reduce=reduce, max_new_tokens=MAX_NEW)
        steered = sum(len(ids) - keep for ids, events in zip(back.ids, back.events, strict=True)
                      for _, keep in events[:1])
        total = sum(len(ids) for ids in back.ids)
        record(f"backtrack ({reduce})", coef, back.texts, coef * steered / max(total, 1), time.perf_counter() - start,
               {"threshold": round(threshold, 3), "rows_backtracked": sum(1 for b in back.backtracks if b),
                "steered_tokens": steered / max(total, 1)})

    # two properties at once: positive sentiment and refusal, on reviews and benign requests together
    both = reviews + requests
    start = time.perf_counter()
    record("plain", 0.0, generate(model, tok, both, max_new_tokens=MAX_NEW), 0.0, time.perf_counter() - start)
    start = time.perf_counter()
    writes = combine(steering_writes(sentiment, 0.8, relative=True), steering_writes(refusal, 0.8, relative=True))
    record("fixed, 2 vectors", 0.8, generate(model, tok, both, writes=writes, max_new_tokens=MAX_NEW), 0.8,
           time.perf_counter() - start)
    for coef in (0.8, 2.0):
        start = time.perf_counter()
        result = dynamic_generate(model, tok, both, [sentiment, refusal], alpha_max=coef, relative=True,
                                  max_new_tokens=MAX_NEW)
        applied = [sum(a) / 2 for row in result.alphas for a in row]
        record("dynamic, 2 vectors", coef, result.texts, sum(applied) / max(len(applied), 1),
               time.perf_counter() - start)
    if args.json:
        print(json.dumps({"rows": rows, "threads": args.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
