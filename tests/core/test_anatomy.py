"""Every anatomy table against the plain Hugging Face forward and hand computations (tiny random models)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch.nn import functional as F

import actkit
from actkit import Anatomy, Capture, tap

from tiny import CONFIGS, MOE, build, tokens

FAMILIES = list(CONFIGS)


def _read_everything(model: torch.nn.Module, ids: torch.Tensor) -> tuple[dict[str, Capture], torch.Tensor]:
    caps = {str(s): Capture() for s in Anatomy.of(model).sites()}
    with torch.no_grad(), tap(model, read=caps):
        logits = model(ids).logits
    return caps, logits


@pytest.mark.parametrize("name", FAMILIES)
def test_reading_every_site_leaves_logits_bit_identical(name: str) -> None:
    model, ids = build(name), tokens()
    with torch.no_grad():
        plain = model(ids).logits
    caps, logits = _read_everything(model, ids)
    assert torch.equal(plain, logits)
    assert torch.equal(caps["logits"].last, plain)
    with torch.no_grad():  # and hooks are gone afterwards
        assert torch.equal(model(ids).logits, plain)


@pytest.mark.parametrize("name", FAMILIES)
def test_resid_sites_equal_hidden_states(name: str) -> None:
    model, ids = build(name), tokens()
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    caps, _ = _read_everything(model, ids)
    n = Anatomy.of(model).n_layers
    for i in range(n - 1):  # the last entry of hidden_states is after the final norm
        assert torch.equal(caps[f"resid_post.{i}"].last, hidden[i + 1]), i
    for i in range(n):
        assert torch.equal(caps[f"resid_pre.{i}"].last, hidden[i]), i


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "bert"])
def test_branches_sum_to_the_residual(name: str) -> None:
    """resid_post = resid_pre + attn_out + mlp_out: attn_out and mlp_out are what each branch adds."""
    model, ids = build(name), tokens()
    caps, _ = _read_everything(model, ids)
    for i in range(Anatomy.of(model).n_layers):
        total = caps[f"resid_pre.{i}"].last + caps[f"attn_out.{i}"].last + caps[f"mlp_out.{i}"].last
        torch.testing.assert_close(total, caps[f"resid_post.{i}"].last, rtol=1e-5, atol=1e-5)


def test_bert_branches_are_the_dense_outputs_before_the_post_norm() -> None:
    model, ids = build("bert"), tokens()
    caps, _ = _read_everything(model, ids)
    layer = model.bert.encoder.layer[0]
    with torch.no_grad():
        attn_residual = layer.attention.output.LayerNorm(caps["attn_out.0"].last + caps["resid_pre.0"].last)
        post = layer.output.LayerNorm(caps["mlp_out.0"].last + attn_residual)
    torch.testing.assert_close(caps["mlp_in.0"].last, attn_residual)
    torch.testing.assert_close(post, caps["resid_post.0"].last)


def _hand_hidden(name: str, model: torch.nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The MLP's hidden activation recomputed from its input, written out per family."""
    if name == "gpt2":
        mlp = model.transformer.h[layer].mlp
        return mlp.act(x @ mlp.c_fc.weight + mlp.c_fc.bias)  # Conv1D stores [in, out]
    if name == "gpt_neox":
        mlp = model.gpt_neox.layers[layer].mlp
        return mlp.act(F.linear(x, mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias))
    if name == "bert":
        dense = model.bert.encoder.layer[layer].intermediate.dense
        return F.gelu(F.linear(x, dense.weight, dense.bias))
    mlp = model.model.layers[layer].mlp
    if name == "phi3":
        gate, up = F.linear(x, mlp.gate_up_proj.weight).chunk(2, dim=-1)
        return mlp.activation_fn(gate) * up
    return mlp.act_fn(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight)


@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in MOE] + ["qwen2_moe"])
def test_mlp_hidden_equals_hand_computation(name: str) -> None:
    model, ids = build(name), tokens()
    caps, _ = _read_everything(model, ids)
    layers = [1] if name == "qwen2_moe" else range(Anatomy.of(model).n_layers)  # qwen2_moe: layer 1 is dense
    with torch.no_grad():
        for i in layers:
            expected = _hand_hidden(name, model, i, caps[f"mlp_in.{i}"].last)
            torch.testing.assert_close(caps[f"mlp_hidden.{i}"].last, expected, rtol=1e-5, atol=1e-6)


def _output_projection(name: str, model: torch.nn.Module, layer: int) -> torch.nn.Module:
    if name == "gpt2":
        return model.transformer.h[layer].attn.c_proj
    if name == "gpt_neox":
        return model.gpt_neox.layers[layer].attention.dense
    if name == "bert":
        return model.bert.encoder.layer[layer].attention.output.dense
    return model.model.layers[layer].self_attn.o_proj


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_sites_are_what_the_projections_read(name: str) -> None:
    """attn_in is the block's input after its first norm; the output projection of attn_hidden gives attn_out."""
    model, ids = build(name), tokens()
    caps, _ = _read_everything(model, ids)
    heads = model.config.num_attention_heads
    for i in range(Anatomy.of(model).n_layers):
        hidden = caps[f"attn_hidden.{i}"].last
        assert hidden.shape[-1] % heads == 0
        with torch.no_grad():
            projected = _output_projection(name, model, i)(hidden)
        if name in ("gemma2", "gemma3", "gemma3_text"):
            projected = model.model.layers[i].post_attention_layernorm(projected)
        if name != "bert":  # BERT adds the residual and normalises after the projection
            torch.testing.assert_close(projected, caps[f"attn_out.{i}"].last, rtol=1e-5, atol=1e-6)
        if name not in ("gpt2", "gpt_neox", "bert"):
            with torch.no_grad():
                normed = model.model.layers[i].input_layernorm(caps[f"resid_pre.{i}"].last)
            torch.testing.assert_close(caps[f"attn_in.{i}"].last, normed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MOE)
def test_expert_outputs_recombine_to_the_block_output(name: str) -> None:
    model, ids = build(name), tokens()
    anatomy = Anatomy.of(model)
    caps, _ = _read_everything(model, ids)
    for i in range(anatomy.n_layers):
        if f"router.{i}" not in caps:
            continue
        block = model.model.layers[i].mlp
        x = caps[f"mlp_in.{i}"].last.reshape(-1, anatomy.hidden_size)
        logits = caps[f"router.{i}"].last.reshape(x.shape[0], -1)
        probs = torch.softmax(logits.double(), dim=-1)
        top, chosen = probs.topk(block.gate.top_k, dim=-1)
        if getattr(block.gate, "norm_topk_prob", True):
            top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(x, dtype=torch.float64)
        for e in range(anatomy.num_experts):
            rows = (chosen == e).any(-1).nonzero(as_tuple=True)[0]
            values = caps[f"expert_out.{i}.{e}"].last.double()
            assert values.shape == (rows.numel(), anatomy.hidden_size)
            weight = (top * (chosen == e)).sum(-1)[rows]
            out[rows] += weight[:, None] * values
        if name == "qwen2_moe":
            with torch.no_grad():
                out += (torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)).double()
        expected = caps[f"mlp_out.{i}"].last.reshape(x.shape).double()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_partly_moe_model_lists_sites_per_block() -> None:
    anatomy = Anatomy.of(build("qwen2_moe"))
    names = {str(s) for s in anatomy.sites()}
    assert "router.0" in names and "router.1" not in names and "mlp_hidden.1" in names
    with pytest.raises(actkit.ActkitError, match=r"router\.1 is not available.*block 1 has: .*mlp_hidden\.1"):
        anatomy.point("router.1")


def test_site_out_of_range_names_the_valid_range() -> None:
    with pytest.raises(actkit.ActkitError, match=r"block 40 does not exist.*3 blocks.*0\.\.2"):
        Anatomy.of(build("llama")).point("resid_post.40")


def test_bad_site_names() -> None:
    anatomy = Anatomy.of(build("llama"))
    for bad, pattern in [("resid", "unknown site kind"), ("resid_post", "resid_post.LAYER"),
                         ("resid_post.x", "integers"), ("expert_out.0.1", "not a mixture of experts")]:
        with pytest.raises(actkit.ActkitError, match=pattern):
            anatomy.point(bad)


def test_expand_patterns() -> None:
    anatomy = Anatomy.of(build("mixtral"))
    assert [str(s) for s in anatomy.expand("resid_post.*")] == ["resid_post.0", "resid_post.1", "resid_post.2"]
    assert len(anatomy.expand("expert_out.1.*")) == 4
    with pytest.raises(actkit.ActkitError, match="matches no site"):
        Anatomy.of(build("llama")).expand("router.*")


def test_unknown_architecture_says_how_to_register() -> None:
    config = tf.GPTJConfig(vocab_size=32, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64)
    model = tf.GPTJForCausalLM(config)
    with pytest.raises(actkit.ActkitError, match=r"GPTJForCausalLM.*'gptj'.*register_family"):
        Anatomy.of(model)


def test_registering_a_table_is_enough_for_a_new_family() -> None:
    config = tf.GPTJConfig(vocab_size=32, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64)
    model = tf.GPTJForCausalLM(config).eval()
    table = actkit.Family("gptj", ("gptj",), layers="h", embed=actkit.Hook("wte"),
                          block={"attn_out": actkit.Hook("attn"), "mlp_out": actkit.Hook("mlp")})
    try:
        actkit.register_family(table)
        ids = tokens()
        caps, logits = _read_everything(model, ids)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, logits)
        assert caps["resid_post.0"].last.shape == (2, 7, 64)
    finally:
        from actkit.core import anatomy

        anatomy._FAMILIES.pop("gptj", None)


def test_families_lists_each_table_once_and_family_of_finds_it():
    from actkit.core.anatomy import families, family_of

    listed = families()
    assert len({id(f) for f in listed}) == len(listed)
    llama = family_of("llama")
    assert llama is not None and any(f is llama for f in listed)
    assert family_of("no-such-model-type") is None
