"""The largest attention logit of each block, read where the model computes attention.

The logit that matters is ``q·k · scaling`` with q and k exactly as the softmax sees them: after rotary
embeddings, QK-norms (Qwen3, OLMoE, Gemma 3), partial rotary (Phi-3, NeoX) and the model's own scaling
(``1/sqrt(head_dim)``, Gemma's ``query_pre_attn_scalar``, GPT-2's per-layer scaling). Recomputing q and k from
the projections would mean re-implementing each of these per family. Instead, every family in the anatomy calls
transformers' attention interface as ``fn(module, query, key, value, attention_mask, scaling=..., ...)`` with
those final q and k, so `attention_probe` wraps that interface for the duration of a block: the wrapper notes
the largest logit over the query-key pairs the mask allows, then calls the original function with the
original arguments. The model's outputs are unchanged.

Pairs that count: those the model's attention mask allows (causal, sliding window, padding), and only for
query and key tokens that are real (the block's ``resid_pre`` mask). A tanh soft-cap (Gemma 2) is applied
after the logit; the value reported is before it.

Limits: the wrapper replaces entries of transformers' process-wide ``ALL_ATTENTION_FUNCTIONS`` registry while
the block runs (other models used concurrently in other threads pass through it unchanged). A family whose
attention does not go through the interface (GPT-2 with ``reorder_and_upcast_attn``) is not observed, and its
value is reported as null with that reason.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy

#: Query rows per chunk are chosen so that one chunk of logits holds at most this many floats (64 MiB).
_CHUNK_ELEMENTS = 1 << 24

NOT_CALLED = ("attention of this block did not go through transformers' attention interface, so its logits "
              "were not observed")


class AttentionLogitMax:
    """The largest attention logit of one block, fed by `attention_probe`.

    It is also a sink for the block's ``resid_pre`` site: that read arrives just before the attention call and
    carries the mask of real tokens, which excludes padding queries (a right-padded query row still attends to
    real keys). The mask is dropped as soon as the attention call has used it, so the state stays constant.

    Returns (from `result()`):
        `{"max": float | None, "calls": int}`; `max` is None when attention was never observed.
    """

    def __init__(self) -> None:
        self.max = -math.inf
        self.calls = 0
        self.count = 0
        self._valid: torch.Tensor | None = None

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None) -> None:
        """Remember which tokens of the coming attention call are real (x is the block input, (B, T, d))."""
        self._valid = None if mask is None else mask.detach().bool()
        self.count += int(x.shape[0] * x.shape[1]) if mask is None else int(mask.sum())

    def observe(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, attention_mask: Any,
                scaling: float | None) -> None:
        """Fold in one attention call: query (B, H, T, hd), key (B, H_kv, S, hd), the mask the model passed."""
        valid, self._valid = self._valid, None
        if query.dim() != 4 or key.dim() != 4 or query.shape[1] % key.shape[1]:
            return
        batch, heads, length, width = query.shape
        kv_heads, keys = int(key.shape[1]), int(key.shape[2])
        scale = float(scaling) if scaling is not None else width ** -0.5
        allowed = _allowed(module, attention_mask, batch, length, keys, query.device)
        if allowed is None:
            return
        q = query.detach().float().reshape(batch, kv_heads, heads // kv_heads, length, width)
        k = key.detach().float()[:, :, None]
        if valid is not None and tuple(valid.shape) == (batch, length):
            valid = valid.to(query.device)
            allowed = allowed & valid[:, None, :, None]
            if keys == length:
                allowed = allowed & valid[:, None, None, :]
        allowed = _by_group(allowed, kv_heads)  # (B, H_kv or 1, G or 1, T, S)
        step = max(1, _CHUNK_ELEMENTS // max(1, batch * heads * keys))
        best = -math.inf
        for start in range(0, length, step):
            logits = (q[:, :, :, start:start + step] @ k.transpose(-1, -2)) * scale
            ok = allowed[..., start:start + step, :]
            if bool(ok.any()):
                best = max(best, float(logits.masked_fill(~ok, -math.inf).amax()))
        self.max = max(self.max, best)
        self.calls += 1

    def forget(self) -> None:
        """Drop the token mask of a pass whose attention was never observed."""
        self._valid = None

    def merge(self, other: AttentionLogitMax) -> AttentionLogitMax:
        self.max = max(self.max, other.max)
        self.calls += other.calls
        self.count += other.count
        return self

    def result(self) -> dict[str, Any]:
        return {"max": self.max if self.calls and math.isfinite(self.max) else None, "calls": self.calls}


def _allowed(module: nn.Module, mask: Any, batch: int, length: int, keys: int,
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
        allowed = _allowed(module, None, batch, length, keys, device)
        assert allowed is not None
        return allowed & mask.bool()[:, None, None, :]
    if mask.dim() != 4:
        return None
    mask = mask[:, :, -length:, :keys]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2  # additive masks: 0 where allowed, a huge negative elsewhere


def _by_group(allowed: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Lay a per-head (B, H, T, S) mask out as (B, H_kv, G, T, S), or a head-free one as (B, 1, 1, T, S)."""
    b, h, t, s = allowed.shape
    if h == 1:
        return allowed[:, :, None]
    return allowed.reshape(b, kv_heads, h // kv_heads, t, s)


def _implementations(blocks: list[nn.Module]) -> set[str]:
    names = set()
    for block in blocks:
        for m in block.modules():
            impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
            if isinstance(impl, str):
                names.add(impl)
    return names


@contextmanager
def attention_probe(anatomy: Anatomy, probes: dict[int, AttentionLogitMax]) -> Iterator[str | None]:
    """Wrap transformers' attention interface so that block i's attention calls feed ``probes[i]``.

    Arguments:
        anatomy: the model's anatomy (its blocks say which module belongs to which block).
        probes: block index -> the probe that receives that block's attention calls.

    Yields:
        None when the probe is in place, or the reason it could not be installed (the block then runs the
        model untouched and every probe stays empty).
    """
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - transformers 5 always has it
        yield "this transformers version has no attention interface to observe"
        return
    owners = {id(m): i for i, block in enumerate(anatomy.blocks) for m in block.modules() if i in probes}
    names = _implementations(anatomy.blocks)
    if not names:
        yield "the model's blocks name no attention implementation"
        return

    def wrap(original: Callable[..., Any] | None) -> Callable[..., Any]:
        def probed(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: Any, *args: Any, **kwargs: Any) -> Any:
            layer = owners.get(id(module))
            if layer is not None:
                probes[layer].observe(module, query, key, attention_mask, kwargs.get("scaling"))
            fn = original or sys.modules[type(module).__module__].eager_attention_forward
            return fn(module, query, key, value, attention_mask, *args, **kwargs)
        return probed

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


__all__ = ["AttentionLogitMax", "NOT_CALLED", "attention_probe"]
