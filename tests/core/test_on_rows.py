"""OnRows: an intervention restricted to some rows of a batch, against a hand computation."""

from __future__ import annotations

import pytest
import torch

from actkit import ActkitError, Add, At, Capture, Generated, tap
from actkit.core.interventions import OnRows
from actkit.core.positions import StepContext

from tiny import build, tokens


def _context(batch: int, length: int, prompt_len: list[int]) -> StepContext:
    positions = torch.arange(length).expand(batch, length)
    rows = torch.arange(batch)
    return StepContext(positions, torch.ones(batch, length, dtype=torch.bool), torch.tensor(prompt_len), rows,
                       torch.zeros_like(rows))


def test_only_the_chosen_rows_change_by_hand() -> None:
    x = torch.randn(3, 5, 4)
    ctx = _context(3, 5, [2, 3, 4])
    v = torch.randn(4)
    inner = Add(v, coef=torch.tensor([2.0]), positions=Generated())  # built for one row: a (1,) coefficient
    write = OnRows(inner, torch.tensor([False, True, False]))
    out = write(x, write.positions.mask(ctx), ctx)
    expected = x.clone()
    expected[1, 3:] += 2.0 * v  # row 1's prompt is 3 tokens: positions 3 and 4 are generated
    assert torch.equal(out, expected)
    assert torch.equal(write.positions.mask(ctx), torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 5]))
    assert torch.equal(write.edit(x, ctx)[[0, 2]], x[[0, 2]])


def test_inner_sees_its_rows_as_the_whole_batch() -> None:
    x = torch.randn(4, 3, 2)
    ctx = _context(4, 3, [3, 3, 3, 3])
    write = OnRows(Add(torch.ones(2), positions=At([[0], [2]])), torch.tensor([True, False, False, True]))
    out = write(x, write.positions.mask(ctx), ctx)
    expected = x.clone()
    expected[0, 0] += 1
    expected[3, 2] += 1
    assert torch.equal(out, expected)
    assert torch.equal(out[1:3], x[1:3])


def test_in_a_model_the_other_rows_are_bit_for_bit_unchanged() -> None:
    model = build("llama")
    ids = tokens(batch=3, length=6)
    base, steered = Capture(), Capture()
    with torch.inference_mode():
        with tap(model, read={"logits": base}):
            model(input_ids=ids)
        write = OnRows(Add(torch.randn(64) * 5), torch.tensor([False, False, True]))
        with tap(model, read={"logits": steered}, write={"resid_post.1": write}):
            model(input_ids=ids)
    assert torch.equal(steered.last[:2], base.last[:2])
    assert not torch.allclose(steered.last[2], base.last[2])


def test_bad_rows_are_errors() -> None:
    with pytest.raises(ActkitError, match="bool"):
        OnRows(Add(torch.ones(2)), torch.tensor([0, 1]))
    write = OnRows(Add(torch.ones(2)), torch.tensor([True, False]))
    with pytest.raises(ActkitError, match="2 rows but the batch has 3"):
        write.positions.mask(_context(3, 2, [1, 1, 1]))
