"""Layer-by-layer calibration: each block's statistics come from the inputs the already-pruned blocks produce.

Wanda and SparseGPT prune one block at a time and feed the next block what the *pruned* blocks before it
output, so later blocks learn to compensate for earlier errors. Running the whole model once per block would
cost a quadratic number of block passes; instead the calibration batches are pushed through the model once up to
the first block, and from then on block by block:

1. **capture**: every block is briefly replaced by a recorder that keeps the arguments the model passes it
   (attention mask, position embeddings, ...; they differ per block in models that mix sliding-window and full
   attention) and block 0's hidden states; the last recorder stops the pass, so the output head never runs.
2. for each block: run it on the cached hidden states with pre-hooks on the chosen linear layers that feed
   streaming reducers (`actkit.core.stats`) with the real tokens only (padding is masked out); call ``prune``;
   run the pruned block again and its outputs become the next block's inputs.

Memory is one block's hidden states for the calibration tokens (plus the recorded arguments, shared between
blocks) and the reducers' state, which does not grow with the number of tokens. The model passed in is changed
only by ``prune`` (its blocks are swapped back in ``finally``): give it a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.collect import _batches, _chunks, context_length
from actkit.errors import ActkitError

#: Reducers of one module: reducer name -> reducer (``update(x, mask)``, ``result()``).
Stats = dict[str, Any]


@dataclass
class TokenBatch:
    """Right-padded token ids (B, T) and the mask of real tokens (B, T)."""

    ids: torch.Tensor
    mask: torch.Tensor


def token_batches(texts: Sequence[str], tokenizer: Any, model: nn.Module, *, batch_size: int = 8,
                  max_length: int | None = None) -> tuple[list[TokenBatch], int]:
    """Tokenize documents with `collect`'s rules (one document per text, split at the context) into batches.

    Returns the batches and the number of real tokens.
    """
    if batch_size <= 0:
        raise ActkitError(f"batch_size must be positive (got {batch_size})")
    limit = min(context_length(model, tokenizer), max_length or 10**9)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    out: list[TokenBatch] = []
    tokens = 0
    for batch in _batches(_chunks(texts, tokenizer, limit), batch_size, None):
        chunks = [c for c in batch if c.ids]
        if not chunks:
            continue
        width = max(len(c.ids) for c in chunks)
        ids = torch.full((len(chunks), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunks), width), dtype=torch.bool)
        for row, chunk in enumerate(chunks):
            ids[row, : len(chunk.ids)] = torch.tensor(chunk.ids)
            mask[row, : len(chunk.ids)] = True
        out.append(TokenBatch(ids, mask))
        tokens += int(mask.sum())
    return out, tokens


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


def _row_mask(x: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    """The real-token mask in the token shape of `x` ((B, T, d), or (B*T, d) inside some MoE blocks)."""
    if tuple(x.shape[:-1]) == tuple(mask.shape):
        return mask
    if x.dim() == 2 and x.shape[0] == mask.numel():
        return mask.reshape(-1)
    raise ActkitError(f"{name}: input of shape {tuple(x.shape)} does not match the batch of {tuple(mask.shape)} "
                      "tokens; this layer cannot be calibrated")


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
        batches: calibration batches from `token_batches`.
        modules: block index -> {name: module}: the layers whose inputs are reduced in that block.
        reducers: reducer name -> factory; every module gets a fresh reducer from each.
        prune: called as ``prune(block, {name: {reducer name: reducer}})`` after the block's statistics are in,
            before its outputs are computed for the next block.
        on_block: progress callback ``(block, number of blocks)``.
    """
    if not batches:
        raise ActkitError("no calibration batches: the calibration text gave no tokens")
    anatomy = Anatomy.of(model)
    device = next(model.parameters()).device
    hidden, calls = _capture(model, anatomy, batches)
    masks = [b.mask.to(device) for b in batches]
    last = max((i for i, m in modules.items() if m), default=-1)
    for i in range(last + 1):
        block = anatomy.blocks[i]
        chosen = dict(modules.get(i, {}))
        stats: dict[str, Stats] = {name: {k: make() for k, make in reducers.items()} for name in chosen}
        current: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name, module in chosen.items():
                handles.append(module.register_forward_pre_hook(_feeder(name, stats[name], current)))
            with torch.inference_mode():
                for b, h in enumerate(hidden):
                    current["mask"] = masks[b]
                    _run(block, h, calls[b][i])
        finally:
            for handle in handles:
                handle.remove()
        prune(i, stats)
        if i < last:
            with torch.inference_mode():
                hidden = [_run(block, h, calls[b][i]) for b, h in enumerate(hidden)]
        if on_block is not None:
            on_block(i, last + 1)


def _feeder(name: str, stats: Stats, current: dict[str, torch.Tensor]) -> Callable[..., None]:
    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args:
            raise ActkitError(f"{name} was called without a positional input; it cannot be calibrated")
        x = args[0]
        mask = _row_mask(x, current["mask"], name)
        for reducer in stats.values():
            reducer.update(x, mask)
    return pre


__all__ = ["TokenBatch", "layer_by_layer", "token_batches"]
