"""Router statistics against a hand computation from the model's own router outputs and expert weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from actkit.compress.experts import expert_stats, moe_layers, route
from actkit.errors import ActkitError

from tiny import MOE, CharTokenizer, build

TEXTS = ["the quick brown fox", "jumps", "over the lazy dog again and again", "ok"]


def _capture(model, text: str) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per MoE block: (experts' input (T, d), router logits, router weights (T, k), router indices), one text."""
    seen: dict[int, list[torch.Tensor]] = {}
    handles = []
    for moe in moe_layers(model):
        def hook(module, args, output, layer=moe.layer):
            seen[layer] = [args[0].reshape(-1, args[0].shape[-1]), *output]
        handles.append(moe.router.register_forward_hook(hook))
    ids = torch.tensor([CharTokenizer()(text)["input_ids"]])
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return {layer: tuple(v) for layer, v in seen.items()}  # type: ignore[misc]


def _expert(experts, e: int, x: torch.Tensor) -> torch.Tensor:
    """f_e(x) for one token, written out: down @ (silu(gate @ x) * (up @ x))."""
    w = experts.gate_up_proj[e]
    half = w.shape[0] // 2
    hidden = F.silu(w[:half] @ x) * (w[half:] @ x)
    return experts.down_proj[e] @ hidden


@torch.no_grad()
def _hand(model, every_token: bool) -> dict[str, torch.Tensor]:
    layers = moe_layers(model)
    count = layers[0].num_experts
    out = {k: torch.zeros(len(layers), count, dtype=torch.float64) for k in
           ("routed", "observed", "gate_sum", "prob_sum", "norm_sum", "gated_norm_sum", "prob_norm_sum")}
    out["logit_gram"] = torch.zeros(len(layers), count, count, dtype=torch.float64)
    for text in TEXTS:
        for row, moe in enumerate(layers):
            hidden, logits, weights, index = _capture(model, text)[moe.layer]
            probs = torch.softmax(logits.double(), dim=-1)
            for t in range(hidden.shape[0]):
                out["logit_gram"][row] += torch.outer(logits[t].double(), logits[t].double())
                for e in range(count):
                    picked = (index[t] == e).nonzero().flatten()
                    gate = float(weights[t, picked[0]]) if picked.numel() else 0.0
                    if not picked.numel() and not every_token:
                        continue
                    norm = float(_expert(moe.experts, e, hidden[t]).double().norm())
                    out["routed"][row, e] += bool(picked.numel())
                    out["observed"][row, e] += 1
                    out["gate_sum"][row, e] += gate
                    out["prob_sum"][row, e] += float(probs[t, e])
                    out["norm_sum"][row, e] += norm
                    out["gated_norm_sum"][row, e] += gate * norm
                    out["prob_norm_sum"][row, e] += float(probs[t, e]) * norm
    return out


@pytest.mark.parametrize("family", MOE)
@pytest.mark.parametrize("every_token", [False, True])
def test_stats_match_hand_computation(family: str, every_token: bool) -> None:
    model = build(family)
    if family == "qwen3_moe":  # cover both normalisations: renormalized top-k here, plain top-k in qwen2/olmoe
        for moe in moe_layers(model):
            moe.router.norm_topk_prob = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = expert_stats(model, CharTokenizer(), TEXTS, every_token=every_token, batch_size=3)
    hand = _hand(model, every_token)
    assert stats.tokens == sum(len(t) for t in TEXTS)
    assert stats.layers == [m.layer for m in moe_layers(model)]
    for name, expected in hand.items():
        torch.testing.assert_close(getattr(stats, name), expected, rtol=1e-4, atol=1e-4, msg=name)
    assert torch.allclose(stats.frequency().sum(1), torch.full((len(stats.layers),), 2.0, dtype=torch.float64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_dense_layers_are_skipped_and_gate_normalisation_is_reported() -> None:
    model = build("qwen2_moe")  # block 1 is dense (mlp_only_layers)
    stats = expert_stats(model, CharTokenizer(), TEXTS)
    assert stats.layers == [0, 2]
    assert stats.renormalized == [False, False]
    gates = stats.mean_gate()
    assert bool((gates[stats.routed > 0] < 1).all())  # plain top-k probabilities never reach one
    assert moe_layers(build("mixtral"))[0].renormalize is True


@pytest.mark.parametrize("family", MOE)
@pytest.mark.parametrize("renormalize", [False, True])
def test_route_reproduces_the_router(family: str, renormalize: bool) -> None:
    model = build(family)
    for moe in moe_layers(model):
        if hasattr(moe.router, "norm_topk_prob"):
            moe.router.norm_topk_prob = renormalize
    for moe in moe_layers(model):
        _, logits, weights, index = _capture(model, TEXTS[2])[moe.layer]
        _, mine_w, mine_i = route(logits, moe.top_k, moe.renormalize)
        assert torch.equal(mine_i, index)
        torch.testing.assert_close(mine_w.to(weights.dtype), weights, rtol=0, atol=0)


def test_mean_values_are_nan_for_unrouted_experts_and_bad_input() -> None:
    model = build("mixtral")
    stats = expert_stats(model, CharTokenizer(), ["a"])
    never = stats.routed == 0
    assert bool(never.any())
    assert bool(stats.mean_gate()[never].isnan().all()) and bool(stats.mean_norm()[never].isnan().all())
    summary = stats.summary()
    assert summary[0]["layer"] == 0 and len(summary[0]["mean_gate"]) == 4
    assert None in [v for row in summary for v in row["mean_gate"]]
    with pytest.raises(ActkitError, match="not a mixture of experts"):
        expert_stats(build("llama"), CharTokenizer(), TEXTS)
    with pytest.raises(ActkitError, match="batch_size"):
        expert_stats(model, CharTokenizer(), TEXTS, batch_size=0)
    assert expert_stats(model, CharTokenizer(), TEXTS, max_tokens=5).tokens == 5
