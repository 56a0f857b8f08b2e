"""Each request's steering on its own rows of a flattened batch (what vLLM runs), through the core's `tap`.

vLLM lays the tokens of every scheduled request end to end: one (N, d) tensor per block, request ``i`` on rows
``start_i:stop_i`` (a prompt chunk, a whole prompt, or one decode token), each row at its absolute position in its
own sequence. Seen as a batch of N one-token rows, that is an ordinary `StepContext`: row k holds its token's
absolute position and its request's prompt length, so the core's `Positions` rules (``prompt``, ``generated``,
``from:K``) select in a vLLM pass exactly the tokens they select in `actkit.generate`, and `OnRows` confines each
request's writes to its rows, leaving the other rows bit for bit.

vLLM's decoder blocks return ``(hidden, residual)``; the residual stream leaving the block (actkit's
``resid_post``) is their sum, formed inside the next block's norm. Adding a vector to ``hidden`` adds it to that
sum, so `Add` writes there directly; any other write (`Ablate`) sees the sum, read from the block's
``post_attention_layernorm`` (which returns the residual), and hands back ``new - residual``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from actkit.core.interventions import Add, Intervention, OnRows
from actkit.core.positions import StepContext
from actkit.core.sites import Site
from actkit.errors import ActkitError

#: The site every request write lives at (the one `actkit.steer.steering_writes` and ablation use).
SITE = "resid_post"


@dataclass(frozen=True)
class Scheduled:
    """One request's part of a pass.

    Arguments:
        start, stop: its rows in the flattened batch.
        prompt_len: the number of prompt tokens of the request (positions at or past it are generated).
        writes: its steering (site -> interventions, built for one request), or None.
    """

    start: int
    stop: int
    prompt_len: int
    writes: Mapping[str, Sequence[Intervention]] | None


class Blocks(nn.Module):
    """The block list of an engine's model under a config, for `tap` and `Anatomy` (module sites
    ``layers.L...``): it holds the blocks, not the model, so the engine's own forward (whose inputs are flat) is
    never hooked and `tap`'s context is the one this module sets."""

    def __init__(self, config: object, layers: nn.ModuleList):
        super().__init__()
        self.config = config
        self.layers = layers


def row_frame(n_rows: int, requests: Sequence[Scheduled]) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid, prompt_len), each (N,): which rows hold a scheduled token, and the prompt length of its request.
    It depends on the batch's layout only, so an engine may keep it while the layout stays."""
    valid = torch.zeros(n_rows, dtype=torch.bool)
    prompt_len = torch.zeros(n_rows, dtype=torch.long)
    if requests and all(a.stop == b.start for a, b in zip(requests, requests[1:], strict=False)):
        start, stop = requests[0].start, requests[-1].stop  # vLLM's layout: end to end (one op, not one per request)
        valid[start:stop] = True
        prompt_len[start:stop] = torch.repeat_interleave(torch.tensor([r.prompt_len for r in requests]),
                                                         torch.tensor([r.stop - r.start for r in requests]))
        return valid, prompt_len
    for r in requests:
        valid[r.start:r.stop] = True
        prompt_len[r.start:r.stop] = r.prompt_len
    return valid, prompt_len


def step_context(positions: torch.Tensor, requests: Sequence[Scheduled],
                 frame: tuple[torch.Tensor, torch.Tensor] | None = None) -> StepContext:
    """The context of a flattened pass of N tokens as N one-token rows.

    Arguments:
        positions: (N,) the absolute position of each row's token (what the engine gives its model).
        requests: the scheduled requests, each on its rows; rows outside them (padding) are not valid.
        frame: `row_frame` of this layout, when the caller kept it.

    Returns:
        A (N, 1) `StepContext`: position, validity and the prompt length of the row's request.
    """
    n = int(positions.shape[0])
    device = positions.device
    valid, prompt_len = frame if frame is not None else row_frame(n, requests)
    valid, prompt_len = valid.to(device), prompt_len.to(device)
    where = positions.to(torch.long).masked_fill(~valid, -1)
    rows = torch.arange(n, device=device)
    return StepContext(where[:, None], valid[:, None], prompt_len, rows, torch.zeros_like(rows))


class Residual:
    """The residual half of a block's output in the current pass (set by a read inside the block)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def capture(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        self.value = x


class OnStream(Intervention):
    """`inner` applied to ``hidden + residual`` of a block that returns them apart; the block's ``hidden``
    becomes ``inner(hidden + residual) - residual`` on the tokens `inner` selects and is unchanged elsewhere.

    Arguments:
        inner: the intervention on the residual stream.
        residual: where the pass's residual is captured.
        index: the rows this intervention will see (under `OnRows`), to slice the residual alike.
    """

    def __init__(self, inner: Intervention, residual: Residual, index: torch.Tensor):
        super().__init__(inner.positions)
        self.inner = inner
        self.residual = residual
        self.index = index

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.residual.value is None:
            raise ActkitError("the block's residual was not captured in this pass")
        index = self.index.to(x.device)
        r = self.residual.value.index_select(0, index)
        stream = x + r
        new = self.inner(stream, mask, ctx)
        if new is stream:
            return x
        return torch.where(mask.reshape(*mask.shape, 1), new - r, x)

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise ActkitError("OnStream is applied through its __call__")


def step_writes(requests: Sequence[Scheduled], n_rows: int, layers: range
                ) -> tuple[dict[str, list[Intervention]], dict[str, Residual]]:
    """The writes (and residual reads) of one pass, for ``tap(Blocks(...), write=..., read=...)``.

    Arguments:
        requests: the scheduled requests; those without writes are left alone.
        n_rows: N, the rows of the pass (padding included).
        layers: the blocks held here (under pipeline parallelism, this rank's); writes at others are the other
            ranks' business.

    Returns:
        (module site -> each request's interventions confined to its rows, in request and item order (requests
        whose writes are one object, the same steering, share one intervention over all their rows);
        module site of a block's residual -> where to capture it, for the blocks that need it).
    """
    writes: dict[str, list[Intervention]] = {}
    reads: dict[str, Residual] = {}
    # requests that share one writes object (the same steering text) share one write over all their rows
    groups: dict[int, tuple[Mapping[str, Sequence[Intervention]], list[Scheduled]]] = {}
    for r in requests:
        if r.writes:
            groups.setdefault(id(r.writes), (r.writes, []))[1].append(r)
    for request_writes, members in groups.values():
        rows = torch.zeros(n_rows, dtype=torch.bool)
        for r in members:
            rows[r.start:r.stop] = True
        # one steering for every request: no rows to pick (padding rows are not valid, so nothing selects them)
        whole = len(members) == len(requests)
        index = torch.arange(n_rows) if whole else torch.nonzero(rows).reshape(-1)
        for name, values in request_writes.items():
            site = Site.parse(name)
            if site.kind != SITE or site.layer is None:
                raise ActkitError(f"write at {name}: the vLLM plugin steers at {SITE}.L only")
            if site.layer not in layers:
                continue
            target = writes.setdefault(f"module:layers.{site.layer}:output.0", [])
            for value in values:
                if not isinstance(value, Add):  # Add is linear: adding to the hidden half adds to the stream
                    key = f"module:layers.{site.layer}.post_attention_layernorm:output.1"
                    value = OnStream(value, reads.setdefault(key, Residual()), index)
                target.append(value if whole else OnRows(value, rows))
    return writes, reads


__all__ = ["SITE", "Blocks", "OnStream", "Residual", "Scheduled", "row_frame", "step_context", "step_writes"]
