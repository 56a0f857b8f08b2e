"""Streaming reducers: summarize activations batch by batch in constant memory.

Activations of a real model over a real corpus do not fit in memory, so every statistic actkit reports is
computed by a reducer that sees the activations one batch at a time (typically from inside a forward hook),
keeps only a reduced state whose size does not depend on the number of tokens, and can be merged with another
shard of the same kind so that several batches, processes or machines can accumulate in parallel.

All reducers share one protocol:

- `update(x, mask=None, where=None)` folds in a batch `x` of shape `(..., d)`; `mask` (shape `x.shape[:-1]`)
  selects the tokens that count; `where` (shape `x.shape[:-1] + (2,)`) gives `(document, position)` of each token
  and is used only by reducers that report locations (`TopK`).
- `merge(other)` folds in another shard of the same type and configuration, in place, and returns `self`.
- `result()` returns plain Python numbers, lists and CPU float64 tensors.

The reduction of a batch happens on the batch's device, in at least float32; only the reduced form (sums,
a histogram, k candidates) is moved to the CPU, where the running state is kept in float64.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from actkit.errors import ActkitError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ActiveFraction",
    "BaseReducer",
    "Covariance",
    "MagnitudeHistogram",
    "Mean",
    "Moments",
    "NormHistogram",
    "Reducer",
    "RouterStats",
    "TopK",
    "check_activations",
    "masked_rows",
]

_F64 = torch.float64
_NAN = float("nan")


@runtime_checkable
class Reducer(Protocol):
    """What every streaming reducer offers; see the module docstring for the contract."""

    def update(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None
    ) -> None: ...

    def merge(self, other: Self) -> Self: ...

    def result(self) -> dict[str, Any]: ...


def masked_rows(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The tokens of `x` selected by `mask`, as one `(N, d)` matrix.

    Reducers see activations with arbitrary leading shape (`(B, T, d)` from a model, `(N, d)` from a file);
    flattening the leading dimensions once here lets every reducer work on plain rows.

    Arguments:
        x: activations of shape `(..., d)`; detached, never modified.
        mask: tensor of shape `x.shape[:-1]`; nonzero entries select tokens (an integer attention mask works).
            `None` selects every token.

    Returns:
        A `(N, d)` tensor in `x`'s dtype and on `x`'s device. Without a mask it is a view of `x`.
    """
    if x.ndim == 0:
        raise ActkitError(
            "activations must have a feature dimension: got a 0-d tensor, expected shape (..., d)"
        )
    rows = x.detach().reshape(math.prod(x.shape[:-1]), x.shape[-1])  # -1 is ambiguous when d == 0
    if mask is None:
        return rows
    if tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ActkitError(
            f"mask shape {tuple(mask.shape)} does not match the activations' token shape {tuple(x.shape[:-1])} "
            f"(activations {tuple(x.shape)}); pass a mask with one entry per token"
        )
    flat = mask.detach().reshape(-1)
    if flat.dtype != torch.bool:
        flat = flat != 0
    return rows[flat.to(rows.device)]


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """Dtype for per-batch arithmetic: float64 input stays float64, anything narrower is upcast to float32."""
    return _F64 if t.dtype == _F64 else torch.float32


def _sum_dtype(t: torch.Tensor) -> torch.dtype:
    """Dtype for per-batch sums: float64 wherever the device supports it (MPS does not)."""
    return torch.float32 if t.device.type == "mps" else _F64


def _sum0(t: torch.Tensor) -> torch.Tensor:
    """Column sums of a 2-d tensor in float64 (float32 on MPS).

    On CPU, casting first is several times faster than `sum(dtype=float64)`; on accelerators the fused cast
    avoids materializing a float64 copy of the batch.
    """
    dt = _sum_dtype(t)
    if t.device.type == "cpu":
        return t.to(dt).sum(0)
    return t.sum(0, dtype=dt)


def _to_cpu64(t: torch.Tensor) -> torch.Tensor:
    return t.to(device="cpu", dtype=_F64)


class BaseReducer:
    """Shared bookkeeping: token count, hidden-size checks, and config checks on merge.

    Subclasses implement `_init_state(d)` (allocate the fixed-size state once the hidden size is known),
    `_accumulate(rows)` (fold in a non-empty `(N, d)` batch), `_merge_state(other)` (fold in a shard, called
    before `count` is updated) and `_config()` (the constructor arguments that must agree to merge).
    """

    count: int
    d: int | None

    def __init__(self) -> None:
        self.count = 0
        self.d = None

    # -- to override -------------------------------------------------------------------------------------------
    def _config(self) -> tuple[Any, ...]:
        return ()

    def _init_state(self, d: int) -> None:
        pass

    def _accumulate(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def _merge_state(self, other: Self) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------------
    def _name(self) -> str:
        args = ", ".join(repr(v) for v in self._config())
        return f"{type(self).__name__}({args})"

    def _set_d(self, d: int) -> None:
        if self.d is None:
            self.d = d
            self._init_state(d)
        elif self.d != d:
            raise ActkitError(
                f"{self._name()}: hidden size changed from {self.d} to {d} between updates; "
                f"use one reducer per site and hidden size"
            )

    def _rows(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if not x.is_floating_point():
            raise ActkitError(f"{self._name()}: activations must be a real floating tensor, got {x.dtype}")
        rows = masked_rows(x, mask)
        self._set_d(int(rows.shape[1]))
        return rows

    def update(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None
    ) -> None:
        """Fold in a batch of activations `x` of shape `(..., d)`; only tokens where `mask` is set count."""
        rows = self._rows(x, mask)
        if rows.shape[0] == 0:
            return
        self._accumulate(rows)
        self.count += int(rows.shape[0])

    def merge(self, other: Self) -> Self:
        """Fold another shard of the same type and configuration into this one, in place; returns `self`."""
        if type(other) is not type(self):
            raise ActkitError(f"cannot merge {type(self).__name__} with {type(other).__name__}")
        if other._config() != self._config():
            raise ActkitError(f"cannot merge {self._name()} with {other._name()}: configurations differ")
        if other.d is None:
            return self
        if self.d is not None and self.d != other.d:
            raise ActkitError(f"cannot merge {self._name()} shards of hidden size {self.d} and {other.d}")
        self._set_d(other.d)
        if other.count > 0:
            self._merge_state(other)
            self.count += other.count
        return self


def _chan(
    n_a: int, mean_a: torch.Tensor, n_b: int, mean_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Chan et al.'s combination step: the merged mean, the mean difference, and the co-moment weight."""
    n = n_a + n_b
    delta = mean_b - mean_a
    return mean_a + delta * (n_b / n), delta, n_a * n_b / n


class Mean(BaseReducer):
    """Per-feature mean over tokens.

    Keeps a float64 running sum of shape `(d,)`.

    Returns (from `result()`):
        `{"count": int, "mean": (d,) float64 tensor}`; the mean is NaN when no token was seen (and has shape
        `(0,)` if the reducer never saw a batch, since the hidden size is then unknown).
    """

    def __init__(self) -> None:
        super().__init__()
        self._sum = torch.zeros(0, dtype=_F64)

    def _init_state(self, d: int) -> None:
        self._sum = torch.zeros(d, dtype=_F64)

    def _accumulate(self, rows: torch.Tensor) -> None:
        self._sum += _to_cpu64(_sum0(rows))

    def _merge_state(self, other: Mean) -> None:
        self._sum += other._sum

    def result(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0, "mean": torch.full_like(self._sum, _NAN)}
        return {"count": self.count, "mean": self._sum / self.count}


class Moments(BaseReducer):
    """Per-feature mean and population variance, numerically stable.

    A naive sum of squares loses all precision when the mean is large compared to the spread (common for
    massive-activation channels), so each batch is reduced around its own mean and batches and shards are
    combined with Chan's parallel update of (count, mean, sum of squared deviations).

    Returns (from `result()`):
        `{"count": int, "mean": (d,), "var": (d,) population variance (divide by n), "std": (d,)}`,
        float64 tensors, NaN when no token was seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self._mean = torch.zeros(0, dtype=_F64)
        self._m2 = torch.zeros(0, dtype=_F64)

    def _init_state(self, d: int) -> None:
        self._mean = torch.zeros(d, dtype=_F64)
        self._m2 = torch.zeros(d, dtype=_F64)

    def _accumulate(self, rows: torch.Tensor) -> None:
        n_b = int(rows.shape[0])
        wdt = _work_dtype(rows)
        shift = _sum0(rows) / n_b
        # Center on the (rounded) batch mean in the working dtype; the s1 term corrects for the rounding.
        c = rows.to(wdt) - shift.to(wdt)
        s1 = _sum0(c)
        s2 = _sum0(c * c)
        packed = _to_cpu64(torch.stack([shift, s1, s2]))
        mean_b = packed[0] + packed[1] / n_b
        m2_b = (packed[2] - packed[1] * packed[1] / n_b).clamp_min_(0.0)
        self._combine(n_b, mean_b, m2_b)

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if self.count == 0:
            self._mean.copy_(mean_b)
            self._m2.copy_(m2_b)
            return
        mean, delta, w = _chan(self.count, self._mean, n_b, mean_b)
        self._m2 += m2_b + delta * delta * w
        self._mean.copy_(mean)

    def _merge_state(self, other: Moments) -> None:
        self._combine(other.count, other._mean, other._m2)

    def result(self) -> dict[str, Any]:
        if self.count == 0:
            nan = torch.full_like(self._mean, _NAN)
            return {"count": 0, "mean": nan, "var": nan.clone(), "std": nan.clone()}
        var = self._m2 / self.count
        return {"count": self.count, "mean": self._mean.clone(), "var": var, "std": var.sqrt()}


class Covariance(BaseReducer):
    """Streaming feature covariance with means.

    Memory is O(d²): the state is a `(d, d)` float64 co-moment matrix (8·d² bytes, e.g. 128 MiB at d = 4096),
    and each update costs a `(d, N) @ (N, d)` float64 product. Batches and shards are combined with Chan's
    parallel update of (count, mean, co-moment), which stays accurate when means are large.

    Returns (from `result()`):
        `{"count": int, "mean": (d,), "cov": (d, d) population covariance (divide by n)}`, float64 tensors,
        NaN when no token was seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self._mean = torch.zeros(0, dtype=_F64)
        self._c = torch.zeros(0, 0, dtype=_F64)

    def _init_state(self, d: int) -> None:
        self._mean = torch.zeros(d, dtype=_F64)
        self._c = torch.zeros(d, d, dtype=_F64)

    def _accumulate(self, rows: torch.Tensor) -> None:
        n_b = int(rows.shape[0])
        # float64 product: a float32 (or TF32) Gram matrix is not accurate enough for small eigenvalues.
        xb = rows.to(_sum_dtype(rows))
        mean_b = xb.mean(0)
        c = xb - mean_b
        packed = _to_cpu64(torch.cat([mean_b[None, :], c.T @ c]))
        self._combine(n_b, packed[0], packed[1:])

    def _combine(self, n_b: int, mean_b: torch.Tensor, c_b: torch.Tensor) -> None:
        if self.count == 0:
            self._mean.copy_(mean_b)
            self._c.copy_(c_b)
            return
        mean, delta, w = _chan(self.count, self._mean, n_b, mean_b)
        self._c += c_b
        self._c.add_(torch.outer(delta, delta), alpha=w)
        self._mean.copy_(mean)

    def _merge_state(self, other: Covariance) -> None:
        self._combine(other.count, other._mean, other._c)

    def result(self) -> dict[str, Any]:
        if self.count == 0:
            return {
                "count": 0,
                "mean": torch.full_like(self._mean, _NAN),
                "cov": torch.full_like(self._c, _NAN),
            }
        return {"count": self.count, "mean": self._mean.clone(), "cov": self._c / self.count}


class ActiveFraction(BaseReducer):
    """Fraction of tokens on which each feature is active, `|x| > threshold`.

    Used to find dead and always-on channels (and SAE-style sparsity); the comparison is done in `x`'s
    precision, at least float32.

    Arguments:
        threshold: a feature counts as active on a token when its magnitude is strictly above this.

    Returns (from `result()`):
        `{"count": int, "per_feature": (d,) float64 tensor, "overall": float}` where `overall` is the fraction
        over all (token, feature) entries; NaN when no token was seen.
    """

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        if not threshold >= 0.0:
            raise ActkitError(f"ActiveFraction threshold must be a non-negative number, got {threshold!r}")
        self.threshold = float(threshold)
        self._active = torch.zeros(0, dtype=_F64)

    def _config(self) -> tuple[Any, ...]:
        return (self.threshold,)

    def _init_state(self, d: int) -> None:
        self._active = torch.zeros(d, dtype=_F64)

    def _accumulate(self, rows: torch.Tensor) -> None:
        active = rows.to(_work_dtype(rows)).abs() > self.threshold
        self._active += _to_cpu64(active.sum(0, dtype=torch.int32))  # a batch has far fewer than 2**31 rows

    def _merge_state(self, other: ActiveFraction) -> None:
        self._active += other._active

    def result(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0, "per_feature": torch.full_like(self._active, _NAN), "overall": _NAN}
        overall = (
            float(self._active.sum()) / (self.count * self._active.numel()) if self._active.numel() else _NAN
        )
        return {"count": self.count, "per_feature": self._active / self.count, "overall": overall}


class NormHistogram(BaseReducer):
    """Distribution of per-token L2 norms, with quantiles, in constant memory.

    Token norms span many orders of magnitude (attention sinks, massive activations), so the histogram is
    log-spaced: bin `i` covers `[lo·r^(i-1), lo·r^i)` with `r = 1 + rel_resolution`, which bounds the relative
    error of a quantile by about `rel_resolution` anywhere in `[lo, hi]`. Values below `lo` (including exact
    zeros) and above `hi` go to an underflow and an overflow bin. Count, mean, std (stable, Chan's update),
    min and max are exact. A NaN norm lands in the overflow bin and makes mean, std, min and max NaN.

    Arguments:
        lo: lower edge of the log-spaced range; must be positive.
        hi: upper edge of the log-spaced range.
        rel_resolution: relative width of each bin. The defaults give about 32k float64 bins (260 KB).

    Returns (from `result()`):
        `{"count": int, "mean", "std", "min", "max", "p50", "p90", "p99": float}`; NaN when no token was seen.
    """

    _MAX_BINS = 10_000_000

    def __init__(self, lo: float = 1e-6, hi: float = 1e8, rel_resolution: float = 1e-3) -> None:
        super().__init__()
        if not (0.0 < lo < hi < math.inf):
            raise ActkitError(f"NormHistogram needs 0 < lo < hi < inf, got lo={lo!r}, hi={hi!r}")
        if not (0.0 < rel_resolution < math.inf):
            raise ActkitError(f"NormHistogram rel_resolution must be positive, got {rel_resolution!r}")
        self.lo = float(lo)
        self.hi = float(hi)
        self.rel_resolution = float(rel_resolution)
        self._log_lo = math.log(self.lo)
        self._g = math.log1p(self.rel_resolution)
        self._nbins = max(1, math.ceil(math.log(self.hi / self.lo) / self._g))
        if self._nbins > self._MAX_BINS:
            raise ActkitError(
                f"NormHistogram(lo={lo}, hi={hi}, rel_resolution={rel_resolution}) needs {self._nbins} bins; "
                f"widen rel_resolution or narrow [lo, hi] to stay under {self._MAX_BINS}"
            )
        # bin 0: underflow (< lo); bins 1.._nbins: log-spaced; bin _nbins + 1: overflow (> hi)
        self._hist = torch.zeros(self._nbins + 2, dtype=_F64)
        self._mean = 0.0
        self._m2 = 0.0
        self._min = math.inf
        self._max = -math.inf

    def _config(self) -> tuple[Any, ...]:
        return (self.lo, self.hi, self.rel_resolution)

    @property
    def sum(self) -> float:
        """Exact sum of the norms seen."""
        return self._mean * self.count

    @property
    def sum_sq(self) -> float:
        """Sum of the squared norms seen."""
        return self._m2 + self.count * self._mean * self._mean

    @property
    def underflow(self) -> int:
        """Number of norms below `lo`."""
        return int(self._hist[0])

    @property
    def overflow(self) -> int:
        """Number of norms above `hi` (or NaN)."""
        return int(self._hist[-1])

    def update(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None
    ) -> None:
        """Fold in `x` (..., d): norms are taken over every token, then masked, so no rows are copied."""
        if not x.is_floating_point():
            raise ActkitError(f"{self._name()}: activations must be a real floating tensor, got {x.dtype}")
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ActkitError(f"mask shape {tuple(mask.shape)} does not match the activations' token shape "
                              f"{tuple(x.shape[:-1])} (activations {tuple(x.shape)}); pass a mask with one entry "
                              "per token")
        self._set_d(int(x.shape[-1]))
        norms = torch.linalg.vector_norm(x.detach(), dim=-1, dtype=_work_dtype(x))
        norms = norms.reshape(-1) if mask is None else norms[mask.bool()]
        if norms.numel() == 0:
            return
        self._accumulate_norms(norms.to(_sum_dtype(x)))
        self.count += int(norms.numel())

    def _accumulate(self, rows: torch.Tensor) -> None:
        norms = torch.linalg.vector_norm(rows, dim=-1, dtype=_work_dtype(rows)).to(_sum_dtype(rows))
        self._accumulate_norms(norms)

    def _accumulate_norms(self, norms: torch.Tensor) -> None:
        n_b = int(norms.shape[0])
        t = (torch.log(norms) - self._log_lo) / self._g
        t = torch.nan_to_num(t, nan=float(self._nbins), posinf=float(self._nbins), neginf=-1.0)
        idx = torch.floor(t.clamp_(-1.0, float(self._nbins))).long() + 1
        idx = torch.where(norms > self.hi, self._nbins + 1, idx)
        hist_b = torch.bincount(idx, minlength=self._nbins + 2).to(norms.dtype)
        mean_b = norms.mean()
        dev = norms - mean_b
        stats = torch.stack([mean_b, (dev * dev).sum(), norms.min(), norms.max()])
        packed = _to_cpu64(torch.cat([hist_b, stats]))
        self._hist += packed[:-4]
        m_b, m2_b, mn, mx = packed[-4:].tolist()
        self._combine(n_b, m_b, m2_b, mn, mx)

    def _combine(self, n_b: int, mean_b: float, m2_b: float, mn: float, mx: float) -> None:
        if self.count == 0:
            self._mean, self._m2, self._min, self._max = mean_b, m2_b, mn, mx
            return
        n = self.count + n_b
        delta = mean_b - self._mean
        self._mean += delta * n_b / n
        self._m2 += m2_b + delta * delta * self.count * n_b / n
        # keep NaN sticky, like torch.min / torch.max
        self._min = mn if (mn < self._min or math.isnan(mn)) else self._min
        self._max = mx if (mx > self._max or math.isnan(mx)) else self._max

    def _merge_state(self, other: NormHistogram) -> None:
        self._hist += other._hist
        self._combine(other.count, other._mean, other._m2, other._min, other._max)

    def quantile(self, q: float | list[float]) -> float | list[float]:
        """Quantile(s) of the norms, matching `numpy.quantile`'s default (linear) definition.

        The value is interpolated geometrically inside its bin, so the relative error is about
        `rel_resolution`, and clamped to the exact min and max.

        Arguments:
            q: a probability in `[0, 1]` or a list of them.

        Returns:
            A float for a float `q`, a list of floats for a list; NaN when no token was seen.
        """
        scalar = isinstance(q, (int, float))
        qs = [float(q)] if isinstance(q, (int, float)) else [float(v) for v in q]
        for v in qs:
            if not 0.0 <= v <= 1.0:
                raise ActkitError(f"quantile probabilities must lie in [0, 1], got {v!r}")
        if self.count == 0:
            out = [_NAN] * len(qs)
        else:
            # numpy's linear rule: interpolate between the order statistics at floor(r) and floor(r) + 1
            ranks = [v * (self.count - 1) for v in qs]
            below = [math.floor(r) for r in ranks]
            above = [min(k + 1, self.count - 1) for k in below]
            low, high = self._order_statistics(below), self._order_statistics(above)
            out = [a + (r - k) * (b - a) for a, b, r, k in zip(low, high, ranks, below, strict=True)]
        return out[0] if scalar else out

    def _order_statistics(self, ranks: list[int]) -> list[float]:
        """Estimates of the k-th smallest norms (0-based), each placed inside its bin."""
        cum = torch.cumsum(self._hist, 0)
        bins = torch.searchsorted(cum, torch.tensor(ranks, dtype=_F64), right=True).clamp_(max=self._nbins + 1)
        return [
            self._value_at(b, k, float(cum[b]), float(self._hist[b]))
            for b, k in zip(bins.tolist(), ranks, strict=True)
        ]

    def _value_at(self, b: int, rank: float, cum_b: float, c: float) -> float:
        if rank <= 0.0:
            return self._min
        if rank >= self.count - 1:
            return self._max
        u = min(max((rank - (cum_b - c) + 0.5) / c, 0.0), 1.0)
        if b == 0:
            left, right = self._min, min(self.lo, self._max)
            v = left + u * (right - left)
        elif b == self._nbins + 1:
            left, right = max(self.hi, self._min), self._max
            v = left + u * (right - left)
        else:
            v = math.exp(self._log_lo + (b - 1 + u) * self._g)
        return min(max(v, self._min), self._max)

    def result(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0, **{k: _NAN for k in ("mean", "std", "min", "max", "p50", "p90", "p99")}}
        p50, p90, p99 = self.quantile([0.5, 0.9, 0.99])  # type: ignore[misc]
        return {
            "count": self.count,
            "mean": self._mean,
            "std": math.sqrt(max(self._m2, 0.0) / self.count),
            "min": self._min,
            "max": self._max,
            "p50": p50,
            "p90": p90,
            "p99": p99,
        }


class TopK(BaseReducer):
    """The `k` largest-magnitude entries seen, with where they occurred.

    Finding the few (token, channel) pairs with extreme values (massive activations, attention sinks) needs
    their location, so each candidate carries its document, position and feature index. Each update takes the
    top `k` of the batch on its device and merges these `k` candidates into the running top `k`, so memory is
    O(k) whatever the number of tokens.

    Arguments:
        k: how many entries to keep.

    Returns (from `result()`):
        `{"count": int, "values": signed floats, "magnitudes": floats, "documents": ints, "positions": ints,
        "dims": ints}`, lists sorted by magnitude, largest first (shorter than `k` if fewer entries were seen).
        Document and position come from `update(..., where=...)`; they are -1 when `where` was not given.
    """

    def __init__(self, k: int = 16) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ActkitError(f"TopK k must be a positive integer, got {k!r}")
        self.k = k
        self._filled = 0
        self._values = torch.zeros(k, dtype=_F64)
        self._mags = torch.zeros(k, dtype=_F64)
        self._loc = torch.zeros(3, k, dtype=torch.int64)  # rows: document, position, dim

    def _config(self) -> tuple[Any, ...]:
        return (self.k,)

    def update(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None
    ) -> None:
        """Fold in `x` of shape `(..., d)`; `where` (shape `x.shape[:-1] + (2,)`) gives (document, position)."""
        if where is not None and tuple(where.shape) != (*x.shape[:-1], 2):
            raise ActkitError(
                f"TopK: where shape {tuple(where.shape)} does not match activations {tuple(x.shape)}; "
                f"expected {(*x.shape[:-1], 2)} holding (document, position) per token"
            )
        rows = self._rows(x, mask)
        n_b, d = int(rows.shape[0]), int(rows.shape[1])
        if n_b == 0 or d == 0:
            self.count += n_b
            return
        # An entry in the batch's top k lies in a row whose largest magnitude is among the k largest row
        # maxima, so a top-k over row maxima narrows the search to k rows: one pass instead of a top-k
        # over all N * d entries.
        mag = rows.abs()
        cand = mag.amax(1).topk(min(self.k, n_b)).indices
        sub = mag[cand].reshape(-1)
        kk = min(self.k, sub.numel())
        mags, j = sub.topk(kk)
        row, dim = cand[j // d], j % d
        values = rows[row, dim]
        if where is None:
            doc_pos = torch.full((2, kk), -1, dtype=torch.int64)
        else:
            wrows = masked_rows(where, mask) if mask is not None else where.detach().reshape(-1, 2)
            doc_pos = wrows[row.to(wrows.device)].T.to(device="cpu", dtype=torch.int64)
        packed = _to_cpu64(torch.stack([values.to(_sum_dtype(values)), mags.to(_sum_dtype(mags))]))
        loc = torch.cat([doc_pos, dim.to("cpu")[None, :]])
        self._combine(packed[0], packed[1], loc)
        self.count += n_b

    def _combine(self, values: torch.Tensor, mags: torch.Tensor, loc: torch.Tensor) -> None:
        f = self._filled
        all_mags = torch.cat([self._mags[:f], mags])
        keep = min(self.k, all_mags.numel())
        top, order = all_mags.topk(keep)
        all_values = torch.cat([self._values[:f], values])
        all_loc = torch.cat([self._loc[:, :f], loc], dim=1)
        self._mags[:keep] = top
        self._values[:keep] = all_values[order]
        self._loc[:, :keep] = all_loc[:, order]
        self._filled = keep

    def _merge_state(self, other: TopK) -> None:
        f = other._filled
        if f:
            self._combine(other._values[:f].clone(), other._mags[:f].clone(), other._loc[:, :f].clone())

    def result(self) -> dict[str, Any]:
        f = self._filled
        loc = self._loc[:, :f].tolist()
        return {
            "count": self.count,
            "values": self._values[:f].tolist(),
            "magnitudes": self._mags[:f].tolist(),
            "documents": loc[0],
            "positions": loc[1],
            "dims": loc[2],
        }


def check_activations(name: str, x: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise a clear `ActkitError` for activations a reducer cannot fold in (`name` says which reducer)."""
    if not x.is_floating_point():
        raise ActkitError(f"{name}: activations must be a real floating tensor, got {x.dtype}")
    if x.ndim == 0:
        raise ActkitError(f"{name}: activations must have a feature dimension, got a 0-d tensor")
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:-1]):
        raise ActkitError(f"{name}: mask shape {tuple(mask.shape)} does not match the activations' token shape "
                          f"{tuple(x.shape[:-1])}")


class MagnitudeHistogram(NormHistogram):
    """Distribution of the magnitudes |x| of individual entries (every channel of every token).

    Massive activations are defined against the median magnitude of a layer's entries (Sun et al., 2024), and
    an exact median would need every entry. Each entry is treated as a one-channel vector and folded into the
    core's log-spaced `NormHistogram`, so the median is known to about 0.1% in a fixed 32k-bin state.

    Returns (from `result()`):
        `NormHistogram`'s keys over entries: `count` (entries, not tokens), `mean`, `std`, `min`, `max`, `p50`,
        `p90`, `p99`.
    """

    def update(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None
    ) -> None:
        check_activations(type(self).__name__, x, mask)
        entries = x.detach()[..., None]
        keep = None if mask is None else mask.bool()[..., None].expand(x.shape)
        super().update(entries, keep)


class RouterStats(BaseReducer):
    """Expert load and routing entropy of an MoE router, from its logits (the ``router.i`` site).

    Load collapse (a few experts taking most tokens) and routing confidence are what expert pruning and merging
    (REAP and its kin) have to read first. The router's own choice is recomputed as the top `top_k` of the
    softmax, which is what every fused-experts family in the anatomy does.

    Arguments:
        top_k: experts per token.

    Returns (from `result()`):
        `{"count": tokens, "experts": E, "top_k": k, "load": (E,) float64 fraction of all top-k assignments,
        "entropy_mean": mean over tokens of the entropy (nats) of the softmax router distribution,
        "load_entropy": entropy (nats) of the load, "entropy_max": log E (the uniform value)}`.
    """

    def __init__(self, top_k: int) -> None:
        super().__init__()
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ActkitError(f"RouterStats top_k must be a positive integer, got {top_k!r}")
        self.top_k = top_k
        self._counts = torch.zeros(0, dtype=_F64)
        self._entropy = 0.0

    def _config(self) -> tuple[Any, ...]:
        return (self.top_k,)

    def _init_state(self, d: int) -> None:
        if d < self.top_k:
            raise ActkitError(f"RouterStats: top_k {self.top_k} exceeds the {d} experts of the router")
        self._counts = torch.zeros(d, dtype=_F64)

    def _accumulate(self, rows: torch.Tensor) -> None:
        logp = torch.log_softmax(rows.float() if rows.dtype != _F64 else rows, dim=-1)
        entropy = -(logp.exp() * logp).nan_to_num(0.0).sum(dim=-1)
        chosen = logp.topk(self.top_k, dim=-1).indices.reshape(-1)
        self._counts += torch.bincount(chosen, minlength=rows.shape[1]).to("cpu", _F64)
        self._entropy += float(entropy.to("cpu", _F64).sum())

    def _merge_state(self, other: RouterStats) -> None:
        self._counts += other._counts
        self._entropy += other._entropy

    def result(self) -> dict[str, Any]:
        experts = int(self._counts.numel())
        if self.count == 0:
            return {"count": 0, "experts": experts, "top_k": self.top_k, "load": torch.full_like(self._counts, _NAN),
                    "entropy_mean": _NAN, "load_entropy": _NAN, "entropy_max": math.log(experts) if experts else _NAN}
        load = self._counts / self._counts.sum()
        nz = load[load > 0]
        return {"count": self.count, "experts": experts, "top_k": self.top_k, "load": load,
                "entropy_mean": self._entropy / self.count, "load_entropy": float(-(nz * nz.log()).sum()),
                "entropy_max": math.log(experts)}
