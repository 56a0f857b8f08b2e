"""WINA: the criterion on a hand example, exactly k kept per token, and which projections each variant weights."""

from __future__ import annotations

import pytest
import torch

from actkit.compress.activation import (
    Rule,
    activation_sparsity,
    column_norms,
    plan_activation_sparsity,
)
from actkit.compress.projections import projections

import tiny


def test_hand_example_picks_the_weight_informed_columns() -> None:
    # |x| alone would keep entries 0 and 1; weighted by the column norms (3, 0.1, 2, 1) the scores are
    # (3, 0.09, 1.4, 0.6), so WINA keeps entries 0 and 2.
    weight = torch.tensor([[3.0, 0.1, 0.0, 1.0],
                           [0.0, 0.0, 2.0, 0.0]])
    x = torch.tensor([[1.0, -0.9, 0.7, 0.6]])
    norms = torch.linalg.vector_norm(weight, dim=0)
    assert norms.tolist() == pytest.approx([3.0, 0.1, 2.0, 1.0])
    wina = Rule(keep=2, scale=norms)
    assert wina.keep_mask(x).tolist() == [[True, False, True, False]]
    assert wina.kept_indices(x[0]).tolist() == [0, 2]
    magnitude = Rule(keep=2)
    assert magnitude.keep_mask(x).tolist() == [[True, True, False, False]]
    assert magnitude.kept_indices(x[0]).tolist() == [0, 1]


@pytest.mark.parametrize("method", ["wina", "wina-code"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.65])
def test_exactly_k_entries_survive_per_token(method, sparsity) -> None:
    model = tiny.build("llama")
    plan = plan_activation_sparsity(model, f"{method}:{sparsity}")
    seen: dict[str, torch.Tensor] = {}
    handles = []
    with activation_sparsity(model, plan) as stats:
        for p in plan.projections:  # registered after the plan's hooks, so they see the sparsified input
            handles.append(p.module.register_forward_pre_hook(
                lambda m, args, name=p.name: seen.__setitem__(name, args[0].detach().clone())))
        try:
            model(input_ids=tiny.tokens(2, 7))
        finally:
            for h in handles:
                h.remove()
    for p in plan.projections:
        k = p.in_features - round(sparsity * p.in_features)
        assert plan.rules[p.name].keep == k
        assert ((seen[p.name] != 0).sum(-1) == k).all(), p.name
    assert stats.overall == pytest.approx(sparsity, abs=0.01)


def test_wina_weights_every_projection_by_its_own_column_norms() -> None:
    model = tiny.build("llama")
    plan = plan_activation_sparsity(model, "wina:0.5")
    for p in plan.projections:
        scale = plan.rules[p.name].scale
        assert scale is not None
        assert torch.allclose(scale, p.module.weight.detach().norm(dim=0))
    q, k = (plan.rules[f"model.layers.0.self_attn.{n}_proj"] for n in "qk")
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(q.keep_mask(x), k.keep_mask(x))  # one shared input, two different choices


@pytest.mark.parametrize("family, weighted", [
    ("llama", {"self_attn.k_proj", "mlp.gate_proj"}),
    ("qwen2", {"self_attn.k_proj", "mlp.gate_proj"}),
    ("phi3", {"self_attn.qkv_proj", "mlp.gate_up_proj"}),
    ("gpt_neox", {"attention.query_key_value", "mlp.dense_h_to_4h"}),
])
def test_released_code_variant_weights_only_key_and_gate(family, weighted) -> None:
    model = tiny.build(family)
    plan = plan_activation_sparsity(model, "wina-code:0.5")
    got = {p.path for p in plan.projections if plan.rules[p.name].scale is not None}
    assert got == weighted
    for p in plan.projections:
        if p.path in weighted:
            assert torch.allclose(plan.rules[p.name].scale, column_norms(p))  # type: ignore[arg-type]


def test_conv1d_column_norms_follow_the_input_dimension() -> None:
    model = tiny.build("gpt2")
    fc = next(p for p in projections(model) if p.path == "mlp.c_fc")
    assert fc.module.weight.shape == (64, 256)  # Conv1D stores (in, out)
    assert (fc.out_features, fc.in_features) == (256, 64)
    assert torch.allclose(column_norms(fc), fc.module.weight.detach().norm(dim=1))
