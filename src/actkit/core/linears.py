"""The linear layers inside a model's blocks, enumerated once, with their roles read from the anatomy table.

Weight pruning, activation sparsity and baking an ablation into the weights all act on a block's linear layers
(``nn.Linear`` and GPT-2's ``Conv1D``): q/k/v/o, fused or not, and the MLP's projections. Which branch a layer
belongs to and which layers write to the residual stream come from the family's table, never from layer names:

- ``role="down"``: the module behind ``mlp_hidden`` (the MLP's down projection);
- ``role="mlp"``: any other layer inside the module behind ``mlp_in`` (gate, up, a shared expert's layers);
- ``role="attention"``: everything else in the block (q, k, v, the attention output projection);
- ``writer``: the layer's output is what its branch adds to the residual stream: the module behind
  ``attn_hidden`` (the attention output projection), the one behind ``mlp_hidden``, and a shared expert's down
  projection (`Experts.shared_down`).

Fused MoE experts are 3-D parameters, not linear modules, and routers are their own module types: neither is
listed (`Anatomy.family.experts` locates the experts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from actkit.core.anatomy import Anatomy

Role = Literal["attention", "mlp", "down"]


def is_linear(module: nn.Module) -> bool:
    """Whether `module` is a linear layer: ``nn.Linear``, or GPT-2's ``Conv1D`` (weight stored (in, out))."""
    return isinstance(module, nn.Linear) or (type(module).__name__ == "Conv1D"
                                             and isinstance(getattr(module, "weight", None), torch.Tensor))


@dataclass(frozen=True)
class Linear:
    """One linear layer inside block `layer`.

    Attributes:
        name: its path in the model (``model.layers.3.mlp.up_proj``), as ``named_modules`` gives it.
        layer: the block index.
        path: its path relative to the block (``mlp.up_proj``).
        module: the module itself.
        role: ``attention``, ``mlp`` or ``down`` (see the module docstring).
        writer: whether its output is what its branch adds to the residual stream.
    """

    name: str
    layer: int
    path: str
    module: nn.Module
    role: Role
    writer: bool

    def weight(self) -> torch.Tensor:
        """The weight as (out, in), whatever the storage (``Conv1D`` keeps (in, out)): a view, never a copy."""
        w = self.module.weight
        assert isinstance(w, torch.Tensor)
        return w if isinstance(self.module, nn.Linear) else w.T

    @property
    def in_features(self) -> int:
        return int(self.weight().shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight().shape[0])


def linears(model: nn.Module) -> list[Linear]:
    """Every linear layer inside the blocks of `model`, in forward (registration) order.

    Arguments:
        model: a model of a family in the anatomy.

    Returns:
        A `Linear` per layer (empty when the blocks hold none: each caller says why that matters to it).
    """
    anatomy = Anatomy.of(model)
    table = anatomy.family.block
    mlp = table["mlp_in"].path if "mlp_in" in table else None
    down = table["mlp_hidden"].path if "mlp_hidden" in table else None
    writers = {hook.path for kind, hook in table.items() if kind in ("attn_hidden", "mlp_hidden")}
    if anatomy.family.experts is not None and anatomy.family.experts.shared_down:
        writers.add(anatomy.family.experts.shared_down)
    names = {id(m): n for n, m in model.named_modules()}
    found: list[Linear] = []
    for layer, block in enumerate(anatomy.blocks):
        for path, module in block.named_modules():
            if not path or not is_linear(module):
                continue
            role: Role = "down" if path == down else (
                "mlp" if mlp is not None and path.startswith(mlp + ".") else "attention")
            found.append(Linear(names[id(module)], layer, path, module, role, path in writers))
    return found


__all__ = ["Linear", "is_linear", "linears"]
