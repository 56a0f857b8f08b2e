"""Which tokens a read or a write applies to, as absolute token indices.

A position is the index of a token in its own row, counting real tokens only, so left padding does not shift it.
The hook engine gives every forward pass a `StepContext` holding each token's absolute position and each row's
prompt length; a `Positions` rule turns that into a (B, T) mask. Because the rule sees absolute positions, a rule
such as ``Generated()`` or ``From(5)`` selects the same tokens in a prefill pass, in each KV-cache decode step,
and in a no-cache recomputation of the whole sequence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from actkit.errors import ActkitError


@dataclass
class StepContext:
    """What the hook engine knows about the tokens of the current forward pass.

    Attributes:
        positions: (B, T) int64, absolute position of each token in its row; -1 on padding.
        valid: (B, T) bool, True on real tokens.
        prompt_len: (B,) int64, number of prompt tokens in each row; tokens at positions >= prompt_len are generated.
        documents: (B,) int64, an identifier of each row's text (set by `collect`; the row index otherwise).
        offsets: (B,) int64, where this row starts inside its document (`collect` splits long documents).
    """

    positions: torch.Tensor
    valid: torch.Tensor
    prompt_len: torch.Tensor
    documents: torch.Tensor
    offsets: torch.Tensor
    _where: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.positions.shape[0]), int(self.positions.shape[1]))

    def tail(self, length: int) -> StepContext:
        """The context of the last `length` tokens (a site such as logits may see fewer tokens than the pass)."""
        if length == self.positions.shape[1]:
            return self
        return StepContext(
            self.positions[:, -length:], self.valid[:, -length:], self.prompt_len, self.documents, self.offsets
        )

    def where(self) -> torch.Tensor:
        """(B, T, 2) int64 of (document, position in the document) per token, for reducers that report locations."""
        if self._where is None:
            docs = self.documents[:, None].expand_as(self.positions)
            pos = torch.where(self.valid, self.positions + self.offsets[:, None], -1)
            self._where = torch.stack([docs, pos], dim=-1)
        return self._where


class Positions(ABC):
    """A rule that selects tokens; subclasses implement `select` on absolute positions."""

    def mask(self, ctx: StepContext) -> torch.Tensor:
        """(B, T) bool: the selected real tokens of this pass (padding is never selected)."""
        return self.select(ctx) & ctx.valid

    @abstractmethod
    def select(self, ctx: StepContext) -> torch.Tensor: ...


class All(Positions):
    """Every real token."""

    def select(self, ctx: StepContext) -> torch.Tensor:
        return ctx.valid

    def __repr__(self) -> str:
        return "all"


class Prompt(Positions):
    """Tokens of the prompt (for plain texts, the whole text)."""

    def select(self, ctx: StepContext) -> torch.Tensor:
        return ctx.positions < ctx.prompt_len[:, None]

    def __repr__(self) -> str:
        return "prompt"


class Generated(Positions):
    """Tokens produced by generation, in decode steps and in no-cache recomputations alike."""

    def select(self, ctx: StepContext) -> torch.Tensor:
        return ctx.positions >= ctx.prompt_len[:, None]

    def __repr__(self) -> str:
        return "generated"


class Last(Positions):
    """The last prompt token of each row (for plain texts, the last token): where steering vectors are read."""

    def select(self, ctx: StepContext) -> torch.Tensor:
        return ctx.positions == (ctx.prompt_len[:, None] - 1)

    def __repr__(self) -> str:
        return "last"


@dataclass(frozen=True)
class From(Positions):
    """Tokens at absolute position >= start, prompt or generated."""

    start: int

    def select(self, ctx: StepContext) -> torch.Tensor:
        return ctx.positions >= self.start

    def __repr__(self) -> str:
        return f"from:{self.start}"


class At(Positions):
    """Explicit absolute positions, one list per row of the batch (negative indices count from the prompt end)."""

    def __init__(self, rows: Sequence[Sequence[int]]):
        self.rows = [list(r) for r in rows]

    def select(self, ctx: StepContext) -> torch.Tensor:
        batch = ctx.positions.shape[0]
        if len(self.rows) != batch:
            raise ActkitError(f"At(...) has {len(self.rows)} rows of positions but the batch has {batch} rows")
        out = torch.zeros_like(ctx.valid)
        for row, wanted in enumerate(self.rows):
            plen = int(ctx.prompt_len[row])
            for p in wanted:
                out[row] |= ctx.positions[row] == (p + plen if p < 0 else p)
        return out

    def __repr__(self) -> str:
        return f"at:{self.rows}"


def parse_positions(text: str | Positions) -> Positions:
    """Parse ``all``, ``last``, ``prompt``, ``generated`` or ``from:K`` (as the CLI accepts them)."""
    if isinstance(text, Positions):
        return text
    simple: dict[str, Positions] = {"all": All(), "last": Last(), "prompt": Prompt(), "generated": Generated()}
    key = text.strip().lower()
    if key in simple:
        return simple[key]
    if key.startswith("from:"):
        try:
            return From(int(key[5:]))
        except ValueError:
            pass
    raise ActkitError(f"unknown positions {text!r}; use one of all, last, prompt, generated, from:K (K an integer)")
