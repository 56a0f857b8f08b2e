"""Steering with backtracking (FASB: Gan, Cheng et al., 2025): steer only when a probe sees a deviation, and
go back a few tokens to regenerate them steered.

A fixed vector steers every text, including those that needed nothing; a decision made on the prompt alone comes
too early to see where the reply goes; and a decision made on the latest token comes too late to undo what the
tokens before it started. FASB watches a probe on every generated token and, when the probe's score crosses its
threshold, takes back the last k tokens and regenerates them with steering on. Here:

- the probe is any object with ``site``, ``project(x) -> scores`` and ``threshold`` (the monitor pillar's
  ``Probe`` fits; `vector_probe` makes one from a steering vector's direction); it reads the activation of each
  generated token as the token is fed to the model;
- when a row's score is above the threshold (``when="above"``; or below), the row is rolled back k tokens
  (`actkit.core.decode.Step.rollback`: its cache slots become holes, its positions continue where the kept text
  ends) and from then on steered with the vector at the positions from its last kept token on, so the first
  regenerated token already comes from a steered pass;
- every row decides for itself inside one batch, at most ``max_backtracks`` times; the counts are reported;
- the strength is the coefficient itself (``strength="fixed"``), or, as FASB sets it, the coefficient times the
  probe's confidence in the deviation at the crossing (``strength="confidence"``): ``sigmoid(score)`` when a
  score above the threshold is the deviation, ``sigmoid(-score)`` when one below is, the score read as a logit (a
  logistic probe's score is one; FASB's intervention is ``alpha * P(undesired)``, its probe's probability at the
  crossing). Each row keeps the strength of its latest crossing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from actkit.core.decode import Step, decode_ids
from actkit.core.hooks import Read
from actkit.core.interventions import Intervention
from actkit.core.positions import Positions, StepContext
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.steer.vectors import SteeringVector, restrict_layers

NEVER = 2**62


class ProbeLike(Protocol):
    """What backtracking needs of a probe: where it reads, how it scores, where its threshold is."""

    site: str
    threshold: float

    def project(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class VectorProbe:
    """A steering vector's direction as a probe: the projection of the activation onto the unit direction.

    Arguments:
        site: the site read, e.g. ``"resid_post.2"``.
        direction: (d,) the direction (normalized here).
        threshold: scores beyond it trigger a backtrack.
    """

    site: str
    direction: torch.Tensor
    threshold: float

    def __post_init__(self) -> None:
        Site.parse(self.site)
        d = torch.as_tensor(self.direction).detach().float().reshape(-1)
        norm = float(d.norm())
        if not norm > 0 or not torch.isfinite(d).all():
            raise ActkitError("the probe direction must be finite and non-zero")
        self.direction = d / norm
        if not float("-inf") < float(self.threshold) < float("inf"):
            raise ActkitError(f"the probe threshold must be a finite number, got {self.threshold}")

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (...) float32 projections."""
        return x.float() @ self.direction.to(x.device)


def vector_probe(vector: SteeringVector, layer: int, threshold: float) -> VectorProbe:
    """The probe that reads `vector`'s direction at `layer` (its own site kind)."""
    if layer not in vector.directions:
        raise ActkitError(f"the vector has no direction at block {layer}; it has {', '.join(map(str, vector.layers))}")
    return VectorProbe(f"{vector.site}.{layer}", vector.directions[layer], threshold)


class FromPerRow(Positions):
    """Tokens at or after a per-row start position; a row whose start is `NEVER` selects nothing."""

    def __init__(self, starts: torch.Tensor):
        self.starts = starts

    def select(self, ctx: StepContext) -> torch.Tensor:
        return ctx.positions >= self.starts.to(ctx.positions.device)[:, None]

    def __repr__(self) -> str:
        return f"from per row {self.starts.tolist()}"


class Backtracking:
    """A `decode` callback: watch a probe per generated token; on a crossing, roll back k tokens and steer.

    Arguments:
        probe: an object with ``site``, ``project(x)`` and ``threshold``.
        vector: the steering vector applied after a backtrack.
        batch: rows in the batch.
        coef: its coefficient (``relative``: a fraction of the mean residual norm).
        k: tokens taken back at a crossing (the crossing token included).
        max_backtracks: backtracks per row at most.
        when: ``"above"`` (a score above the threshold is a deviation) or ``"below"``.
        reduce: ``"token"`` (the latest token's score decides) or ``"mean"`` (the mean score of the generated
            tokens kept so far: steadier, as FASB judges the generation so far rather than one token).
        layers: steer only these of the vector's blocks.
        strength: ``"fixed"`` (steer at `coef`) or ``"confidence"`` (at `coef` times the probe's confidence at
            the crossing, module docstring).

    After `decode`: ``backtracks[r]`` is row r's number of backtracks, ``events[r]`` lists, per backtrack,
    ``(tokens generated when the probe fired, tokens kept)`` and ``strengths[r]`` the coefficient each backtrack
    steered with; ``writes`` are the interventions to give `decode`.
    """

    def __init__(self, probe: ProbeLike, vector: SteeringVector, batch: int, *, coef: float = 1.0,
                 relative: bool = False, k: int = 4, max_backtracks: int = 1,
                 when: Literal["above", "below"] = "above", reduce: Literal["token", "mean"] = "token",
                 layers: list[int] | None = None, strength: Literal["fixed", "confidence"] = "fixed"):
        for name in ("site", "project", "threshold"):
            if not hasattr(probe, name):
                raise ActkitError(f"the probe has no {name!r}; give an object with site, project(x) and threshold "
                                  "(actkit.monitor's Probe, or steer.backtrack.vector_probe)")
        if k < 1:
            raise ActkitError(f"k (tokens to take back) must be at least 1, got {k}")
        if max_backtracks < 1:
            raise ActkitError(f"max_backtracks must be at least 1, got {max_backtracks}")
        if when not in ("above", "below"):
            raise ActkitError(f"when must be 'above' or 'below', got {when!r}")
        if reduce not in ("token", "mean"):
            raise ActkitError(f"reduce must be 'token' or 'mean', got {reduce!r}")
        if strength not in ("fixed", "confidence"):
            raise ActkitError(f"strength must be 'fixed' or 'confidence', got {strength!r}")
        self.reduce = reduce
        self.coef = float(coef)
        # per row, set at each crossing (rows not steered yet select no token, so their entry is never used)
        self.coefs = torch.full((batch,), self.coef) if strength == "confidence" else None
        self.strengths: list[list[float]] = [[] for _ in range(batch)]
        self.history: list[list[float]] = [[] for _ in range(batch)]
        self.probe = probe
        self.k = k
        self.max_backtracks = max_backtracks
        self.when = when
        self.threshold = float(probe.threshold)
        self.starts = torch.full((batch,), NEVER, dtype=torch.long)
        steer = restrict_layers(vector, layers).to_intervention(coef if self.coefs is None else self.coefs,
                                                                positions=FromPerRow(self.starts),
                                                                relative=relative)
        self.writes: dict[str, Any] = dict(steer)
        self.reads = {str(Site.parse(probe.site)): Read(self._read)}
        self.scores: torch.Tensor | None = None
        self.backtracks = [0] * batch
        self.events: list[list[tuple[int, int]]] = [[] for _ in range(batch)]

    def _read(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        self.scores = self.probe.project(x[:, -1]).float().reshape(-1).cpu()  # the token this pass fed

    def __call__(self, step: Step) -> None:
        if self.scores is None:
            raise ActkitError(f"the probe's site {self.probe.site} was not reached in the pass")
        for r, kept in enumerate(step.generated):
            if step.finished[r] or step.rolled_back[r] or not kept:
                continue
            history = self.history[r]
            del history[len(kept) - 1:]  # a token fed again after a rollback replaces its old score
            history.append(float(self.scores[r]))
            value = history[-1] if self.reduce == "token" else sum(history) / len(history)
            crossed = value > self.threshold if self.when == "above" else value < self.threshold
            if not crossed or self.backtracks[r] >= self.max_backtracks:
                continue
            fired = len(kept)
            keep = max(0, fired - self.k)
            step.rollback(r, self.k)
            self.starts[r] = min(int(self.starts[r]), len(step.prompts[r]) + keep - 1)
            self.backtracks[r] += 1
            self.events[r].append((fired, keep))
            if self.coefs is not None:
                logit = value if self.when == "above" else -value
                self.coefs[r] = self.coef / (1.0 + math.exp(-logit))  # coef * sigmoid(logit)
            self.strengths[r].append(self.coef if self.coefs is None else float(self.coefs[r]))


@dataclass
class BacktrackResult:
    """What `backtrack_generate` returns: texts, ids, and per row its backtracks and their events."""

    texts: list[str]
    ids: list[list[int]]
    backtracks: list[int]
    events: list[list[tuple[int, int]]] = field(default_factory=list)
    strengths: list[list[float]] = field(default_factory=list)
    #: per row, the first position steered (the last kept token of its first backtrack), or None
    starts: list[int | None] = field(default_factory=list)


def replay_writes(result: BacktrackResult, vector: SteeringVector, *, relative: bool = False,
                  layers: list[int] | None = None) -> Callable[[Sequence[int]], dict[str, Intervention]]:
    """The writes that replay a backtracked generation over prompt + kept tokens in one teacher-forced pass.

    Each row is steered from its `starts` position on at the strength of its backtrack (rows that never crossed are
    not steered): the distributions its kept tokens were chosen from. Exact with ``strength="fixed"``, and with
    ``"confidence"`` when a row backtracked once (a later crossing sets a new strength for every steered token).

    Arguments:
        result: what `backtrack_generate` returned.
        vector, relative, layers: as given to it.

    Returns:
        A function ``rows -> writes`` for a batch holding those rows (indices into the result), in that order.
    """
    steered = restrict_layers(vector, layers)

    def writes(rows: Sequence[int]) -> dict[str, Intervention]:
        starts = torch.tensor([NEVER if result.starts[r] is None else result.starts[r] for r in rows])
        coefs = torch.tensor([result.strengths[r][-1] if result.strengths[r] else 0.0 for r in rows])
        return steered.to_intervention(coefs, positions=FromPerRow(starts), relative=relative)

    return writes


def backtrack_generate(model: nn.Module, tokenizer: Any, prompts: Sequence[str], probe: ProbeLike,
                       vector: SteeringVector, *, coef: float = 1.0, relative: bool = False, k: int = 4,
                       max_backtracks: int = 1, when: Literal["above", "below"] = "above",
                       reduce: Literal["token", "mean"] = "token", layers: list[int] | None = None,
                       strength: Literal["fixed", "confidence"] = "fixed", max_new_tokens: int = 32,
                       chat: bool = False, do_sample: bool = False, temperature: float = 1.0,
                       seed: int | None = None) -> BacktrackResult:
    """Generate in one batch, each row steered only after its probe crossed the threshold, k tokens back.

    Arguments:
        model, tokenizer, prompts: as for `actkit.core.generate.generate`.
        probe: ``site``, ``project(x)``, ``threshold`` (a monitor ``Probe`` or `vector_probe`).
        vector, coef, relative, layers: the steering applied after a backtrack.
        k: tokens taken back at a crossing; max_backtracks: per row; when: ``"above"`` or ``"below"``;
        reduce: ``"token"`` or ``"mean"``; strength: ``"fixed"`` or ``"confidence"`` (see `Backtracking`).
        max_new_tokens, chat, do_sample, temperature, seed: as for `generate`.

    Returns:
        `BacktrackResult`.
    """
    if isinstance(prompts, str):
        raise ActkitError("prompts must be a list of strings, not one string")
    watch = Backtracking(probe, vector, len(prompts), coef=coef, relative=relative, k=k,
                         max_backtracks=max_backtracks, when=when, reduce=reduce, layers=layers, strength=strength)
    ids = decode_ids(model, tokenizer, prompts, writes=watch.writes, reads=watch.reads, callbacks=[watch],
                     max_new_tokens=max_new_tokens, chat=chat, do_sample=do_sample, temperature=temperature,
                     seed=seed)
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    starts = [None if int(s) == NEVER else int(s) for s in watch.starts]
    return BacktrackResult(texts, ids, watch.backtracks, watch.events, watch.strengths, starts)


__all__ = ["BacktrackResult", "Backtracking", "FromPerRow", "ProbeLike", "VectorProbe", "backtrack_generate",
           "replay_writes", "vector_probe"]
