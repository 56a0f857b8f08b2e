"""Keep-masks: exact counts per comparison group, exact N:M patterns, the lowest scores go, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from actkit.compress.masks import (
    NMPattern,
    check_divisible,
    make_mask,
    nm_mask,
    parse_pattern,
    resolve_sparsity,
    unstructured_mask,
)
from actkit.errors import ActkitError


def scores(rows: int = 6, cols: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.6, 0.99])
def test_per_row_prunes_exactly_the_lowest_of_each_row(sparsity: float) -> None:
    s = scores()
    keep = unstructured_mask(s, sparsity, dim=-1)
    k = math.floor(sparsity * s.shape[1])
    for row in range(s.shape[0]):
        pruned = (~keep[row]).nonzero().flatten().tolist()
        assert sorted(pruned) == sorted(s[row].argsort()[:k].tolist())


def test_per_column_and_whole_matrix_groups() -> None:
    s = scores(8, 5)
    keep = unstructured_mask(s, 0.5, dim=0)
    assert ((~keep).sum(dim=0) == 4).all()
    for col in range(5):
        assert set((~keep[:, col]).nonzero().flatten().tolist()) == set(s[:, col].argsort()[:4].tolist())
    whole = unstructured_mask(s, 0.3, dim=None)
    k = math.floor(0.3 * s.numel())
    assert int((~whole).sum()) == k
    assert float(s[~whole].max()) < float(s[whole].min())


def test_sparsity_zero_keeps_everything() -> None:
    s = scores()
    for dim in (-1, 0, None):
        assert unstructured_mask(s, 0.0, dim=dim).all()


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4)])
def test_nm_keeps_the_top_n_of_every_m_consecutive_inputs(text: str, n: int, m: int) -> None:
    pattern = parse_pattern(text)
    assert pattern == NMPattern(n, m) and math.isclose(pattern.sparsity, 1 - n / m)
    s = scores(5, 24)
    keep = nm_mask(s, pattern)
    groups = keep.reshape(5, 24 // m, m)
    assert (groups.sum(-1) == n).all()
    top = s.reshape(5, 24 // m, m).topk(n, dim=-1).indices
    assert torch.equal(torch.zeros_like(groups).scatter_(-1, top, True), groups)


def test_nm_along_the_output_dimension() -> None:
    s = scores(16, 3)
    keep = make_mask(s, 0.5, NMPattern(2, 4), dim=0)
    assert (keep.T.reshape(3, 4, 4).sum(-1) == 2).all()
    assert torch.equal(keep, nm_mask(s.T.contiguous(), NMPattern(2, 4)).T)


def test_ties_break_by_position() -> None:
    keep = unstructured_mask(torch.ones(2, 4), 0.5)
    assert keep.tolist() == [[False, False, True, True]] * 2


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), True])
def test_sparsity_outside_zero_one(bad: float) -> None:
    with pytest.raises(ActkitError, match=r"\[0, 1\)"):
        resolve_sparsity(bad, None)


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", "2-4", "a:b", "2:4:8"])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(ActkitError, match="N:M|smaller than M"):
        parse_pattern(bad)


def test_pattern_and_sparsity_must_agree() -> None:
    assert resolve_sparsity(None, NMPattern(2, 4)) == 0.5
    assert resolve_sparsity(0.5, NMPattern(4, 8)) == 0.5
    with pytest.raises(ActkitError, match="means sparsity 0.5"):
        resolve_sparsity(0.6, NMPattern(2, 4))
    with pytest.raises(ActkitError, match="give a sparsity"):
        resolve_sparsity(None, None)


def test_dimension_not_divisible_by_m() -> None:
    with pytest.raises(ActkitError, match=r"layers.0.mlp: its input dimension 10 is not divisible by M=4"):
        check_divisible((6, 10), NMPattern(2, 4), -1, "layers.0.mlp")
    with pytest.raises(ActkitError, match="output dimension 6"):
        check_divisible((6, 8), NMPattern(2, 4), 0, "w")
    with pytest.raises(ActkitError, match="not divisible"):
        nm_mask(scores(3, 10), NMPattern(2, 4))
