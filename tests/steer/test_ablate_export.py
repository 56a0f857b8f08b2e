"""Ablation baked into the weights equals runtime ablation, on disk too; the user's model is never changed."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from actkit import ActkitError, tap
from actkit.steer import SteeringVector, ablated_copy, ablation_everywhere, export_ablated

from tiny import DECODERS, build, tokens


def _runtime(model, ids, r):
    with torch.no_grad(), tap(model, write=ablation_everywhere(model, r)):
        return model(ids).logits


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_export_equals_runtime_ablation(tmp_path, name: str) -> None:
    model, ids = build(name), tokens(batch=2, length=7)
    r = torch.randn(64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(ids).logits
    folder = export_ablated(model, SteeringVector({1: r}), tmp_path / "out")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the user's model is unchanged
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)
    expected = _runtime(model, ids, r)
    loaded = tf.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        got = loaded(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert (got - plain).abs().max() > 1e-3  # the ablation does something
    report = json.loads((folder / "ablation.json").read_text())
    assert report["untied_output_head"] == (name == "gpt2")
    assert report["verification"]["max_abs_logit_diff"] < 1e-4
    proj = {"llama": "model.layers.0.self_attn.o_proj.weight", "gpt2": "transformer.h.0.mlp.c_proj.bias"}[name]
    assert proj in report["modified_parameters"]
    if name == "gpt2":
        assert "transformer.wpe.weight" in report["modified_parameters"]
    with pytest.raises(ActkitError, match="--force"):
        export_ablated(model, r, folder)


@pytest.mark.parametrize("name", [n for n in DECODERS if n not in ("llama", "gpt2", "gemma3")])
def test_ablated_copy_equals_runtime_in_other_families(name: str) -> None:
    model, ids, r = build(name), tokens(batch=2, length=7), torch.randn(64)
    clone, report = ablated_copy(model, r)
    with torch.no_grad():
        got = clone(ids).logits
    torch.testing.assert_close(got, _runtime(model, ids, r), rtol=0, atol=1e-4)
    assert report["untied_output_head"] == (name == "gemma")  # Gemma ties its head to the embeddings
    if name == "qwen2_moe":
        assert "model.layers.0.mlp.experts.down_proj" in report["modified_parameters"]
        assert "model.layers.0.mlp.shared_expert.down_proj.weight" in report["modified_parameters"]


def test_sandwich_norm_families_are_refused(tmp_path) -> None:
    with pytest.raises(ActkitError, match="runtime ablation"):
        export_ablated(build("gemma3"), torch.randn(64), tmp_path / "g")
    assert not (tmp_path / "g").exists()
