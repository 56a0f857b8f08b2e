"""Scorers for behaviours: refusal, sentiment, name moving, each as "model + tokenizer + prompts -> a number".

Steering, localization and compression all ask the same question afterwards: did the behaviour change? So the
scorers are plain functions that generate through the core's `actkit.core.generate.generate` (greedy, batched,
left padding, cut at the model's EOS) and
string-level detectors that are deliberately simple and documented, so a number can be traced back to text:

- `is_refusal`: the reply starts with a refusal opener (``"I cannot"``, ``"Sorry"``, ...) or says it cannot help.
- `sentiment_score`: positive minus negative lexicon words.

The words are data: each detector and scorer takes a `Lexicon` (default `ENGLISH`, see `lexicon`).
- name check: the first word of the continuation is the expected name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from actkit.core.generate import generate
from actkit.errors import ActkitError
from actkit.evaluate.lexicon import ENGLISH, Lexicon

_WORD = re.compile(r"[a-z']+")


def is_refusal(text: str, lexicon: Lexicon = ENGLISH) -> bool:
    """Whether a reply refuses: it opens with a refusal (``"I cannot"``, ``"Sorry"``, ...) or says it cannot help."""
    stripped = text.strip()
    lowered = stripped.lower()
    return stripped.startswith(lexicon.refusal_openers) or any(p in lowered for p in lexicon.refusal_phrases)


def sentiment_score(text: str, lexicon: Lexicon = ENGLISH) -> int:
    """Positive minus negative lexicon words in `text` (whole words, case-insensitive)."""
    words = _WORD.findall(text.lower())
    return sum(w in lexicon.positive for w in words) - sum(w in lexicon.negative for w in words)


def sentiment_label(text: str, lexicon: Lexicon = ENGLISH) -> str:
    """``"positive"``, ``"negative"`` or ``"neutral"`` by the sign of `sentiment_score`."""
    score = sentiment_score(text, lexicon)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def first_word(text: str) -> str:
    """The first word of a continuation, without punctuation (``" Anna."`` -> ``"Anna"``)."""
    match = re.search(r"[A-Za-z']+", text)
    return match.group(0) if match else ""


def refusal_rate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 8,
                 batch_size: int = 32, lexicon: Lexicon = ENGLISH) -> float:
    """Fraction of `prompts` whose greedy reply `is_refusal`; prompts are complete, e.g. ``"User: ...\\nAssistant:"``."""
    replies = _greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
    return _mean([is_refusal(r, lexicon) for r in replies])


def sentiment_agreement(model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str],
                        max_new_tokens: int = 24, batch_size: int = 32, lexicon: Lexicon = ENGLISH) -> float:
    """Fraction of `prompts` whose greedy continuation has the sentiment in `labels` (positive/negative)."""
    _same_length(prompts, labels)
    continuations = _greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
    return _mean([sentiment_label(c, lexicon) == label for c, label in zip(continuations, labels, strict=True)])


def positive_rate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 24,
                  batch_size: int = 32, lexicon: Lexicon = ENGLISH) -> float:
    """Fraction of greedy continuations that are positive: the number a sentiment steering vector moves."""
    continuations = _greedy(model, tokenizer, prompts, max_new_tokens, batch_size)
    return _mean([sentiment_label(c, lexicon) == "positive" for c in continuations])


def name_mover_accuracy(model: Any, tokenizer: Any, prompts: Sequence[str], names: Sequence[str],
                        batch_size: int = 32) -> float:
    """Fraction of name-mover prompts (``"... Tom gave a book to"``) greedily continued by the right name."""
    _same_length(prompts, names)
    continuations = _greedy(model, tokenizer, prompts, 3, batch_size)
    return _mean([first_word(c) == name for c, name in zip(continuations, names, strict=True)])


def _greedy(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations, `batch_size` prompts per batch; an empty prompt list is left to `_mean` to refuse."""
    if not prompts:
        return []
    return generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)


def _same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ActkitError(f"got {len(a)} prompts but {len(b)} expected answers; give one answer per prompt")


def _mean(flags: list[bool]) -> float:
    if not flags:
        raise ActkitError("no prompts to score: give at least one prompt")
    return sum(flags) / len(flags)


__all__ = ["first_word", "is_refusal", "name_mover_accuracy",
           "positive_rate", "refusal_rate", "sentiment_agreement", "sentiment_label", "sentiment_score"]
