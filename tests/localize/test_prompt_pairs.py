"""Prompt pairs of different token lengths: the error shows where they first differ, not every token."""

from __future__ import annotations

import pytest

from actkit.errors import ActkitError
from actkit.localize.pairs import first_difference, prompt_pair
from actkit.models.packaged import byte_tokenizer

# one token per byte after a BOS token: token k + 1 is character k
LONG = "When Anna and Tom went to the shop, Tom gave a book to " * 8  # 440 characters


def test_long_prompts_of_different_lengths_show_the_first_difference_only() -> None:
    tokenizer = byte_tokenizer()
    clean = LONG + "her"
    corrupt = LONG[:200] + "XY" + LONG[201:] + "her"  # the space at character 200 becomes two letters
    with pytest.raises(ActkitError) as caught:
        prompt_pair(tokenizer, clean, corrupt, "A")
    message = str(caught.value)
    assert "the clean prompt is 444 tokens and the corrupt prompt 445" in message
    assert "first differ at token 201" in message
    assert "clean tokens 198-204: ['o', 'p', ',', ' ', 'T', 'o', 'm']" in message
    assert "corrupt tokens 198-204: ['o', 'p', ',', 'X', 'Y', 'T', 'o']" in message
    assert len(message) < 600  # it printed all 889 tokens before


def test_a_prompt_that_extends_the_other_shows_where_the_shorter_one_ends() -> None:
    tokenizer = byte_tokenizer()
    text = first_difference(tokenizer, tokenizer("abcdef")["input_ids"], tokenizer("abcdefgh")["input_ids"])
    assert text == ("They first differ at token 7; clean tokens 4-6: ['d', 'e', 'f'] (the end); "
                    "corrupt tokens 4-8: ['d', 'e', 'f', 'g', 'h'] (the end).")
    assert first_difference(tokenizer, [256, 97], []) == "They first differ at token 0; clean tokens 0-1: ['<s>', 'a'] " \
        "(the end); corrupt ends before it."


def test_name_mover_pairs_swap_the_subject_of_the_sentences_given() -> None:
    from actkit import load
    from actkit.localize.pairs import name_mover_pairs

    _, tokenizer = load("builtin:toy-dense")
    (pair,) = name_mover_pairs(tokenizer, [("When Anna and Tom went to the shop, Tom gave a book to", "Anna")])
    corrupt = tokenizer("When Anna and Tom went to the shop, Anna gave a book to", return_tensors="pt")["input_ids"]
    assert pair.corrupt.tolist() == corrupt.tolist()
    assert tokenizer.decode([pair.answer]).strip() == "Anna" and tokenizer.decode([pair.foil]).strip() == "Tom"
    with pytest.raises(ActkitError, match="names no subject twice"):
        name_mover_pairs(tokenizer, [("When Anna and Tom met, Eve gave a book to", "Anna")])
