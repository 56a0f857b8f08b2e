"""The sparse CPU path equals the masked dense product: one matrix, and a whole model decoding token by token."""

from __future__ import annotations

import pytest
import torch

from actkit.compress.activation import activation_sparsity, calibrate_teal_batches, plan_activation_sparsity
from actkit.compress.sparse_decode import SparseDecoder, sparse_decode, sparsity_for
from actkit.compress.sparse_linear import KERNELS, SparseMatvec
from actkit.errors import ActkitError

import tiny


def masked_dense(weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The reference: zero every entry of x outside idx, then the ordinary dense product."""
    kept = torch.zeros_like(x)
    kept[idx] = x[idx]
    return torch.nn.functional.linear(kept, weight, bias)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """The bag kernel splits the kept rows into several bags when torch has more than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("keep", [0, 1, 3, 37, 96])
def test_matvec_equals_the_masked_dense_product(kernel, keep, threads) -> None:
    g = torch.Generator().manual_seed(keep)
    weight = torch.randn(80, 96, generator=g)
    bias = torch.randn(80, generator=g)
    original = weight.clone()
    op = SparseMatvec(weight, bias, kernel=kernel)
    x = torch.randn(96, generator=g)
    idx = torch.randperm(96, generator=g)[:keep].sort().values
    got = op(idx, x[idx])
    assert got.shape == (80,) and got.dtype == torch.float32
    torch.testing.assert_close(got, masked_dense(weight, bias, idx, x), rtol=1e-5, atol=1e-5)
    assert torch.equal(weight, original) and op.table.data_ptr() != weight.data_ptr()


def test_bfloat16_tables_are_close_but_not_exact() -> None:
    g = torch.Generator().manual_seed(0)
    weight, x = torch.randn(64, 128, generator=g), torch.randn(128, generator=g)
    idx = torch.arange(0, 128, 2)
    exact = masked_dense(weight, None, idx, x)
    op = SparseMatvec(weight, dtype=torch.bfloat16)
    assert op.kernel == "bag"
    got = op(idx, x[idx])
    assert 0 < torch.linalg.vector_norm(got - exact) / torch.linalg.vector_norm(exact) < 1e-2
    with pytest.raises(ActkitError, match="accumulates"):
        SparseMatvec(weight, dtype=torch.bfloat16, kernel="coo")


def test_autotune_picks_a_kernel_whose_product_is_right() -> None:
    g = torch.Generator().manual_seed(3)
    weight, bias, x = torch.randn(32, 48, generator=g), torch.randn(32, generator=g), torch.randn(48, generator=g)
    op = SparseMatvec(weight, bias)
    assert op.kernel in KERNELS
    idx = torch.tensor([0, 5, 6, 20, 47])
    torch.testing.assert_close(op(idx, x[idx]), masked_dense(weight, bias, idx, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(op(idx, x[idx]), masked_dense(weight, None, idx, x))


def test_bad_weights_and_kernels_are_refused() -> None:
    with pytest.raises(ActkitError, match="2-D"):
        SparseMatvec(torch.randn(8))
    with pytest.raises(ActkitError, match="unknown sparse kernel"):
        SparseMatvec(torch.randn(4, 4), kernel="gather")
    with pytest.raises(ActkitError, match="floating"):
        SparseMatvec(torch.randn(4, 4), dtype=torch.int32)


def decode_logits(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits of a prefill of ids[:, :-steps] and then `steps` single-token KV-cache decode steps."""
    with torch.inference_mode():
        out = model(input_ids=ids[:, :-steps], use_cache=True)
        logits, cache = [out.logits], out.cache
        for i in range(steps, 0, -1):
            out = model(input_ids=ids[:, -i:][:, :1], cache=cache, use_cache=True)
            logits.append(out.logits)
            cache = out.cache
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
@pytest.mark.parametrize("spec", ["teal:0.5", "wina:0.65", "wina-code:0.25"])
def test_sparse_decoding_equals_masked_decoding(family, spec) -> None:
    model = tiny.build(family)
    batches = [(tiny.tokens(4, 16, seed=s), torch.ones(4, 16, dtype=torch.long)) for s in range(2)]
    plan = plan_activation_sparsity(model, spec, calibration=calibrate_teal_batches(model, batches))
    ids = tiny.tokens(1, 10, seed=5)
    with activation_sparsity(model, plan) as masked_stats:
        masked = decode_logits(model, ids, 4)
    with sparse_decode(model, plan, kernel="bag") as fast_stats:
        fast = decode_logits(model, ids, 4)
    torch.testing.assert_close(fast, masked, rtol=1e-4, atol=1e-5)
    assert fast_stats.zeroed == masked_stats.zeroed and fast_stats.seen == masked_stats.seen
    with torch.inference_mode():
        dense = decode_logits(model, ids, 4)
    assert not torch.allclose(dense, masked, atol=1e-4)  # the sparsity did something


def test_teal_fuses_projections_that_share_an_input() -> None:
    model = tiny.build("llama")
    batches = [(tiny.tokens(4, 16), torch.ones(4, 16, dtype=torch.long))]
    plan = plan_activation_sparsity(model, "teal:0.5", calibration=calibrate_teal_batches(model, batches))
    decoder = SparseDecoder(model, plan, kernel="coo")
    tables = {id(m.fused) for m in decoder.members}
    assert len(tables) == 4 * 3  # q/k/v, o, gate/up, down in each of the 3 blocks
    wina = SparseDecoder(model, plan_activation_sparsity(model, "wina:0.5"), kernel="coo")
    assert len({id(m.fused) for m in wina.members}) == 7 * 3  # every projection keeps its own entries


def test_forwards_are_restored_after_an_exception() -> None:
    model = tiny.build("llama")
    plan = plan_activation_sparsity(model, "wina:0.5")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), sparse_decode(model, plan, kernel="bag"):
        assert "forward" in model.model.layers[0].mlp.down_proj.__dict__
        decode_logits(model, tiny.tokens(1, 5), 2)
        raise RuntimeError("boom")
    for module in model.modules():
        assert "forward" not in module.__dict__
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_batches_use_masking_and_one_sequence_the_sparse_path() -> None:
    model = tiny.build("llama")
    plan = plan_activation_sparsity(model, "wina:0.5")
    with sparsity_for(model, plan, rows=1):
        assert "forward" in model.model.layers[0].self_attn.q_proj.__dict__
    with sparsity_for(model, plan, rows=2):
        assert "forward" not in model.model.layers[0].self_attn.q_proj.__dict__
        assert model.model.layers[0].self_attn.q_proj._forward_pre_hooks


def test_an_input_changed_in_place_is_recomputed() -> None:
    model = tiny.build("llama")
    batches = [(tiny.tokens(4, 16), torch.ones(4, 16, dtype=torch.long))]
    plan = plan_activation_sparsity(model, "teal:0.5", calibration=calibrate_teal_batches(model, batches))
    gate, up = model.model.layers[1].mlp.gate_proj, model.model.layers[1].mlp.up_proj
    x = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), activation_sparsity(model, plan):
        expected = [up(x), up(2 * x)]
    with torch.inference_mode(), sparse_decode(model, plan, kernel="coo"):
        gate(x)  # fills the shared gate/up product for x
        first = up(x)
        x.mul_(2)  # the same tensor object, new values
        second = up(x)
    torch.testing.assert_close(first, expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second, expected[1], rtol=1e-5, atol=1e-6)
