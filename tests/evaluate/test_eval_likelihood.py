"""Likelihood margins (Pres et al.) equal a hand computation, unsteered and steered."""

from __future__ import annotations

import pytest
import torch

from actkit.core.interventions import Add
from actkit.evaluate.likelihood import likelihood_margins, split_pair
from actkit.models.packaged import byte_tokenizer
from actkit.steer.pairs import Pair

from tiny import build

PAIRS = [Pair("The cat sat on the mat", "The cat ran to the door"), Pair("Yes, gladly.", "No way!")]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = byte_tokenizer()
    model = build("llama")
    model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def _hand_margin(model, tokenizer, pair: Pair) -> float:
    """Sum of log p over each text's tokens after the shared prefix, one full forward per text, no batching."""
    logp = []
    pos, neg = tokenizer(pair.positive)["input_ids"], tokenizer(pair.negative)["input_ids"]
    common = 0
    while pos[common] == neg[common]:
        common += 1
    for ids in (pos, neg):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        logp.append(sum(float(lp[t - 1, ids[t]]) for t in range(max(common, 1), len(ids))))
    return logp[0] - logp[1]


def test_margin_equals_a_hand_computation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    found = likelihood_margins(model, tokenizer, PAIRS, batch_size=3)
    hand = [_hand_margin(model, tokenizer, p) for p in PAIRS]
    assert found["margins"] == pytest.approx(hand, abs=1e-5)
    assert found["mean"] == pytest.approx(sum(hand) / 2, abs=1e-5)
    assert found["accuracy"] == sum(h > 0 for h in hand) / 2


def test_steered_margin_equals_a_hand_computation_with_the_vector_added(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    v = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    found = likelihood_margins(model, tokenizer, PAIRS, {"resid_post.1": Add(v, coef=3.0)})

    def add(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + 3.0 * v, *output[1:])
        return output + 3.0 * v

    handle = model.model.layers[1].register_forward_hook(add)
    try:
        hand = [_hand_margin(model, tokenizer, p) for p in PAIRS]
    finally:
        handle.remove()
    assert found["margins"] == pytest.approx(hand, abs=1e-5)
    assert found["margins"] != pytest.approx(likelihood_margins(model, tokenizer, PAIRS)["margins"], abs=1e-3)


def test_pairs_split_at_their_common_token_prefix(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    (ctx, a), (ctx2, b) = split_pair(tokenizer, Pair("The cat sat", "The cat ran"))
    assert ctx == ctx2 and tokenizer.decode(ctx, skip_special_tokens=True) == "The cat "
    assert tokenizer.decode(a) == "sat" and tokenizer.decode(b) == "ran"
