"""Each request's steering on its own rows of a flattened batch (what vLLM runs), through the core's `tap`.

vLLM lays the tokens of every scheduled request end to end: one (N, d) tensor per block, request ``i`` on rows
``start_i:stop_i`` (a prompt chunk, a whole prompt, or one decode token), each row at its absolute position in its
own sequence. Seen as a batch of N one-token rows, that is an ordinary `StepContext`: row k holds its token's
absolute position and its request's prompt length, so the core's `Positions` rules (``prompt``, ``generated``,
``from:K``) select in a vLLM pass exactly the tokens they select in `actkit.generate`, and `OnRows` confines each
request's writes to its rows, leaving the other rows bit for bit.

vLLM's decoder blocks return ``(hidden, residual)``; the residual stream leaving the block (actkit's
``resid_post``) is their sum, formed inside the next block's norm. The writes go to the ``residual`` half: adding
a vector there adds it to the sum, so `Add` writes there directly; any other write (`Ablate`) sees the sum, with
``hidden`` read from the same output just before, and hands back ``new - hidden``. One hook per steered block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from actkit.core.interventions import Add, Intervention, OnRows, per_row
from actkit.core.positions import All, StepContext
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


@dataclass(frozen=True)
class Frame:
    """What a pass's context needs beyond its positions, fixed while the batch's layout stays (so an engine keeps
    it across the decode steps of an unchanged batch).

    Attributes:
        valid: (N, 1) bool, which rows hold a scheduled token (the others are padding).
        prompt_len: (N,) the prompt length of each row's request (0 on padding).
        rows: (N,) the row indices (each row is its own one-token "sequence").
        zeros: (N,) zeros (no row is split out of a longer document).
        padded: whether any row is padding.
    """

    valid: torch.Tensor
    prompt_len: torch.Tensor
    rows: torch.Tensor
    zeros: torch.Tensor
    padded: bool


def row_frame(n_rows: int, requests: Sequence[Scheduled]) -> Frame:
    """The `Frame` of a pass of `n_rows` rows holding `requests`."""
    valid = torch.zeros(n_rows, dtype=torch.bool)
    prompt_len = torch.zeros(n_rows, dtype=torch.long)
    if requests and all(a.stop == b.start for a, b in zip(requests, requests[1:], strict=False)):
        start, stop = requests[0].start, requests[-1].stop  # vLLM's layout: end to end (one op, not one per request)
        valid[start:stop] = True
        prompt_len[start:stop] = torch.repeat_interleave(torch.tensor([r.prompt_len for r in requests]),
                                                         torch.tensor([r.stop - r.start for r in requests]))
    else:
        for r in requests:
            valid[r.start:r.stop] = True
            prompt_len[r.start:r.stop] = r.prompt_len
    rows = torch.arange(n_rows)
    return Frame(valid[:, None], prompt_len, rows, torch.zeros_like(rows), not bool(valid.all()))


def step_context(positions: torch.Tensor, frame: Frame) -> StepContext:
    """The context of a flattened pass of N tokens as N one-token rows.

    Arguments:
        positions: (N,) the absolute position of each row's token (what the engine gives its model).
        frame: `row_frame` of the pass's layout (on the device of `positions`).

    Returns:
        A (N, 1) `StepContext`: position (-1 on padding), validity and the prompt length of the row's request.
    """
    where = positions.to(torch.long)[:, None]
    if frame.padded:
        where = where.masked_fill(~frame.valid, -1)
    return StepContext(where, frame.valid, frame.prompt_len, frame.rows, frame.zeros)


def frame_on(frame: Frame, device: torch.device) -> Frame:
    """`frame` with its tensors on `device` (the same object when they are there already)."""
    if frame.valid.device == device:
        return frame
    return Frame(frame.valid.to(device), frame.prompt_len.to(device), frame.rows.to(device),
                 frame.zeros.to(device), frame.padded)


class Hidden:
    """The ``hidden`` half of a block's output in the current pass (set by a read just before the writes)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def capture(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        self.value = x


class OnStream(Intervention):
    """`inner` applied to ``hidden + residual`` of a block that returns them apart, written to the ``residual``
    half: it becomes ``inner(hidden + residual) - hidden`` on the tokens `inner` selects and is unchanged elsewhere.

    Arguments:
        inner: the intervention on the residual stream.
        hidden: where the pass's ``hidden`` is captured.
        index: the rows this intervention will see (under `OnRows`), to slice ``hidden`` alike.
    """

    def __init__(self, inner: Intervention, hidden: Hidden, index: torch.Tensor):
        super().__init__(inner.positions)
        self.inner = inner
        self.hidden = hidden
        self.index = index

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.hidden.value is None:
            raise ActkitError("the block's hidden output was not captured in this pass")
        index = self.index.to(x.device)
        h = self.hidden.value.index_select(0, index)
        stream = x + h
        new = self.inner(stream, mask, ctx)
        if new is stream:
            return x
        return torch.where(mask.reshape(*mask.shape, 1), new - h, x)

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise ActkitError("OnStream is applied through its __call__")


class Shift(Intervention):
    """An `Add` of one vector at every position, its ``coef * vector`` formed once per dtype instead of per pass:
    the same bits as the `Add` on every row it is given (so only where no row is padding).

    Arguments:
        add: an `Add` at all positions with a scalar coefficient and a (d,) vector (see `shift_of`).
    """

    def __init__(self, add: Add):
        super().__init__(All())
        self.add = add
        self._delta: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        delta = self._delta
        if delta is None or delta.dtype != x.dtype or delta.device != x.device:
            delta = per_row(self.add.coef, x, "coefficient") * per_row(self.add.vector, x, "vector")  # as Add.edit
            self._delta = delta
        return x + delta

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self(x, ctx.valid, ctx)


def shift_of(value: Intervention) -> Shift | None:
    """`value` as a `Shift` when it is an `Add` at every position of one (d,) vector times a scalar, else None."""
    if (type(value) is Add and isinstance(value.positions, All) and value.vector.dim() == 1
            and torch.as_tensor(value.coef).dim() == 0):
        return Shift(value)
    return None


def step_writes(requests: Sequence[Scheduled], n_rows: int, layers: range
                ) -> tuple[dict[str, list[Intervention]], dict[str, Hidden]]:
    """The writes (and hidden reads) of one pass, for ``tap(Blocks(...), write=..., read=...)``.

    Arguments:
        requests: the scheduled requests; those without writes are left alone.
        n_rows: N, the rows of the pass (padding included).
        layers: the blocks held here (under pipeline parallelism, this rank's); writes at others are the other
            ranks' business.

    Returns:
        (module site -> each request's interventions confined to its rows, in request and item order (requests
        whose writes are one object, the same steering, share one intervention over all their rows);
        module site of a block's ``hidden`` -> where to capture it, for the blocks that need it).
    """
    writes: dict[str, list[Intervention]] = {}
    reads: dict[str, Hidden] = {}
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
        padded = whole and sum(r.stop - r.start for r in requests) < n_rows  # a Shift would write padding rows
        for name, values in request_writes.items():
            site = Site.parse(name)
            if site.kind != SITE or site.layer is None:
                raise ActkitError(f"write at {name}: the vLLM plugin steers at {SITE}.L only")
            if site.layer not in layers:
                continue
            target = writes.setdefault(f"module:layers.{site.layer}:output.1", [])
            for value in values:
                if not isinstance(value, Add):  # Add is linear: adding to the residual half adds to the stream
                    key = f"module:layers.{site.layer}:output.0"  # read before element 1 is written
                    value = OnStream(value, reads.setdefault(key, Hidden()), index)
                elif not padded:
                    value = shift_of(value) or value
                target.append(value if whole else OnRows(value, rows))
    return writes, reads


__all__ = ["SITE", "Blocks", "Frame", "Hidden", "OnStream", "Scheduled", "Shift", "frame_on", "row_frame",
           "shift_of", "step_context", "step_writes"]
