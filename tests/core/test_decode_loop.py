"""core.decode: token for token equal to generate_ids when no callback acts; rerun and rollback keep it equal."""

from __future__ import annotations

import pytest
import torch

from actkit import ActkitError, Add, Generated
from actkit.core.decode import Step, decode_ids
from actkit.core.generate import generate_ids

from tiny import DecodingTokenizer, build

PROMPTS = ["the quick brown fox", "hi", "steering vectors"]


@pytest.fixture
def tok() -> DecodingTokenizer:
    return DecodingTokenizer()


def endless(name: str) -> torch.nn.Module:
    model = build(name)
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3"])
def test_equals_generate_ids_greedy_steered_and_sampled(tok, name: str) -> None:
    model = endless(name)
    writes = {"resid_post.1": Add(torch.randn(64) * 3, positions=Generated())}
    for w in (None, writes):
        assert decode_ids(model, tok, PROMPTS, writes=w, max_new_tokens=7) == generate_ids(
            model, tok, PROMPTS, writes=w, max_new_tokens=7)
    sampled = dict(do_sample=True, seed=5, temperature=0.7, top_p=0.9, max_new_tokens=7)
    assert decode_ids(model, tok, PROMPTS, **sampled) == generate_ids(model, tok, PROMPTS, **sampled)


def test_eos_cut_equals_generate_ids(tok) -> None:
    model = build("llama")
    plain = generate_ids(model, tok, PROMPTS, max_new_tokens=8)
    eos = plain[0][2] if len(plain[0]) > 2 else 3  # a token the first row produces: it stops there
    assert decode_ids(model, tok, PROMPTS, max_new_tokens=8, eos_token_id=eos) == generate_ids(
        model, tok, PROMPTS, max_new_tokens=8, eos_token_id=eos)


def test_rerun_and_rollback_without_change_give_the_same_tokens(tok) -> None:
    """Rerunning a pass, or taking tokens back with nothing changed, regenerates the same greedy tokens."""
    model = endless("llama")
    expected = generate_ids(model, tok, PROMPTS, max_new_tokens=9)
    done: set[int] = set()

    def act(step: Step) -> None:
        step.rerun()
        for row, kept in enumerate(step.generated):
            if len(kept) == 5 and row not in done and row != 1:
                done.add(row)
                step.rollback(row, 3 if row == 0 else 10)  # row 2 goes back past its first token
    assert decode_ids(model, tok, PROMPTS, callbacks=[act], max_new_tokens=9) == expected
    assert done == {0, 2}


def test_rollback_changes_only_its_row_and_is_checked(tok) -> None:
    model = endless("llama")
    vector = torch.randn(64) * 4
    coef = torch.zeros(3)
    writes = {"resid_post.1": Add(vector, coef, Generated())}

    def steer_row_one(step: Step) -> None:
        if len(step.generated[1]) == 4 and float(coef[1]) == 0.0:
            coef[1] = 1.0
            step.rollback(1, 2)
    out = decode_ids(model, tok, PROMPTS, writes=writes, callbacks=[steer_row_one], max_new_tokens=8)
    plain = generate_ids(model, tok, PROMPTS, max_new_tokens=8)
    assert out[0] == plain[0] and out[2] == plain[2]
    assert out[1][:2] == plain[1][:2] and out[1] != plain[1]

    def bad(step: Step) -> None:
        step.rollback(0, 1)  # nothing generated yet at the first step
    with pytest.raises(ActkitError, match="nothing to roll back"):
        decode_ids(model, tok, PROMPTS, callbacks=[bad], max_new_tokens=3)
    with pytest.raises(ActkitError, match="max_new_tokens"):
        decode_ids(model, tok, PROMPTS, max_new_tokens=0)
