"""generate: batched equals one prompt at a time, greedy by default, seeded sampling, hooks removed."""

from __future__ import annotations

import pytest
import torch

from actkit import ActkitError, Add, Generated
from actkit.core.generate import generate, generate_ids

PROMPTS = ["the quick brown fox", "hi", "steering vectors"]


def _no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_batched_left_padded_equals_one_at_a_time(request, tok, name: str) -> None:
    model = request.getfixturevalue(name)
    writes = {"resid_post.1": Add(torch.randn(64) * 3, positions=Generated())}
    for w in (None, writes):
        batched = generate(model, tok, PROMPTS, writes=w, max_new_tokens=5)
        ids = generate_ids(model, tok, PROMPTS, writes=w, max_new_tokens=5)
        assert all(len(row) == 5 for row in ids)  # only the generated tokens come back
        assert batched == [tok.decode(row) for row in ids]
        assert batched == [generate(model, tok, [p], writes=w, max_new_tokens=5)[0] for p in PROMPTS]
    assert generate(model, tok, PROMPTS, writes=writes, max_new_tokens=5) != generate(model, tok, PROMPTS,
                                                                                       max_new_tokens=5)
    assert _no_hooks(model)


def test_greedy_equals_hugging_face_generate(llama, tok) -> None:
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    expected = llama.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert generate_ids(llama, tok, PROMPTS[:1], max_new_tokens=6) == [expected]


def test_sampling_is_seeded_and_leaves_the_global_state(llama, tok) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(llama, tok, PROMPTS, do_sample=True, temperature=1.5, seed=7, max_new_tokens=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == generate(llama, tok, PROMPTS, do_sample=True, temperature=1.5, seed=7, max_new_tokens=8)


def test_stops_at_eos_and_rejects_bad_input(tok) -> None:
    from tiny import build

    model = build("llama")  # keeps EOS (id 2): rows are cut before it
    out = generate_ids(model, tok, PROMPTS, max_new_tokens=6)
    assert all(2 not in row for row in out)
    with pytest.raises(ActkitError, match="list of strings"):
        generate(model, tok, "one string")
    with pytest.raises(ActkitError, match="chat template"):
        generate(model, tok, ["x"], chat=True)
