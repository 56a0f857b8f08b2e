"""MoTE: find the experts a behaviour routes through, by comparing routing frequencies on two prompt sets.

Mixture of Tunable Experts (Dahlke et al. 2025) changes what an MoE model does by switching a few experts off or
on; the experts are those whose routing frequency differs most between prompts that show a behaviour (forbidden
requests, which the built-in models refuse) and prompts that do not (benign requests). Frequencies are read at the
core's ``router.i`` sites with the `RouterStats` reducer through `collect` (no expert outputs needed); the
switching itself is `switch_experts`. `random_experts` draws the control: as many experts chosen at random, which
an effect must clearly exceed before it is credited to the chosen experts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actkit.compress.experts.routing import moe_layers
from actkit.compress.experts.scores import ExpertId
from actkit.core.collect import collect
from actkit.core.stats import RouterStats
from actkit.errors import ActkitError


def routing_frequency(model: nn.Module, tokenizer: Any, texts: Sequence[str], *,
                      batch_size: int = 16) -> tuple[list[int], torch.Tensor]:
    """The MoE blocks and the (L, E) fraction of `texts`' tokens routed to each expert (rows sum to top-k)."""
    if not texts:
        raise ActkitError("no texts to measure routing frequencies on")
    layers = moe_layers(model)
    top_k = layers[0].top_k
    sites = [f"router.{m.layer}" for m in layers]
    result = collect(model, list(texts), sites, {"router": lambda: RouterStats(top_k)}, tokenizer=tokenizer,
                     batch_size=batch_size)
    load = torch.stack([torch.as_tensor(result[s]["router"].result()["load"], dtype=torch.float64) for s in sites])
    return [m.layer for m in layers], load * top_k


@dataclass
class BehaviourExperts:
    """Routing frequencies on prompts with (``a``) and without (``b``) a behaviour, per MoE block and expert."""

    layers: list[int]
    frequency_a: torch.Tensor
    frequency_b: torch.Tensor

    @property
    def difference(self) -> torch.Tensor:
        """(L, E) frequency on ``a`` minus frequency on ``b``."""
        return self.frequency_a - self.frequency_b

    def top(self, n: int) -> list[ExpertId]:
        """The `n` (block, expert) pairs routed more on ``a`` than on ``b`` by the widest margins, widest first."""
        if n <= 0:
            raise ActkitError(f"ask for at least one expert (got {n})")
        flat = self.difference.reshape(-1)
        order = torch.argsort(-flat, stable=True).tolist()
        width = self.difference.shape[1]
        return [(self.layers[i // width], i % width) for i in order[:n] if flat[i] > 0]

    def ranking(self, n: int) -> list[dict[str, Any]]:
        """JSON-ready rows for `top`: block, expert, both frequencies and their difference."""
        rows = []
        for layer, expert in self.top(n):
            r = self.layers.index(layer)
            rows.append({"layer": layer, "expert": expert, "frequency_a": round(float(self.frequency_a[r, expert]), 5),
                         "frequency_b": round(float(self.frequency_b[r, expert]), 5),
                         "difference": round(float(self.difference[r, expert]), 5)})
        return rows


def behaviour_experts(model: nn.Module, tokenizer: Any, texts_a: Sequence[str], texts_b: Sequence[str], *,
                      batch_size: int = 16) -> BehaviourExperts:
    """Routing frequencies of every expert on two prompt sets (e.g. forbidden and benign requests)."""
    layers, freq_a = routing_frequency(model, tokenizer, texts_a, batch_size=batch_size)
    _, freq_b = routing_frequency(model, tokenizer, texts_b, batch_size=batch_size)
    return BehaviourExperts(layers, freq_a, freq_b)


def random_experts(model: nn.Module, n: int, *, seed: int = 0, exclude: Iterable[ExpertId] = ()) -> list[ExpertId]:
    """`n` distinct (block, expert) pairs drawn uniformly, none in `exclude`, leaving every block top-k experts."""
    layers = moe_layers(model)
    banned = set(exclude)
    pool = [(m.layer, e) for m in layers for e in range(m.num_experts) if (m.layer, e) not in banned]
    room = {m.layer: m.num_experts - m.top_k for m in layers}
    rng = random.Random(seed)
    rng.shuffle(pool)
    out: list[ExpertId] = []
    for layer, expert in pool:
        if len(out) == n:
            break
        if room[layer] > 0:
            out.append((layer, expert))
            room[layer] -= 1
    if len(out) < n:
        raise ActkitError(f"cannot draw {n} experts to switch off while every block keeps its top-k experts")
    return out


__all__ = ["BehaviourExperts", "behaviour_experts", "random_experts", "routing_frequency"]
