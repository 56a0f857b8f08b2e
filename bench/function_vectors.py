"""Function vectors through the evaluation harness: `actkit.evaluate.evaluate_task` on one task, with the
environment recorded.

The examples are split seeded into train (vectors are found there; the prompting baseline's demonstrations),
dev (each method's layer and coefficient chosen there) and test (reported); methods: the function vector, the
mean-difference task vector (in-context minus zero-shot last-token means), a random direction of the function
vector's norm, and in-context prompting (see `actkit.evaluate.tasks`). The same as ``actkit eval task``, plus the
toy's ``copy-names`` task and the machine's load. Before this harness the script tuned on the training half and
split by index (commit 8a21fe9); docs/steering.md keeps both tables.

    python bench/function_vectors.py --model smollm2-135m-instruct --task antonyms
    python bench/function_vectors.py --model builtin:toy-dense --task copy-names
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
import transformers

from actkit.evaluate import evaluate_task
from actkit.localize.function_vectors import read_task
from actkit.models import load


def task_pairs(task: str) -> list[tuple[str, str]]:
    if task == "copy-names":  # the toy's corpus copies names in context (name movers): can it copy on demand?
        from actkit.builtin.corpus import NAMES

        return [(n, n) for n in NAMES]
    return read_task(task)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:toy-dense")
    parser.add_argument("--task", default="copy-names", help="antonyms, capitals, copy-names or a JSONL file")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args.model)
    load_before = os.getloadavg()
    result = evaluate_task(model, tokenizer, task_pairs(args.task), shots=args.shots, prompts=args.prompts,
                           top=args.top, seed=args.seed, task=args.task)
    row = {"model": args.model, **result, "threads": args.threads, "torch": torch.__version__,
           "transformers": transformers.__version__, "machine": platform.machine(),
           "load_average": {"start": load_before, "end": os.getloadavg()}}
    print(json.dumps(row) if args.json else json.dumps(row, indent=2), flush=True)


if __name__ == "__main__":
    main()
