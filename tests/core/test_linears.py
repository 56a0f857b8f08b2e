"""The one enumeration of a block's linear layers: roles and residual writers from the anatomy tables."""

from __future__ import annotations

import pytest
import torch

from actkit.compress.projections import projections
from actkit.compress.weights import find_targets
from actkit.core.linears import linears
from actkit.steer.ablate_export import residual_writers

from tiny import DECODERS, build


def test_roles_and_writers_of_a_dense_a_conv1d_and_a_shared_expert_model() -> None:
    llama = {lin.path: (lin.role, lin.writer) for lin in linears(build("llama")) if lin.layer == 0}
    assert llama == {"self_attn.q_proj": ("attention", False), "self_attn.k_proj": ("attention", False),
                     "self_attn.v_proj": ("attention", False), "self_attn.o_proj": ("attention", True),
                     "mlp.gate_proj": ("mlp", False), "mlp.up_proj": ("mlp", False), "mlp.down_proj": ("down", True)}
    gpt2 = [lin for lin in linears(build("gpt2")) if lin.layer == 1]
    assert [(lin.path, lin.role, lin.writer) for lin in gpt2] == [
        ("attn.c_attn", "attention", False), ("attn.c_proj", "attention", True), ("mlp.c_fc", "mlp", False),
        ("mlp.c_proj", "down", True)]
    c_fc = gpt2[2]
    assert (c_fc.in_features, c_fc.out_features) == (64, 256)
    assert c_fc.weight().data_ptr() == c_fc.module.weight.data_ptr()  # a view of the (in, out) storage
    moe = {lin.path: (lin.role, lin.writer) for lin in linears(build("qwen2_moe")) if lin.layer == 0}
    assert moe["mlp.shared_expert.down_proj"] == ("mlp", True)  # written to the residual, not the MLP's own down
    assert moe["mlp.shared_expert_gate"] == ("mlp", False)
    assert "mlp.experts" not in moe and "mlp.gate" not in moe  # fused experts and routers are not linear layers


@pytest.mark.parametrize("name", DECODERS)
def test_every_user_takes_its_layers_from_the_enumeration(name: str) -> None:
    model = build(name)
    found = linears(model)
    assert [p.name for p in projections(model)] == [lin.name for lin in found]
    targets, _ = find_targets(model)
    assert [(t.name, t.kind if t.kind != "expand" else "mlp") for t in targets] == [(lin.name, lin.role)
                                                                                       for lin in found]
    writers = {lin.name for lin in found if lin.writer}
    try:
        by_branch = residual_writers(model)
    except Exception:
        assert name == "gemma3"  # sandwich norms: no exact weight equivalent
        return
    listed = {n for key, pairs in by_branch.items() if key != "embed" for n, m in pairs if isinstance(
        m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    assert listed == writers
