"""Dynamic composition and backtracking: per row in a batch equals one row alone; a backtracked generation equals
the kept prefix followed by a steered continuation generated from it."""

from __future__ import annotations

import pytest
import torch

from actkit import ActkitError
from actkit.core.generate import generate_ids
from actkit.core.interventions import Add
from actkit.core.positions import From
from actkit.steer import SteeringVector
from actkit.steer.backtrack import Backtracking, VectorProbe, backtrack_generate, vector_probe
from actkit.steer.dynamic import dynamic_generate, truncated_kl

from backtrack_helpers import RoundTrip, probe_scores
from tiny import DecodingTokenizer


def _vectors(seed: int = 0) -> tuple[SteeringVector, SteeringVector]:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({1: torch.randn(64, generator=g) * 2}), SteeringVector({2: torch.randn(64, generator=g) * 2})


def test_truncated_kl_by_hand() -> None:
    p = torch.tensor([[2.0, 1.0, 0.0, -5.0]])
    q = torch.tensor([[0.0, 2.0, 1.0, -5.0]])
    keep = torch.tensor([True, True, True, False])  # top-p 0.9 of each: the first three tokens in both
    lp = torch.log_softmax(p[0][keep], -1)
    lq = torch.log_softmax(q[0][keep], -1)
    assert torch.allclose(truncated_kl(p, q, 0.9), (lp.exp() * (lp - lq)).sum().reshape(1), atol=1e-6)
    assert float(truncated_kl(p, p, 0.9)) == 0.0


def test_dynamic_rows_in_a_batch_match_one_row_runs(llama) -> None:
    tok = DecodingTokenizer()
    prompts = ["the quick brown fox", "hi", "steering vectors"]
    vectors = _vectors()
    batched = dynamic_generate(llama, tok, prompts, list(vectors), alpha_max=3.0, max_new_tokens=6)
    assert all(len(a) == len(ids) for a, ids in zip(batched.alphas, batched.ids, strict=True))
    assert any(value > 0.01 for row in batched.alphas for step in row for value in step)
    assert all(0.0 <= value <= 3.0 for row in batched.alphas for step in row for value in step)
    for i, prompt in enumerate(prompts):
        alone = dynamic_generate(llama, tok, [prompt], list(vectors), alpha_max=3.0, max_new_tokens=6)
        assert alone.ids[0] == batched.ids[i]
        assert torch.allclose(torch.tensor(alone.alphas[0]), torch.tensor(batched.alphas[i]), atol=1e-4)
    plain = generate_ids(llama, tok, prompts, max_new_tokens=6)
    assert batched.ids != plain  # the composition steers


def test_dynamic_bad_input(llama) -> None:
    tok = DecodingTokenizer()
    with pytest.raises(ActkitError, match="at least one steering vector"):
        dynamic_generate(llama, tok, ["hi"], [])
    with pytest.raises(ActkitError, match="alpha_max"):
        dynamic_generate(llama, tok, ["hi"], list(_vectors()), alpha_max=[1.0])


def test_backtracked_generation_equals_prefix_then_steered_continuation(llama) -> None:
    tok = RoundTrip()
    steer, other = _vectors(1)
    prompts = [tok.decode([5, 6, 7, 8, 9]), tok.decode([3, 4]), tok.decode([10, 11, 12, 13]), tok.decode([20])]
    probe = vector_probe(other, 2, 0.0)
    scores = probe_scores(llama, tok, prompts, probe, 10)
    peaks = sorted(max(s[1:]) for s in scores)
    probe.threshold = (peaks[1] + peaks[2]) / 2  # two rows cross it, two never do
    result = backtrack_generate(llama, tok, prompts, probe, steer, coef=1.5, k=3, max_new_tokens=10)
    plain = generate_ids(llama, tok, prompts, max_new_tokens=10)
    assert sorted(result.backtracks) == [0, 0, 1, 1]
    for i, prompt in enumerate(prompts):
        if not result.backtracks[i]:
            assert result.ids[i] == plain[i]
            continue
        (fired, keep), = result.events[i]
        assert keep == max(0, fired - 3)
        prefix = result.ids[i][:keep]
        assert prefix == plain[i][:keep]
        start = prompt + tok.decode(prefix)
        steered = {"resid_post.1": Add(steer.directions[1], 1.5, From(len(start) - 1))}
        continuation = generate_ids(llama, tok, [start], writes=steered, max_new_tokens=10 - keep)[0]
        assert result.ids[i] == prefix + continuation
        assert result.ids[i] != plain[i]
        alone = backtrack_generate(llama, tok, [prompt], probe, steer, coef=1.5, k=3, max_new_tokens=10)
        assert alone.ids[0] == result.ids[i] and alone.backtracks == [1]


def test_backtracking_bad_input(llama) -> None:
    steer, _ = _vectors()
    with pytest.raises(ActkitError, match="no 'site'"):
        Backtracking(object(), steer, 1)
    probe = VectorProbe("resid_post.1", torch.ones(64), 0.0)
    with pytest.raises(ActkitError, match="k"):
        Backtracking(probe, steer, 1, k=0)
    with pytest.raises(ActkitError, match="reduce must be"):
        Backtracking(probe, steer, 1, reduce="median")  # type: ignore[arg-type]
    with pytest.raises(ActkitError, match="non-zero"):
        VectorProbe("resid_post.1", torch.zeros(64), 0.0)
    with pytest.raises(ActkitError, match="no direction at block 0"):
        vector_probe(steer, 0, 0.0)
