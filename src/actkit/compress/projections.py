"""The projections that activation sparsity acts on: every linear layer inside a model's blocks.

TEAL and WINA zero entries of the *input* of q/k/v/o/gate/up/down. Rather than one table of module names per
family, every linear layer inside a block counts (the core's one enumeration, `actkit.core.linears.linears`):
that covers fused layouts (Phi-3's ``qkv_proj``, GPT-NeoX's ``query_key_value``) with no code path per family.
Fused MoE experts are 3-D parameters, not linear modules, and routers are their own module types, so neither is
touched.

Each projection's input is the value of one of the core's sites (`INPUT_SITES`): ``attn_in`` (what q, k and v
read), ``attn_hidden`` (the attention output projection's input), ``mlp_in`` (gate and up, or the first MLP
layer) and ``mlp_hidden`` (the down projection). `input_sites` finds which, by watching one tiny forward pass
and matching the tensors each projection and each site see, so the match is what the model actually does,
whatever its modules are called; calibration then reads the sites through the core (`collect`, `tap`).
Projections that read the same site form an input group: TEAL calibrates one threshold per group, and the CPU
speed path reads the group's fused weights once. A projection that no named site carries (in the tested families
only the down projection of Qwen2-MoE's shared expert) forms a group of its own and is read at its module site.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.hooks import Read, tap
from actkit.core.linears import Linear, linears
from actkit.core.sites import Site
from actkit.errors import ActkitError

#: The site kinds whose values are the inputs of a block's linear layers, in forward order.
INPUT_SITES = ("attn_in", "attn_hidden", "mlp_in", "mlp_hidden")


@dataclass(frozen=True)
class Projection(Linear):
    """One linear layer inside block `layer` (a `Linear` of the core), read without autograd: what compression
    scores and sparsifies."""

    def weight(self) -> torch.Tensor:
        """The weight as (out, in), whatever the module's storage (``Conv1D`` keeps (in, out)); never a copy."""
        return super().weight().detach()

    def bias(self) -> torch.Tensor | None:
        b = getattr(self.module, "bias", None)
        return None if b is None else b.detach()


def projections(model: nn.Module) -> list[Projection]:
    """Every linear layer inside the blocks of `model`, in forward order; an error when there is none."""
    found = [Projection(lin.name, lin.layer, lin.path, lin.module, lin.role, lin.writer) for lin in linears(model)]
    if not found:
        raise ActkitError(f"{type(model).__name__} has no linear layers inside its blocks, so there is nothing for "
                          "activation sparsity to act on")
    return found


def input_sites(model: nn.Module, modules: Mapping[str, nn.Module]) -> dict[str, Site | None]:
    """Which site carries the input of each module, found on one 2-token forward pass.

    A module reads a site when its input is the site's value itself or a view of the same memory (an MoE block
    hands its shared expert the flattened (B*T, d) tokens of its ``mlp_in``). Every tensor seen is held until the
    pass ends, so two different tensors can never share an address and be mistaken for one.

    Arguments:
        model: a model of a family in the anatomy.
        modules: path in the model (as ``named_modules`` gives it) -> module, each inside one of its blocks.

    Returns:
        name -> the `Site` (one of `INPUT_SITES` of the module's block), or None when no site carries its input
        (or the probe pass never reached the module).
    """
    anatomy = Anatomy.of(model)
    sites = [site for kind in INPUT_SITES for site in anatomy.sites(kind)]
    values: dict[Site, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}

    def site_reader(site: Site) -> Any:
        def keep(x: torch.Tensor, mask: torch.Tensor, ctx: Any) -> None:
            values.setdefault(site, x)
        return keep

    def module_reader(name: str) -> Any:
        def keep(x: torch.Tensor, mask: torch.Tensor, ctx: Any) -> None:
            inputs.setdefault(name, x)
        return keep

    for name, module in modules.items():
        if anatomy.point(Site.module(name, "input")).module is not module:
            raise ActkitError(f"{name!r} names another module of {type(model).__name__} than the one given")
    reads = {site: Read(site_reader(site)) for site in sites}
    reads.update({Site.module(name, "input"): Read(module_reader(name)) for name in modules})
    device = next(model.parameters()).device
    with torch.inference_mode(), tap(model, read=reads):
        model(input_ids=torch.zeros((1, 2), dtype=torch.long, device=device))
    found: dict[str, Site | None] = {}
    for name in modules:
        x = inputs.get(name)
        found[name] = None if x is None else next((site for site, v in values.items() if _same_memory(x, v)), None)
    values.clear()
    inputs.clear()
    return found


def _same_memory(x: torch.Tensor, v: torch.Tensor) -> bool:
    return (x.data_ptr() == v.data_ptr() and x.numel() == v.numel() and x.dtype == v.dtype
            and torch.equal(x.reshape(-1), v.reshape(-1)))


def input_groups(model: nn.Module, projs: list[Projection]) -> list[list[Projection]]:
    """Partition `projs` into groups that read the same site (see `input_sites`), in the order of `projs`.

    A projection that no site carries (or that the probe pass never reaches) forms a group of its own.
    """
    sites = input_sites(model, {p.name: p.module for p in projs})
    groups: dict[Site | str, list[Projection]] = {}
    for proj in projs:
        groups.setdefault(sites[proj.name] or proj.name, []).append(proj)
    return list(groups.values())


__all__ = ["INPUT_SITES", "Projection", "input_groups", "input_sites", "projections"]
