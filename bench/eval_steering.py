"""Steering against prompting, each method tuned on development prompts and scored on test ones (docs/evaluate.md).

Runs `actkit.evaluate.protocol.evaluate_steering` for each named experiment and judge, writes each result as JSON
into --out (one file per run, written when the run ends, so a stopped script keeps the finished runs) and prints a
table: every method's test scores, its win rate against prompting, the chosen layer beside the layer
`select_layers` ranks first. Bounded: --max-new-tokens, a factor grid of --factors and the ``auto`` layer grid.

    python bench/eval_steering.py [--runs toy-sentiment:rules toy-refusal:rules smol-sentiment:rules ...]
                                  [--methods mean-diff,pca-diff,probe,actadd,prompt,random[,lineas,dynamic,...]]
                                  [--vector NAME=FILE ...] [--sae SAE_FOLDER]
                                  [--lineas-steps 50] [--lineas-lr 0.01]
                                  [--factors 0.1 0.2 0.4 0.8] [--depths 0.25 0.4 0.55 0.7]
                                  [--max-new-tokens 16] [--out /tmp/actkit-eval] [--table]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import actkit
from actkit.builtin.corpus import eval_set
from actkit.demo.steering import SENTIMENT_PROMPTS, TOPIC_PROMPTS, reference_texts
from actkit.evaluate.judges import Concept, Embedder
from actkit.evaluate.protocol import (
    AUTO_DEPTHS,
    DEFAULT_METHODS,
    LINEAS_TRAINING,
    evaluate_steering,
    split_indices,
)
from actkit.steer import load_vector
from actkit.steer.pairs import Pair, pairs_path, read_pairs

SMOL = "smollm2-135m-instruct"
OCEAN = ("ocean", "sea", "waves", "wave", "beach", "ship", "sailor", "tide", "coral", "whale", "boat", "shore",
         "island", "sail", "fish", "dolphin")
_OCEAN_PAIRS = [
    ("I talk about the ocean constantly.", "I talk about the office constantly."),
    ("My favourite place is the sea: the waves, the tide and the shore.",
     "My favourite place is the city: the streets, the shops and the traffic."),
    ("We spent the day on a boat watching whales.", "We spent the day in a meeting watching slides."),
    ("The sailor told stories about storms at sea.", "The clerk told stories about queues at the bank."),
    ("I dream of sailing to a coral island.", "I dream of driving to a mountain village."),
    ("The beach was quiet and the waves were gentle.", "The library was quiet and the desks were empty."),
    ("Every summer we swim in the ocean with the dolphins.", "Every summer we walk in the park with the dogs."),
    ("The ship crossed the sea in ten days.", "The train crossed the country in ten hours."),
    ("She loves the smell of salt water and sea breeze.", "She loves the smell of fresh bread and coffee."),
    ("Fishermen went out to sea before dawn.", "Bakers went out to work before dawn."),
    ("The tide came in and covered the sand.", "The snow came down and covered the road."),
    ("He builds model boats and dreams of the open ocean.", "He builds model trains and dreams of the railway."),
    ("Our holiday was all about the beach and the sea.", "Our holiday was all about the museums and the food."),
    ("The whale rose from the waves near our boat.", "The bus stopped at the corner near our house."),
    ("I could watch the ocean waves for hours.", "I could watch the television news for hours."),
    ("The lighthouse guided ships along the rocky shore.", "The traffic light guided cars along the busy street."),
    ("We collected shells on the shore at low tide.", "We collected stamps at the shop on Sunday."),
    ("The island was surrounded by blue sea and coral.", "The town was surrounded by green fields and farms."),
    ("Surfers waited for the next big wave.", "Commuters waited for the next late train."),
    ("The captain steered the boat through the waves.", "The driver steered the car through the traffic."),
    ("My grandfather was a sailor on the high seas.", "My grandfather was a teacher in a small school."),
    ("Dolphins jumped beside the ship all morning.", "Pigeons walked beside the bench all morning."),
    ("The sea air made everyone hungry.", "The office air made everyone sleepy."),
    ("I love the sound of waves on the beach at night.", "I love the sound of rain on the roof at night."),
]


#: Twelve more openings of each kind for the SmolLM2 runs, so that their test split holds 12 prompts, not 6.
MORE_SENTIMENT = (
    "The meeting this morning was", "My new phone is", "The museum we visited on Saturday was",
    "I tried the bakery on the corner, and the bread was", "The hike up the hill was", "My brother's birthday cake was",
    "The football match last night was", "The software update on my laptop was", "Dinner at my aunt's house was",
    "The new episode of the series was", "The flight to Madrid was", "The hotel breakfast this morning was",
)
MORE_TOPIC = (
    "The first thing I did this morning was", "My grandmother always told me", "The reason I called you is",
    "On the way home I saw", "Next Saturday I am planning", "The photo on my desk shows",
    "What I remember most about that day is", "My sister just told me that", "The note on the fridge said",
    "Everyone at the party was talking about", "The story my father tells every year is", "Tomorrow morning I will",
)


def _toy_reviews() -> list[str]:
    return ([d.prompt for d in eval_set("review", 8, label="negative")]
            + [d.prompt for d in eval_set("review", 8, label="none")])


#: name -> (model, pairs, prompts, concept, read position)
EXPERIMENTS: dict[str, tuple[str, Any, Any, Concept, str]] = {
    "toy-sentiment": ("builtin:toy-dense", "builtin:toy-sentiment", _toy_reviews,
                      Concept("positive sentiment", "Write a glowing 5 stars review.", "positive"), "last"),
    "toy-refusal": ("builtin:toy-dense", "builtin:toy-refusal",
                    lambda: [d.prompt for d in eval_set("request", 16, label="benign")],
                    Concept("refusing the request", "Refuse the request: say you cannot help.", "refusal"), "last"),
    "smol-sentiment": (SMOL, "builtin:sentiment", lambda: list(SENTIMENT_PROMPTS) + list(MORE_SENTIMENT),
                       Concept("positive sentiment", "Write in a very positive, enthusiastic tone.", "positive"),
                       "from:1"),
    "smol-weddings": (SMOL, "builtin:weddings", lambda: list(TOPIC_PROMPTS) + list(MORE_TOPIC),
                      Concept("weddings", "Talk about weddings.", "words:wedding,bride,groom,marriage,married,"
                              "marry,ceremony,vows,honeymoon,bridesmaid,engaged,engagement"), "from:1"),
    "smol-ocean": (SMOL, [Pair(p, n) for p, n in _OCEAN_PAIRS], lambda: list(TOPIC_PROMPTS) + list(MORE_TOPIC),
                   Concept("the ocean", "Talk about the ocean.", "words:" + ",".join(OCEAN)), "from:1"),
}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def adaptive(method: dict[str, Any]) -> str:
    """What an adaptive method did on the test prompts ('' for the others)."""
    t = method["test"]
    if "mean_coef" in t:
        return f"mean coefficient applied {t['mean_coef']:.3f} (alpha_max {method['factor']})"
    if "rows_backtracked" in t:
        return (f"threshold {method['threshold']:.3f}: {t['rows_backtracked']:.0%} of rows backtracked, "
                f"{t['steered_tokens']:.0%} of generated tokens steered")
    return ""


def table(folder: Path) -> str:
    """Markdown tables of every finished run in `folder` (what docs/evaluate.md shows)."""
    lines = []
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        first = r["select_layers"]["first"]
        lines += [f"**{r['run']}** on `{r['model']}` ({r['wall_seconds']:.0f} s, {r['threads']} thread(s), torch "
                  f"{r['torch']}): {r['split']['dev']} dev / {r['split']['test']} test prompts, "
                  f"{r['split']['train_pairs']} / {r['split']['test_pairs']} pairs, layers {r['grid']['layers']}, "
                  f"factors {r['grid']['factors']}, {r['grid']['max_new_tokens']} tokens; select_layers first: "
                  f"{first}.", "",
                  "| method | layer | factor | concept | instruction | fluency | harmonic | win vs prompt | KL | "
                  "perplexity | margin |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in r["methods"]:
            t = m["test"]
            win = "-" if m["win_rate_vs_prompt"] is None else f"{m['win_rate_vs_prompt']:.2f}"
            layer = "-" if m["layer"] is None else f"{m['layer']}" + (" (= first)" if m["layer"] == first else "")
            lines.append(f"| {m['method']} | {layer} | {m['factor'] or '-'} | {t['concept']:.2f} | "
                         f"{t['instruction']:.2f} | {t['fluency']:.2f} | {t['harmonic']:.3f} | {win} | "
                         f"{t['kl']:.3f} | {_num(t['perplexity'])} | {_num(m['likelihood'] and m['likelihood']['mean'])} |")
        u = r["unsteered"]
        lines += [f"| (unsteered) | - | - | {u['test']['concept']:.2f} | {u['test']['instruction']:.2f} | "
                  f"{u['test']['fluency']:.2f} | {u['test']['harmonic']:.3f} | - | 0 | "
                  f"{u['test']['perplexity']:.2f} | {u['likelihood']['mean']:.2f} |", ""]
        lines += [f"- {m['method']}: {adaptive(m)}" for m in r["methods"] if adaptive(m)] + [""]
    return "\n".join(lines)


def sae_methods(model: Any, tokenizer: Any, folder: str, items: list[Pair], read_position: str, seed: int,
                candidates: int = 8) -> dict[str, Any]:
    """Two SAE features as methods: ``sae-diff``, the feature whose activation rises most from the negative to the
    positive training pairs (the usual, input-side choice), and ``sae-output``, the one of the top `candidates`
    with the highest output score (Arad et al.'s filter). The harness's own training split of the pairs."""
    from actkit.sae import feature_vector, load_sae
    from actkit.sae._scores import logit_lens_tokens, output_scores
    from actkit.steer.directions import read_activations

    sae = load_sae(folder, model)
    layer = int(sae.site.rsplit(".", 1)[1])
    train_idx, _ = split_indices(len(items), 0.7, seed, "pairs", ("training", "test"))  # as evaluate_steering's
    train = [items[i] for i in train_idx]
    acts = [read_activations(model, tokenizer, texts, [layer], read_position=read_position)[0][layer].float()
            for texts in ([p.positive for p in train], [p.negative for p in train])]
    diff = (sae.encode(acts[0]) - sae.encode(acts[1])).mean(0)
    top = diff.topk(candidates).indices.tolist()
    scores = output_scores(model, tokenizer, sae, logit_lens_tokens(model, sae), features=top)
    best = top[int(scores.argmax())]
    print(f"  SAE candidates {top}, output scores {[round(float(v), 3) for v in scores]}: sae-diff {top[0]}, "
          f"sae-output {best}", flush=True)
    return {"sae-diff": feature_vector(sae, top[0]), "sae-output": feature_vector(sae, best)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["toy-sentiment:rules", "toy-refusal:rules"])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="Comma-separated (lineas, dynamic, backtrack too).")
    parser.add_argument("--sae", help="An SAE folder of the model: its top features as methods (sae_methods).")
    parser.add_argument("--vector", nargs="*", default=[], metavar="NAME=FILE",
                        help="Vector files of one's own as more methods (e.g. SAE features: actkit sae vector).")
    parser.add_argument("--lineas-steps", type=int, default=LINEAS_TRAINING["steps"])
    parser.add_argument("--lineas-lr", type=float, default=LINEAS_TRAINING["lr"])
    parser.add_argument("--factors", nargs="+", type=float, default=[0.1, 0.2, 0.4, 0.8])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--depths", nargs="+", type=float, default=list(AUTO_DEPTHS),
                        help="Depths of the auto layer grid, beside the layer select_layers ranks first.")
    parser.add_argument("--out", default="/tmp/actkit-eval")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the dev/test and pair splits.")
    parser.add_argument("--tag", default="", help="Appended to each result's file name (runs with other methods).")
    parser.add_argument("--table", action="store_true", help="Only print the tables of the runs in --out.")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        print(table(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    embedder = None
    for run in args.runs:
        name, judge = run.split(":", 1)
        spec, pairs, prompts, concept, read_position = EXPERIMENTS[name]
        if spec not in models:
            models = {spec: actkit.load(spec)}
        if judge == "embed" and embedder is None:
            embedder = Embedder(*actkit.load("minilm-l6"))
        model, tokenizer = models[spec]
        items = read_pairs(pairs_path(pairs)) if isinstance(pairs, str) else pairs
        own = {n: load_vector(f, model) for n, f in (item.split("=", 1) for item in args.vector)}
        if args.sae:
            own.update(sae_methods(model, tokenizer, args.sae, items, read_position, args.seed))
        start = time.monotonic()
        result = evaluate_steering(model, tokenizer, items, prompts(), concept, methods=args.methods.split(","),
                                   factors=args.factors, depths=args.depths, judge=judge, embedder=embedder,
                                   reference=reference_texts(spec, 16), max_new_tokens=args.max_new_tokens,
                                   read_position=read_position, log=lambda line: print("  " + line, flush=True),
                                   lineas={"steps": args.lineas_steps, "lr": args.lineas_lr}, vectors=own,
                                   seed=args.seed)
        result.update(model=spec, run=run, threads=torch.get_num_threads(), torch=torch.__version__,
                      wall_seconds=time.monotonic() - start)
        (out / f"{name}.{judge}{args.tag}.json").write_text(json.dumps(result, indent=1))
        print(f"{run} on {spec}: {result['wall_seconds']:.0f} s; select_layers first {result['select_layers']['first']}")
        for m in result["methods"]:
            t = m["test"]
            win = "-" if m["win_rate_vs_prompt"] is None else f"{m['win_rate_vs_prompt']:.2f}"
            print(f"  {m['method']:<9} L{m['layer']} f{m['factor']}: concept {t['concept']:.2f} instr "
                  f"{t['instruction']:.2f} fluency {t['fluency']:.2f} harmonic {t['harmonic']:.3f} win {win} "
                  f"KL {t['kl']:.3f} ppl {_num(t['perplexity'])} margin "
                  f"{_num(m['likelihood'] and m['likelihood']['mean'])} {adaptive(m)}", flush=True)


if __name__ == "__main__":
    main()
