"""Fixtures of the steer tests: a character tokenizer that can decode (injectively), and tiny models."""

from __future__ import annotations

import pytest

from tiny import CharTokenizer, build


class DecodingTokenizer(CharTokenizer):
    """`CharTokenizer` plus an injective `decode` (id k -> chr(64 + k)), so equal strings mean equal ids."""

    eos_token_id = 2

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(64 + int(i)) for i in ids if not (skip_special_tokens and int(i) == 0))


@pytest.fixture
def tok() -> DecodingTokenizer:
    return DecodingTokenizer()


@pytest.fixture
def llama():
    model = build("llama")
    model.generation_config.eos_token_id = None  # a random model may emit EOS at once; keep lengths fixed
    return model


@pytest.fixture
def gpt2():
    model = build("gpt2")
    model.generation_config.eos_token_id = None
    return model


