"""Layer-by-layer calibration: each block's statistics come from the inputs the already-pruned blocks produce.

Wanda and SparseGPT prune one block at a time and feed the next block what the *pruned* blocks before it
output, so later blocks learn to compensate for earlier errors. Running the whole model once per block would
cost a quadratic number of block passes; instead the calibration batches are pushed through the model once up to
the first block, and from then on block by block:

1. **capture**: every block is briefly replaced by a recorder that keeps the arguments the model passes it
   (attention mask, position embeddings, ...; they differ per block in models that mix sliding-window and full
   attention) and block 0's hidden states; the last recorder stops the pass, so the output head never runs.
2. for each block: run it on the cached hidden states inside the core's `tap`, which feeds streaming reducers
   (`actkit.core.stats`) at the sites that carry the chosen linear layers' inputs (``attn_in``, ``attn_hidden``,
   ``mlp_in``, ``mlp_hidden``; found once by `actkit.compress.projections.input_sites`). The block runs outside
   the model's forward, so each batch's `StepContext` is set from its mask: padding is never read. Layers that
   read one site share its reducers (q, k and v: one covariance, not three). Call ``prune``; run the pruned
   block again and its outputs become the next block's inputs.

A layer whose input no named site carries (in the tested families only the down projection of Qwen2-MoE's shared
expert) is read at its module site (``module:PATH:input``), with the same mask.

Memory is one block's hidden states for the calibration tokens (plus the recorded arguments, shared between
blocks) and the reducers' state, which does not grow with the number of tokens. The model passed in is changed
only by ``prune`` (its blocks are swapped back in ``finally``): give it a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from actkit.compress.projections import input_sites
from actkit.core.anatomy import Anatomy
from actkit.core.collect import TokenBatch
from actkit.core.hooks import Read, tap
from actkit.core.positions import StepContext
from actkit.core.sites import Site
from actkit.errors import ActkitError

#: Reducers of one module: reducer name -> reducer (``update(x, mask)``, ``result()``).
Stats = dict[str, Any]


class _Stop(Exception):
    """Raised by the last recorder: nothing after the blocks is needed."""


class _Recorder(nn.Module):
    """Stands in for a block during capture: keeps its call's arguments and passes the hidden states on."""

    def __init__(self, block: nn.Module, index: int, sink: Callable[..., None], last: bool):
        super().__init__()
        self.block = block
        self.index = index
        self.sink = sink
        self.last = last

    def __getattr__(self, name: str) -> Any:
        # the model may read attributes of its blocks (an attention type, a layer index) while it runs them
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        self.sink(self.index, hidden, rest, kwargs)
        if self.last:
            raise _Stop
        return hidden


Call = tuple[tuple[Any, ...], dict[str, Any]]


def _capture(model: nn.Module, anatomy: Anatomy, batches: Sequence[TokenBatch]) -> tuple[list[torch.Tensor],
                                                                                          list[list[Call]]]:
    """Block 0's hidden states per batch, and every block's other call arguments per batch."""
    layers = anatomy.root.get_submodule(anatomy.family.layers)
    assert isinstance(layers, nn.ModuleList)  # Anatomy.of checked it
    n = anatomy.n_layers
    hidden: list[torch.Tensor] = []
    calls: list[list[Call]] = []

    def sink(index: int, h: torch.Tensor, rest: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if index == 0:
            hidden.append(h)
            calls.append([((), {})] * n)
        calls[-1][index] = (rest, kwargs)

    device = next(model.parameters()).device
    originals = list(anatomy.blocks)
    try:
        for i, block in enumerate(originals):
            layers[i] = _Recorder(block, i, sink, last=i == n - 1)
        with torch.inference_mode():
            for batch in batches:
                try:
                    model(input_ids=batch.ids.to(device), attention_mask=batch.mask.long().to(device),
                          use_cache=False)
                except _Stop:
                    pass
    finally:
        for i, block in enumerate(originals):
            layers[i] = block
    if len(hidden) != len(batches):
        raise ActkitError(f"{type(model).__name__} did not run its blocks on every calibration batch")
    return hidden, calls


def _run(block: nn.Module, hidden: torch.Tensor, call: Call) -> torch.Tensor:
    rest, kwargs = call
    out = block(hidden, *rest, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _context(mask: torch.Tensor) -> StepContext:
    """The context of one cached batch: what the hook engine would derive from its attention mask."""
    positions = (mask.long().cumsum(-1) - 1).masked_fill(~mask, -1)
    rows = torch.arange(mask.shape[0], device=mask.device)
    return StepContext(positions, mask, mask.sum(dim=1), rows, torch.zeros_like(rows))


def layer_by_layer(
    model: nn.Module,
    batches: Sequence[TokenBatch],
    modules: Mapping[int, Mapping[str, nn.Module]],
    reducers: Mapping[str, Callable[[], Any]],
    prune: Callable[[int, dict[str, Stats]], None],
    *,
    on_block: Callable[[int, int], None] | None = None,
) -> None:
    """Calibrate and prune `model` block by block (see the module docstring).

    Arguments:
        model: the model to prune in place (a copy of the user's).
        batches: calibration batches from `actkit.core.collect.token_batches`.
        modules: block index -> {name: module}: the layers whose inputs are reduced in that block.
        reducers: reducer name -> factory; the input of every module is reduced by one reducer from each
            (modules that read the same site get the same reducer objects).
        prune: called as ``prune(block, {name: {reducer name: reducer}})`` after the block's statistics are in,
            before its outputs are computed for the next block.
        on_block: progress callback ``(block, number of blocks)``.
    """
    if not batches:
        raise ActkitError("no calibration batches: the calibration text gave no tokens")
    anatomy = Anatomy.of(model)
    device = next(model.parameters()).device
    sites = input_sites(model, {name: module for chosen in modules.values() for name, module in chosen.items()})
    hidden, calls = _capture(model, anatomy, batches)
    contexts = [_context(b.mask.to(device)) for b in batches]
    last = max((i for i, m in modules.items() if m), default=-1)
    for i in range(last + 1):
        block = anatomy.blocks[i]
        chosen = dict(modules.get(i, {}))
        by_site: dict[Site, Stats] = {}
        stats: dict[str, Stats] = {}
        for name in chosen:
            site = sites[name]
            if site is not None and site.layer != i:
                raise ActkitError(f"{name} reads {site}, not an input of block {i}; list it under block {site.layer}")
            fresh = {k: make() for k, make in reducers.items()}
            stats[name] = fresh if site is None else by_site.setdefault(site, fresh)
        reads = {site: [Read(r) for r in reduced.values()] for site, reduced in by_site.items()}
        reads.update({Site.module(name, "input"): [Read(r) for r in stats[name].values()]
                      for name in chosen if sites[name] is None})
        with torch.inference_mode(), tap(model, read=reads) as state:
            for b, h in enumerate(hidden):
                state.context = contexts[b]
                _run(block, h, calls[b][i])
        prune(i, stats)
        if i < last:
            with torch.inference_mode():
                hidden = [_run(block, h, calls[b][i]) for b, h in enumerate(hidden)]
        if on_block is not None:
            on_block(i, last + 1)


__all__ = ["layer_by_layer"]
