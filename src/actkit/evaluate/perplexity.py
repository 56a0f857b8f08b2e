"""Perplexity over documents: the first check that an edited (steered, pruned) model still models text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from actkit.core.collect import token_batches
from actkit.errors import ActkitError


def nll(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
        max_length: int | None = None) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) and the number of predicted tokens.

    Each text is one document, tokenized as the tokenizer does (a BOS if it adds one), cut to `max_length`
    tokens (default the tokenizer's ``model_max_length`` when it is a real limit). Every token after the first is
    predicted; batches (`actkit.core.collect.token_batches`, one row per text) are right-padded and padding is
    never scored.
    """
    limit = max_length or getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or limit <= 0 or limit >= 10**7:
        limit = None
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in token_batches(texts, tokenizer, limit=limit, batch_size=batch_size, split=False):
        ids, mask = batch.ids.to(device), batch.mask.to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                                       reduction="sum"))
        count += int((target != -100).sum())
    return total, count


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
               max_length: int | None = None) -> float:
    """exp(mean next-token NLL) over all predicted tokens of `texts` (see `nll` for the token rules)."""
    total, count = nll(model, tokenizer, texts, batch_size, max_length)
    if count == 0:
        raise ActkitError("no tokens to score: every text is empty or a single token")
    return math.exp(total / count)


__all__ = ["nll", "perplexity"]
