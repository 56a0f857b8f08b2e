"""The hook engine: golden writes, positions, padding, KV-cache decoding, cleanup, autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import actkit
from actkit import Add, All, Apply, At, Capture, From, Generated, Last, Prompt, Read, Set, tap

from tiny import build, tokens


class _Shift(nn.Module):
    """Reference intervention by module surgery (no hooks): add `vector` to the wrapped module's output
    (or input) at the tokens `rows_positions` selects, given positions known by construction."""

    def __init__(self, inner: nn.Module, vector: torch.Tensor, select: torch.Tensor, on_input: bool = False):
        super().__init__()
        self.inner, self.vector, self.select, self.on_input = inner, vector, select, on_input

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs.pop("hidden_states")
        args = args[1:]
        add = self.select[..., None].to(x.dtype) * self.vector
        if self.on_input:
            return self.inner(x + add, *args, **kwargs)
        out = self.inner(x, *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0] + add, *out[1:])
        return out + add


def _swap(parent: nn.Module, name: str, new: nn.Module) -> nn.Module:
    old = getattr(parent, name) if not name.isdigit() else parent[int(name)]
    if name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)
    return old


@pytest.mark.parametrize(
    "name,site,parent,child,on_input",
    [
        ("llama", "resid_post.1", "model.layers", "1", False),
        ("llama", "attn_out.0", "model.layers.0", "self_attn", False),
        ("llama", "mlp_hidden.2", "model.layers.2.mlp", "down_proj", True),
        ("gpt2", "resid_pre.1", "transformer.h", "1", True),
        ("bert", "mlp_out.1", "bert.encoder.layer.1.output", "dense", False),
        ("mixtral", "mlp_in.1", "model.layers.1", "mlp", True),
    ],
)
def test_add_equals_hand_modified_forward(name: str, site: str, parent: str, child: str, on_input: bool) -> None:
    model, ids = build(name), tokens(batch=3, length=6)
    width = actkit.Anatomy.of(model).point(site)
    size = 96 if site.startswith("mlp_hidden") else 64
    vectors = torch.randn(3, size)  # one vector per row
    select = torch.zeros(3, 6, dtype=torch.bool)
    select[:, 2:] = True
    with torch.no_grad(), tap(model, write={site: Add(vectors, coef=torch.tensor([1.0, -2.0, 0.5]), positions=From(2))}):
        steered = model(ids).logits
    coefs = torch.tensor([1.0, -2.0, 0.5])[:, None, None]
    holder = model.get_submodule(parent)
    original = _swap(holder, child, _Shift(getattr(holder, child) if not child.isdigit() else holder[int(child)],
                                           (coefs * vectors[:, None, :]), select, on_input))
    try:
        with torch.no_grad():
            expected = model(ids).logits
    finally:
        _swap(holder, child, original)
    assert width.site.kind == site.split(".")[0]
    torch.testing.assert_close(steered, expected, rtol=1e-5, atol=1e-6)


def test_positions_select_the_right_tokens() -> None:
    model, ids = build("llama"), tokens(batch=2, length=5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # row 1 is left-padded: 3 real tokens
    seen: dict[str, torch.Tensor] = {}

    def record(key):
        return lambda x, m, ctx: seen.__setitem__(key, m.clone())

    rules = {"all": All(), "last": Last(), "prompt": Prompt(), "generated": Generated(), "from2": From(2),
             "at": At([[0, 4], [-1]])}
    with torch.no_grad(), tap(model, read={"resid_post.0": [Read(record(k), r) for k, r in rules.items()]}):
        model(ids, attention_mask=mask)
    t, f = True, False
    assert seen["all"].tolist() == [[t] * 5, [f, f, t, t, t]]
    assert seen["last"].tolist() == [[f, f, f, f, t], [f, f, f, f, t]]
    assert seen["prompt"].tolist() == seen["all"].tolist()
    assert not seen["generated"].any()
    assert seen["from2"].tolist() == [[f, f, t, t, t], [f, f, f, f, t]]  # absolute: row 1 starts at column 2
    assert seen["at"].tolist() == [[t, f, f, f, t], [f, f, f, f, t]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_with_padding_equals_unbatched(side: str) -> None:
    model = build("qwen2")
    rows = [tokens(1, 7, seed=3)[0], tokens(1, 4, seed=4)[0]]
    vectors = torch.randn(2, 64)
    width = 7
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for r, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, cols], mask[r, cols] = row, 1
    cap = Capture()
    with torch.no_grad(), tap(model, read={"resid_post.2": cap}, write={"resid_pre.1": Add(vectors, positions=From(2))}):
        batched = model(ids, attention_mask=mask).logits
    for r, row in enumerate(rows):
        single_cap = Capture()
        with torch.no_grad(), tap(model, read={"resid_post.2": single_cap},
                                  write={"resid_pre.1": Add(vectors[r], positions=From(2))}):
            single = model(row[None]).logits[0]
        real = mask[r].bool()
        torch.testing.assert_close(batched[r][real], single, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cap.last[r][real], single_cap.last[0], rtol=1e-4, atol=1e-5)


def _generate(model, ids, **kwargs):
    model.generation_config.eos_token_id = None  # a random model may emit EOS early; keep lengths fixed
    return model.generate(ids, do_sample=False, pad_token_id=0, **kwargs)


def _greedy_by_hand(model, prompt_ids, vector, start, steps):
    """No cache, no hooks: recompute the whole sequence each step with the layer wrapped to add `vector`
    at every position >= start (prompt positions included when start is inside the prompt)."""
    seq = prompt_ids.clone()
    layers = model.model.layers
    original = layers[1]
    try:
        for _ in range(steps):
            select = torch.arange(seq.shape[1])[None, :] >= start
            layers[1] = _Shift(original, vector, select)
            with torch.no_grad():
                nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    finally:
        layers[1] = original
    return seq


@pytest.mark.parametrize("positions,start", [(Generated(), 5), (From(7), 7), (From(2), 2), (All(), 0)])
def test_kv_cache_generation_equals_no_cache_recomputation(positions, start) -> None:
    model, prompt = build("llama"), tokens(batch=1, length=5, seed=7)
    vector = torch.randn(64) * 3
    expected = _greedy_by_hand(model, prompt, vector, start, steps=6)
    for use_cache in (True, False):
        with torch.no_grad(), tap(model, write={"resid_post.1": Add(vector, positions=positions)}):
            out = _generate(model, prompt, max_new_tokens=6, use_cache=use_cache)
        assert torch.equal(out, expected), (use_cache, out, expected)


def test_left_padded_batch_generation_steers_each_row_from_its_own_prompt_end() -> None:
    model = build("llama")
    prompts = [tokens(1, 5, seed=8)[0], tokens(1, 3, seed=9)[0]]
    vector = torch.randn(64) * 3
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, 5 - len(p):], mask[r, 5 - len(p):] = p, 1
    with torch.no_grad(), tap(model, write={"resid_post.1": Add(vector, positions=Generated())}):
        out = _generate(model, ids, attention_mask=mask, max_new_tokens=4)
    for r, p in enumerate(prompts):
        expected = _greedy_by_hand(model, p[None], vector, len(p), steps=4)
        assert torch.equal(out[r, 5 - len(p):], expected[0])


def test_hooks_removed_after_an_exception_and_parameters_unchanged() -> None:
    model, ids = build("mixtral"), tokens()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(ids).logits

    def boom(x, mask, ctx):
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"), torch.no_grad():
        with tap(model, read={"resid_post.1": boom, "expert_out.0.1": Capture()},
                 write={"mlp_in.0": Add(torch.randn(64)), "logits": Apply(lambda x: x * 2)}):
            model(ids)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradients_flow_through_writes_and_reads() -> None:
    model, ids = build("llama"), tokens()
    vector = torch.zeros(64, requires_grad=True)
    cap = Capture()
    with tap(model, read={"resid_post.2": cap}, write={"resid_post.0": Add(vector)}):
        loss = model(ids).logits.logsumexp(-1).sum()
    loss.backward()
    assert vector.grad is not None and vector.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad()


def test_set_patches_activations_from_another_run() -> None:
    model = build("llama")
    clean, corrupt = tokens(seed=11), tokens(seed=12)
    cap = Capture()
    with torch.no_grad():
        with tap(model, read={"resid_post.2": cap}):
            clean_logits = model(clean).logits
        with tap(model, write={"resid_post.2": Set(cap.last)}):
            patched = model(corrupt).logits
    # the last block feeds the head only: patching its output must reproduce the clean logits
    torch.testing.assert_close(patched, clean_logits)


def test_bad_writes_are_clear() -> None:
    model, ids = build("mixtral"), tokens()
    with pytest.raises(actkit.ActkitError, match="read-only"), tap(model, write={"expert_out.0.1": Add(torch.ones(64))}):
        pass
    with pytest.raises(actkit.ActkitError, match=r"resid_post\.0: vector has size 10 but the site has size 64"):
        with torch.no_grad(), tap(model, write={"resid_post.0": Add(torch.ones(10))}):
            model(ids)
    with pytest.raises(actkit.ActkitError, match="3 rows but the batch has 2"):
        with torch.no_grad(), tap(model, write={"resid_post.0": Add(torch.ones(64), coef=torch.ones(3))}):
            model(ids)
    with pytest.raises(actkit.ActkitError, match="not an Intervention"), tap(model, write={"resid_post.0": 3}):
        pass


def test_an_expected_context_is_used_for_the_next_pass_only_and_only_if_its_shape_fits() -> None:
    """`Tap.expect` replaces the context the engine would work out (here: a context that calls token 3 of each
    row the first generated one), for one pass, and a context of another shape is ignored."""
    from actkit.core.positions import StepContext

    model, ids = build("llama"), tokens(batch=2, length=5)
    seen: list[torch.Tensor] = []
    said = StepContext(torch.arange(5).expand(2, 5), torch.ones(2, 5, dtype=torch.bool), torch.tensor([3, 3]),
                       torch.arange(2), torch.zeros(2, dtype=torch.long))
    with torch.no_grad(), tap(model, read={"resid_post.0": Read(lambda x, m, ctx: seen.append(m.clone()),
                                                                Generated())}) as state:
        state.expect(said)
        model(ids)  # the expected context: tokens 3 and 4 are generated
        model(ids)  # worked out again: a plain text is all prompt
        state.expect(StepContext(said.positions[:1], said.valid[:1], said.prompt_len[:1], said.documents[:1],
                                 said.offsets[:1]))
        model(ids)  # one row: does not fit a batch of two, so ignored
    f, t = False, True
    assert seen[0].tolist() == [[f, f, f, t, t]] * 2
    assert not seen[1].any() and not seen[2].any()
