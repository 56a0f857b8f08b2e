"""Fixtures of the monitor tests: tiny models and a character tokenizer that can decode."""

from __future__ import annotations

import pytest

from tiny import DecodingTokenizer, build


@pytest.fixture
def tok() -> DecodingTokenizer:
    return DecodingTokenizer()


@pytest.fixture
def llama():
    model = build("llama")
    model.generation_config.eos_token_id = None  # a random model may emit EOS at once; keep lengths fixed
    return model
