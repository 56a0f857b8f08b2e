"""Switch experts off, or force them on, while the model runs (MoTE's expert switching), through the router.

transformers 5 routers return ``(logits, gate weights, expert indices)`` and choose inside their forward, so the
switch is a `tap` on each affected router's module site: a read of its logits (element 0) recomputes the choice
with `routing.route`, and writes replace the gate weights (element 1) and the expert indices (element 2) with it.
A switched-off expert's logit becomes -inf before the softmax and the top-k (it is never chosen, and the other
experts' probabilities are what they would be without it, exactly as if it were pruned); a forced-on expert takes
a top-k place for every token with its own probability as its gate. The logits the router returns (and the
``router.i`` site) are left as the router computed them; padding tokens keep the router's own choice. The hooks
exist only inside the ``with`` block and are removed on exit, exception or not; no parameter is touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from actkit.compress.experts.routing import MoeLayer, moe_layers, route
from actkit.compress.experts.scores import ExpertId
from actkit.core.hooks import Read, tap
from actkit.core.interventions import Intervention
from actkit.core.positions import StepContext
from actkit.core.sites import Site
from actkit.errors import ActkitError


@contextmanager
def switch_experts(model: nn.Module, off: Iterable[ExpertId] = (), on: Iterable[ExpertId] = ()) -> Iterator[None]:
    """Inside the block, the (block, expert) pairs in `off` are never routed to and those in `on` always are.

    Arguments:
        model: a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE model.
        off: experts to switch off; a block must keep at least top-k experts switched on.
        on: experts to force on; at most top-k per block, none also in `off`.

    Raises:
        ActkitError: for a block that is not an MoE block, an expert that does not exist, or a block left with
            fewer than top-k experts.
    """
    layers = {m.layer: m for m in moe_layers(model)}
    masks = _masks(layers, list(off), list(on))
    names = {id(m): n for n, m in model.named_modules()}
    read: dict[Site, Read] = {}
    write: dict[Site, Intervention] = {}
    for layer, (off_mask, on_mask) in masks.items():
        choice = _Choice(layers[layer], off_mask, on_mask)
        path = names[id(layers[layer].router)]
        read[Site.module(path, "output", 0)] = Read(choice.read)
        write[Site.module(path, "output", 1)] = _Replace(choice, 1)
        write[Site.module(path, "output", 2)] = _Replace(choice, 2)
    with tap(model, read=read, write=write):
        yield


def _masks(layers: dict[int, MoeLayer], off: list[ExpertId], on: list[ExpertId]
           ) -> dict[int, tuple[torch.Tensor | None, torch.Tensor | None]]:
    out: dict[int, list[torch.Tensor | None]] = {}
    for kind, items in (("off", off), ("on", on)):
        for layer, expert in items:
            moe = layers.get(layer)
            if moe is None:
                raise ActkitError(f"expert {layer}:{expert}: block {layer} is not an MoE block; MoE blocks are "
                                  f"{', '.join(map(str, sorted(layers)))}")
            if not 0 <= expert < moe.num_experts:
                raise ActkitError(f"expert {layer}:{expert} does not exist; block {layer} has experts "
                                  f"0..{moe.num_experts - 1}")
            slot = out.setdefault(layer, [None, None])
            i = 0 if kind == "off" else 1
            if slot[i] is None:
                slot[i] = torch.zeros(moe.num_experts, dtype=torch.bool)
            mask = slot[i]
            assert mask is not None
            mask[expert] = True
    for layer, (off_mask, on_mask) in out.items():
        moe = layers[layer]
        if off_mask is not None and on_mask is not None and bool((off_mask & on_mask).any()):
            both = (off_mask & on_mask).nonzero().flatten().tolist()
            raise ActkitError(f"block {layer}: expert(s) {both} are both switched off and forced on")
        if off_mask is not None and moe.num_experts - int(off_mask.sum()) < moe.top_k:
            raise ActkitError(f"block {layer}: switching off {int(off_mask.sum())} of {moe.num_experts} experts leaves "
                              f"fewer than the {moe.top_k} the router picks per token")
        if on_mask is not None and int(on_mask.sum()) > moe.top_k:
            raise ActkitError(f"block {layer}: {int(on_mask.sum())} experts forced on, but the router picks only "
                              f"{moe.top_k} per token")
    return {layer: (pair[0], pair[1]) for layer, pair in out.items()}


class _Choice:
    """The switched routing of one router in the current pass, recomputed from the logits it just returned."""

    def __init__(self, moe: MoeLayer, off: torch.Tensor | None, on: torch.Tensor | None):
        self.moe, self.off, self.on = moe, off, on
        self.routed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def read(self, logits: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        self.routed = route(logits, self.moe.top_k, self.moe.renormalize, off=self.off, on=self.on)


class _Replace(Intervention):
    """Element 1 (gate weights) or 2 (expert indices) of the router's output, from the recomputed routing."""

    def __init__(self, choice: _Choice, element: int):
        super().__init__()
        self.choice, self.element = choice, element

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        routed = self.choice.routed
        if routed is None or routed[self.element].shape != x.shape:
            raise ActkitError(f"block {self.choice.moe.layer}: the router did not return the (logits, weights, "
                              "indices) of a transformers 5 top-k router; expert switching does not support it")
        return routed[self.element].to(x.dtype)


__all__ = ["switch_experts"]
