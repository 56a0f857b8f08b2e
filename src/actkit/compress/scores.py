"""Importance scores of weights: magnitude, Wanda and DaSS. Higher means more important (kept longer).

All take a weight as ``(out, in)`` (``nn.Linear``'s layout; GPT-2's ``Conv1D`` is transposed by the caller) and
return float32 scores of the same shape. The activation statistics come from calibration as the L2 norm of each
input feature over all calibration tokens, ``||X_j||_2 = sqrt(sum_t x_tj^2)``.

- **magnitude**: ``|W_ij|``.
- **Wanda** (Sun et al., 2023): ``|W_ij| * ||X_j||_2``, compared within each output row: a weight matters when it
  is large *and* reads a feature that is large on real text.
- **DaSS** (Guo, Kamigaito and Watanabe, "Dependency-Aware Semi-Structured Sparsity of GLU Variants in Large
  Language Models", TMLR 2025) for GLU MLPs ``down(act(gate(x)) * up(x))``. Every weight attached to intermediate
  neuron ``i`` is scored with the norm of that neuron's activation ``||H_i||_2`` (``H``: the input of the down
  projection), so a quiet neuron loses weights in all three matrices together, which moves unstructured or N:M
  pruning towards structured neuron pruning without forcing it:

  - down projection: ``|W_ki| * ||H_i||_2`` (Wanda on ``H``), compared within each output row, N:M groups along
    its input (the intermediate neurons);
  - gate and up projections: ``|W_ij| * ||H_i||_2 ** alpha`` with ``alpha = 0.5``, compared within each *input
    column* (the weights of different neurons that read the same feature), and N:M groups of consecutive output
    rows (neurons) in each column.

  The abstract states the idea (weight magnitude times the intermediate activation norm); the exponent, the
  comparison groups and the N:M direction follow the authors' released code (``prune_wandinter`` in
  ``guozhiyu/glu_dass``, which scales ``|W|`` by the mean squared norm to the power 1/4, i.e. the norm to the power
  1/2 up to a constant). That code prunes only the MLP; modules that are not part of a GLU MLP (attention,
  GPT-2 or NeoX MLPs) are scored with Wanda here.
"""

from __future__ import annotations

from typing import Any

import torch

from actkit.errors import ActkitError

#: DaSS's exponent on the intermediate activation norm for the gate and up projections.
DASS_ALPHA = 0.5


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|W|``."""
    return weight.detach().abs().float()


def wanda(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2``: `input_norm` is (in,), the L2 norm of each input feature over calibration tokens."""
    _check(weight, input_norm, 1, "input")
    return weight.detach().abs().float() * input_norm.to(weight.device, torch.float32)[None, :]


def dass_expand(weight: torch.Tensor, hidden_norm: torch.Tensor, alpha: float = DASS_ALPHA) -> torch.Tensor:
    """DaSS for a gate or up projection: ``|W_ij| * ||H_i||_2 ** alpha``, `hidden_norm` (out,) per neuron.

    A fused gate-and-up projection (Phi-3's ``gate_up_proj``, rows ``[gate; up]``) takes the neuron norms
    repeated twice.
    """
    _check(weight, hidden_norm, 0, "output")
    scale = hidden_norm.to(weight.device, torch.float32).pow(alpha)
    return weight.detach().abs().float() * scale[:, None]


def input_norms(moments: dict[str, Any]) -> torch.Tensor:
    """``||X_j||_2`` from a `Moments` result: ``sqrt(n * (var_j + mean_j^2))``, float64."""
    count = int(moments["count"])
    if count == 0:
        raise ActkitError("no calibration token reached this module; give calibration text")
    second = moments["var"] + moments["mean"] * moments["mean"]
    return (count * second).clamp_min(0.0).sqrt()


def _check(weight: torch.Tensor, norm: torch.Tensor, dim: int, side: str) -> None:
    if weight.dim() != 2 or norm.dim() != 1 or norm.shape[0] != weight.shape[dim]:
        raise ActkitError(f"weight of shape {tuple(weight.shape)} needs one {side} norm per {side} feature "
                          f"({weight.shape[dim] if weight.dim() == 2 else '?'}), got shape {tuple(norm.shape)}")


__all__ = ["DASS_ALPHA", "dass_expand", "input_norms", "magnitude", "wanda"]
