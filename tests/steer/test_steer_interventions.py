"""Ablate, Clamp, ablation everywhere, coefficient zero, and conditional steering (CAST) per row."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from actkit import ActkitError, Add, Capture, generate_ids, tap
from actkit.core.interventions import Set
from actkit.steer import (
    Ablate,
    Clamp,
    Conditional,
    SteeringVector,
    ablation_everywhere,
    combine,
    conditional,
    read_activations,
)
from actkit.steer.interventions import ConditionGate

from tiny import build, tokens


class _Wrap(nn.Module):
    """Reference by module surgery: apply `fn` to the wrapped block's output (no hooks)."""

    def __init__(self, inner: nn.Module, fn):
        super().__init__()
        self.inner, self.fn = inner, fn

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return (self.fn(out[0]), *out[1:]) if isinstance(out, tuple) else self.fn(out)


def _golden_ablate(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    r = r.double() / r.double().norm()
    return (x.double() - (x.double() @ r)[..., None] * r).to(x.dtype)


def test_ablate_equals_hand_computation(llama) -> None:
    ids, r = tokens(batch=3, length=6), torch.randn(64)
    plain, ablated = Capture(), Capture()
    with torch.no_grad():
        with tap(llama, read={"resid_post.1": plain}):
            llama(ids)
        with tap(llama, read={"resid_post.1": ablated}, write={"resid_post.1": Ablate(r)}):
            steered = llama(ids).logits
    torch.testing.assert_close(ablated.last, _golden_ablate(plain.last, r), rtol=1e-5, atol=1e-5)
    layers = llama.model.layers
    original = layers[1]
    layers[1] = _Wrap(original, lambda x: _golden_ablate(x, r))
    try:
        with torch.no_grad():
            expected = llama(ids).logits
    finally:
        layers[1] = original
    torch.testing.assert_close(steered, expected, rtol=1e-5, atol=1e-5)


def test_clamp_sets_the_projection_per_row(llama) -> None:
    ids = tokens(batch=2, length=5)
    directions = torch.randn(2, 64)
    values = torch.tensor([3.0, -1.5])
    plain, clamped = Capture(), Capture()
    with torch.no_grad():
        with tap(llama, read={"resid_post.0": plain}):
            llama(ids)
        with tap(llama, read={"resid_post.0": clamped}, write={"resid_post.0": Clamp(directions, values)}):
            llama(ids)
    unit = directions.double() / directions.double().norm(dim=-1, keepdim=True)
    x = plain.last.double()
    expected = x - (x * unit[:, None]).sum(-1, keepdim=True) * unit[:, None] + values.double()[:, None, None] * unit[:, None]
    torch.testing.assert_close(clamped.last.double(), expected, rtol=1e-5, atol=1e-5)
    projections = (clamped.last.double() * unit[:, None]).sum(-1)
    torch.testing.assert_close(projections, values.double()[:, None].expand(2, 5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "qwen2_moe"])
def test_ablation_everywhere_removes_the_direction_from_every_residual(name: str) -> None:
    model, ids, r = build(name), tokens(batch=2, length=6), torch.randn(64)
    caps = {f"resid_post.{i}": Capture() for i in range(3)}
    with torch.no_grad(), tap(model, read=caps, write=ablation_everywhere(model, r)):
        model(ids)
    unit = r / r.norm()
    for cap in caps.values():
        assert (cap.last @ unit).abs().max() < 1e-5
    with torch.no_grad(), tap(model, read=caps):
        model(ids)
    assert max(float((cap.last @ unit).abs().max()) for cap in caps.values()) > 1e-2  # it was there before


def test_coefficient_zero_is_bit_identical(llama, tok) -> None:
    ids = tokens(batch=2, length=6)
    vector = SteeringVector({0: torch.randn(64) * 5, 2: torch.randn(64) * 5}, metadata={"mean_norms": {"0": 3.0, "2": 4.0}})
    with torch.no_grad():
        plain = llama(ids).logits
        for relative in (False, True):
            with tap(llama, write=vector.to_intervention(coef=0.0, relative=relative)):
                assert torch.equal(llama(ids).logits, plain)
    prompts = ["hello there", "hi"]
    base = generate_ids(llama, tok, prompts, max_new_tokens=6)
    assert generate_ids(llama, tok, prompts, writes=vector.to_intervention(coef=0.0), max_new_tokens=6) == base
    assert generate_ids(llama, tok, prompts, writes=vector.to_intervention(coef=8.0), max_new_tokens=6) != base


PROMPTS = ["the quick brown fox", "hello", "zz top!", "a b c d e f g"]


def _condition(model, tok, layer: int = 0):
    """A condition vector and threshold that split PROMPTS into matching and other rows, with a clear margin."""
    acts, _ = read_activations(model, tok, PROMPTS, [layer], read_position="all")
    means = acts[layer]
    condition = means[0] - means.mean(0)
    scores = torch.nn.functional.cosine_similarity(means, condition[None], dim=-1)
    ranked = scores.sort(descending=True).values
    threshold = float(ranked[1:3].mean())
    assert float(ranked[1] - ranked[2]) > 1e-3
    return condition, threshold, scores > threshold


def _padded(tok, prompts):
    rows = [tok(p)["input_ids"] for p in prompts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), 1
    return ids, mask


def test_conditional_steers_matching_rows_only(llama, tok) -> None:
    condition, threshold, matches = _condition(llama, tok)
    assert 0 < int(matches.sum()) < len(PROMPTS)
    vector = torch.randn(64) * 4
    cond = Conditional(condition, threshold, Add(vector), layer=0)
    ids, mask = _padded(tok, PROMPTS)
    with torch.no_grad():
        plain = llama(ids, attention_mask=mask).logits
        with tap(llama, write=cond.writes("resid_post.1")):
            steered = llama(ids, attention_mask=mask).logits
        with tap(llama, write={"resid_post.1": Add(vector)}):
            everywhere = llama(ids, attention_mask=mask).logits
    assert torch.equal(cond.gate.decision, matches)
    for r in range(len(PROMPTS)):
        real = mask[r].bool()
        if matches[r]:
            torch.testing.assert_close(steered[r], everywhere[r], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(steered[r][real], plain[r][real])
        else:
            assert torch.equal(steered[r], plain[r])  # untouched, bit for bit
        with torch.no_grad():  # and equal to the row run on its own
            alone = llama(torch.tensor([tok(PROMPTS[r])["input_ids"]])).logits[0]
            if matches[r]:
                with tap(llama, write={"resid_post.1": Add(vector)}):
                    alone = llama(torch.tensor([tok(PROMPTS[r])["input_ids"]])).logits[0]
        torch.testing.assert_close(steered[r][real], alone, rtol=1e-4, atol=1e-5)


def test_conditional_generation_with_kv_cache_keeps_the_prompt_decision(llama, tok) -> None:
    condition, threshold, matches = _condition(llama, tok)
    vector = SteeringVector({1: torch.randn(64) * 4, 2: torch.randn(64) * 4})
    writes = conditional(vector.to_intervention(coef=1.0), condition, threshold, layer=0)
    batched = generate_ids(llama, tok, PROMPTS, writes=writes, max_new_tokens=6)
    for r, prompt in enumerate(PROMPTS):
        alone = generate_ids(llama, tok, [prompt], writes=vector.to_intervention() if matches[r] else None,
                             max_new_tokens=6)
        assert batched[r] == alone[0], (r, bool(matches[r]))
    unsteered = generate_ids(llama, tok, PROMPTS, max_new_tokens=6)
    assert [a != b for a, b in zip(batched, unsteered, strict=True)] == matches.tolist()


def test_condition_after_the_steered_site_is_an_error(llama) -> None:
    cond = Conditional(torch.randn(64), 0.0, Add(torch.randn(64)), layer=2)
    with pytest.raises(ActkitError, match="condition site must come before"), torch.no_grad():
        with tap(llama, write=cond.writes("resid_post.0")):
            llama(tokens())


def test_combine_merges_in_order() -> None:
    a, b, c = Add(torch.ones(64)), Ablate(torch.ones(64)), Add(torch.zeros(64))
    merged = combine({"resid_post.1": a}, None, {"resid_post.1": [b], "resid_pre.0": c})
    assert merged == {"resid_post.1": [a, b], "resid_pre.0": [c]}
    with pytest.raises(ActkitError, match="not an Intervention"):
        combine({"resid_post.1": "nope"})


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(("build_it", "what"), [
    (lambda: Add(torch.ones(64), coef=NAN), "coefficient"),
    (lambda: Add(torch.ones(64), coef=INF), "coefficient"),
    (lambda: Add(torch.ones(64), coef=torch.tensor([1.0, -INF])), "coefficient"),  # per row
    (lambda: Add(torch.tensor([NAN] + [0.0] * 63)), "vector"),
    (lambda: Add(torch.ones(2, 64).index_fill(1, torch.tensor([5]), INF)), "vector"),  # per row
    (lambda: Set(torch.full((1, 4, 64), NAN)), "value to set"),
    (lambda: Clamp(torch.ones(64), NAN), "clamp value"),
    (lambda: Clamp(torch.ones(64), torch.tensor([0.0, INF])), "clamp value"),
    (lambda: Ablate(torch.tensor([NAN] + [1.0] * 63)), "finite and non-zero"),
    (lambda: ConditionGate(torch.ones(64), NAN), "condition threshold"),
])
def test_non_finite_numbers_are_refused_when_an_intervention_is_built(build_it, what: str) -> None:
    with pytest.raises(ActkitError, match=what):
        build_it()


def test_a_vector_whose_norm_overflows_is_refused() -> None:
    with pytest.raises(ActkitError, match="layer 2 has a norm too large for float32"):
        SteeringVector({2: torch.full((64,), 1e30)})
