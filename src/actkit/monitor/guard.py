"""The latent guard: a probe on the prompt decides, per row, before any token is generated.

`ProbeGate` is CAST's `ConditionGate` scoring with a probe: in the pass that holds a row's prompt (the prefill of
`generate`) it scores the prompt by the probe (its last prompt token, or the mean over the prompt tokens, padding
excluded, as the probe's ``reduce`` says) and decides ``score > threshold``; decode steps keep that decision. So the
decision exists before the first token is sampled, costs no extra forward pass, and is made per row of a batch.

`guard_writes` turns the gate into the writes of one of three actions:

- ``flag``: the gate alone; generation is unchanged and the decisions are read from the gate afterwards;
- ``steer``: the given writes (a refusal vector, an ablation...) apply only to flagged rows (CAST's `conditional`);
- ``refuse``: like ``flag`` while generating; `guarded_generate` then replaces the text of flagged rows by a refusal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actkit.core.generate import generate_ids
from actkit.core.interventions import Intervention
from actkit.core.positions import Last, Prompt, StepContext
from actkit.errors import ActkitError
from actkit.monitor.probe import Probe
from actkit.steer.interventions import Conditional, ConditionGate, combine

ACTIONS: tuple[str, ...] = ("flag", "refuse", "steer")
#: What ``refuse`` answers in place of a flagged row's generation.
DEFAULT_REFUSAL = "I cannot help with that."


class ProbeGate(ConditionGate):
    """A `ConditionGate` that scores the prompt with a `Probe` (its site, weight, bias, threshold and reduce).

    Besides the gate's ``scores`` and ``decision`` of the latest prompt pass, ``by_prompt`` keeps
    prompt index (the context's ``documents``: across the batches of `generate`) -> (score, flagged).
    """

    def __init__(self, probe: Probe) -> None:
        super().__init__(probe.weight, probe.threshold, comparator=">", measure="projection")
        self.probe = probe
        self.by_prompt: dict[int, tuple[float, bool]] = {}
        self._now: StepContext | None = None

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self._now = ctx  # `score` needs the pass's positions for the "last" rule
        out = super().__call__(x, mask, ctx)
        prompt = Prompt().mask(ctx)
        if bool(prompt.any()):
            assert self.scores is not None and self.decision is not None
            for doc, score, flagged, seen in zip(ctx.documents.tolist(), self.scores.tolist(),
                                                 self.decision.tolist(), prompt.any(dim=1).tolist(), strict=True):
                if seen:
                    self.by_prompt[int(doc)] = (float(score), bool(flagged))
        return out

    def score(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """(B,) float64: the probe's score of each row's prompt in this pass."""
        if self.probe.reduce == "last":
            if self._now is None:
                raise ActkitError("the probe gate scored a pass it was not called on")
            select = Last().mask(self._now) & prompt
        else:
            select = prompt
        weights = select.to(torch.float64)[..., None]
        reduced = (x.to(torch.float64) * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.probe.project(reduced).to(torch.float64)


def guard_writes(probe: Probe, action: str = "flag", writes: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, list[Intervention]], ProbeGate]:
    """The writes of a latent guard, and its gate (read the decisions from it after generating).

    Arguments:
        probe: the harmfulness (or any) probe; its threshold decides.
        action: ``flag``, ``refuse`` or ``steer`` (module docstring).
        writes: with ``steer``: site -> intervention(s) applied to flagged rows only; their sites must come after
            the probe's site in the forward pass (a later block, or the same site).

    Returns:
        (writes for ``tap`` or `generate`, the `ProbeGate`).
    """
    if action not in ACTIONS:
        raise ActkitError(f"unknown guard action {action!r}; use one of {', '.join(ACTIONS)}")
    if action == "steer" and not writes:
        raise ActkitError("the guard action 'steer' needs writes to apply to flagged prompts (a steering vector)")
    if action != "steer" and writes:
        raise ActkitError(f"the guard action {action!r} takes no writes; use 'steer' to steer flagged prompts")
    gate = ProbeGate(probe)
    out = combine({probe.site: gate})
    if action == "steer":
        assert writes is not None
        wrapped = {site: [Conditional(None, probe.threshold, w, layer=probe.layer, site=probe.kind, gate=gate)
                          for w in values] for site, values in combine(writes).items()}
        out = combine(out, wrapped)
    return out, gate


@dataclass
class Guarded:
    """One prompt under the guard: its generated ids and text, its prompt score, and whether it was flagged."""

    ids: list[int]
    text: str
    score: float
    flagged: bool


def guarded_generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    probe: Probe,
    *,
    action: str = "flag",
    writes: Mapping[str, Any] | None = None,
    refusal: str = DEFAULT_REFUSAL,
    **options: Any,
) -> list[Guarded]:
    """Generate under a latent guard: each prompt is scored and decided in the prefill, before any token.

    Arguments:
        model: the model the probe was made for.
        tokenizer: its tokenizer.
        prompts: the prompts (``chat=True`` in `options` applies the chat template, and the probe reads it).
        probe: the probe; its threshold decides.
        action: ``flag`` (generate as usual), ``refuse`` (flagged rows answer `refusal`) or ``steer`` (`writes`
            apply to flagged rows only).
        writes: the interventions of ``steer``.
        refusal: the text of a refused row.
        options: keyword arguments of `generate_ids` (``max_new_tokens``, ``chat``, ``batch_size``...).

    Returns:
        One `Guarded` per prompt, in order.
    """
    guard, gate = guard_writes(probe, action, writes)
    ids = generate_ids(model, tokenizer, prompts, writes=guard, **options)
    out: list[Guarded] = []
    for i, row in enumerate(ids):
        if i not in gate.by_prompt:
            raise ActkitError(f"the guard never saw prompt {i}; is the probe's site {probe.site} in this model?")
        score, flagged = gate.by_prompt[i]
        if action == "refuse" and flagged:
            out.append(Guarded([], refusal, score, True))
        else:
            out.append(Guarded(list(row), tokenizer.decode(row, skip_special_tokens=True), score, flagged))
    return out


__all__ = ["ACTIONS", "DEFAULT_REFUSAL", "Guarded", "ProbeGate", "guard_writes", "guarded_generate"]
