"""Steering interventions on the core's `Intervention` base: ablation, clamping and conditional steering.

Everything here works per row: a direction may be (d,) for the batch or (B, d) one per row, a value a scalar or
(B,). Projections are computed in at least float32 and cast back to the activation's dtype.

- `Ablate(r)`: ``x - (x . r^) r^``, directional ablation (the refusal-direction recipe).
- `Clamp(r, value)`: set the projection onto r^ to `value`.
- `Conditional(condition, threshold, then, layer=...)`: CAST-style conditional steering; `then` applies only to
  the rows whose prompt matches the condition, decided once per prompt and kept for its decode steps.
- `ablation_everywhere(model, r)`: the writes that keep r out of the residual stream at every block.
- `combine(*writes)`: merge write dictionaries (several vectors, ablations and conditions at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.interventions import Intervention, check_finite, per_row
from actkit.core.positions import Positions, Prompt, StepContext
from actkit.core.sites import Site
from actkit.errors import ActkitError


def _unit(direction: torch.Tensor | Any, what: str = "direction") -> torch.Tensor:
    """The direction scaled to unit norm along its last axis, in float64 (a zero direction is an error)."""
    t = torch.as_tensor(direction).detach().to(torch.float64)
    if t.dim() not in (1, 2):
        raise ActkitError(f"{what} must be (d,) or (B, d), got shape {tuple(t.shape)}")
    norm = t.norm(dim=-1, keepdim=True)
    if not bool(torch.isfinite(t).all()) or bool((norm == 0).any()):
        raise ActkitError(f"{what} must be finite and non-zero")
    return t / norm


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class Ablate(Intervention):
    """Directional ablation: remove the component of the activation along a direction, ``x - (x . r^) r^``.

    Arguments:
        direction: (d,) or (B, d) one per row; only its direction matters (it is normalized).
        positions: which tokens to change (default all).
    """

    def __init__(self, direction: torch.Tensor, positions: Positions | None = None):
        super().__init__(positions)
        self.direction = _unit(direction)

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        dtype = _compute_dtype(x)
        xf = x.to(dtype)
        r = per_row(self.direction.to(dtype), xf, "direction")
        return (xf - (xf * r).sum(-1, keepdim=True) * r).to(x.dtype)


class Clamp(Intervention):
    """Set the projection onto a direction to a value: ``x - (x . r^) r^ + value * r^``.

    Arguments:
        direction: (d,) or (B, d) one per row (normalized).
        value: the projection to set, a scalar or (B,) one per row (in the units of the activation).
        positions: which tokens to change (default all).
    """

    def __init__(self, direction: torch.Tensor, value: float | torch.Tensor, positions: Positions | None = None):
        super().__init__(positions)
        self.direction = _unit(direction)
        check_finite(value, "clamp value")
        self.value = value

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        dtype = _compute_dtype(x)
        xf = x.to(dtype)
        r = per_row(self.direction.to(dtype), xf, "direction")
        value = per_row(self.value, xf, "coefficient")
        return (xf + (value - (xf * r).sum(-1, keepdim=True)) * r).to(x.dtype)


Comparator = Literal[">", "<"]
Measure = Literal["cosine", "projection"]


class ConditionGate(Intervention):
    """The sensor of conditional steering: it reads the condition site and decides, per row, whether to steer.

    It never changes the activation. In a pass that holds prompt tokens (a prefill, or a no-cache
    recomputation) it scores each row by the mean of its hidden states over the prompt tokens: the cosine with
    the condition vector (``measure="cosine"``) or the projection onto its unit direction (``"projection"``),
    and decides ``score > threshold`` (or ``<``). A decode step holds no prompt token and keeps the decision of
    its prompt, so a generation is steered, or not, as a whole; the next prompt decides again.

    Arguments:
        condition: (d,) the condition vector at the gate's site.
        threshold: the decision threshold on the score.
        comparator: ``">"`` (steer when the score is above the threshold) or ``"<"``.
        measure: ``"cosine"`` or ``"projection"``.
    """

    def __init__(self, condition: torch.Tensor, threshold: float, *, comparator: Comparator = ">",
                 measure: Measure = "cosine"):
        super().__init__(Prompt())
        if comparator not in (">", "<"):
            raise ActkitError(f"comparator must be '>' or '<', got {comparator!r}")
        if measure not in ("cosine", "projection"):
            raise ActkitError(f"measure must be 'cosine' or 'projection', got {measure!r}")
        unit = _unit(condition, "condition vector")
        if unit.dim() != 1:
            raise ActkitError("the condition vector must be one (d,) vector")
        check_finite(float(threshold), "condition threshold")
        self.condition = unit
        self.threshold = float(threshold)
        self.comparator = comparator
        self.measure = measure
        self.scores: torch.Tensor | None = None
        self.decision: torch.Tensor | None = None
        self._ctx: StepContext | None = None

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        prompt = Prompt().mask(ctx)
        if bool(prompt.any()):
            self.scores = self.score(x, prompt)
            above = self.scores > self.threshold if self.comparator == ">" else self.scores < self.threshold
            self.decision = above & prompt.any(dim=1)
        elif self.decision is None or self.decision.shape[0] != x.shape[0]:
            raise ActkitError(
                "conditional steering saw a decode step without its prompt pass; run the prompt through the "
                "model inside the same tap (generate does)"
            )
        self._ctx = ctx
        return x

    def score(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """(B,) float64: each row's score from the mean of its hidden states over the prompt tokens."""
        weights = prompt.to(torch.float64)[..., None]
        mean = (x.to(torch.float64) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        c = self.condition.to(mean.device)
        if mean.shape[-1] != c.shape[0]:
            raise ActkitError(f"the condition vector has size {c.shape[0]} but the site has size {mean.shape[-1]}")
        projection = mean @ c
        if self.measure == "projection":
            return projection
        return projection / mean.norm(dim=-1).clamp(min=1e-12)

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return x

    def rows(self, ctx: StepContext) -> torch.Tensor:
        """(B,) bool: the rows to steer in the pass `ctx` describes; the gate must have run earlier in it."""
        if self._ctx is not ctx or self.decision is None:
            raise ActkitError(
                "the condition was not evaluated before this write in this forward pass: the condition site must "
                "come before the steered sites (an earlier block, or the same site listed first)"
            )
        return self.decision


class Conditional(Intervention):
    """Apply `then` only to the rows whose hidden state at the condition layer matches a condition (CAST).

    The rule: the mean over prompt tokens of the hidden state at ``{site}.{layer}`` is compared with the
    condition vector (cosine by default, see `ConditionGate`); rows with ``score > threshold`` (or ``<``) get
    `then`, the others are returned untouched (bit for bit). The decision is made in the pass that holds the
    prompt and kept for its decode steps.

    The gate has to be hooked too: use ``tap(model, write=cond.writes("resid_post.12"))``, or `conditional` to
    gate a whole write dictionary at once. The condition site must run before the steered sites.

    Arguments:
        condition: (d,) condition vector.
        threshold: the threshold on the score.
        then: the intervention to apply to matching rows (its own positions apply).
        layer: the block whose hidden state decides.
        comparator: ``">"`` or ``"<"``.
        measure: ``"cosine"`` or ``"projection"``.
        site: the site kind of the condition (default ``resid_post``).
        gate: share an existing `ConditionGate` (then `condition`, `threshold`, ... are ignored).
    """

    def __init__(self, condition: torch.Tensor | None, threshold: float, then: Intervention, *, layer: int,
                 comparator: Comparator = ">", measure: Measure = "cosine", site: str = "resid_post",
                 gate: ConditionGate | None = None):
        super().__init__(then.positions)
        if gate is None:
            if condition is None:
                raise ActkitError("Conditional needs a condition vector or a gate")
            gate = ConditionGate(condition, threshold, comparator=comparator, measure=measure)
        self.gate = gate
        self.then = then
        self.gate_site = str(Site.parse(f"{site}.{layer}"))

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        rows = self.gate.rows(ctx)
        if not bool(rows.any()):
            return x
        new = self.then(x, mask, ctx)
        return torch.where(rows.to(x.device).reshape(-1, *([1] * (x.dim() - 1))), new, x)

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.then.edit(x, ctx)

    def writes(self, site: str) -> dict[str, list[Intervention]]:
        """The write dictionary for `tap`: the gate at its site, then this intervention at `site`."""
        return combine({self.gate_site: self.gate}, {site: self})


def conditional(writes: Mapping[str, Any], condition: torch.Tensor, threshold: float, *, layer: int,
                comparator: Comparator = ">", measure: Measure = "cosine",
                site: str = "resid_post") -> dict[str, list[Intervention]]:
    """Gate every intervention of a write dictionary by one condition (CAST).

    Arguments:
        writes: site -> intervention(s), e.g. ``vector.to_intervention(coef=4)``.
        condition: (d,) condition vector at ``{site}.{layer}``.
        threshold: threshold on the score (see `ConditionGate`).
        layer: the block whose hidden state decides.
        comparator: ``">"`` or ``"<"``.
        measure: ``"cosine"`` or ``"projection"``.
        site: the site kind of the condition.

    Returns:
        A write dictionary: the shared gate first at the condition site, then each intervention wrapped.
    """
    gate = ConditionGate(condition, threshold, comparator=comparator, measure=measure)
    gate_site = str(Site.parse(f"{site}.{layer}"))
    wrapped: dict[str, list[Intervention]] = {}
    for key, values in combine(writes).items():
        wrapped[key] = [Conditional(None, threshold, v, layer=layer, site=site, gate=gate) for v in values]
    return combine({gate_site: gate}, wrapped)


def ablation_everywhere(model: nn.Module, direction: torch.Tensor,
                        positions: Positions | None = None) -> dict[str, list[Intervention]]:
    """The writes that keep a direction out of the residual stream everywhere (Arditi et al.'s recipe).

    The direction is ablated from every block's input (``resid_pre.i``: this catches the embeddings) and from
    every attention and MLP output (``attn_out.i``, ``mlp_out.i``) before they are added back, so no block
    ever writes it and every ``resid_post.i`` has zero projection onto it. Blocks lacking a site (none of the
    supported decoders) are skipped.

    Arguments:
        model: the model.
        direction: (d,) the direction to remove (normalized).
        positions: which tokens (default all).

    Returns:
        A write dictionary for ``tap(model, write=...)`` or `generate`.
    """
    anatomy = Anatomy.of(model)
    ablate = Ablate(direction, positions)
    available = {str(s) for s in anatomy.sites()}
    out: dict[str, list[Intervention]] = {}
    for layer in range(anatomy.n_layers):
        for kind in ("resid_pre", "attn_out", "mlp_out"):
            site = f"{kind}.{layer}"
            if site in available:
                out[site] = [ablate]
    return out


def combine(*writes: Mapping[str, Any] | None) -> dict[str, list[Intervention]]:
    """Merge write dictionaries: site -> list of interventions, in the order given (applied in that order).

    Arguments:
        writes: dictionaries of site -> intervention or list of interventions; None entries are skipped.

    Returns:
        One dictionary with canonical site names (``"resid_post.3"``).
    """
    out: dict[str, list[Intervention]] = {}
    for mapping in writes:
        for key, values in (mapping or {}).items():
            items = list(values) if isinstance(values, (list, tuple)) else [values]
            for item in items:
                if not isinstance(item, Intervention):
                    raise ActkitError(f"write at {key}: {type(item).__name__} is not an Intervention")
            out.setdefault(str(Site.parse(key)), []).extend(items)
    return out


__all__ = ["Ablate", "Clamp", "ConditionGate", "Conditional", "ablation_everywhere", "combine", "conditional"]
