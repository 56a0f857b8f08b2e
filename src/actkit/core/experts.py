"""Per-expert outputs of fused MoE experts, recomputed from the experts module's inputs and weights.

transformers 5 keeps an MoE layer's experts as 3-D tensors in one module, so no per-expert module exists to hook.
The experts module receives (hidden (N, d), top-k indices (N, k), top-k weights (N, k)); from these and the fused
weights we recompute what expert e gives the tokens routed to it, before gating: the ``expert_out.i.e`` site.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from actkit.errors import ActkitError


def routed_tokens(top_k_index: torch.Tensor, expert: int) -> torch.Tensor:
    """Indices (into the flattened tokens) of the tokens routed to `expert`, in ascending order."""
    return (top_k_index == expert).any(dim=-1).nonzero(as_tuple=True)[0]


def expert_output(module: nn.Module, layout: str, hidden: torch.Tensor, expert: int) -> torch.Tensor:
    """Output of one expert on `hidden` (N, d), before the gate weight is applied."""
    if layout != "fused_glu":
        raise ActkitError(f"unknown experts layout {layout!r}; actkit knows 'fused_glu'")
    gate_up: torch.Tensor = module.gate_up_proj[expert]  # type: ignore[index]
    down: torch.Tensor = module.down_proj[expert]  # type: ignore[index]
    gate, up = F.linear(hidden, gate_up).chunk(2, dim=-1)
    return F.linear(module.act_fn(gate) * up, down)  # type: ignore[operator]
