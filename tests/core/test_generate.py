"""generate: batched equals one prompt at a time, greedy by default, seeded sampling, the EOS cut, hooks removed."""

from __future__ import annotations

import warnings

import pytest
import torch

from actkit import ActkitError, Add, Generated
from actkit.core.generate import generate, generate_ids

from tiny import DecodingTokenizer, build

PROMPTS = ["the quick brown fox", "hi", "steering vectors"]


@pytest.fixture
def tok() -> DecodingTokenizer:
    return DecodingTokenizer()


def without_eos(name: str) -> torch.nn.Module:
    """A tiny model that never stops early (a random model may emit EOS at once): fixed lengths."""
    model = build(name)
    model.generation_config.eos_token_id = None
    return model


def _no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_batched_left_padded_equals_one_at_a_time(tok, name: str) -> None:
    model = without_eos(name)
    writes = {"resid_post.1": Add(torch.randn(64) * 3, positions=Generated())}
    for w in (None, writes):
        batched = generate(model, tok, PROMPTS, writes=w, max_new_tokens=5)
        ids = generate_ids(model, tok, PROMPTS, writes=w, max_new_tokens=5)
        assert all(len(row) == 5 for row in ids)  # only the generated tokens come back
        assert batched == [tok.decode(row) for row in ids]
        assert batched == [generate(model, tok, [p], writes=w, max_new_tokens=5)[0] for p in PROMPTS]
        assert batched == generate(model, tok, PROMPTS, writes=w, max_new_tokens=5, batch_size=2)
    assert generate(model, tok, PROMPTS, writes=writes, max_new_tokens=5) != generate(model, tok, PROMPTS,
                                                                                       max_new_tokens=5)
    assert _no_hooks(model)


def test_greedy_equals_hugging_face_generate(tok) -> None:
    llama = without_eos("llama")
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    expected = llama.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert generate_ids(llama, tok, PROMPTS[:1], max_new_tokens=6) == [expected]


def test_sampling_is_seeded_and_leaves_the_global_state(tok) -> None:
    llama = without_eos("llama")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(llama, tok, PROMPTS, do_sample=True, temperature=1.5, seed=7, max_new_tokens=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == generate(llama, tok, PROMPTS, do_sample=True, temperature=1.5, seed=7, max_new_tokens=8)


def test_each_row_stops_at_its_own_first_eos(tok) -> None:
    """A token the greedy run is known to emit becomes EOS: each row is cut before its first occurrence."""
    model = without_eos("llama")
    full = generate_ids(model, tok, PROMPTS, max_new_tokens=12)
    eos = full[0][3]
    expected = [row[:row.index(eos)] if eos in row else row for row in full]
    assert len(expected[0]) <= 3 and len({len(row) for row in expected}) > 1  # rows stop at different steps
    model.generation_config.eos_token_id = eos
    assert generate_ids(model, tok, PROMPTS, max_new_tokens=12) == expected
    assert generate_ids(model, tok, PROMPTS, max_new_tokens=12, batch_size=1) == expected
    assert generate(model, tok, PROMPTS, max_new_tokens=12) == [tok.decode(row) for row in expected]
    model.generation_config.eos_token_id = None  # the same cut from the argument instead of the config
    assert generate_ids(model, tok, PROMPTS, max_new_tokens=12, eos_token_id=[eos, 31]) == [
        row[:min([row.index(t) for t in (eos, 31) if t in row], default=len(row))] for row in full]


def test_a_prompt_longer_than_the_context_is_an_error(tok) -> None:
    model = without_eos("llama")  # 128 positions
    assert len(generate_ids(model, tok, ["x" * 123], max_new_tokens=5)[0]) == 5
    with pytest.raises(ActkitError, match=r"prompt 1 is 124 tokens; with max_new_tokens=5 that is 129 positions, "
                                          r"but the model's context is 128 tokens.*at most 123 tokens"):
        generate(model, tok, ["hi", "x" * 124], max_new_tokens=5)
    with pytest.raises(ActkitError, match="max_new_tokens=128 does not fit the model's context of 128"):
        generate(model, tok, ["hi"], max_new_tokens=128)


def test_an_intervention_that_breaks_the_arithmetic_warns(tok) -> None:
    model = without_eos("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, tok, PROMPTS, writes={"resid_post.0": Add(torch.ones(64), coef=4.0)}, max_new_tokens=4)
    huge = {"resid_post.0": Add(torch.ones(64), coef=torch.tensor([1.0, 1e30, 1.0]))}
    with pytest.warns(UserWarning, match=r"degenerated in prompt\(s\) \[1\].*lower the coefficient"):
        out = generate(model, tok, PROMPTS, writes=huge, max_new_tokens=4)
    assert out[1] == ""  # what the user saw before: an empty completion, exit 0


def test_bad_input(tok) -> None:
    model = build("llama")
    with pytest.raises(ActkitError, match="list of strings"):
        generate(model, tok, "one string")
    with pytest.raises(ActkitError, match="chat template"):
        generate(model, tok, ["x"], chat=True)
    with pytest.raises(ActkitError, match="batch_size must be at least 1"):
        generate(model, tok, ["x"], batch_size=0)
