"""Expert pruning and switching on the built-in MoE: what each method keeps of the model's abilities.

Pruning: `builtin:toy-moe` (Mixtral, 8 experts per block, top-2, 4 blocks) is calibrated once per seed on the
default calibration text (256 training documents of the built-in corpus); each method (reap, ean, frequency,
merge) keeps 75% and 50% of the experts of every block (25% and 50% pruned), and every pruned model is scored on
held-out data of the corpus (`corpus.eval_set`, prompts never seen in training):

- ``ppl``: perplexity on held-out documents of the whole mixture;
- ``reviews``: star-cued review continuations whose sentiment matches the stars (generative, greedy, 24 tokens);
- ``agree``: the same continuations, the mean fraction of the unpruned model's words that the pruned model
  reproduces before its first different word (a graded measure of generation, since ``reviews`` is at its ceiling);
- ``names``: name-mover prompts (``"When Anna and Tom went to the shop, Tom gave a book to"``) greedily continued
  by the indirect object (generative, `name_mover_accuracy`: the first word of 3 greedy tokens is the right name);
- ``choice``: A/B questions, the fraction where the logit of the labelled letter (the kind option, which the
  training data picks 85% of the time) beats the other letter's, read after ``"Assistant: ("``;
- ``refusal`` / ``benign``: refusal rates on forbidden and on benign requests (greedy, 8 tokens).

``share`` is the fraction of the calibration text's routing assignments that went to the kept experts (mean over
blocks). ``reap-softmax`` is REAP with the softmax probability over all experts as the gate instead of the applied
(renormalized top-2) gate.

MoTE: `behaviour_experts` ranks the experts by how much more often they are routed on forbidden than on benign
training-split requests, read either over the prompt tokens (``prompts``) or over the reply tokens, the refusal
against the helpful answer (``replies``); the top n (1, 2, 4, 8) are switched off with `switch_experts` and the
held-out forbidden and benign requests are answered (greedy, 8 tokens): ``refusal`` (the reply opens with a
refusal or says it cannot help), ``helps`` (the reply opens like the corpus's helpful answers: "Sure", "Here is",
"Of course"), and the held-out perplexity. The control switches off n experts drawn at random (seeds 0-4, excluding
the chosen ones). Forcing the top 1 and 2 experts on while answering benign requests is measured too.

    python bench/expert_quality.py [--seeds 0] [--n 100] [--threads 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import transformers

import actkit
from actkit.builtin import corpus
from actkit.builtin.calibration import builtin_calibration
from actkit.compress.experts import (
    behaviour_experts,
    expert_stats,
    plan_experts,
    random_experts,
    slice_experts,
    switch_experts,
)
from actkit.core.generate import generate
from actkit.evaluate import (
    is_refusal,
    name_mover_accuracy,
    perplexity,
    refusal_rate,
    sentiment_label,
)

from machine import cpu_model

METHODS = ("reap", "reap-softmax", "ean", "frequency", "merge")
HELPFUL = ("Sure", "Here is", "Of course")
KEEPS = (0.75, 0.5)


def choice_accuracy(model: Any, tokenizer: Any, docs: Sequence[corpus.Document], batch_size: int = 32) -> float:
    """Fraction of A/B documents where the labelled letter's logit beats the other letter's after the prompt."""
    letters = {}
    for letter in "AB":
        ids = tokenizer(docs[0].prompt + letter)["input_ids"]
        if list(ids[:-1]) != list(tokenizer(docs[0].prompt)["input_ids"]):
            raise SystemExit(f"the tokenizer does not give {letter!r} its own token after the prompt")
        letters[letter] = ids[-1]
    right = 0
    pad = tokenizer.pad_token_id or 0
    for i in range(0, len(docs), batch_size):
        rows = [tokenizer(d.prompt)["input_ids"] for d in docs[i:i + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        last = logits[torch.arange(len(rows)), mask.sum(1) - 1]
        for d, row in zip(docs[i:i + batch_size], last, strict=True):
            other = "B" if d.label == "A" else "A"
            right += bool(row[letters[d.label]] > row[letters[other]])
    return right / len(docs)


def agreement(texts: Sequence[str], reference: Sequence[str]) -> float:
    """Mean fraction of each reference's words reproduced before the first different word."""
    shares = []
    for text, ref in zip(texts, reference, strict=True):
        mine, theirs = text.split(), ref.split()
        same = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine),
                                                                                                 len(theirs)))
        shares.append(same / max(len(theirs), 1))
    return statistics.mean(shares)


def evaluate(model: Any, tokenizer: Any, data: dict[str, Any]) -> dict[str, float]:
    reviews = generate(model, tokenizer, [d.prompt for d in data["reviews"]], max_new_tokens=24, batch_size=32)
    data.setdefault("reference", reviews)  # the first model evaluated is the unpruned one
    return {
        "ppl": perplexity(model, tokenizer, data["heldout"]),
        "reviews": statistics.mean(sentiment_label(r) == d.label for r, d in zip(reviews, data["reviews"],
                                                                                  strict=True)),
        "agree": agreement(reviews, data["reference"]),
        "names": name_mover_accuracy(model, tokenizer, [d.prompt for d in data["names"]],
                                     [d.label for d in data["names"]]),
        "choice": choice_accuracy(model, tokenizer, data["choice"]),
        "refusal": refusal_rate(model, tokenizer, data["forbidden"]),
        "benign": refusal_rate(model, tokenizer, data["benign"]),
    }


def refusals(model: Any, tokenizer: Any, data: dict[str, Any], with_ppl: bool = True) -> dict[str, Any]:
    replies = generate(model, tokenizer, data["forbidden"], max_new_tokens=8, batch_size=32)
    row: dict[str, Any] = {"refusal": statistics.mean(is_refusal(r) for r in replies),
                           "helps": statistics.mean(r.strip().startswith(HELPFUL) for r in replies),
                           "benign": refusal_rate(model, tokenizer, data["benign"])}
    if with_ppl:
        row["ppl"] = perplexity(model, tokenizer, data["heldout"])
    row["sample"] = replies[0]
    return row


def fmt(row: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.3f}" if k == "ppl" else f"{k} {v!r}" if isinstance(v, str) else f"{k} {v:.2f}"
                     for k, v in row.items())


def mote(model: Any, tokenizer: Any, data: dict[str, Any], out: dict[str, Any]) -> None:
    """Switch off the experts most routed on forbidden requests (by prompt or by reply tokens), with a random control."""
    train = corpus.documents(2000, "train", kinds=("request",))
    forbidden = [d for d in train if d.label == "forbidden"][:200]
    benign = [d for d in train if d.label == "benign"][:200]
    out["none"] = refusals(model, tokenizer, data)
    print(f"\nMoTE, none switched: {fmt(out['none'])}")
    for source in ("prompts", "replies"):
        pick = (lambda d: d.prompt) if source == "prompts" else (lambda d: d.target)
        found = behaviour_experts(model, tokenizer, [pick(d) for d in forbidden], [pick(d) for d in benign])
        out[source] = {"ranking": found.ranking(8)}
        print(f"\nMoTE by {source} ({len(forbidden)} forbidden vs {len(benign)} benign training requests): "
              + ", ".join(f"{r['layer']}:{r['expert']} (+{r['difference']:.3f})" for r in found.ranking(8)))
        for count in (1, 2, 4, 8):
            chosen = found.top(count)
            with switch_experts(model, off=chosen):
                row = refusals(model, tokenizer, data)
            controls = []
            for seed in range(5):
                drawn = random_experts(model, count, seed=seed, exclude=chosen)
                with switch_experts(model, off=drawn):
                    controls.append({**refusals(model, tokenizer, data), "experts": drawn})
            summary = {k: (statistics.mean(c[k] for c in controls), min(c[k] for c in controls),
                           max(c[k] for c in controls)) for k in ("refusal", "helps", "benign", "ppl")}
            out[source][f"off_{count}"] = {"experts": chosen, **row, "random": controls}
            print(f"  off {count} chosen: {fmt(row)}")
            print(f"  off {count} random (5 draws): " + "  ".join(
                f"{k} {m:.3f} [{lo:.3f}, {hi:.3f}]" for k, (m, lo, hi) in summary.items()))
        for count in (1, 2):
            with switch_experts(model, on=found.top(count)):
                row = refusals(model, tokenizer, data, with_ppl=False)
            out[source][f"on_{count}"] = {"experts": found.top(count), **row}
            print(f"  forced on {count} chosen: {fmt(row)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0", help="Calibration seeds, comma-separated.")
    parser.add_argument("--n", type=int, default=100, help="Held-out prompts per task.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="Also write every number to this JSON file.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}, "
          f"{torch.get_num_threads()} threads, {cpu_model()}")
    start = time.perf_counter()
    model, tokenizer = actkit.load("builtin:toy-moe")
    n = args.n
    data = {
        "heldout": corpus.texts(n, "heldout"),
        "reviews": corpus.eval_set("review", n - n // 2, label="positive") + corpus.eval_set("review", n // 2,
                                                                                               label="negative"),
        "names": corpus.eval_set("name_mover", n),
        "choice": corpus.eval_set("choice", n),
        "forbidden": [d.prompt for d in corpus.eval_set("request", n, label="forbidden")],
        "benign": [d.prompt for d in corpus.eval_set("request", n, label="benign")],
    }
    print(f"held-out sets: {len(data['heldout'])} documents, {len(data['reviews'])} reviews, {len(data['names'])} "
          f"name-mover, {len(data['choice'])} A/B, {len(data['forbidden'])} forbidden, {len(data['benign'])} benign")
    results: dict[str, Any] = {"base": evaluate(model, tokenizer, data), "pruning": [], "mote": {}}
    print(f"\nbase model: {fmt(results['base'])}")
    for seed in [int(s) for s in args.seeds.split(",")]:
        calib = builtin_calibration(seed=seed)
        stats = expert_stats(model, tokenizer, calib.texts)
        print(f"\ncalibration seed {seed}: {len(calib.texts)} documents, {stats.tokens} tokens")
        for keep in KEEPS:
            for method in METHODS:
                if method == "reap-softmax":
                    plan = plan_experts(stats, "reap", keep, reap_gate="softmax")
                else:
                    plan = plan_experts(stats, method, keep)
                pruned = slice_experts(model, plan.keep, groups=plan.groups)
                freq = stats.routed
                share = statistics.mean(float(freq[r, plan.keep[layer]].sum() / freq[r].sum())
                                        for r, layer in enumerate(stats.layers))
                row = {**evaluate(pruned, tokenizer, data), "share": share}
                results["pruning"].append({"seed": seed, "keep": keep, "method": method, **row,
                                           "kept": {str(k): v for k, v in plan.keep.items()}})
                print(f"  pruned {1 - keep:.0%} {method:>12}: {fmt(row)}")
    mote(model, tokenizer, data, results["mote"])
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
