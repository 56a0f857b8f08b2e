"""Layer selection: a ranking row per block, a deterministic split, the chosen blocks."""

from __future__ import annotations

import pytest

from actkit import ActkitError
from actkit.steer import Pair, select_layers
from actkit.steer.layers import score_layer, split_pairs

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
PAIRS = [Pair(f"{w} is a", f"{w} is b") for w in WORDS]  # the contrast sits on the last token


def test_ranking_table_and_choice(llama, tok) -> None:
    table, chosen = select_layers(llama, tok, PAIRS, top=2)
    assert sorted(r["layer"] for r in table) == [0, 1, 2]
    assert [r["rank"] for r in table] == [1, 2, 3]
    assert [r["score"] for r in table] == sorted((r["score"] for r in table), reverse=True)
    assert chosen == sorted(r["layer"] for r in table[:2])
    for row in table:
        assert row["train_pairs"] == 7 and row["held_out_pairs"] == 3
        assert 0.0 <= row["accuracy"] <= 1.0 and -1.0 <= row["consistency"] <= 1.0
        assert row["score"] == pytest.approx((row["accuracy"] + row["consistency"]) / 2)
    assert table[0]["accuracy"] == 1.0  # the last token alone tells the classes apart


def test_split_is_seeded_and_disjoint() -> None:
    train, held = split_pairs(10, 0.3, seed=1)
    assert (train, held) == split_pairs(10, 0.3, seed=1)
    assert len(held) == 3 and not set(train) & set(held) and sorted(train + held) == list(range(10))
    assert [len(part) for part in split_pairs(2, 0.9)] == [1, 1]  # one pair on each side at least
    with pytest.raises(ActkitError, match="at least 2 pairs"):
        split_pairs(1, 0.3)


def test_score_of_a_perfect_direction() -> None:
    import torch

    pos = torch.eye(4)[:3] + torch.tensor([0, 0, 0, 1.0])
    neg = torch.eye(4)[:3]
    row = score_layer(pos, neg, pos, neg)
    assert row["accuracy"] == 1.0 and row["consistency"] == pytest.approx(1.0)


def test_duplicated_pairs_are_counted_once(llama, tok) -> None:
    """Repeats would sit on both sides of the held-out split and make every block look perfect."""
    expected, _ = select_layers(llama, tok, PAIRS[:4])
    with pytest.warns(UserWarning, match=r"36 duplicated pair\(s\) ignored .*4 distinct"):
        table, _ = select_layers(llama, tok, PAIRS[:4] * 10)
    assert table == expected
    assert all(r["train_pairs"] + r["held_out_pairs"] == 4 for r in table)
