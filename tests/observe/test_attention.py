"""The largest attention logit against q and k recomputed by hand from each family's projections."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from actkit.core.anatomy import Anatomy
from actkit.observe import profile
from actkit.observe.attention import AttentionLogitMax, attention_probe
from actkit.observe.profile import run_reducers

from observe_helpers import ByteTokenizer, blocks
from tiny import build

DOCS = ["a short one", "hello world, this is a test of attention", "x", "a somewhat longer document than others"]


def _reference(model: torch.nn.Module, family: str) -> list[float]:
    """Max over documents (each alone, unpadded) of q·k·scale over the pairs the model attends to."""
    layers = blocks(model)
    seen: dict[int, tuple] = {}

    def keep(i: int):
        def hook(module, args, kwargs):
            seen[i] = (args[0] if args else kwargs["hidden_states"], kwargs.get("position_embeddings"))
        return hook

    attention = {"llama": lambda b: b.self_attn, "gpt2": lambda b: b.attn, "bert": lambda b: b.attention.self}
    handles = [attention[family](b).register_forward_pre_hook(keep(i), with_kwargs=True) for i, b in enumerate(layers)]
    best = [-math.inf] * len(layers)
    try:
        with torch.no_grad():
            for doc in DOCS:
                model(input_ids=torch.tensor([ByteTokenizer()(doc)["input_ids"]]))
                for i, block in enumerate(layers):
                    h, rotary = seen[i]
                    if family == "llama":
                        a = block.self_attn
                        q = a.q_proj(h).view(1, -1, 4, 16).transpose(1, 2)
                        k = a.k_proj(h).view(1, -1, 2, 16).transpose(1, 2)
                        q, k = apply_rotary_pos_emb(q, k, *rotary)
                        k = k.repeat_interleave(2, dim=1)
                    elif family == "gpt2":
                        q, k, _ = block.attn.c_attn(h).split(64, dim=-1)
                        q, k = (t.view(1, -1, 4, 16).transpose(1, 2) for t in (q, k))
                    else:
                        s = block.attention.self
                        q, k = (p(h).view(1, -1, 4, 16).transpose(1, 2) for p in (s.query, s.key))
                    logits = q @ k.transpose(-1, -2) / 4.0
                    n = logits.shape[-1]
                    allowed = torch.ones(n, n).bool()
                    if family != "bert":
                        allowed = allowed.tril()
                    best[i] = max(best[i], float(logits.masked_fill(~allowed, -math.inf).max()))
    finally:
        for handle in handles:
            handle.remove()
    return best


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_max_attention_logit_matches_hand_computation(family: str, implementation: str) -> None:
    model = build(family)
    model.config._attn_implementation = implementation
    expected = _reference(model, family)
    result = profile(model, ByteTokenizer(), DOCS, batch_size=4)  # one right-padded batch
    got = [layer["attn_logit_max"] for layer in result["layers"]]
    assert got == pytest.approx(expected, rel=1e-5)
    assert "attn_logit_max" not in result["unavailable"]


def test_padding_queries_and_masked_pairs_do_not_count() -> None:
    probe = AttentionLogitMax()
    causal = torch.nn.Module()
    causal.is_causal = True
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [100.0, 0.0]])[None, None]  # (1, 1, 3, 2); row 2 is padding
    k = torch.tensor([[2.0, 0.0], [3.0, 0.0], [50.0, 0.0]])[None, None]
    probe.update(torch.zeros(1, 3, 2), torch.tensor([[True, True, False]]))
    probe.observe(causal, q, k, None, 1.0)
    assert probe.result()["max"] == 3.0  # query 1 with key 1; never the padding query, never a future key
    probe.update(torch.zeros(1, 3, 2), torch.tensor([[True, True, True]]))
    additive = torch.tensor([[0.0, -1e30, -1e30], [0.0, 0.0, -1e30], [0.0, -1e30, 0.0]])[None, None]
    probe.observe(causal, q, k, additive, 0.5)  # the model's own mask decides (here: a sliding window)
    assert probe.result()["max"] == pytest.approx(2500.0)
    assert probe.result()["calls"] == 2


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_a_padded_batch_equals_documents_alone(implementation: str) -> None:
    model = build("llama")
    model.config._attn_implementation = implementation
    run = run_reducers(model, ByteTokenizer(), DOCS, batch_size=4)
    alone = [run_reducers(model, ByteTokenizer(), [doc]) for doc in DOCS]
    for i, probe in run.probes.items():
        assert probe.result()["max"] == pytest.approx(max(r.probes[i].result()["max"] for r in alone), rel=1e-6)
        assert probe.result()["calls"] == 1


def test_the_probe_leaves_outputs_and_the_registry_as_they_were() -> None:
    model = build("qwen3")
    ids = torch.tensor([ByteTokenizer()(DOCS[1])["input_ids"]])
    keys = dict(ALL_ATTENTION_FUNCTIONS._local_mapping)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    probes = {i: AttentionLogitMax() for i in range(3)}
    with torch.no_grad(), attention_probe(Anatomy.of(model), probes) as why:
        assert why is None
        during = model(input_ids=ids).logits
    assert torch.equal(before, during)
    assert dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == keys
    assert all(p.result()["calls"] == 1 for p in probes.values())


def test_attention_outside_the_interface_is_null_with_a_reason() -> None:
    model = build("gpt2")
    model.config.reorder_and_upcast_attn = True
    for block in model.transformer.h:
        block.attn.reorder_and_upcast_attn = True
    result = profile(model, ByteTokenizer(), DOCS)
    assert [layer["attn_logit_max"] for layer in result["layers"]] == [None, None, None]
    assert "attention interface" in result["unavailable"]["attn_logit_max"]
