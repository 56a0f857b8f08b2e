"""Writes: what an intervention does to an activation at the positions it selects.

An intervention receives the activation ``x`` (B, T, ...), the (B, T) mask of tokens its `Positions` rule selects
in this pass, and the `StepContext`; it returns the new activation and never changes ``x`` in place, so autograd
and the caller's tensors stay intact. Every quantity may differ per row of the batch. The steer pillar builds
its interventions (ablation, clamping, conditional steering) on this base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from actkit.core.positions import All, Positions, StepContext
from actkit.errors import ActkitError


class Intervention(ABC):
    """Base class: subclasses implement `edit`, which returns the new values of every token.

    Arguments:
        positions: which tokens to change; the others (and padding) keep their values.
    """

    def __init__(self, positions: Positions | None = None):
        self.positions: Positions = positions if positions is not None else All()

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if not bool(mask.any()):
            return x
        new = self.edit(x, ctx)
        return torch.where(mask.reshape(*mask.shape, *([1] * (x.dim() - mask.dim()))), new, x)

    @abstractmethod
    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor: ...


def check_finite(value: torch.Tensor | float, what: str) -> None:
    """Refuse a NaN or infinite value (scalar, vector or per-row tensor) before it reaches a model.

    A non-finite value written into an activation makes every later logit NaN, silently; so each intervention
    checks its numbers once, when it is built.
    """
    t = torch.as_tensor(value)
    if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t.detach()).all()):
        raise ActkitError(f"the {what} holds NaN or infinity, which would make the model's output NaN; "
                          f"give finite numbers")


def per_row(value: torch.Tensor | float, x: torch.Tensor, what: str) -> torch.Tensor:
    """Broadcast a per-site (d,) or per-row (B, d) tensor, or a scalar / (B,) coefficient, against x (B, T, d)."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    batch, width = x.shape[0], x.shape[-1]
    if t.dim() == 0:
        return t
    if t.dim() == 1 and what == "coefficient":
        if t.shape[0] != batch:
            raise ActkitError(f"{what} has {t.shape[0]} rows but the batch has {batch}; give one per row or a scalar")
        return t.reshape(batch, *([1] * (x.dim() - 1)))
    if t.shape[-1] != width:
        raise ActkitError(f"{what} has size {t.shape[-1]} but the site has size {width}; use a {what} for this site")
    if t.dim() == 1:
        return t
    if t.dim() == 2 and t.shape[0] == batch:
        return t.reshape(batch, *([1] * (x.dim() - 2)), width)
    raise ActkitError(f"{what} of shape {tuple(t.shape)} does not fit a batch of {batch} rows of size {width}")


class Add(Intervention):
    """Add ``coef * vector``: the steering move of ActAdd and CAA.

    Arguments:
        vector: (d,) for every row, or (B, d) one per row.
        coef: a scalar, or (B,) one per row.
        positions: which tokens to steer (default all).

    A NaN or infinite entry in `vector` or `coef` raises `ActkitError` here, not NaN logits later.
    """

    def __init__(self, vector: torch.Tensor, coef: float | torch.Tensor = 1.0, positions: Positions | None = None):
        super().__init__(positions)
        check_finite(vector, "vector")
        check_finite(coef, "coefficient")
        self.vector = vector
        self.coef = coef

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return x + per_row(self.coef, x, "coefficient") * per_row(self.vector, x, "vector")


class Set(Intervention):
    """Replace the activation with given values: the move of activation patching.

    Arguments:
        value: a tensor broadcastable to the site's activation, e.g. (B, T, d) from another run, or (d,).
        positions: which tokens to overwrite.
    """

    def __init__(self, value: torch.Tensor, positions: Positions | None = None):
        super().__init__(positions)
        check_finite(value, "value to set")
        self.value = value

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        value = self.value.to(device=x.device, dtype=x.dtype)
        try:
            return torch.broadcast_to(value, x.shape)
        except RuntimeError:
            raise ActkitError(f"cannot patch values of shape {tuple(value.shape)} into an activation of shape "
                              f"{tuple(x.shape)}") from None


class Apply(Intervention):
    """Apply any function ``fn(x) -> x`` of the activation, at the selected positions only."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], positions: Positions | None = None):
        super().__init__(positions)
        self.fn = fn

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.fn(x)


class _RowPositions(Positions):
    """The inner rule on the chosen rows only; the other rows select nothing."""

    def __init__(self, inner: Positions, rows: torch.Tensor):
        self.inner = inner
        self.rows = rows

    def select(self, ctx: StepContext) -> torch.Tensor:
        index = _row_index(self.rows, ctx)
        out = torch.zeros_like(ctx.valid)
        if index.numel():
            out[index] = self.inner.mask(_context_rows(ctx, index))
        return out

    def __repr__(self) -> str:
        return f"{self.inner!r} on rows {_row_index(self.rows).tolist()}"


def _row_index(rows: torch.Tensor, ctx: StepContext | None = None) -> torch.Tensor:
    """The indices of the True entries of a (B,) bool mask, checked against the batch of `ctx`."""
    if ctx is not None and rows.shape[0] != ctx.shape[0]:
        raise ActkitError(f"the row mask has {rows.shape[0]} rows but the batch has {ctx.shape[0]}")
    device = ctx.valid.device if ctx is not None else rows.device
    return torch.nonzero(rows.to(device)).reshape(-1)


def _context_rows(ctx: StepContext, index: torch.Tensor) -> StepContext:
    return StepContext(ctx.positions[index], ctx.valid[index], ctx.prompt_len[index], ctx.documents[index],
                       ctx.offsets[index])


class OnRows(Intervention):
    """Apply `inner` to some rows of the batch only; the other rows come back untouched, bit for bit.

    The inner intervention sees just its rows (activation and `StepContext` sliced to them), as if they were the
    whole batch: so an intervention built for one prompt (a (1,) coefficient, `At` with one row of positions)
    serves that prompt's row inside a larger batch, which is how a server gives each request its own steering.

    Arguments:
        inner: the intervention, built for a batch of ``rows.sum()`` rows.
        rows: (B,) bool, the rows of the batch to apply it to.
    """

    def __init__(self, inner: Intervention, rows: torch.Tensor):
        rows = torch.as_tensor(rows)
        if rows.dim() != 1 or rows.dtype != torch.bool:
            raise ActkitError(f"rows must be a (B,) bool tensor, got {rows.dtype} of shape {tuple(rows.shape)}")
        super().__init__(_RowPositions(inner.positions, rows))
        self.inner = inner
        self.rows = rows

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if not bool(mask.any()):
            return x
        index = _row_index(self.rows, ctx)
        return x.index_copy(0, index, self.inner(x[index], mask[index], _context_rows(ctx, index)))

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        index = _row_index(self.rows, ctx)
        return x.index_copy(0, index, self.inner.edit(x[index], _context_rows(ctx, index)))
