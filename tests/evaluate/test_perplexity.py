"""Perplexity: equal to a hand computation one document at a time, on the shared batch builder's rows."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from actkit.core.collect import token_batches
from actkit.errors import ActkitError
from actkit.evaluate.perplexity import nll, perplexity

from tiny import CharTokenizer, build

TEXTS = ["the cat sat on the mat and looked around", "", "a dog", "x", "birds sing at dawn every day", "", "yz"]


def _by_hand(model: torch.nn.Module, texts: list[str], limit: int | None) -> tuple[float, int]:
    """Each document alone, no padding: the summed next-token loss of its first `limit` tokens."""
    tok = CharTokenizer()
    total, count = 0.0, 0
    for text in texts:
        ids = tok(text)["input_ids"][:limit]
        if len(ids) < 2:
            continue
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0, :-1].double()
        total += float(F.cross_entropy(logits, x[0, 1:], reduction="sum"))
        count += len(ids) - 1
    return total, count


@pytest.mark.parametrize("batch_size, max_length", [(1, None), (3, None), (16, 6)])
def test_nll_equals_one_document_at_a_time(batch_size: int, max_length: int | None) -> None:
    model = build("llama")
    total, count = nll(model, CharTokenizer(), TEXTS, batch_size=batch_size, max_length=max_length)
    expected, expected_count = _by_hand(model, TEXTS, max_length or CharTokenizer.model_max_length)
    assert count == expected_count
    assert total == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, CharTokenizer(), TEXTS, batch_size, max_length) == pytest.approx(
        math.exp(expected / expected_count), rel=1e-5)


def test_a_batch_of_empty_texts_is_skipped() -> None:
    model = build("llama")
    assert nll(model, CharTokenizer(), ["", "", "ab"], batch_size=2) == nll(model, CharTokenizer(), ["ab"])
    with pytest.raises(ActkitError, match="no tokens to score"):
        perplexity(model, CharTokenizer(), ["", "a"])


def test_cut_rule_gives_one_row_per_text() -> None:
    batches = list(token_batches(["abcdef", "", "xy", "", ""], CharTokenizer(), limit=4, batch_size=2, split=False))
    assert len(batches) == 2  # the third batch holds only an empty text: no tokens, not yielded
    assert batches[0].mask.tolist() == [[True] * 4, [False] * 4]
    assert batches[0].ids[0].tolist() == CharTokenizer()("abcd")["input_ids"] and int(batches[0].ids[1].sum()) == 0
    assert batches[1].documents.tolist() == [2, 3] and batches[1].tokens == 2


def test_split_rule_is_collects() -> None:
    """`collect`'s rule: long documents split into consecutive rows, empty ones dropped, a token budget."""
    batches = list(token_batches(["abcdefghij", "", "xyz"], CharTokenizer(), limit=4, batch_size=2))
    rows = [(int(d), int(o), int(m.sum())) for b in batches
            for d, o, m in zip(b.documents, b.offsets, b.mask, strict=True)]
    assert rows == [(0, 0, 4), (0, 4, 4), (0, 8, 2), (2, 0, 3)]
    budget = list(token_batches(["abcdefghij", "xyz"], CharTokenizer(), limit=4, batch_size=8, max_tokens=9))
    assert [b.tokens for b in budget] == [9] and budget[0].mask.sum(1).tolist() == [4, 4, 1]
    with pytest.raises(ActkitError, match="batch_size"):
        next(token_batches(["a"], CharTokenizer(), limit=4, batch_size=0))
