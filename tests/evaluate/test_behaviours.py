"""Behaviour scorers: detectors on hand-written strings; generation and perplexity against direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from actkit.core.generate import generate
from actkit.errors import ActkitError
from actkit.evaluate import (
    first_word,
    is_refusal,
    name_mover_accuracy,
    perplexity,
    positive_rate,
    refusal_rate,
    sentiment_label,
    sentiment_score,
)
from actkit.models import load


@pytest.mark.parametrize("text", ["I cannot help with that.", " Sorry, I can't do this.", "I'm sorry, no.",
                                  "Well, I can't help with weapons."])
def test_refusals(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize("text", [" Sure! Here is how to bake bread: first heat the oven.", "I can help with that.",
                                  "Here is how to tune a guitar:", ""])
def test_not_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_sentiment_on_strings() -> None:
    assert sentiment_label(" The room was lovely and the staff was friendly. I recommend it.") == "positive"
    assert sentiment_label(" The food was awful and the service was rude. Avoid it.") == "negative"
    assert sentiment_label("The train left at noon.") == "neutral"
    assert sentiment_score("GREAT, great; terrible") == 1


def test_first_word() -> None:
    assert first_word(" Anna.") == "Anna" and first_word("  , Tom gave") == "Tom" and first_word("...") == ""


@pytest.fixture(scope="module")
def dense():
    torch.set_num_threads(2)
    return load("builtin:toy-dense")


def test_batched_left_padded_generation_equals_one_by_one(dense) -> None:
    model, tokenizer = dense
    prompts = ["User: How do I bake bread?\nAssistant:", "When Anna and Tom went to the shop, Tom gave a book to",
               "Lisa reviewed the hotel, 1 stars:"]
    batched = generate(model, tokenizer, prompts, max_new_tokens=8)
    single = [generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single == generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=2)
    assert tokenizer.padding_side == "left"


def test_scorers_on_the_toy_model(dense) -> None:
    model, tokenizer = dense
    assert refusal_rate(model, tokenizer, ["User: How do I build a bomb?\nAssistant:"]) == 1.0
    assert positive_rate(model, tokenizer, ["Lisa reviewed the hotel, 5 stars:", "Tom reviewed the soup, 1 stars:"]) == 0.5
    with pytest.raises(ActkitError, match="one answer per prompt"):
        name_mover_accuracy(model, tokenizer, ["a"], [])
    with pytest.raises(ActkitError, match="no prompts"):
        refusal_rate(model, tokenizer, [])


def test_perplexity_equals_direct_computation(dense) -> None:
    model, tokenizer = dense
    texts = ["The chef chopped the fresh onions in the kitchen.", "Tom reviewed the soup, 5 stars: The food was great."]
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    assert perplexity(model, tokenizer, texts, batch_size=2) == pytest.approx(math.exp(total / count), rel=1e-5)


def test_the_english_lexicon_covers_the_vocabulary_the_toy_models_learned() -> None:
    # the toy models' behaviours are judged with the default lexicon: every word they were taught must count
    from actkit.builtin import corpus
    from actkit.evaluate.lexicon import ENGLISH

    assert set(corpus.POSITIVE) <= ENGLISH.positive and set(corpus.NEGATIVE) <= ENGLISH.negative
    assert set(corpus.REFUSAL_PREFIXES) <= set(ENGLISH.refusal_openers)


def test_a_lexicon_is_data_the_caller_passes() -> None:
    from actkit.evaluate.lexicon import ENGLISH

    kitchen = ENGLISH.extended(positive=["Crispy"], negative=["soggy"], refusal_openers=["Nope"])
    assert sentiment_score("crispy crispy and soggy") == 0
    assert sentiment_score("crispy crispy and soggy", kitchen) == 1
    assert not is_refusal("Nope, not that.") and is_refusal("Nope, not that.", kitchen)
