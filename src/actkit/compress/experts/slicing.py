"""Make a model with fewer experts: slice the fused expert tensors, the router rows and the config.

What has an expert dimension is found generically rather than listed per family: every parameter and buffer of a
block's fused experts module and of its router whose first dimension is the expert count. For the four MoE
families of the anatomy that is ``gate_up_proj``, ``down_proj`` and the router's ``weight`` (none of them has a
routing bias in transformers 5); a family with an expert bias or a score-correction bias (DeepSeek-V3 style) gets
it sliced the same way. A Qwen2-MoE shared expert and its gate have no expert dimension and are not touched.
The config's expert count (``num_local_experts`` / ``num_experts``, tied by transformers' attribute maps) is set
to the kept count, and the router's top-k stays as it is (the caller keeps at least top-k experts), so a plain
``from_pretrained`` of the saved folder builds the smaller model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from actkit.compress.experts.merge import Group, merged_parameters
from actkit.compress.experts.routing import MoeLayer, moe_layers
from actkit.errors import ActkitError


def slice_experts(
    model: nn.Module,
    keep: Mapping[int, list[int]],
    *,
    groups: Mapping[int, list[Group]] | None = None,
    align: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """A model whose MoE blocks keep only the experts in `keep` (original indices, in that order).

    Arguments:
        model: a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE model.
        keep: every MoE block -> the experts it keeps; every block must keep the same number, at least top-k.
        groups: for merging, block -> one `Group` per kept expert (same order as `keep`): the kept expert's weights
            become the weighted average of its group (see `merge.merged_parameters`).
        align: permute neurons before averaging merged experts.
        inplace: change `model` itself (to spare the memory of a copy) instead of a deep copy.

    Returns:
        The smaller model (a deep copy unless `inplace`).
    """
    layers = moe_layers(model)
    counts = _check_keep(layers, keep)
    target = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        for moe in moe_layers(target):
            kept = list(keep[moe.layer])
            replaced: dict[str, torch.Tensor] = {}
            if groups is not None:
                block = groups.get(moe.layer)
                if block is None or [g[0][0] for g in block] != kept:
                    raise ActkitError(f"block {moe.layer}: the merge groups must lead with the kept experts {kept}")
                merged = [merged_parameters(moe.experts, g, align=align) for g in block]
                replaced = {name: torch.stack([m[name] for m in merged]) for name in merged[0]}
            _slice_module(moe.experts, moe.num_experts, kept, replaced)
            _slice_module(moe.router, moe.num_experts, kept, {})
            for module in (moe.experts, moe.router):
                if hasattr(module, "num_experts"):
                    setattr(module, "num_experts", len(kept))  # noqa: B010  (nn.Module typing)
    config = getattr(target, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    for attr in ("num_local_experts", "num_experts"):
        if text is not None and hasattr(text, attr):
            setattr(text, attr, counts)
    return target


def _check_keep(layers: list[MoeLayer], keep: Mapping[int, list[int]]) -> int:
    missing = [m.layer for m in layers if m.layer not in keep]
    if missing:
        raise ActkitError(f"no kept experts given for MoE block(s) {missing}")
    extra = sorted(set(keep) - {m.layer for m in layers})
    if extra:
        raise ActkitError(f"block(s) {extra} are not MoE blocks of this model")
    sizes = {len(keep[m.layer]) for m in layers}
    if len(sizes) != 1:
        raise ActkitError(f"every MoE block must keep the same number of experts (the config holds one count); "
                          f"got {sorted(sizes)}")
    count = sizes.pop()
    for m in layers:
        kept = keep[m.layer]
        if len(set(kept)) != len(kept) or not all(0 <= e < m.num_experts for e in kept):
            raise ActkitError(f"block {m.layer}: kept experts {kept} must be distinct indices in 0..{m.num_experts - 1}")
        if count < m.top_k:
            raise ActkitError(f"block {m.layer} would keep {count} experts, fewer than the router's top-k {m.top_k}")
    return count


def _slice_module(module: nn.Module, count: int, kept: list[int], replaced: Mapping[str, torch.Tensor]) -> None:
    """Keep rows `kept` of every parameter and buffer with a leading expert dimension (new tensors, no aliasing)."""
    index = torch.tensor(kept, dtype=torch.long)
    for name, param in list(module.named_parameters(recurse=False)):
        if param.dim() and param.shape[0] == count:
            value = replaced[name] if name in replaced else param.detach()[index.to(param.device)]
            setattr(module, name, nn.Parameter(value.to(param.device, param.dtype).contiguous(),
                                               requires_grad=param.requires_grad))
    for name, buf in list(module.named_buffers(recurse=False)):
        if buf is not None and buf.dim() and buf.shape[0] == count:
            module.register_buffer(name, buf[index.to(buf.device)].contiguous(),
                                   persistent=name not in module._non_persistent_buffers_set)


__all__ = ["slice_experts"]
