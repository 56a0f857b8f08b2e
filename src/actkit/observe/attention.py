"""The largest attention logit of each block, read where the model computes attention.

The logit that matters is ``q·k · scaling`` with q and k exactly as the softmax sees them (after rotary
embeddings, QK-norms, partial rotary and the model's own scaling), so it is read from the attention call itself
through the core's `intercept_attention`; the call then runs unchanged, so the model's outputs are too.

Pairs that count: those the model's attention mask allows (causal, sliding window, padding), and only for
query and key tokens that are real (the block's ``resid_pre`` mask). A tanh soft-cap (Gemma 2) is applied
after the logit; the value reported is before it.

A family whose attention does not go through the interface is not observed, and its value is reported
as null with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.attention import AttentionCall, allowed_pairs, intercept_attention

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
        allowed = allowed_pairs(module, attention_mask, batch, length, keys, query.device)
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


def _by_group(allowed: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Lay a per-head (B, H, T, S) mask out as (B, H_kv, G, T, S), or a head-free one as (B, 1, 1, T, S)."""
    b, h, t, s = allowed.shape
    if h == 1:
        return allowed[:, :, None]
    return allowed.reshape(b, kv_heads, h // kv_heads, t, s)


@contextmanager
def attention_probe(anatomy: Anatomy, probes: dict[int, AttentionLogitMax]) -> Iterator[str | None]:
    """Let block i's attention calls feed ``probes[i]``; the calls themselves run unchanged.

    Yields:
        None when the probe is in place, or the reason it could not be installed (the block then runs the
        model untouched and every probe stays empty).
    """
    def handler(call: AttentionCall) -> Any:
        probes[call.layer].observe(call.module, call.query, call.key, call.attention_mask, call.kwargs.get("scaling"))
        return call.run()

    with intercept_attention(anatomy, dict.fromkeys(probes, handler)) as why:
        yield why


__all__ = ["AttentionLogitMax", "NOT_CALLED", "attention_probe"]
