"""Attention calls, seen where the model makes them: the final queries and keys, the mask, the scaling.

Every family in the anatomy computes attention through transformers' attention interface, as
``fn(module, query, key, value, attention_mask, scaling=..., ...)`` with q and k exactly as the softmax sees them
(after rotary embeddings, QK-norms, partial rotary, the model's own scaling). Recomputing them from the
projections would mean re-implementing each of these per family, so `intercept_attention` wraps that interface
for the duration of a block and hands each call of a chosen block to a handler: `observe` reads the largest logit
there, `localize` recomputes the softmax with patched queries and keys.

Limits: the wrapper replaces entries of transformers' process-wide ``ALL_ATTENTION_FUNCTIONS`` registry while the
block runs (other models used concurrently in other threads pass through it unchanged). A family whose attention
does not go through the interface (GPT-2 with ``reorder_and_upcast_attn``) is never handed to the handler.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy


@dataclass
class AttentionCall:
    """One call of the attention interface: its arguments, and the function the model would have run."""

    layer: int
    module: nn.Module
    query: torch.Tensor  # (B, H, T, d_head)
    key: torch.Tensor  # (B, H_kv, S, d_head)
    value: torch.Tensor  # (B, H_kv, S, d_head)
    attention_mask: Any
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    original: Callable[..., Any] | None = None

    @property
    def scaling(self) -> float:
        scaling = self.kwargs.get("scaling")
        return float(scaling) if scaling is not None else self.query.shape[-1] ** -0.5

    @property
    def softcap(self) -> float | None:
        cap = self.kwargs.get("softcap")
        return float(cap) if cap else None

    def run(self) -> Any:
        """What the model would have computed: its own attention function on the original arguments."""
        fn = self.original or sys.modules[type(self.module).__module__].eager_attention_forward
        return fn(self.module, self.query, self.key, self.value, self.attention_mask, *self.args, **self.kwargs)

    def allowed(self) -> torch.Tensor | None:
        """(B or 1, H or 1, T, S) bool of the query-key pairs the mask allows; None for masks we cannot read."""
        batch, _, length, _ = self.query.shape
        return allowed_pairs(self.module, self.attention_mask, batch, length, int(self.key.shape[2]),
                             self.query.device)


Handler = Callable[[AttentionCall], Any]


def allowed_pairs(module: nn.Module, mask: Any, batch: int, length: int, keys: int,
                  device: torch.device) -> torch.Tensor | None:
    """(B or 1, H or 1, T, S) bool of the pairs the model's mask allows; None for a mask format we cannot read."""
    causal = bool(getattr(module, "is_causal", False)) and length > 1
    if mask is None:
        if not causal:
            return torch.ones(1, 1, length, keys, dtype=torch.bool, device=device)
        # no mask and causal: query i (the last `length` of `keys` positions) sees keys up to its own position
        q_pos = torch.arange(keys - length, keys, device=device)[:, None]
        return (torch.arange(keys, device=device)[None, :] <= q_pos)[None, None]
    if not isinstance(mask, torch.Tensor):
        return None  # flex attention's BlockMask and other structured masks
    if mask.dim() == 2 and mask.shape == (batch, keys):  # flash attention: a key padding mask
        allowed = allowed_pairs(module, None, batch, length, keys, device)
        assert allowed is not None
        return allowed & mask.bool()[:, None, None, :]
    if mask.dim() != 4:
        return None
    mask = mask[:, :, -length:, :keys]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2  # additive masks: 0 where allowed, a huge negative elsewhere


def _implementations(blocks: list[nn.Module]) -> set[str]:
    names = set()
    for block in blocks:
        for m in block.modules():
            impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
            if isinstance(impl, str):
                names.add(impl)
    return names


@contextmanager
def intercept_attention(anatomy: Anatomy, handlers: dict[int, Handler]) -> Iterator[str | None]:
    """Hand block i's attention calls to ``handlers[i]``, whose return value is the call's result.

    A handler that only looks returns ``call.run()``; one that changes attention returns its own
    ``(output (B, T, H, d_head), weights)``, the interface's contract.

    Yields:
        None when the wrapper is in place, or the reason it could not be installed (the block then runs the
        model untouched and no handler is called).
    """
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - transformers 5 always has it
        yield "this transformers version has no attention interface to intercept"
        return
    owners = {id(m): i for i, block in enumerate(anatomy.blocks) for m in block.modules() if i in handlers}
    names = _implementations(anatomy.blocks)
    if not names:
        yield "the model's blocks name no attention implementation"
        return

    def wrap(original: Callable[..., Any] | None) -> Callable[..., Any]:
        def intercepted(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: Any, *args: Any, **kwargs: Any) -> Any:
            call = AttentionCall(-1, module, query, key, value, attention_mask, args, kwargs, original)
            layer = owners.get(id(module))
            if layer is None:
                return call.run()
            call.layer = layer
            return handlers[layer](call)
        return intercepted

    if "eager" in names:
        users = {type(m).__module__ for b in anatomy.blocks for m in b.modules()
                 if getattr(getattr(m, "config", None), "_attn_implementation", None) == "eager"}
        missing = [u for u in users if not hasattr(sys.modules.get(u), "eager_attention_forward")]
        if missing and "eager" not in ALL_ATTENTION_FUNCTIONS:
            yield f"eager attention of {', '.join(sorted(missing))} is not transformers' standard function"
            return
    before = {name: ALL_ATTENTION_FUNCTIONS.get(name) for name in names}
    try:
        for name, original in before.items():
            ALL_ATTENTION_FUNCTIONS[name] = wrap(original)
        yield None
    finally:
        for name, original in before.items():
            try:
                del ALL_ATTENTION_FUNCTIONS[name]  # removes our local entry; a global one shows through again
            except KeyError:
                pass
            if original is not None and ALL_ATTENTION_FUNCTIONS.get(name) is not original:
                ALL_ATTENTION_FUNCTIONS[name] = original  # there was a local override before us
