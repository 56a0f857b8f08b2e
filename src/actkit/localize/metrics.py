"""What a patch is measured by: a differentiable function of the next-token logits at the last position.

- ``logit-diff`` (the default): logit of the answer minus logit of the foil, the measure of the IOI and
  patching literature; it is linear in the final residual stream up to the last norm, so it patches cleanly.
- ``prob``: the probability of the answer.
- ``kl``: KL(p_clean ‖ p_run), the divergence of the run's next-token distribution from the clean run's; 0 on
  the clean run, so a patch that restores behaviour lowers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from actkit.errors import ActkitError

METRICS = ("logit-diff", "prob", "kl")


@dataclass(frozen=True)
class Metric:
    """A named function from last-position logits (B, V) to one value per row (B,)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(logits.float())


def make_metric(name: str, answer: int, foil: int | None = None, clean_logits: torch.Tensor | None = None) -> Metric:
    """Build metric `name` for answer (and foil) token ids; ``kl`` needs the clean run's last logits (V,)."""
    if name == "logit-diff":
        if foil is None:
            raise ActkitError("the logit-diff metric needs a foil token (--foil): the answer's logit minus the foil's")
        return Metric(name, lambda logits: logits[:, answer] - logits[:, foil])
    if name == "prob":
        return Metric(name, lambda logits: torch.softmax(logits, dim=-1)[:, answer])
    if name == "kl":
        if clean_logits is None:
            raise ActkitError("the kl metric needs the clean run's logits")
        reference = F.log_softmax(clean_logits.detach().float().reshape(1, -1), dim=-1)

        def kl(logits: torch.Tensor) -> torch.Tensor:
            run = F.log_softmax(logits, dim=-1)
            return (reference.exp() * (reference - run)).sum(-1)
        return Metric(name, kl)
    raise ActkitError(f"unknown metric {name!r}; use one of {', '.join(METRICS)}")
