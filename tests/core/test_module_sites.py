"""Module sites (``module:PATH:SIDE``): any submodule's input or output, through the same hook engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from actkit import ActkitError, Add, Anatomy, Apply, Capture, From, Generated, Read, Set, tap
from actkit.core.sites import Site

from tiny import build, tokens


class _Shifted(nn.Module):
    """Reference by module surgery (no hooks): add `add` (B, T, d) to the wrapped module's first input or its
    output, whether the module sees (B, T, d) or flattened (B*T, d) tokens."""

    def __init__(self, inner: nn.Module, add: torch.Tensor, on_input: bool):
        super().__init__()
        self.inner, self.add, self.on_input = inner, add, on_input

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.add.reshape(x.shape)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.on_input:
            return self.inner(self.shift(x), *args, **kwargs)
        return self.shift(self.inner(x, *args, **kwargs))


@pytest.mark.parametrize(
    "name,path,side,width",
    [
        ("llama", "model.layers.1.mlp.up_proj", "output", 96),
        ("llama", "model.layers.0.self_attn.q_proj", "input", 64),
        ("gpt2", "transformer.h.2.attn.c_attn", "output", 192),
        ("qwen2_moe", "model.layers.0.mlp.shared_expert.down_proj", "input", 48),  # flattened (B*T, d) tokens
    ],
)
def test_module_site_add_equals_hand_modified_forward(name: str, path: str, side: str, width: int) -> None:
    model, ids = build(name), tokens(batch=3, length=6)
    vectors = torch.randn(3, width, generator=torch.Generator().manual_seed(5))
    coefs = torch.tensor([1.0, -2.0, 0.5])
    with torch.no_grad(), tap(model, write={f"module:{path}:{side}": Add(vectors, coefs, positions=From(2))}):
        steered = model(ids).logits
    select = (torch.arange(6) >= 2)[None, :, None].float()
    add = coefs[:, None, None] * vectors[:, None, :] * select
    parent_path, child = path.rsplit(".", 1)
    parent = model.get_submodule(parent_path)
    original = getattr(parent, child)
    setattr(parent, child, _Shifted(original, add, side == "input"))
    try:
        with torch.no_grad():
            expected = model(ids).logits
    finally:
        setattr(parent, child, original)
    torch.testing.assert_close(steered, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(steered, expected + 1.0)


def test_a_module_site_reads_what_the_named_site_reads() -> None:
    model, ids = build("llama"), tokens()
    named, by_path = Capture(), Capture()
    with torch.no_grad(), tap(model, read={"mlp_hidden.2": named, "module:model.layers.2.mlp.down_proj:input": by_path}):
        model(ids)
    assert torch.equal(named.last, by_path.last)
    assert Anatomy.of(model).point("module:model.layers.2.mlp.down_proj:input").module is \
        Anatomy.of(model).point("mlp_hidden.2").module


def test_module_site_with_left_padding_equals_unbatched() -> None:
    model = build("qwen2")
    rows = [tokens(1, 7, seed=3)[0], tokens(1, 4, seed=4)[0]]
    vectors = torch.randn(2, 96)
    ids, mask = torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 7, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, 7 - len(row):], mask[r, 7 - len(row):] = row, 1
    site = "module:model.layers.1.mlp.gate_proj:output"
    cap = Capture()
    with torch.no_grad(), tap(model, read={site: cap}, write={site: Add(vectors, positions=From(2))}):
        batched = model(ids, attention_mask=mask).logits
    assert not cap.masks[-1][1, :3].any()  # padding is never selected
    for r, row in enumerate(rows):
        with torch.no_grad(), tap(model, write={site: Add(vectors[r], positions=From(2))}):
            single = model(row[None]).logits[0]
        torch.testing.assert_close(batched[r][mask[r].bool()], single, rtol=1e-4, atol=1e-5)


def test_kv_cache_generation_at_a_module_site_equals_no_cache_recomputation() -> None:
    model, prompt = build("llama"), tokens(batch=1, length=5, seed=7)
    model.generation_config.eos_token_id = None
    vector = torch.randn(64) * 3
    site = "module:model.layers.1.mlp.down_proj:output"
    outs = []
    for use_cache in (True, False):
        with torch.no_grad(), tap(model, write={site: Add(vector, positions=Generated())}):
            outs.append(model.generate(prompt, do_sample=False, pad_token_id=0, max_new_tokens=6, use_cache=use_cache))
    seq = prompt.clone()  # by hand: no cache, no hooks, the MLP output shifted from position 5 on
    mlp = model.model.layers[1].mlp
    original = mlp.down_proj
    try:
        for _ in range(6):
            add = (torch.arange(seq.shape[1]) >= 5)[None, :, None].float() * vector
            mlp.down_proj = _Shifted(original, add, on_input=False)
            with torch.no_grad():
                seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    finally:
        mlp.down_proj = original
    assert torch.equal(outs[0], seq) and torch.equal(outs[1], seq)


def test_router_outputs_are_reachable_and_writable() -> None:
    model, ids = build("qwen2_moe"), tokens(batch=2, length=5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    gate = "module:model.layers.0.mlp.gate"
    logits, weights, index, seen = Capture(), Capture(), Capture(), Capture()
    with torch.no_grad(), tap(model, read={"router.0": logits, f"{gate}:output.1": weights, f"{gate}:output.2": index}):
        model(ids, attention_mask=mask)
    probs = torch.softmax(logits.last.float(), dim=-1)
    top = probs.topk(2, dim=-1)
    assert index.last.shape == (2, 5, 2) and torch.equal(index.last, top.indices)
    torch.testing.assert_close(weights.last, top.values)
    forced = torch.tensor([3, 1])
    writes = {f"{gate}:output.2": Set(forced), f"{gate}:output.1": Set(torch.tensor([0.25, 0.75]))}
    with torch.no_grad(), tap(model, write=writes, read={"module:model.layers.0.mlp.experts:input.1": seen}):
        model(ids, attention_mask=mask)
    real = mask.bool()
    assert seen.last.shape == (2, 5, 2)
    assert bool((seen.last[real] == forced).all())
    assert torch.equal(seen.last[~real], top.indices[~real])  # padding keeps the router's own choice


def test_hooks_at_module_sites_are_removed_after_an_exception() -> None:
    model, ids = build("qwen2_moe"), tokens()
    with torch.no_grad():
        plain = model(ids).logits

    def boom(x, mask, ctx):
        raise RuntimeError("inside a module hook")

    with pytest.raises(RuntimeError, match="inside a module hook"), torch.no_grad():
        with tap(model, read={"module:model.layers.2.mlp.shared_expert.up_proj:output": boom},
                 write={"module:model.layers.0.mlp.gate:output.1": Apply(lambda w: w * 0),
                        "module:model.layers.1.self_attn.o_proj:input": Add(torch.ones(64))}):
            model(ids)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)


def test_module_site_grammar_round_trips_and_expands() -> None:
    for text in ("module:model.layers.3.mlp:input", "module:model.layers.0.mlp.gate:output.2", "module::output",
                 "module:lm_head:input.1"):
        assert str(Site.parse(text)) == text
    assert Site.parse("module:a.b:output.0") == Site.module("a.b", "output")
    found = Anatomy.of(build("llama")).expand("module:model.layers.*.mlp.down_proj:input")
    assert [s.path for s in found] == [f"model.layers.{i}.mlp.down_proj" for i in range(3)]


def test_bad_module_sites_are_clear() -> None:
    model, ids = build("llama"), tokens()
    with pytest.raises(ActkitError, match=r"no submodule 'model.layers.1.mlp.down_prj'; did you mean "
                                          r"'model.layers.1.mlp.down_proj'"):
        tap(model, read={"module:model.layers.1.mlp.down_prj:input": Capture()}).__enter__()
    with pytest.raises(ActkitError, match="should look like module:PATH:input"):
        Site.parse("module:model.layers.1")
    with pytest.raises(ActkitError, match="must be input, output, input.K or output.K"):
        Site.parse("module:model.layers.1:middle")
    with pytest.raises(ActkitError, match="non-negative integer after the dot"):
        Site.parse("module:model.layers.1:output.x")
    with pytest.raises(ActkitError, match="returns one tensor, not a tuple"), torch.no_grad():
        with tap(model, read={"module:model.layers.1.mlp:output.1": Capture()}):
            model(ids)
    with pytest.raises(ActkitError, match="has no element 5"), torch.no_grad():
        with tap(model, read={"module:model.layers.1.self_attn:output.5": Capture()}):
            model(ids)
    with pytest.raises(ActkitError, match="matches no submodule"):
        Anatomy.of(model).expand("module:model.blocks.*:input")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_reads_at_a_module_site_see_a_function_sink_and_positions() -> None:
    model, ids = build("gpt2"), tokens(batch=2, length=4)
    seen: list[torch.Tensor] = []
    with torch.no_grad(), tap(model, read={"module:transformer.h.0.mlp.c_fc:input": Read(
            lambda x, m, ctx: seen.append(m.clone()), From(3))}):
        model(ids)
    assert seen[0].tolist() == [[False, False, False, True]] * 2
