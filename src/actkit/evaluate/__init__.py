"""Evaluation: how well a model models text, and whether a behaviour is there (before and after an edit).

- `perplexity(model, tokenizer, texts)`: exp of the mean next-token loss.
- Behaviour scorers (greedy, batched, left padding): `refusal_rate`, `sentiment_agreement`, `positive_rate`,
  `name_mover_accuracy`, built on the string detectors `is_refusal`, `sentiment_score` / `sentiment_label`
  and `first_word`, and on the core's `actkit.generate`.
"""

from __future__ import annotations

from actkit.evaluate.behaviours import (
    first_word,
    is_refusal,
    name_mover_accuracy,
    positive_rate,
    refusal_rate,
    sentiment_agreement,
    sentiment_label,
    sentiment_score,
)
from actkit.evaluate.perplexity import nll, perplexity

__all__ = ["first_word", "is_refusal", "name_mover_accuracy", "nll", "perplexity", "positive_rate",
           "refusal_rate", "sentiment_agreement", "sentiment_label", "sentiment_score"]
