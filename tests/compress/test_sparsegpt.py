"""SparseGPT: lower reconstruction error than magnitude and Wanda at equal sparsity, exact masks, identity at 0."""

from __future__ import annotations

import pytest
import torch

from actkit.compress.masks import NMPattern, make_mask
from actkit.compress.scores import magnitude, wanda
from actkit.compress.sparsegpt import sparsegpt
from actkit.errors import ActkitError


def layer(rows: int = 32, cols: int = 256, tokens: int = 1024, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and correlated inputs with a few large features, as real layer inputs have."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(tokens, cols, generator=g) @ mixing
    x[:, ::16] *= 8.0
    return torch.randn(rows, cols, generator=g), x


def error(w: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - pruned) @ x.T).norm())


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.double().T @ x.double() / x.shape[0]


def masked(w: torch.Tensor, scores: torch.Tensor, pattern: NMPattern | None, dim: int | None) -> torch.Tensor:
    return w * make_mask(scores, 0.5, pattern, dim)


@pytest.mark.parametrize("pattern", [None, NMPattern(2, 4), NMPattern(4, 8)])
def test_lower_reconstruction_error_than_magnitude_and_wanda(pattern: NMPattern | None) -> None:
    w, x = layer()
    norms = x.norm(dim=0)
    ours = error(w, sparsegpt(w, hessian(x), 0.5, pattern), x)
    by_magnitude = error(w, masked(w, magnitude(w), pattern, -1 if pattern else None), x)
    by_wanda = error(w, masked(w, wanda(w, norms), pattern, -1), x)
    assert ours < 0.9 * by_wanda, (ours, by_wanda)
    assert ours < 0.9 * by_magnitude, (ours, by_magnitude)
    assert by_wanda < by_magnitude  # the large input features matter, and Wanda sees them


def test_exact_sparsity_per_block_and_exact_nm() -> None:
    w, x = layer(cols=320)  # two full blocks of 128 and one of 64
    out = sparsegpt(w, hessian(x), 0.5)
    for start in (0, 128, 256):
        block = out[:, start:start + 128]
        assert int((block == 0).sum()) == block.numel() // 2
    out = sparsegpt(w, hessian(x), 0.5, NMPattern(2, 4))
    assert ((out != 0).reshape(32, 80, 4).sum(-1) == 2).all()
    assert out.dtype == w.dtype


def test_diagonal_hessian_is_wanda_within_blocks_without_updates() -> None:
    """Uncorrelated inputs: the OBS saliency is (|w| * ||x||)^2 up to dampening and nothing is compensated."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 128, generator=g)
    h = torch.diag(torch.rand(128, generator=g) + 0.5).double()
    out = sparsegpt(w, h, 0.5, dampening=0.0)
    expected = make_mask(w.abs() * h.diagonal().sqrt().float()[None, :], 0.5, None, None)
    assert torch.equal(out != 0, expected)
    assert torch.equal(out[expected], w[expected])


def test_sparsity_zero_is_the_identity_bit_for_bit() -> None:
    w, x = layer(cols=192)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(sparsegpt(w.to(dtype), hessian(x), 0.0), w.to(dtype))


def test_dead_inputs_do_not_break_the_factorization() -> None:
    w, x = layer(cols=64)
    x[:, 10] = 0.0
    out = sparsegpt(w, hessian(x), 0.5)
    assert torch.isfinite(out).all() and int((out == 0).sum()) == w.numel() // 2


def test_bad_input() -> None:
    w, x = layer(cols=64)
    with pytest.raises(ActkitError, match=r"needs \(64, 64\)"):
        sparsegpt(w, torch.eye(32), 0.5)
    with pytest.raises(ActkitError, match="multiple of M"):
        sparsegpt(w, hessian(x), 0.5, NMPattern(2, 4), block_size=6)
    with pytest.raises(ActkitError, match="not positive definite"):
        sparsegpt(w, -torch.eye(64), 0.5, dampening=0.0)
    with pytest.raises(ActkitError, match=r"\[0, 1\)"):
        sparsegpt(w, hessian(x), 1.0)
