"""`collect` on texts that are not strings: an ActkitError naming the item and its index, not a tokenizer error."""

from __future__ import annotations

import re

import pytest

import actkit
from actkit import Mean, collect
from actkit.models.packaged import random_llama


@pytest.fixture(scope="module")
def llama():
    return random_llama()


@pytest.mark.parametrize(("bad", "shown"), [(7, "7 (int)"), (None, "None (NoneType)"), (b"a cat", "b'a cat' (bytes)")])
def test_non_string_item_is_named_with_its_index(llama, bad, shown) -> None:
    model, tokenizer = llama
    with pytest.raises(actkit.ActkitError, match=re.escape(f"texts[1] is {shown}, not a string")):
        collect(model, ["a dog", bad, "a cat"], "resid_post.0", {"m": Mean}, tokenizer=tokenizer)


def test_streamed_texts_are_checked_as_read(llama) -> None:
    model, tokenizer = llama
    stream = (t for t in ["one", "two", "three", 4.5])
    with pytest.raises(actkit.ActkitError, match=r"texts\[3\] is 4\.5 \(float\), not a string"):
        collect(model, stream, "resid_post.0", {"m": Mean}, tokenizer=tokenizer, batch_size=1)
    assert collect(model, iter(["one", "two"]), "resid_post.0", {"m": Mean}, tokenizer=tokenizer).documents == 2


def test_one_string_is_not_a_list_of_documents(llama) -> None:
    model, tokenizer = llama
    with pytest.raises(actkit.ActkitError, match=r"not one str: wrap it as \[text\]"):
        collect(model, "a whole document", "resid_post.0", {"m": Mean}, tokenizer=tokenizer)
