"""Persona shift across model edits against the measured behaviour change, on the built-in models (refusal).

For each model: a refusal direction (`train_vector`, mean-diff, on the shipped toy-refusal pairs) at the block a
probe picks (`train_probe` on the same pairs' texts, validation AUROC), used as the monitor (`probe_from_vector`:
the projection on the unit direction, as persona vectors do). The prompt set: held-out forbidden and benign
requests of the built-in corpus. For each edit: the shift of the mean projection of the prompt set
(`mean_projection`, no generation) and the change of the refusal rate on the same prompts (greedy, 8 tokens,
`actkit.evaluate.behaviours.refusal_rate`). Edits: steering with the vector at relative coefficients, ablation of
the direction everywhere (Arditi et al.), magnitude and Wanda pruning (unstructured) at several sparsities, and on
toy-moe, expert pruning (REAP and frequency) at several kept fractions. Reported: the table and Pearson's r and
Spearman's rho across edits, per model.

    python bench/monitor_persona.py [--models builtin:toy-dense builtin:toy-moe] [--prompts 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch

import actkit
from actkit.builtin import corpus
from actkit.builtin.calibration import builtin_calibration
from actkit.compress import prune_experts, prune_weights
from actkit.evaluate.behaviours import refusal_rate
from actkit.monitor import probe_from_vector, train_probe
from actkit.monitor.persona import correlation, mean_projection
from actkit.steer import ablation_everywhere, read_pairs, steering_writes, train_vector
from actkit.steer.pairs import pairs_path

from machine import cpu_model


def edits(name: str, model: Any, tokenizer: Any, vector: Any, layer: int) -> list[tuple[str, Callable[[], Any]]]:
    """(label, make) pairs; make() returns (model, writes) for the edited forward pass."""
    out: list[tuple[str, Callable[[], Any]]] = []
    for coef in (-0.6, -0.3, -0.15, 0.15, 0.3, 0.6):
        out.append((f"steer {coef:+g} (relative) at block {layer}",
                    lambda c=coef: (model, steering_writes(vector, c, relative=True))))
    unit = vector.directions[layer] / vector.directions[layer].norm()
    out.append(("ablate the direction everywhere", lambda: (model, ablation_everywhere(model, unit))))
    calibration = builtin_calibration(64)
    for method in ("magnitude", "wanda"):
        for sparsity in (0.3, 0.5, 0.7):
            out.append((f"prune {method} {sparsity:g}", lambda m=method, s=sparsity: (
                prune_weights(model, tokenizer, m, s, calibration=calibration)[0], None)))
    if "moe" in name:
        for method, keep in (("reap", 0.75), ("reap", 0.5), ("frequency", 0.5), ("reap", 0.25)):
            out.append((f"prune experts {method} keep {keep:g}", lambda m=method, k=keep: (
                prune_experts(model, tokenizer, method=m, keep=k, calibration=calibration)[0], None)))
    return out


def with_writes(model: Any, writes: Any, fn: Callable[[], float]) -> float:
    from actkit.core.hooks import tap

    with tap(model, write=writes or {}):
        return fn()


def measure(name: str, n_prompts: int) -> dict[str, Any]:
    model, tokenizer = actkit.load(name)
    pairs = read_pairs(pairs_path("builtin:toy-refusal"))
    texts = [p.positive for p in pairs] + [p.negative for p in pairs]
    picked = train_probe(model, tokenizer, texts, [1] * len(pairs) + [0] * len(pairs), method="mean-diff")
    layer = picked.layer
    vector = train_vector(model, tokenizer, pairs, [layer])
    probe = probe_from_vector(vector, layer)
    prompts = ([d.prompt for d in corpus.eval_set("request", n_prompts, label="forbidden")]
               + [d.prompt for d in corpus.eval_set("request", n_prompts, label="benign")])
    base_projection = mean_projection(model, tokenizer, prompts, probe)
    base_rate = refusal_rate(model, tokenizer, prompts)
    rows = []
    for label, make in edits(name, model, tokenizer, vector, layer):
        start = time.perf_counter()
        edited, writes = make()
        projection = mean_projection(edited, tokenizer, prompts, probe, writes=writes)
        rate = with_writes(edited, writes, lambda e=edited: refusal_rate(e, tokenizer, prompts))
        rows.append({"edit": label, "projection_shift": projection - base_projection,
                     "refusal_rate": rate, "behaviour_change": rate - base_rate,
                     "seconds": time.perf_counter() - start})
    shifts = [r["projection_shift"] for r in rows]
    changes = [r["behaviour_change"] for r in rows]
    return {"model": name, "probe_site": probe.site, "probe_auroc_on_pairs": picked.metadata["auroc"],
            "prompts": len(prompts), "base_projection": base_projection, "base_refusal_rate": base_rate,
            "edits": rows, "correlation": correlation(shifts, changes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["builtin:toy-dense", "builtin:toy-moe"])
    parser.add_argument("--prompts", type=int, default=40, help="forbidden and as many benign prompts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(m, args.prompts) for m in args.models]
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model()}
    if args.json:
        print(json.dumps({"results": results, **info}, indent=2))
        return
    print(f"torch {info['torch']}, {info['threads']} threads, {info['cpu']}")
    for r in results:
        print(f"{r['model']}: probe {r['probe_site']}, {r['prompts']} prompts, base refusal rate "
              f"{r['base_refusal_rate']:.3f}")
        for e in r["edits"]:
            print(f"  {e['edit']} | shift {e['projection_shift']:+.3f} | refusal {e['refusal_rate']:.3f} "
                  f"({e['behaviour_change']:+.3f})")
        c = r["correlation"]
        print(f"  Pearson r {c['pearson']:.3f}, Spearman rho {c['spearman']:.3f} over {len(r['edits'])} edits")


if __name__ == "__main__":
    main()
