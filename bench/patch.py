"""Exact activation patching vs AtP vs AtP*: time and agreement.

A results script, not a test. Two parts:

- ``speed``: a randomly initialised 12-block Llama (hidden 256, 4 heads, the toy-dense shape with three times the
  depth) on random prompt pairs of ``--length`` tokens that differ at three positions; every ``resid_post`` site
  and position (12 x length nodes). The three methods run interleaved, ``--repeats`` rounds; median seconds, the
  speed-up of each approximation over exact patching, and the agreement (Pearson, top-10 recall) are printed.
- ``agreement``: the name-mover task of a built-in (or real) model: held-out sentences with the repeated name
  swapped (``actkit.localize.name_mover_pairs``), every site kind, Pearson pooled over the pairs and mean top-10
  recall per pair, and the summed time of each method.

    python bench/patch.py --part speed
    python bench/patch.py --part agreement --model builtin:toy-moe --pairs 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import actkit
from actkit.builtin.corpus import eval_set
from actkit.localize import SITES, activation_patching, agreement, attribution_patching, name_mover_pairs
from actkit.localize.pairs import PromptPair

from machine import cpu_model, interleaved


def random_model(layers: int) -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=1600, hidden_size=256, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=4, intermediate_size=704,
                                      max_position_embeddings=512, tie_word_embeddings=True)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def random_pairs(count: int, length: int) -> list[PromptPair]:
    g = torch.Generator().manual_seed(1)
    pairs = []
    for _ in range(count):
        clean = torch.randint(3, 1600, (1, length), generator=g)
        corrupt = clean.clone()
        for p in torch.randperm(length - 1, generator=g)[:3].tolist():
            corrupt[0, p] = int(torch.randint(3, 1600, (1,), generator=g))
        answer, foil = torch.randint(3, 1600, (2,), generator=g).tolist()
        pairs.append(PromptPair(clean, corrupt, answer, foil, [str(i) for i in range(length)]))
    return pairs


def speed(args: argparse.Namespace) -> dict[str, Any]:
    model = random_model(args.layers)
    pairs = random_pairs(args.pairs, args.length)
    results: dict[str, list[torch.Tensor]] = {"exact": [], "atp": [], "atp-star": []}

    def run(method: str) -> None:
        out = []
        for pair in pairs:
            if method == "exact":
                out.append(activation_patching(model, pair, "resid_post", batch_size=args.batch_size).effects)
            else:
                out.append(attribution_patching(model, pair, "resid_post", method=method).effects)
        results[method] = out

    times = interleaved({m: (lambda m=m: run(m)) for m in results}, repeats=args.repeats, warmup=1)
    median = {m: statistics.median(t) for m, t in times.items()}
    return {
        "model": f"random Llama, {args.layers} blocks, hidden 256", "length": args.length, "pairs": args.pairs,
        "nodes_per_pair": args.layers * args.length, "repeats": args.repeats,
        "seconds": {m: round(v, 4) for m, v in median.items()},
        "speedup": {m: round(median["exact"] / median[m], 2) for m in ("atp", "atp-star")},
        "agreement": {m: agreement(results["exact"], results[m]) for m in ("atp", "atp-star")},
    }


VARIANTS: dict[str, dict[str, Any]] = {
    "atp": {"method": "atp"},
    "atp-star": {"method": "atp-star"},
    "qk-fix only": {"method": "atp-star", "grad_drop": False},
    "graddrop only": {"method": "atp-star", "qk_fix": False},
}


def agreement_part(args: argparse.Namespace) -> dict[str, Any]:
    model, tokenizer = actkit.load(args.model)
    pairs = name_mover_pairs(tokenizer, [(d.prompt, d.label) for d in eval_set("name_mover", args.pairs)])
    rows = {}
    for site in args.sites.split(","):
        effects: dict[str, list[torch.Tensor]] = {"exact": [], **{name: [] for name in VARIANTS}}
        seconds = dict.fromkeys(effects, 0.0)
        for pair in pairs:
            for name in effects:
                start = time.perf_counter()
                if name == "exact":
                    result = activation_patching(model, pair, site, batch_size=args.batch_size)
                else:
                    result = attribution_patching(model, pair, site, **VARIANTS[name])
                seconds[name] += time.perf_counter() - start
                effects[name].append(result.effects)
        rows[site] = {"seconds": {m: round(s, 3) for m, s in seconds.items()},
                      **{m: agreement(effects["exact"], effects[m]) for m in VARIANTS}}
    return {"model": args.model, "pairs": len(pairs), "sites": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["speed", "agreement"], default="speed")
    parser.add_argument("--model", default="builtin:toy-moe", help="agreement: the model")
    parser.add_argument("--sites", default=",".join(SITES), help="agreement: comma-separated site kinds")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--layers", type=int, default=12, help="speed: blocks of the random model")
    parser.add_argument("--length", type=int, default=64, help="speed: prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="patches per forward pass (exact)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = speed(args) if args.part == "speed" else agreement_part(args)
    report["machine"] = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
