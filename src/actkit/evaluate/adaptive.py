"""Steering that decides while it generates, as methods of the evaluation harness: ``dynamic`` and ``backtrack``.

The harness measures a fixed intervention by generating with it and teacher-forcing it over the continuations
(the KL). Dynamic composition and backtracking steer each row its own way, token by token, from what the row has
generated so far, so they run their own decode loop (`actkit.steer.dynamic_generate`, `backtrack_generate`). A run
here returns the continuations with the writes that replay every row as it was generated (each generated token at
the coefficient it was chosen under), and the harness measures the KL with those, over the method's own
continuations, as for every other method.

- ``dynamic``: Dynamic Activation Composition (Scalena et al., 2024) of the mean-difference vector at one block; the
  grid's relative factor is its largest coefficient ``alpha_max``; the coefficient applied is set per token from the
  KL rule and is at most that.
- ``backtrack``: FASB (Gan, Cheng et al., 2025): the mean-difference direction's projection at the same block is
  watched on every generated token; when the mean score of the tokens kept so far falls below the threshold, the
  row's last `BACKTRACK_K` tokens are regenerated with the vector added at the grid's factor (once per row). The
  threshold is half-way between the mean projections of the positive and of the negative training texts, over
  every token but the first (the probe watches generated text, not a prompt's last token; a first token's massive
  activation, as in SmolLM2, would set the threshold alone).

Perplexity on reference texts and likelihood margins score fixed texts under a fixed intervention. These methods
have none (how much they steer depends on the text they generate), so the harness reports None for both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from actkit.core.generate import prompt_rows
from actkit.errors import ActkitError
from actkit.steer.backtrack import BacktrackResult, backtrack_generate, vector_probe
from actkit.steer.backtrack import replay_writes as backtrack_replay
from actkit.steer.directions import read_activations
from actkit.steer.dynamic import dynamic_generate
from actkit.steer.dynamic import replay_writes as dynamic_replay
from actkit.steer.pairs import Pair
from actkit.steer.vectors import SteeringVector

ADAPTIVE_METHODS = ("dynamic", "backtrack")
#: Tokens a backtrack takes back (FASB's k; the bench in docs/steering.md uses the same).
BACKTRACK_K = 4


@dataclass
class Decoded:
    """One run of an adaptive method on some prompts.

    Attributes:
        completions: the continuations' text.
        contexts: each prompt's token ids, as the decode loop fed them.
        ids: each continuation's token ids.
        replay: ``rows -> writes`` that reproduce those rows' generations in a teacher-forced pass.
        stats: what the method did, averaged over rows (``mean_coef``; ``rows_backtracked``, ``steered_tokens``).
    """

    completions: list[str]
    contexts: list[list[int]]
    ids: list[list[int]]
    replay: Callable[[Sequence[int]], Mapping[str, Any]]
    stats: dict[str, float]


def probe_threshold(model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], vector: SteeringVector, layer: int, *,
                    batch_size: int = 16) -> float:
    """Half-way between the mean projections of the pairs' positive and negative texts on `vector`'s direction
    at `layer`, every token of each text but the first counted (see the module docstring)."""
    unit = vector.directions[layer].double()
    unit = unit / unit.norm()
    means = []
    for texts in ([p.positive for p in pairs], [p.negative for p in pairs]):
        acts, _ = read_activations(model, tokenizer, texts, [layer], site=vector.site, read_position="from:1",
                                   batch_size=batch_size)
        means.append(float((acts[layer] @ unit).mean()))
    return sum(means) / 2


def run_adaptive(method: str, model: nn.Module, tokenizer: Any, prompts: Sequence[str], vector: SteeringVector,
                 factor: float, *, max_new_tokens: int, batch_size: int, threshold: float | None = None) -> Decoded:
    """Generate greedily with an adaptive method (module docstring), `batch_size` prompts per decode loop.

    Arguments:
        method: ``dynamic`` or ``backtrack``.
        vector: the steering vector, at the one block it steers (and, for ``backtrack``, reads).
        factor: the relative coefficient (``dynamic``: its largest).
        threshold: ``backtrack``'s probe threshold (`probe_threshold`).
    """
    if method not in ADAPTIVE_METHODS:
        raise ActkitError(f"unknown adaptive method {method!r}; use one of {', '.join(ADAPTIVE_METHODS)}")
    if len(vector.layers) != 1:
        raise ActkitError(f"an adaptive method steers at one block; the vector has {len(vector.layers)}")
    contexts = prompt_rows(model, tokenizer, list(prompts), max_new_tokens, False)
    chunks = [list(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    if method == "dynamic":
        return _dynamic(model, tokenizer, chunks, contexts, vector, factor, max_new_tokens)
    if threshold is None:
        raise ActkitError("backtracking needs the probe's threshold (probe_threshold)")
    return _backtrack(model, tokenizer, chunks, contexts, vector, factor, max_new_tokens, threshold)


def _dynamic(model: nn.Module, tokenizer: Any, chunks: list[list[str]], contexts: list[list[int]],
             vector: SteeringVector, factor: float, max_new_tokens: int) -> Decoded:
    texts: list[str] = []
    ids: list[list[int]] = []
    alphas: list[list[list[float]]] = []
    for chunk in chunks:
        result = dynamic_generate(model, tokenizer, chunk, [vector], alpha_max=factor, relative=True,
                                  max_new_tokens=max_new_tokens)
        texts += result.texts
        ids += result.ids
        alphas += result.alphas
    applied = [a[0] for row in alphas for a in row]
    replay = dynamic_replay([vector], alphas, [len(c) for c in contexts], relative=True)
    return Decoded(texts, contexts, ids, replay, {"mean_coef": sum(applied) / len(applied) if applied else 0.0})


def _backtrack(model: nn.Module, tokenizer: Any, chunks: list[list[str]], contexts: list[list[int]],
               vector: SteeringVector, factor: float, max_new_tokens: int, threshold: float) -> Decoded:
    probe = vector_probe(vector, vector.layers[0], threshold)
    parts = [backtrack_generate(model, tokenizer, chunk, probe, vector, coef=factor, relative=True, k=BACKTRACK_K,
                                when="below", reduce="mean", max_new_tokens=max_new_tokens) for chunk in chunks]
    result = BacktrackResult(*([item for part in parts for item in getattr(part, name)]
                               for name in ("texts", "ids", "backtracks", "events", "strengths", "starts")))
    steered = sum(len(row) - min(len(row), start - len(ctx) + 1)
                  for row, ctx, start in zip(result.ids, contexts, result.starts, strict=True) if start is not None)
    total = sum(len(row) for row in result.ids)
    return Decoded(result.texts, contexts, result.ids, backtrack_replay(result, vector, relative=True),
                   {"rows_backtracked": sum(1 for b in result.backtracks if b) / len(result.ids),
                    "steered_tokens": steered / total if total else 0.0})


__all__ = ["ADAPTIVE_METHODS", "BACKTRACK_K", "Decoded", "probe_threshold", "run_adaptive"]
