"""How a fused-experts router picks and weighs experts, recomputed from its logits.

Every MoE family of the anatomy routes the same way in transformers 5 (read in each ``*TopKRouter.forward``):
a softmax over all E router logits in float32, the k experts of highest probability, and their k probabilities
either renormalized to sum to one or used as they are. Only that last choice differs:

| family | top-k probabilities renormalized |
| --- | --- |
| Mixtral | always |
| Qwen2-MoE | when ``config.norm_topk_prob`` (default False) |
| Qwen3-MoE | when ``config.norm_topk_prob`` (class default False; Qwen3-30B-A3B sets True) |
| OLMoE | when ``config.norm_topk_prob`` (default False) |

The routers of the last three keep the flag as ``norm_topk_prob``; Mixtral's has no such attribute, so reading
the attribute with True as the default covers all four. Recomputing the routing from the ``router.i`` logits
lets the statistics see the exact gate each expert's output is multiplied by, and lets `switch_experts` change
the choice (an expert's logit to -inf before the top-k) while the rest of the model runs as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.sites import Site
from actkit.errors import ActkitError

#: What a dense model gets when an expert tool is pointed at it.
MOE_FAMILIES = "Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE"


@dataclass(frozen=True)
class MoeLayer:
    """One MoE block: its router and fused experts modules and how it routes."""

    layer: int
    router: nn.Module
    experts: nn.Module
    layout: str
    num_experts: int
    top_k: int
    renormalize: bool


def moe_layers(model: nn.Module) -> list[MoeLayer]:
    """The MoE blocks of `model` in order (dense blocks of partly-MoE models are skipped).

    Raises an `ActkitError` for a model without any MoE block.
    """
    anatomy = Anatomy.of(model)
    spec = anatomy.family.experts
    out: list[MoeLayer] = []
    if spec is not None:
        for layer, block in enumerate(anatomy.blocks):
            experts = _child(block, spec.path)
            if experts is None:
                continue
            router = anatomy.point(Site("router", layer)).module
            count = int(getattr(experts, "num_experts", 0) or anatomy.num_experts)
            top_k = int(getattr(router, "top_k", 0) or getattr(model.config, "num_experts_per_tok", 0))
            if not 0 < top_k <= count:
                raise ActkitError(f"block {layer} of {type(model).__name__}: cannot read the router's top-k "
                                  f"({top_k}) for its {count} experts")
            out.append(MoeLayer(layer, router, experts, spec.layout, count, top_k,
                                bool(getattr(router, "norm_topk_prob", True))))
    if not out:
        raise ActkitError(f"{type(model).__name__} is not a mixture of experts (family {anatomy.family.name!r} has "
                          f"no MoE blocks); expert tools need a {MOE_FAMILIES} model, such as builtin:toy-moe")
    return out


def route(
    logits: torch.Tensor,
    top_k: int,
    renormalize: bool,
    *,
    off: torch.Tensor | None = None,
    on: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The router's choice from its logits: as the model makes it, or with experts switched off or on.

    Arguments:
        logits: (N, E) router logits.
        top_k: experts per token.
        renormalize: whether the k probabilities are renormalized to sum to one (see the module docstring).
        off: (E,) bool, experts whose logit is set to -inf before the softmax and the top-k: never chosen, and
            the probability of the others is what it would be without them (as if the expert were pruned).
        on: (E,) bool, experts chosen for every token whatever their probability (they take the first places of
            the top-k); their gate is their own probability, renormalized with the others where the family does.

    Returns:
        ``(probs, weights, index)``: (N, E) float32 softmax over the experts (after `off`), (N, k) float32 gate
        weights and (N, k) int64 expert indices, in the order the model's router returns them.
    """
    scores = logits.float()
    if off is not None:
        scores = scores.masked_fill(off.to(scores.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    rank = probs if on is None else probs + 2.0 * on.to(probs.device, probs.dtype)
    index = torch.topk(rank, top_k, dim=-1).indices
    weights = probs.gather(-1, index)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, index


def _child(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


__all__ = ["MOE_FAMILIES", "MoeLayer", "moe_layers", "route"]
