"""Streaming reducers against independent numpy computations on the concatenated masked data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from actkit.core.stats import (
    ActiveFraction,
    BaseReducer,
    Covariance,
    Mean,
    Moments,
    NormHistogram,
    Reducer,
    TopK,
    masked_rows,
)
from actkit.errors import ActkitError

D = 8


def _batches(dtype: torch.dtype, leading: str, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Several batches with a large offset (to stress stability) and random masks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate([37, 5, 120, 64]):
        shape: tuple[int, ...] = (n, D) if leading == "N" else (max(1, n // 8), 8 + i, D)
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, D)
        x = (x + torch.linspace(-50.0, 200.0, D)).to(dtype)
        mask = torch.rand(shape[:-1], generator=g) < 0.7
        out.append((x, mask))
    return out


def _concat(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """The masked tokens as a float64 numpy matrix, computed without actkit."""
    parts = []
    for x, mask in batches:
        xn = x.to(torch.float64).numpy().reshape(-1, x.shape[-1])
        parts.append(xn[mask.numpy().reshape(-1)])
    return np.concatenate(parts)


def _run(reducer: BaseReducer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> BaseReducer:
    for x, mask in batches:
        reducer.update(x, mask)
    return reducer


def _held_bytes(reducer: Any) -> int:
    return sum(v.nbytes for v in vars(reducer).values() if isinstance(v, torch.Tensor))


CASES = [(dt, lead) for dt in (torch.float32, torch.float64) for lead in ("N", "BT")]


@pytest.mark.parametrize("dtype,leading", CASES)
def test_mean_moments_covariance_match_numpy(dtype: torch.dtype, leading: str) -> None:
    batches = _batches(dtype, leading)
    ref = _concat(batches)
    rtol = 1e-6 if dtype == torch.float32 else 1e-10

    m = _run(Mean(), batches).result()
    assert m["count"] == ref.shape[0]
    assert m["mean"].dtype == torch.float64
    np.testing.assert_allclose(m["mean"].numpy(), ref.mean(0), rtol=rtol)

    mo = _run(Moments(), batches).result()
    assert mo["count"] == ref.shape[0]
    np.testing.assert_allclose(mo["mean"].numpy(), ref.mean(0), rtol=rtol)
    np.testing.assert_allclose(mo["var"].numpy(), ref.var(0), rtol=1e-5 if dtype == torch.float32 else 1e-9)
    np.testing.assert_allclose(mo["std"].numpy(), ref.std(0), rtol=1e-5 if dtype == torch.float32 else 1e-9)

    cv = _run(Covariance(), batches).result()
    assert cv["count"] == ref.shape[0]
    np.testing.assert_allclose(cv["mean"].numpy(), ref.mean(0), rtol=rtol)
    ref_cov = np.cov(ref, rowvar=False, bias=True)
    np.testing.assert_allclose(cv["cov"].numpy(), ref_cov, rtol=1e-6, atol=1e-9 * np.abs(ref_cov).max())


@pytest.mark.parametrize("dtype,leading", CASES)
def test_active_fraction_matches_numpy(dtype: torch.dtype, leading: str) -> None:
    batches = [(x - x.mean(), mask) for x, mask in _batches(dtype, leading)]
    ref = _concat(batches)
    for thr in (0.0, 30.0):
        r = _run(ActiveFraction(threshold=thr), batches).result()
        act = np.abs(ref) > thr
        assert r["count"] == ref.shape[0]
        np.testing.assert_allclose(r["per_feature"].numpy(), act.mean(0), rtol=1e-12)
        assert r["overall"] == pytest.approx(act.mean(), rel=1e-12)


@pytest.mark.parametrize("dtype,leading", CASES)
def test_norm_histogram_stats_match_numpy(dtype: torch.dtype, leading: str) -> None:
    batches = _batches(dtype, leading)
    norms = np.linalg.norm(_concat(batches), axis=1)
    r = _run(NormHistogram(), batches).result()
    rel = 1e-6 if dtype == torch.float32 else 1e-12
    assert r["count"] == norms.size
    assert r["mean"] == pytest.approx(norms.mean(), rel=rel)
    assert r["std"] == pytest.approx(norms.std(), rel=1e-4 if dtype == torch.float32 else 1e-9)
    assert r["min"] == pytest.approx(norms.min(), rel=rel)
    assert r["max"] == pytest.approx(norms.max(), rel=rel)
    for key, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        assert r[key] == pytest.approx(np.quantile(norms, q), rel=2e-3)


def test_norm_histogram_quantiles_heavy_tailed() -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    norms = np.exp(rng.normal(1.0, 2.5, size=n))  # lognormal, > 6 orders of magnitude
    assert norms.max() / norms.min() > 1e6
    dirs = rng.normal(size=(n, 4))
    x = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * norms[:, None]
    ref = np.linalg.norm(x, axis=1)
    h = NormHistogram()
    for chunk in np.array_split(x, 7):
        h.update(torch.from_numpy(chunk))
    qs = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]
    got = h.quantile(qs)
    assert isinstance(got, list)
    np.testing.assert_allclose(got, np.quantile(ref, qs), rtol=2e-3)
    assert h.quantile(0.5) == pytest.approx(np.quantile(ref, 0.5), rel=2e-3)
    r = h.result()
    assert r["min"] == ref.min() and r["max"] == ref.max()
    assert h.sum == pytest.approx(ref.sum(), rel=1e-12)
    assert h.sum_sq == pytest.approx((ref**2).sum(), rel=1e-9)

    # float32 input of the same data
    h32 = NormHistogram()
    h32.update(torch.from_numpy(x.astype(np.float32)))
    ref32 = np.linalg.norm(x.astype(np.float32).astype(np.float64), axis=1)
    np.testing.assert_allclose(h32.quantile(qs), np.quantile(ref32, qs), rtol=2e-3)
    assert h32.result()["min"] == pytest.approx(ref32.min(), rel=1e-6)


def test_norm_histogram_under_and_overflow() -> None:
    h = NormHistogram(lo=1.0, hi=10.0, rel_resolution=1e-2)
    vals = torch.tensor([0.0, 0.5, 2.0, 3.0, 50.0, 1e30], dtype=torch.float64)
    h.update(vals[:, None])
    assert h.underflow == 2 and h.overflow == 2
    r = h.result()
    assert r["min"] == 0.0 and r["max"] == 1e30
    assert h.quantile(0.0) == 0.0 and h.quantile(1.0) == 1e30
    assert 2.0 * (1 - 1e-2) <= h.quantile(0.4) <= 3.0 * (1 + 1e-2)
    with pytest.raises(ActkitError):
        h.quantile(1.5)


def test_topk_locations() -> None:
    g = torch.Generator().manual_seed(3)
    planted = {  # (doc, pos, dim) -> value
        (1, 3, 2): 50.0,
        (4, 0, 7): -40.0,
        (6, 9, 0): 30.0,
        (2, 5, 5): -20.0,
    }
    masked_out = (5, 2, 1)  # larger than all, but masked
    t = TopK(k=3)
    ref_all = []
    for b in range(4):  # batches of 2 documents x 10 positions
        x = torch.rand(2, 10, D, generator=g, dtype=torch.float32) * 2 - 1
        mask = torch.ones(2, 10, dtype=torch.bool)
        docs = torch.arange(2 * b, 2 * b + 2)
        where = torch.stack(torch.broadcast_tensors(docs[:, None], torch.arange(10)[None, :]), dim=-1)
        for (doc, pos, dim), v in planted.items():
            if doc // 2 == b:
                x[doc % 2, pos, dim] = v
        if masked_out[0] // 2 == b:
            x[masked_out[0] % 2, masked_out[1], masked_out[2]] = 1000.0
            mask[masked_out[0] % 2, masked_out[1]] = False
        t.update(x, mask, where)
        ref_all.append(x[mask])
    r = t.result()
    assert r["count"] == 4 * 20 - 1
    top3 = sorted(planted.items(), key=lambda kv: -abs(kv[1]))[:3]
    assert r["values"] == [v for _, v in top3]
    assert r["magnitudes"] == [abs(v) for _, v in top3]
    assert r["documents"] == [k[0] for k, _ in top3]
    assert r["positions"] == [k[1] for k, _ in top3]
    assert r["dims"] == [k[2] for k, _ in top3]

    # without `where`: locations are -1, dims still known; fewer entries than k
    t2 = TopK(k=10)
    x = torch.tensor([[0.5, -3.0], [2.0, 0.1]])
    t2.update(x)
    t2.update(torch.tensor([[0.0, -7.0]]), where=None)
    r2 = t2.result()
    assert r2["values"][:3] == [-7.0, -3.0, 2.0]
    assert r2["dims"][:3] == [1, 1, 0]
    assert r2["documents"] == [-1] * 6 and r2["positions"] == [-1] * 6
    assert len(r2["values"]) == 6


def test_topk_matches_numpy() -> None:
    batches = _batches(torch.float32, "BT", seed=5)
    ref = _concat(batches).reshape(-1)
    t = _run(TopK(k=20), batches).result()
    order = np.argsort(-np.abs(ref))[:20]
    np.testing.assert_allclose(t["values"], ref[order], rtol=1e-7)
    np.testing.assert_allclose(t["magnitudes"], np.abs(ref[order]), rtol=1e-7)


def _split3(
    batches: list[tuple[torch.Tensor, torch.Tensor]],
) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    x = torch.cat([b[0].reshape(-1, D) for b in batches])
    m = torch.cat([b[1].reshape(-1) for b in batches])
    cuts = [0, 7, 30, x.shape[0]]  # uneven shards
    return [[(x[a:b], m[a:b])] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _make_all() -> list[BaseReducer]:
    return [Mean(), Moments(), Covariance(), ActiveFraction(threshold=100.0), NormHistogram(), TopK(k=5)]


def _same_result(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=rtol, atol=rtol)
        elif isinstance(va, list):
            np.testing.assert_allclose(va, vb, rtol=1e-12)
        else:
            assert va == pytest.approx(vb, rel=rtol, nan_ok=True), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merge_equals_single_pass(dtype: torch.dtype) -> None:
    # float32 batches are centered in float32, so chunking changes the last float32 digit
    rtol = 1e-6 if dtype == torch.float32 else 1e-9
    batches = _batches(dtype, "BT", seed=7)
    shards = _split3(batches)
    for single, parts in zip(_make_all(), zip(*(_make_all() for _ in shards), strict=True), strict=True):
        _run(single, batches)
        for reducer, shard in zip(parts, shards, strict=True):
            _run(reducer, shard)
        merged = parts[0]
        assert merged.merge(parts[1]).merge(parts[2]) is merged
        _same_result(merged.result(), single.result(), rtol)
        if isinstance(single, NormHistogram):
            assert isinstance(merged, NormHistogram)
            assert torch.equal(merged._hist, single._hist)


def test_merge_into_fresh_does_not_alias() -> None:
    x = torch.randn(20, D, dtype=torch.float64)
    for make in (Mean, Moments, Covariance, ActiveFraction, NormHistogram, TopK):
        src, dst = make(), make()
        src.update(x)
        before = src.result()
        dst.merge(src)
        _same_result(dst.result(), before)
        src.update(x * 10 + 5)
        _same_result(dst.result(), before)
        dst.merge(make())  # merging an empty shard is a no-op
        _same_result(dst.result(), before)


def test_memory_constant_in_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    for reducer in _make_all():
        reducer.update(torch.randn(10, D, generator=g))
        small = _held_bytes(reducer)
        reducer.update(torch.randn(2, 25_000, D, generator=g))
        reducer.update(torch.randn(50_000, D, generator=g, dtype=torch.float64))
        assert reducer.count == 100_010
        assert _held_bytes(reducer) == small, type(reducer).__name__


def test_empty_updates_and_zero_count() -> None:
    for reducer in _make_all():
        assert isinstance(reducer, Reducer)
        r0 = reducer.result()
        assert r0["count"] == 0
        reducer.update(torch.randn(3, 4, D), mask=torch.zeros(3, 4, dtype=torch.bool))
        reducer.update(torch.randn(0, D))
        r = reducer.result()
        assert r["count"] == 0
        for key, v in r.items():
            if key == "count":
                continue
            if isinstance(v, torch.Tensor):
                assert v.shape[0] == D and torch.isnan(v).all(), key
            elif isinstance(v, float):
                assert math.isnan(v), key
            else:
                assert v == [], key
    assert math.isnan(NormHistogram().quantile(0.5))  # type: ignore[arg-type]


def test_grad_and_no_grad_inputs() -> None:
    x = torch.randn(4, 6, D, requires_grad=True)
    y = x * 2  # non-leaf with grad history
    for reducer in _make_all():
        reducer.update(y)
        with torch.no_grad():
            reducer.update(y)
        held = [v for v in vars(reducer).values() if isinstance(v, torch.Tensor)]
        assert all(not t.requires_grad and t.grad_fn is None for t in held)
        assert all(t.data_ptr() != y.data_ptr() for t in held)
        for v in reducer.result().values():
            if isinstance(v, torch.Tensor):
                assert not v.requires_grad and v.dtype == torch.float64


def test_half_precision_inputs() -> None:
    x = torch.randn(50, D, dtype=torch.float64) * 3 + 1
    for dt in (torch.bfloat16, torch.float16):
        xr = x.to(dt)
        ref = xr.to(torch.float64).numpy()
        mo = Moments()
        mo.update(xr)
        np.testing.assert_allclose(mo.result()["var"].numpy(), ref.var(0), rtol=1e-5)
        h = NormHistogram()
        h.update(xr)
        assert h.result()["max"] == pytest.approx(np.linalg.norm(ref, axis=1).max(), rel=1e-6)


def test_bad_input_raises() -> None:
    for reducer in _make_all():
        reducer.update(torch.randn(5, D))
        with pytest.raises(ActkitError, match=rf"{D}.*5|5.*{D}"):
            reducer.update(torch.randn(5, 5))
        with pytest.raises(ActkitError, match="mask"):
            reducer.update(torch.randn(2, 3, D), mask=torch.ones(2, 4, dtype=torch.bool))
        with pytest.raises(ActkitError):
            reducer.update(torch.ones(2, D, dtype=torch.int64))
    with pytest.raises(ActkitError, match="where"):
        TopK().update(torch.randn(2, 3, D), where=torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ActkitError):
        masked_rows(torch.tensor(1.0), None)


def test_integer_mask_selects_like_bool() -> None:
    x = torch.randn(2, 5, D)
    attn = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(masked_rows(x, attn), masked_rows(x, attn.bool()))
    assert masked_rows(x, attn).shape == (8, D)


def test_merge_mismatch_raises() -> None:
    pairs: list[tuple[Any, Any]] = [
        (NormHistogram(rel_resolution=1e-3), NormHistogram(rel_resolution=2e-3)),
        (NormHistogram(lo=1e-3), NormHistogram()),
        (TopK(k=4), TopK(k=8)),
        (ActiveFraction(threshold=0.0), ActiveFraction(threshold=0.5)),
        (Mean(), Moments()),
    ]
    for a, b in pairs:
        with pytest.raises(ActkitError, match="merge"):
            a.merge(b)
    for make in (Mean, Moments, Covariance, ActiveFraction, NormHistogram, TopK):
        a, b = make(), make()
        a.update(torch.randn(3, D))
        b.update(torch.randn(3, D + 1))
        with pytest.raises(ActkitError, match=rf"{D}.*{D + 1}"):
            a.merge(b)


def test_bad_config_raises() -> None:
    with pytest.raises(ActkitError):
        TopK(k=0)
    with pytest.raises(ActkitError):
        NormHistogram(lo=0.0)
    with pytest.raises(ActkitError):
        NormHistogram(rel_resolution=1e-12)
    with pytest.raises(ActkitError):
        ActiveFraction(threshold=-1.0)
