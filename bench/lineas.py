"""LinEAS against mean-difference steering: behaviour, KL to the unsteered model and perplexity, side by side.

Each experiment trains a mean-difference vector and LinEAS maps on the same pairs file (LinEAS: the negative side is
the source, the positive side the target, unpaired; maps at every block) and sweeps each method's strength through
`actkit.evaluate.shift.sweep`: the behaviour of greedy continuations of held-out prompts, the mean per-token KL
to the unsteered model and the steered perplexity on reference text. "Out-of-sample" prompts come from another
distribution than the pairs (toy: benign requests scored for sentiment; SmolLM2: the demo's neutral openings).

    python bench/lineas.py --model toy [--steps 60] [--prompts 24] [--refusal-remove]   # toy-dense: sentiment, refusal
    python bench/lineas.py --model smol [--steps 30] [--prompts 12] [--max-pairs 30] [--strengths 0,1,2]  # SmolLM2

Prints one JSON object per experiment (and the time each training took) and, last, the setup.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import torch

import actkit
from actkit import load
from actkit.builtin.corpus import eval_set, texts
from actkit.evaluate.shift import sweep
from actkit.steer import Pair, read_pairs, train_vector
from actkit.steer.lineas import LinEAS, train_from_pairs
from actkit.steer.pairs import DATA_DIR

from machine import cpu_model


def lineas_steer(lineas: LinEAS) -> Any:
    return lambda strength: lineas.to_intervention(strength)


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "completions"}
            | {"example": r["completions"][0]} for r in rows]


def run(name: str, model: Any, tok: Any, pairs: list[Pair], vector_layers: list[int], vector_coefs: list[float],
        strengths: list[float], prompt_sets: dict[str, tuple[list[str], str]], reference: list[str], *,
        relative: bool, read_position: str, steps: int, lr: float, l1: float, max_new: int) -> None:
    start = time.perf_counter()
    vector = train_vector(model, tok, pairs, vector_layers, read_position=read_position)
    vector_seconds = time.perf_counter() - start
    start = time.perf_counter()
    lineas = train_from_pairs(model, tok, pairs, None, read_position=read_position, steps=steps, lr=lr, l1=l1,
                              group=l1, progress=lambda step, loss: print(f"{name}: step {step} loss {loss:.4f}",
                                                                          file=sys.stderr, flush=True))
    lineas_seconds = time.perf_counter() - start
    out: dict[str, Any] = {"experiment": name, "vector_layers": vector_layers, "relative": relative,
                           "vector_seconds": round(vector_seconds, 1), "lineas_seconds": round(lineas_seconds, 1),
                           "lineas_loss": [round(lineas.metadata["loss_start"], 4),
                                           round(lineas.metadata["loss_end"], 4)],
                           "lineas_active": lineas.active(), "steps": steps, "lr": lr, "l1": l1}
    for label, (prompts, score) in prompt_sets.items():
        common = dict(texts=reference, max_new_tokens=max_new, keep_completions=True)
        out[f"{label}: mean-diff"] = table(sweep(model, tok, vector, vector_coefs, prompts, score,
                                                 relative=relative, **common))
        out[f"{label}: lineas"] = table(sweep(model, tok, lineas_steer(lineas), strengths, prompts, score,
                                              **common))
    print(json.dumps(out), flush=True)


def toy(steps: int, lr: float, l1: float, n: int, max_pairs: int, refusal_remove: bool) -> None:
    model, tok = load("builtin:toy-dense")
    reviews = ([d.prompt for d in eval_set("review", n // 2, label="negative")]
               + [d.prompt for d in eval_set("review", n // 2, label="none")])
    benign = [d.prompt for d in eval_set("request", n, label="benign")]
    forbidden = [d.prompt for d in eval_set("request", n, label="forbidden")]
    reference = texts(n, "heldout")
    sentiment = read_pairs(DATA_DIR / "toy-sentiment.jsonl")[:max_pairs]
    run("toy sentiment", model, tok, sentiment, [1], [0.0, 0.6, 0.7, 0.8, 1.0], [0.0, 0.5, 0.6, 0.7, 0.8, 1.0],
        {"held-out reviews": (reviews, "positive"), "out-of-sample (benign requests)": (benign, "positive")},
        reference, relative=True, read_position="last", steps=steps, lr=lr, l1=l1, max_new=12)
    refusal = read_pairs(DATA_DIR / "toy-refusal.jsonl")[:max_pairs]  # positive: forbidden, negative: benign
    run("toy refusal: add (benign -> forbidden)", model, tok, refusal, [3], [0.0, 0.25, 0.5, 1.0],
        [0.0, 0.25, 0.5, 0.75, 1.0],
        {"held-out benign": (benign, "refusal"), "held-out forbidden": (forbidden, "refusal")},
        reference, relative=False, read_position="last", steps=steps, lr=lr, l1=l1, max_new=12)
    if not refusal_remove:
        return
    swapped = [Pair(p.negative, p.positive) for p in refusal]
    run("toy refusal: remove (forbidden -> benign)", model, tok, swapped, [3], [0.0, 0.5, 1.0, 1.5],
        [0.0, 0.25, 0.5, 0.75, 1.0],
        {"held-out forbidden": (forbidden, "refusal"), "held-out benign": (benign, "refusal")},
        reference, relative=False, read_position="last", steps=steps, lr=lr, l1=l1, max_new=12)


def smol(steps: int, lr: float, l1: float, n_prompts: int, max_pairs: int, max_new: int,
         strengths: list[float]) -> None:
    from actkit.demo.steering import SENTIMENT_PROMPTS
    from actkit.observe.default_text import default_texts

    model, tok = load("smollm2-135m-instruct")
    sentiment = read_pairs(DATA_DIR / "sentiment.jsonl")[:max_pairs]
    train_reviews = [p.negative for p in sentiment[:4]]  # in-sample: openings of negative training reviews
    prompts = list(SENTIMENT_PROMPTS[:n_prompts])
    run("smollm2 sentiment", model, tok, sentiment, [12], [0.0, 0.15, 0.3], strengths,
        {"out-of-sample (neutral openings)": (prompts, "positive"),
         "in-sample (negative training reviews, first words)": ([" ".join(t.split()[:4]) for t in train_reviews],
                                                                 "positive")},
        default_texts()[:4], relative=True, read_position="from:1", steps=steps, lr=lr, l1=l1, max_new=max_new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("toy", "smol"), default="toy")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--l1", type=float, default=1e-3)
    parser.add_argument("--prompts", type=int, default=12, help="prompts per set (toy: also reference texts)")
    parser.add_argument("--max-pairs", type=int, default=32, help="pairs used for training (both methods)")
    parser.add_argument("--max-new", type=int, default=12)
    parser.add_argument("--strengths", default="0,0.25,0.5,1", help="smol: LinEAS strengths swept")
    parser.add_argument("--refusal-remove", action="store_true", help="toy: also the removal direction")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.model == "toy":
        toy(args.steps or 60, args.lr, args.l1, args.prompts, args.max_pairs, args.refusal_remove)
    else:
        smol(args.steps or 30, args.lr, args.l1, args.prompts, args.max_pairs, args.max_new,
             [float(x) for x in args.strengths.split(",")])
    print(json.dumps({"setup": {"actkit": actkit.__version__, "torch": torch.__version__,
                                "threads": torch.get_num_threads(), "cpu": cpu_model(),
                                "python": platform.python_version(), "seconds": round(time.perf_counter() - start)}}))


if __name__ == "__main__":
    main()
