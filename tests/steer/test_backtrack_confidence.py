"""Backtracking with FASB's confidence-scaled strength: each backtracked row steers at coef * sigmoid(score at the
crossing), and its text equals the kept prefix followed by a continuation steered at exactly that coefficient."""

from __future__ import annotations

import math

import pytest
import torch

from actkit import ActkitError
from actkit.core.generate import generate_ids
from actkit.core.interventions import Add
from actkit.core.positions import From
from actkit.steer import SteeringVector
from actkit.steer.backtrack import Backtracking, backtrack_generate, vector_probe

from backtrack_helpers import RoundTrip, probe_scores
from tiny import DecodingTokenizer

COEF = 3.0


@pytest.mark.parametrize("when", ["above", "below"])
def test_confidence_strength_equals_prefix_then_continuation_at_that_strength(llama, when) -> None:
    tok = RoundTrip()
    g = torch.Generator().manual_seed(1)
    steer = SteeringVector({1: torch.randn(64, generator=g) * 2})
    probe = vector_probe(SteeringVector({2: torch.randn(64, generator=g) * 2}), 2, 0.0)
    prompts = [tok.decode([5, 6, 7, 8, 9]), tok.decode([3, 4]), tok.decode([10, 11, 12, 13]), tok.decode([20])]
    seen = probe_scores(llama, tok, prompts, probe, 10)
    sign = 1.0 if when == "above" else -1.0
    peaks = sorted(max(sign * v for v in s[:-1]) for s in seen)  # the last token is never fed back
    probe.threshold = sign * (peaks[1] + peaks[2]) / 2  # two rows cross it, two never do
    plain = generate_ids(llama, tok, prompts, max_new_tokens=10)
    result = backtrack_generate(llama, tok, prompts, probe, steer, coef=COEF, k=3, max_new_tokens=10, when=when,
                                strength="confidence")
    assert sorted(result.backtracks) == [0, 0, 1, 1]
    for i, prompt in enumerate(prompts):
        if not result.backtracks[i]:
            assert result.ids[i] == plain[i] and result.strengths[i] == []
            continue
        (fired, keep), = result.events[i]
        score = seen[i][fired - 1]  # the crossing token's score (the prefix up to it is the plain run's)
        (strength,) = result.strengths[i]
        assert strength == pytest.approx(COEF / (1 + math.exp(-sign * score)), rel=1e-5)
        assert 0 < strength < COEF
        prefix = result.ids[i][:keep]
        start = prompt + tok.decode(prefix)
        steered = {"resid_post.1": Add(steer.directions[1], strength, From(len(start) - 1))}
        continuation = generate_ids(llama, tok, [start], writes=steered, max_new_tokens=10 - keep)[0]
        assert result.ids[i] == prefix + continuation
        alone = backtrack_generate(llama, tok, [prompt], probe, steer, coef=COEF, k=3, max_new_tokens=10,
                                   when=when, strength="confidence")
        assert alone.ids[0] == result.ids[i] and alone.strengths[0] == pytest.approx([strength])


def test_fixed_strength_reports_the_coefficient_and_bad_strength_is_refused(llama) -> None:
    steer = SteeringVector({1: torch.ones(64)})
    probe = vector_probe(SteeringVector({2: torch.ones(64)}), 2, -1e9)  # every token crosses
    result = backtrack_generate(llama, DecodingTokenizer(), ["abc"], probe, steer, coef=COEF, k=1,
                                max_new_tokens=3)
    assert result.backtracks == [1] and result.strengths == [[COEF]]
    with pytest.raises(ActkitError, match="strength must be"):
        Backtracking(probe, steer, 1, strength="probability")  # type: ignore[arg-type]
