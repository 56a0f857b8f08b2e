"""The projections that activation sparsity acts on: every linear layer inside a model's blocks.

TEAL and WINA zero entries of the *input* of q/k/v/o/gate/up/down. Rather than one table of module names per
family, every ``nn.Linear`` (and GPT-2's ``Conv1D``) inside a block found by the `Anatomy` counts: that covers
fused layouts (Phi-3's ``qkv_proj``, GPT-NeoX's ``query_key_value``) with no code path per family. Fused MoE
experts are 3-D parameters, not linear modules, and routers are their own module types, so neither is touched.

Projections that read the *same tensor* (q, k and v read one normalized hidden state; gate and up read another)
form an input group: TEAL calibrates one threshold per group, and the CPU speed path reads the group's fused
weights once. Groups are found by watching one tiny forward pass and comparing the input tensors' identity, so
they are what the model actually does, whatever its modules are called.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.errors import ActkitError


@dataclass(frozen=True)
class Projection:
    """One linear layer inside block `layer`, named by its path in the model (``model.layers.3.mlp.up_proj``)."""

    name: str
    layer: int
    path: str
    module: nn.Module

    @property
    def in_features(self) -> int:
        return int(self.weight().shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight().shape[0])

    def weight(self) -> torch.Tensor:
        """The weight as (out, in), whatever the module's storage (``Conv1D`` keeps (in, out)); never a copy."""
        w: torch.Tensor = self.module.weight  # type: ignore[assignment]
        return w.detach().t() if _is_conv1d(self.module) else w.detach()

    def bias(self) -> torch.Tensor | None:
        b = getattr(self.module, "bias", None)
        return None if b is None else b.detach()


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def projections(model: nn.Module) -> list[Projection]:
    """Every linear layer inside the blocks of `model`, in forward order; an error when there is none."""
    anatomy = Anatomy.of(model)
    names = {id(m): n for n, m in model.named_modules()}
    found: list[Projection] = []
    for layer, block in enumerate(anatomy.blocks):
        for path, module in block.named_modules():
            if path and _is_projection(module):
                found.append(Projection(names.get(id(module), f"blocks.{layer}.{path}"), layer, path, module))
    if not found:
        raise ActkitError(f"{type(model).__name__} has no linear layers inside its blocks, so there is nothing for "
                          "activation sparsity to act on")
    return found


def input_groups(model: nn.Module, projs: list[Projection]) -> list[list[Projection]]:
    """Partition `projs` into groups that read the same input tensor, by watching one 2-token forward pass.

    Every input seen is held until the pass ends, so two different tensors can never share an address and be
    mistaken for one. A projection that the probe pass never reaches (a layer skipped for these tokens) forms
    a group of its own.
    """
    seen: dict[int, torch.Tensor] = {}

    def hook_for(proj: Projection):  # noqa: ANN202 - a torch hook
        def record(module: nn.Module, args: tuple) -> None:
            if args and id(proj.module) not in seen:
                seen[id(proj.module)] = args[0]
        return record

    handles = []
    device = next(model.parameters()).device
    try:
        for proj in projs:
            handles.append(proj.module.register_forward_pre_hook(hook_for(proj)))
        with torch.inference_mode():
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[int, list[Projection]] = {}
    for proj in projs:
        x = seen.get(id(proj.module))
        key = id(x) if x is not None else -id(proj.module)
        groups.setdefault(key, []).append(proj)
    seen.clear()
    return list(groups.values())


__all__ = ["Projection", "input_groups", "projections"]
