"""Perplexity over documents: the first check that an edited (steered, pruned) model still models text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from actkit.core.collect import next_token_nll
from actkit.errors import ActkitError


def nll(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
        max_length: int | None = None) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) and the number of predicted tokens.

    Each text is one document, tokenized as the tokenizer does (a BOS if it adds one), cut to `max_length`
    tokens (default the tokenizer's ``model_max_length`` when it is a real limit). Every token after the first is
    predicted; batches (`actkit.core.collect.token_batches`, one row per text) are right-padded and padding is
    never scored. The loss is the core's `actkit.core.collect.next_token_nll`.
    """
    limit = max_length or getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or limit <= 0 or limit >= 10**7:
        limit = None
    return next_token_nll(model, texts, tokenizer, limit=limit, batch_size=batch_size, split=False)


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16,
               max_length: int | None = None) -> float:
    """exp(mean next-token NLL) over all predicted tokens of `texts` (see `nll` for the token rules)."""
    total, count = nll(model, tokenizer, texts, batch_size, max_length)
    if count == 0:
        raise ActkitError("no tokens to score: every text is empty or a single token")
    return math.exp(total / count)


__all__ = ["nll", "perplexity"]
