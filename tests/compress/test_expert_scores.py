"""Expert scores, the kept count, selection with protection, and merge groups, on hand-made statistics."""

from __future__ import annotations

import pytest
import torch

from actkit.compress.experts import (
    ExpertStats,
    kept_count,
    merge_groups,
    parse_experts,
    plan_experts,
    score_experts,
    select_experts,
)
from actkit.errors import ActkitError


def _stats(routed, gate_sum, norm_sum, gated, gram=None, probs=None) -> ExpertStats:
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    e = len(routed)
    return ExpertStats(
        layers=[3], num_experts=e, top_k=2, renormalized=[True], tokens=int(sum(routed) / 2), every_token=False,
        routed=t(routed), observed=t(routed), gate_sum=t(gate_sum), prob_sum=t(probs or gate_sum),
        norm_sum=t(norm_sum), gated_norm_sum=t(gated), prob_norm_sum=t(gated),
        logit_gram=torch.eye(e, dtype=torch.float64)[None] if gram is None else torch.tensor([gram], dtype=torch.float64),
    )


# Expert 0: routed often, small outputs. Expert 1: rare, large outputs and gates. Expert 2: never routed.
# Expert 3: routed often, large outputs, small gates.
STATS = _stats(routed=[10, 2, 0, 8], gate_sum=[5.0, 1.8, 0.0, 1.6], norm_sum=[10.0, 20.0, 0.0, 40.0],
               gated=[5.0, 18.0, 0.0, 8.0])


def test_scores_follow_their_definitions() -> None:
    reap = score_experts(STATS, "reap")[0].tolist()
    assert reap == pytest.approx([0.5, 9.0, 0.0, 1.0])  # mean over routed tokens of g * ||f||
    assert score_experts(STATS, "ean")[0].tolist() == [10.0, 20.0, 0.0, 40.0]  # sum of ||f||
    assert score_experts(STATS, "frequency")[0].tolist() == [10.0, 2.0, 0.0, 8.0]
    assert score_experts(STATS, "reap", reap_gate="softmax")[0].tolist() == pytest.approx(reap)
    keep = lambda m: select_experts(score_experts(STATS, m), [3], 2)[3]  # noqa: E731
    assert keep("reap") == [1, 3] and keep("ean") == [1, 3] and keep("frequency") == [0, 3]
    with pytest.raises(ActkitError, match="unknown scoring method"):
        score_experts(STATS, "wanda")
    with pytest.raises(ActkitError, match="reap_gate"):
        score_experts(STATS, "reap", reap_gate="sigmoid")


def test_protected_experts_are_kept_and_ties_go_to_the_lower_index() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert select_experts(scores, [3], 2) == {3: [0, 1]}
    assert select_experts(scores, [3], 2, protect=[(3, 3)]) == {3: [0, 3]}
    with pytest.raises(ActkitError, match="not an MoE block"):
        select_experts(scores, [3], 2, protect=[(1, 0)])
    with pytest.raises(ActkitError, match="does not exist"):
        select_experts(scores, [3], 2, protect=[(3, 9)])
    with pytest.raises(ActkitError, match="keeps only 2"):
        select_experts(scores, [3], 2, protect=[(3, 0), (3, 1), (3, 2)])


def test_kept_count_fractions_counts_and_bad_input() -> None:
    assert kept_count(0.75, 8, 2) == 6
    assert kept_count(0.5, 8, 2) == 4
    assert kept_count(1.0, 8, 2) == 8
    assert kept_count(3, 8, 2) == 3
    assert kept_count(1, 8, 1) == 1 and kept_count(1.0, 8, 1) == 8  # an int counts experts, a float is a fraction
    with pytest.raises(ActkitError, match="only 8"):
        kept_count(9, 8, 2)
    with pytest.raises(ActkitError, match="fewer than the 2"):
        kept_count(0.1, 8, 2)
    with pytest.raises(ActkitError, match="fewer than the 2"):
        kept_count(1, 8, 2)
    for bad in (0, -0.5, 2.5, float("nan"), 3.0 + 1):
        with pytest.raises(ActkitError, match="--keep"):
            kept_count(bad, 8, 2)


def test_merge_groups_by_router_similarity_with_frequency_weights() -> None:
    # Logit columns: 0 and 1 alike, 2 and 3 alike; 0 and 3 are the most routed, so they are dominant.
    cols = torch.tensor([[1.0, 0.9, 0.0, 0.1], [0.0, 0.1, 1.0, 0.8]], dtype=torch.float64)
    gram = (cols.T @ cols).tolist()
    stats = _stats(routed=[6, 2, 1, 3], gate_sum=[1.0] * 4, norm_sum=[1.0] * 4, gated=[1.0] * 4, gram=gram)
    groups = merge_groups(stats, 2)[3]
    assert [[e for e, _ in g] for g in groups] == [[0, 1], [3, 2]]
    assert [w for _, w in groups[0]] == pytest.approx([0.75, 0.25])
    assert [w for _, w in groups[1]] == pytest.approx([0.75, 0.25])
    protected = merge_groups(stats, 2, protect=[(3, 2)])[3]
    assert [g[0][0] for g in protected] == [0, 2]
    plan = plan_experts(stats, "merge", 0.5)
    assert plan.keep == {3: [0, 3]} and plan.layers(4)[0]["removed"] == [1, 2]
    assert plan.layers(4)[0]["groups"][1] == {"into": 3, "members": [3, 2], "weights": [0.75, 0.25]}


def test_an_unrouted_group_is_averaged_uniformly() -> None:
    cols = torch.tensor([[1.0, 0.0, 0.1, 0.0], [0.0, 1.0, 0.9, 1.0]], dtype=torch.float64)
    stats = _stats(routed=[4, 0, 0, 0], gate_sum=[1.0] * 4, norm_sum=[1.0] * 4, gated=[1.0] * 4,
                   gram=(cols.T @ cols).tolist())
    groups = merge_groups(stats, 2)[3]
    assert groups[0] == [(0, 1.0)]
    assert [e for e, _ in groups[1]] == [1, 2, 3]
    assert [w for _, w in groups[1]] == pytest.approx([1 / 3] * 3)


def test_parse_experts() -> None:
    assert parse_experts("1:3, 2:0,") == [(1, 3), (2, 0)]
    for bad in ("1", "a:b", "1:2:3", "-1:0", " , "):
        with pytest.raises(ActkitError, match="LAYER:EXPERT"):
            parse_experts(bad)
