"""Expert switching (MoTE) against a hand-modified router and against pruning; frequencies; the random control."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from actkit.compress.experts import (
    behaviour_experts,
    moe_layers,
    random_experts,
    routing_frequency,
    slice_experts,
    switch_experts,
)
from actkit.errors import ActkitError

from tiny import MOE, CharTokenizer, build, tokens


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _hand_router(off: list[int]):
    """A router forward written out by hand: masked logits, softmax, top-k, the family's renormalisation."""
    def forward(self, hidden_states):
        logits = F.linear(hidden_states.reshape(-1, self.weight.shape[1]), self.weight)
        masked = logits.float().clone()
        masked[:, off] = float("-inf")
        probs = torch.softmax(masked, dim=-1)
        top, index = torch.topk(probs, self.top_k, dim=-1)
        if getattr(self, "norm_topk_prob", True):
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, top, index
    return forward


@pytest.mark.parametrize("family", MOE)
def test_switching_off_equals_a_hand_modified_router(family: str) -> None:
    model = build(family)
    ids = tokens(2, 9)
    plain = _logits(model, ids)
    layers = [m.layer for m in moe_layers(model)]
    with switch_experts(model, off=[(layers[0], 1), (layers[-1], 0), (layers[-1], 3)]):
        switched = _logits(model, ids)
    assert torch.equal(_logits(model, ids), plain)  # the switch is gone with the block
    assert not any(m._forward_hooks for m in model.modules())
    hand = build(family)
    for moe in moe_layers(hand):
        off = {layers[0]: [1], layers[-1]: [0, 3]}.get(moe.layer, [])
        moe.router.forward = types.MethodType(_hand_router(off), moe.router)
    torch.testing.assert_close(switched, _logits(hand, ids), rtol=0, atol=1e-6)
    assert not torch.allclose(switched, plain, atol=1e-6)


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_switching_off_equals_pruning(family: str) -> None:
    """Off means as if removed: for renormalized (Mixtral) and plain top-k (Qwen2-MoE) routers alike."""
    model = build(family)
    layers = [m.layer for m in moe_layers(model)]
    ids = tokens(2, 9)
    with switch_experts(model, off=[(layer, 2) for layer in layers]):
        switched = _logits(model, ids)
    pruned = slice_experts(model, {layer: [0, 1, 3] for layer in layers})
    torch.testing.assert_close(switched, _logits(pruned, ids), rtol=1e-5, atol=1e-6)


def test_forcing_an_expert_on_routes_every_token_to_it() -> None:
    model = build("mixtral")
    seen = []
    experts = moe_layers(model)[0].experts
    handle = experts.register_forward_pre_hook(lambda m, args: seen.append((args[1].clone(), args[2].clone())))
    try:
        with switch_experts(model, on=[(0, 3)]):
            _logits(model, tokens(2, 9))
        _logits(model, tokens(2, 9))
    finally:
        handle.remove()
    (index_on, weights_on), (index_plain, _) = seen
    assert bool((index_on == 3).any(dim=-1).all())
    assert not bool((index_plain == 3).any(dim=-1).all())
    torch.testing.assert_close(weights_on.sum(-1), torch.ones(index_on.shape[0]))


def test_hooks_are_removed_when_the_block_raises() -> None:
    model = build("olmoe")
    with pytest.raises(RuntimeError, match="boom"), switch_experts(model, off=[(0, 0)]):
        raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())


def test_bad_switches() -> None:
    model = build("qwen2_moe")
    with pytest.raises(ActkitError, match="block 1 is not an MoE block"):
        with switch_experts(model, off=[(1, 0)]):
            pass
    with pytest.raises(ActkitError, match="does not exist"):
        with switch_experts(model, off=[(0, 4)]):
            pass
    with pytest.raises(ActkitError, match="leaves fewer than the 2"):
        with switch_experts(model, off=[(0, 0), (0, 1), (0, 2)]):
            pass
    with pytest.raises(ActkitError, match="both switched off and forced on"):
        with switch_experts(model, off=[(0, 0)], on=[(0, 0)]):
            pass
    with pytest.raises(ActkitError, match="3 experts forced on"):
        with switch_experts(model, on=[(0, 0), (0, 1), (0, 2)]):
            pass
    llama = build("llama")
    with pytest.raises(ActkitError, match="not a mixture of experts"):
        with switch_experts(llama, off=[(0, 0)]):
            pass
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in llama.modules())


def test_switch_hooks_are_removed_when_the_block_raises() -> None:
    model = build("qwen2_moe")
    router = moe_layers(model)[0].router
    with pytest.raises(RuntimeError, match="after the hooks exist"):
        with switch_experts(model, off=[(0, 1)]):
            assert router._forward_hooks  # the switch is live on this very model
            _logits(model, torch.tensor([[3, 4, 5]]))
            raise RuntimeError("after the hooks exist")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_routing_frequency_and_behaviour_experts_match_the_router() -> None:
    model = build("mixtral")
    tok = CharTokenizer()
    a, b = ["aaaa bbbb", "abab abab"], ["zzzz yyyy", "xyxy zz"]
    counts = {layer: torch.zeros(4) for layer in (0, 1, 2)}

    def count(module, args, out, layer: int) -> None:
        counts[layer] += torch.bincount(out[2].reshape(-1), minlength=4)

    handles = [m.router.register_forward_hook(lambda mod, args, out, layer=m.layer: count(mod, args, out, layer))
               for m in moe_layers(model)]
    try:
        for text in a:
            _logits(model, torch.tensor([tok(text)["input_ids"]]))
    finally:
        for h in handles:
            h.remove()
    layers, freq = routing_frequency(model, tok, a)
    assert layers == [0, 1, 2]
    expected = torch.stack([counts[layer] for layer in layers]).double() / sum(len(t) for t in a)
    torch.testing.assert_close(freq, expected)
    found = behaviour_experts(model, tok, a, b)
    diff = found.difference
    top = found.top(3)
    assert [float(diff[found.layers.index(layer), e]) for layer, e in top] == sorted(
        [v for v in diff.reshape(-1).tolist() if v > 0], reverse=True)[:3]
    assert found.ranking(1)[0]["difference"] == pytest.approx(float(diff.max()), abs=1e-5)


def test_random_control_draws_distinct_experts_and_keeps_top_k() -> None:
    model = build("mixtral")
    chosen = random_experts(model, 6, seed=1, exclude=[(0, 0)])
    assert len(set(chosen)) == 6 and (0, 0) not in chosen
    assert all(sum(1 for layer, _ in chosen if layer == b) <= 2 for b in (0, 1, 2))
    assert random_experts(model, 6, seed=1, exclude=[(0, 0)]) == chosen
    assert random_experts(model, 6, seed=2) != chosen
    with pytest.raises(ActkitError, match="cannot draw 7"):
        random_experts(model, 7)
