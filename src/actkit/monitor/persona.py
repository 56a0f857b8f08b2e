"""Persona shift: how far a model edit moves the mean projection of a prompt set on a behaviour's direction.

After Chen et al.'s persona vectors: the mean projection of the activations of a fixed prompt set on a trait's
direction (here a `Probe`: its site, weight and reduce rule) is measured before and after an edit; its shift is a
cheap, generation-free predictor of how much the trait's behaviour changes. An edit is anything that changes the
forward pass: interventions (``writes``: steering, ablation) or another model object of the same configuration
(pruned weights, fewer experts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.hooks import tap
from actkit.errors import ActkitError
from actkit.monitor.probe import Probe


def mean_projection(model: nn.Module, tokenizer: Any, prompts: Sequence[str], probe: Probe, *,
                    writes: Mapping[str, Any] | None = None, batch_size: int = 16) -> float:
    """The mean over `prompts` of the probe's score (`Probe.score`), under `writes` when given.

    Arguments:
        model: the (possibly edited) model.
        tokenizer: its tokenizer.
        prompts: the prompt set.
        probe: the behaviour's probe (or `probe_from_vector` of a steering vector).
        writes: interventions active while reading (site -> intervention(s)); None for the model as it is.
        batch_size: prompts per forward pass.
    """
    if not prompts:
        raise ActkitError("no prompts to project")
    with tap(model, write=writes or {}):
        return float(probe.score(model, tokenizer, prompts, batch_size=batch_size).double().mean())


def correlation(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Pearson's r and Spearman's rho (Pearson on average ranks) of two equally long sequences (at least 3)."""
    if len(xs) != len(ys):
        raise ActkitError(f"{len(xs)} shifts but {len(ys)} behaviour changes")
    if len(xs) < 3:
        raise ActkitError(f"a correlation needs at least 3 edits, got {len(xs)}")
    x = torch.tensor(list(xs), dtype=torch.float64)
    y = torch.tensor(list(ys), dtype=torch.float64)
    return {"pearson": _pearson(x, y), "spearman": _pearson(_ranks(x), _ranks(y))}


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = float(dx.norm() * dy.norm())
    return float(dx @ dy) / denominator if denominator > 0 else float("nan")


def _ranks(v: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(v, stable=True)
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    for value in torch.unique(v):  # ties share their average rank
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


__all__ = ["correlation", "mean_projection"]
