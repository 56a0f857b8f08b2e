"""Function vectors against a mean-difference vector: zero-shot accuracy of a task with each added, and the
in-context accuracy both aim at.

For a task file (JSONL of {"input", "output"}), the examples are split in two halves by index: the vectors are
found on the even half, accuracy is measured on the odd half (inputs never seen while finding them). Four numbers:
in-context accuracy (``shots`` demonstrations), zero-shot accuracy (``"{x}:"``) plain, with the function vector
added at ``resid_post.{layer}`` (last token, coefficient 1, as in the paper), and with a mean-difference vector at
the same site: the mean last-token activation of the in-context prompts minus that of the zero-shot prompts (the
"task vector" of Hendel et al.; what `actkit vector train` would compute from such pairs). Bounded: ``--prompts``
in-context prompts per step, one task per call.

    python bench/function_vectors.py --model smollm2-135m-instruct --task src/actkit/localize/data/fv-antonyms.jsonl
    python bench/function_vectors.py --model builtin:toy-dense --task copy-names
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import transformers

from actkit.core.hooks import Capture, tap
from actkit.localize.function_vectors import (
    QUERY,
    FunctionVector,
    _prompts,
    function_vector,
    icl_accuracy,
    zero_shot_accuracy,
)
from actkit.models import load


def task_pairs(task: str) -> list[tuple[str, str]]:
    if task == "copy-names":  # the toy's corpus copies names in context (name movers): can it copy on demand?
        from actkit.builtin.corpus import NAMES

        return [(n, n) for n in NAMES]
    with open(task) as f:
        return [(d["input"], d["output"]) for d in map(json.loads, f) if d]


def last_mean(model, tokenizer, texts: list[str], site: str) -> torch.Tensor:
    total = None
    for text in texts:
        cap = Capture()
        with torch.no_grad(), tap(model, read={site: cap}):
            model(input_ids=torch.tensor([list(tokenizer(text)["input_ids"])]))
        value = cap.last[0, -1].double()
        total = value if total is None else total + value
    assert total is not None
    return (total / len(texts)).float()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:toy-dense")
    parser.add_argument("--task", default="copy-names")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    pairs = task_pairs(args.task)
    train, test = pairs[::2], pairs[1::2]
    start = time.perf_counter()
    fv = function_vector(model, tokenizer, train, shots=args.shots, prompts=args.prompts, top=args.top,
                         layer=args.layer)
    found = time.perf_counter() - start
    site = f"resid_post.{fv.layer}"
    icl = [text for text, _ in _prompts(train, args.shots, args.prompts, 0, shuffled=False)]
    zero = [QUERY.format(x=x) for x, _ in train]
    diff = last_mean(model, tokenizer, icl, site) - last_mean(model, tokenizer, zero, site)
    mean_diff = FunctionVector(diff, fv.layer, [], fv.effects)
    # the paper's setting (its layer, coefficient 1), then the best (layer, coefficient) chosen on the *train*
    # half's zero-shot prompts and reported on the test half; the mean-diff vector is re-read at each layer
    n = len(model.model.layers) if hasattr(model, "model") else fv.layer * 3
    grid = sorted({max(0, n // 6), n // 3, n // 2, (2 * n) // 3})
    best: dict[str, tuple[float, int, float]] = {}
    for layer in grid:
        site_l = f"resid_post.{layer}"
        d = last_mean(model, tokenizer, icl, site_l) - last_mean(model, tokenizer, zero, site_l)
        for coef in (1.0, 2.0, 4.0):
            for name, vec in (("fv", fv.vector), ("mean_diff", d)):
                acc = zero_shot_accuracy(model, tokenizer, train, FunctionVector(vec, layer, [], fv.effects),
                                         coef=coef)
                if name not in best or acc > best[name][0]:
                    best[name] = (acc, layer, coef)
    tuned = {}
    for name, (acc, layer, coef) in best.items():
        site_l = f"resid_post.{layer}"
        vec = fv.vector if name == "fv" else (last_mean(model, tokenizer, icl, site_l)
                                              - last_mean(model, tokenizer, zero, site_l))
        tuned[name] = {"layer": layer, "coef": coef, "train": acc,
                       "test": zero_shot_accuracy(model, tokenizer, test, FunctionVector(vec, layer, [], fv.effects),
                                                  coef=coef)}
    row = {
        "model": args.model, "task": args.task, "examples": len(pairs), "test": len(test), "shots": args.shots,
        "prompts": args.prompts, "top": args.top, "layer": fv.layer, "heads": fv.heads,
        "icl": icl_accuracy(model, tokenizer, test, shots=args.shots, prompts=len(test)),
        "zero_shot": zero_shot_accuracy(model, tokenizer, test),
        "zero_shot_fv": zero_shot_accuracy(model, tokenizer, test, fv),
        "zero_shot_mean_diff": zero_shot_accuracy(model, tokenizer, test, mean_diff),
        "tuned": tuned, "fv_norm": float(fv.vector.norm()), "mean_diff_norm": float(diff.norm()),
        "seconds_to_find": round(found, 1), "threads": args.threads, "torch": torch.__version__,
        "transformers": transformers.__version__, "machine": platform.machine(),
    }
    print(json.dumps(row) if args.json else json.dumps(row, indent=2), flush=True)


if __name__ == "__main__":
    main()
