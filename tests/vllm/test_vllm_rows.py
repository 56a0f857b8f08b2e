"""The plugin's engine-neutral part (`actkit.vllm._rows`), without vLLM: runs in the main suite too.

A stand-in for vLLM's decoder blocks (they return ``(hidden, residual)``, the stream being their sum, and their
``post_attention_layernorm`` returns the residual) runs a flattened batch of three requests: a prompt chunk, a
decode token and an unsteered request, plus a padding row. Each request's rows must equal the same request run
alone with the writes applied to the stream directly (an independent computation), and the unsteered and
padding rows must come back bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from actkit.core.hooks import tap
from actkit.core.interventions import Add
from actkit.core.positions import Generated, Prompt, StepContext
from actkit.steer import Ablate
from actkit.vllm._rows import Blocks, Scheduled, row_frame, step_context, step_writes

D = 8


class AddNorm(nn.Module):
    """Like vLLM's fused add-norm: returns (normalised h + r, h + r)."""

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = h + r
        return s / s.norm(dim=-1, keepdim=True), s


class SplitBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.post_attention_layernorm = AddNorm()
        self.mlp = nn.Linear(D, D)

    def forward(self, h: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, r = self.post_attention_layernorm(h, r)
        return torch.tanh(self.mlp(x)), r


class Config:
    model_type = "llama"
    hidden_size = D
    num_hidden_layers = 3
    vocab_size = 11


def run_split(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    h, r = x, torch.zeros_like(x)
    for block in layers:
        h, r = block(h, r)
    return h + r


def run_alone(layers: nn.ModuleList, x: torch.Tensor, writes: dict[int, list], positions: list[int],
              prompt_len: int) -> torch.Tensor:
    """The reference: the stream as one tensor, each block's writes applied to it directly."""
    pos = torch.tensor([positions])
    ctx = StepContext(pos, torch.ones_like(pos, dtype=torch.bool), torch.tensor([prompt_len]), torch.zeros(1),
                      torch.zeros(1))
    stream = x
    for i, block in enumerate(layers):
        h, r = block(stream, torch.zeros_like(stream))
        s = (h + r)[None]
        for w in writes.get(i, []):
            s = w(s, w.positions.mask(ctx), ctx)
        stream = s[0]
    return stream


def test_each_request_gets_its_writes_on_its_rows_only() -> None:
    torch.manual_seed(0)
    layers = nn.ModuleList([SplitBlock() for _ in range(3)])
    v1, v2, d = torch.randn(D), torch.randn(D), torch.randn(D)
    a = {"resid_post.0": [Add(v1, coef=2.0)], "resid_post.1": [Ablate(d), Add(v2, coef=-1.0, positions=Prompt())]}
    b = {"resid_post.2": [Add(v1, coef=3.0, positions=Generated())], "resid_post.1": [Ablate(d, Generated())]}
    requests = [Scheduled(0, 4, 8, a), Scheduled(4, 5, 7, b), Scheduled(5, 9, 5, None)]
    x = torch.randn(10, D)
    positions = torch.tensor([5, 6, 7, 8, 10, 0, 1, 2, 3, 0])  # a: prompt 5..7, generated 8; b: decode; pad
    plain = run_split(layers, x)

    writes, hidden = step_writes(requests, 10, range(3))
    with tap(Blocks(Config(), layers), write=writes, read={k: h.capture for k, h in hidden.items()}) as state:
        state.context = step_context(positions, row_frame(10, requests))
        out = run_split(layers, x)

    expect_a = run_alone(layers, x[0:4], {0: a["resid_post.0"], 1: a["resid_post.1"]}, [5, 6, 7, 8], 8)
    expect_b = run_alone(layers, x[4:5], {1: b["resid_post.1"], 2: b["resid_post.2"]}, [10], 7)
    torch.testing.assert_close(out[0:4], expect_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[4:5], expect_b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0:5], plain[0:5], atol=1e-3)  # the writes did something
    assert torch.equal(out[5:], plain[5:])  # the unsteered request and the padding row, bit for bit


def test_writes_at_blocks_another_rank_holds_are_left_to_it() -> None:
    v = torch.randn(D)
    requests = [Scheduled(0, 2, 2, {"resid_post.0": [Add(v)], "resid_post.5": [Ablate(v)]})]
    writes, hidden = step_writes(requests, 2, range(0, 3))
    assert list(writes) == ["module:layers.0:output.1"] and hidden == {}


def test_the_context_marks_padding_and_each_rows_prompt() -> None:
    ctx = step_context(torch.tensor([3, 4, 9, 0]), row_frame(4, [Scheduled(0, 2, 6, None), Scheduled(2, 3, 5, None)]))
    assert ctx.positions[:, 0].tolist() == [3, 4, 9, -1]
    assert ctx.valid[:, 0].tolist() == [True, True, True, False]
    assert ctx.prompt_len.tolist() == [6, 6, 5, 0]
    assert Generated().mask(ctx)[:, 0].tolist() == [False, False, True, False]


def test_requests_with_the_same_writes_share_one_write_with_the_same_result() -> None:
    torch.manual_seed(1)
    layers = nn.ModuleList([SplitBlock() for _ in range(2)])
    w = {"resid_post.1": [Ablate(torch.randn(D), Generated()), Add(torch.randn(D), coef=2.0)]}
    x, positions = torch.randn(5, D), torch.tensor([0, 1, 2, 9, 4])

    def steered(requests: list[Scheduled]) -> tuple[torch.Tensor, int]:
        writes, hidden = step_writes(requests, 5, range(2))
        with tap(Blocks(Config(), layers), write=writes, read={k: h.capture for k, h in hidden.items()}) as st:
            st.context = step_context(positions, row_frame(5, requests))
            return run_split(layers, x), len(writes["module:layers.1:output.1"])

    shared, n_shared = steered([Scheduled(0, 3, 2, w), Scheduled(3, 4, 6, w), Scheduled(4, 5, 5, None)])
    apart, n_apart = steered([Scheduled(0, 3, 2, w), Scheduled(3, 4, 6, dict(w)), Scheduled(4, 5, 5, None)])
    assert (n_shared, n_apart) == (2, 4)
    assert torch.equal(shared, apart)


def test_an_add_at_every_position_is_formed_once_with_the_bits_of_add() -> None:
    torch.manual_seed(2)
    add = Add(torch.randn(D), coef=3.0)
    writes = {"resid_post.1": [add]}
    positions = torch.tensor([0, 1, 2, 7, 8, 0])
    for n_rows, requests in [(5, [Scheduled(0, 3, 3, writes), Scheduled(3, 5, 7, writes)]),  # one steering, all rows
                             (5, [Scheduled(0, 3, 3, writes), Scheduled(3, 5, 7, None)]),  # some rows
                             (6, [Scheduled(0, 3, 3, writes), Scheduled(3, 5, 7, writes)])]:  # a padding row
        (value,) = step_writes(requests, n_rows, range(2))[0]["module:layers.1:output.1"]
        ctx = step_context(positions[:n_rows], row_frame(n_rows, requests))
        x = torch.randn(n_rows, 1, D)
        rows = torch.tensor([r < 3 or writes is requests[1].writes for r in range(n_rows)]) & ctx.valid[:, 0]
        expected = torch.where(rows[:, None, None], add(x, add.positions.mask(ctx), ctx), x)
        assert torch.equal(value(x, value.positions.mask(ctx), ctx), expected)
        assert (type(value) is Add) == (n_rows == 6)  # formed once unless a row is padding
