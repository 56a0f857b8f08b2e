"""The observe pillar's streaming reducers: the statistics a profile needs that no other pillar uses.

Each follows the core protocol (`update(x, mask, where)`, `merge(other)`, `result()`, float64 state whose size
does not depend on the number of tokens; see `actkit.core.stats`) and builds on a core reducer where one fits:

- `ChannelPeak`: per channel, the largest |x| and where it occurred, so that every channel that ever carries
  a massive activation is found even when a few channels fill the global `TopK`.
- `RelativeActivity`: per-neuron activation frequency of an MLP hidden layer with a scale-free threshold,
  an `ActiveFraction` of the token-normalised activations.
- `LogPartition`: log Z = logsumexp of each token's logits.
- `ConditionalMean`: the mean of chosen channels over the tokens where they exceed a threshold.

`MagnitudeHistogram` and `RouterStats`, which compress uses too, live in `actkit.core.stats`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from actkit.core.stats import ActiveFraction, BaseReducer, check_activations, masked_rows
from actkit.errors import ActkitError

_F64 = torch.float64
_NAN = float("nan")

__all__ = [
    "ChannelPeak",
    "ConditionalMean",
    "LogPartition",
    "RelativeActivity",
]


class ChannelPeak(BaseReducer):
    """Per channel, the entry of largest magnitude: its signed value, document and position.

    A global `TopK` can be filled by one channel that is massive on every document's first token; keeping the
    peak of each channel (O(d) state) guarantees that every channel whose peak is massive is reported.

    Returns (from `result()`):
        `{"count": int, "values": (d,) signed float64, "magnitudes": (d,), "documents": (d,) int64,
        "positions": (d,) int64}`; document and position are -1 when `where` was not given.
    """

    def __init__(self) -> None:
        super().__init__()
        self._values = torch.zeros(0, dtype=_F64)
        self._mags = torch.zeros(0, dtype=_F64)
        self._loc = torch.zeros(2, 0, dtype=torch.int64)

    def _init_state(self, d: int) -> None:
        self._values = torch.zeros(d, dtype=_F64)
        self._mags = torch.full((d,), -1.0, dtype=_F64)
        self._loc = torch.full((2, d), -1, dtype=torch.int64)

    def update(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None
    ) -> None:
        rows = self._rows(x, mask)
        n = int(rows.shape[0])
        if n == 0 or rows.shape[1] == 0:
            return
        mags, idx = rows.abs().max(dim=0)
        values = rows.gather(0, idx[None])[0]
        if where is None:
            loc = torch.full((2, rows.shape[1]), -1, dtype=torch.int64)
        else:
            wrows = masked_rows(where, mask) if mask is not None else where.detach().reshape(-1, 2)
            loc = wrows[idx.to(wrows.device)].T.to(device="cpu", dtype=torch.int64)
        self._fold(values.to("cpu", _F64), mags.to("cpu", _F64), loc)
        self.count += n

    def _fold(self, values: torch.Tensor, mags: torch.Tensor, loc: torch.Tensor) -> None:
        better = mags > self._mags
        self._mags = torch.where(better, mags, self._mags)
        self._values = torch.where(better, values, self._values)
        self._loc = torch.where(better[None], loc, self._loc)

    def _accumulate(self, rows: torch.Tensor) -> None:  # pragma: no cover - update is overridden
        raise NotImplementedError

    def _merge_state(self, other: ChannelPeak) -> None:
        self._fold(other._values, other._mags, other._loc)

    def result(self) -> dict[str, Any]:
        mags = torch.where(self._mags < 0, _NAN, self._mags)
        return {"count": self.count, "values": self._values.clone(), "magnitudes": mags,
                "documents": self._loc[0].clone(), "positions": self._loc[1].clone()}


class RelativeActivity(ActiveFraction):
    """How often each hidden neuron is active, with a threshold relative to the token's own scale.

    An entry counts as active when ``|x| > rel_eps * rms(x_token)``, the root mean square over that token's
    hidden entries. A fixed absolute threshold would call every neuron of a large-scale model active and every
    neuron of a small-scale one dead; the relative rule needs no calibration pass, fits ReLU models (exact zeros
    are never active) as well as SiLU and GELU ones (tiny negative tails count as near zero), and is what TEAL-
    style activation sparsity measures. A token whose hidden vector is all zero has every entry inactive.

    Arguments:
        rel_eps: the threshold as a fraction of the token's RMS; must be positive.

    Returns (from `result()`):
        `ActiveFraction`'s `{"count", "per_feature", "overall"}`: per-neuron activation frequency and the
        fraction of active entries.
    """

    def __init__(self, rel_eps: float = 1e-3) -> None:
        if not (isinstance(rel_eps, (int, float)) and 0.0 < rel_eps < math.inf):
            raise ActkitError(f"the relative sparsity threshold must be a positive number, got {rel_eps!r}")
        super().__init__(threshold=float(rel_eps))

    def _accumulate(self, rows: torch.Tensor) -> None:
        work = rows.float() if rows.dtype != _F64 else rows
        rms = work.pow(2).mean(dim=1, keepdim=True).sqrt()
        super()._accumulate(work / rms)  # 0/0 is NaN, and NaN > eps is False: an all-zero token is inactive


class LogPartition(BaseReducer):
    """Per-token log-partition log Z = logsumexp(logits): how large the output logits grow.

    A drifting log Z is the symptom of logit growth (z-loss exists to keep it near 0); it is also what makes a
    model's probabilities overflow in low precision. The logsumexp is taken per token, then masked, so no row of
    the (B, T, V) logits is copied.

    Returns (from `result()`):
        `{"count": int, "mean", "std", "min", "max": float}`; NaN when no token was seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self._mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean (Chan's update keeps it accurate)
        self._min = math.inf
        self._max = -math.inf

    def update(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, where: torch.Tensor | None = None
    ) -> None:
        check_activations(type(self).__name__, x, mask)
        self._set_d(int(x.shape[-1]))
        work = x.detach() if x.dtype == _F64 else x.detach().float()
        lse = torch.logsumexp(work, dim=-1)
        lse = lse.reshape(-1) if mask is None else lse[mask.bool()]
        if lse.numel() == 0:
            return
        shift = float(lse.mean())  # sums of squares around a batch shift stay accurate for large log Z
        c = (lse - shift).to("cpu", _F64)  # N values; on the CPU, since MPS has no float64
        n = int(lse.numel())
        self._combine(n, shift + float(c.sum()) / n, float((c * c).sum() - c.sum() ** 2 / n),
                      float(lse.min()), float(lse.max()))
        self.count += n

    def _combine(self, n: int, mean: float, m2: float, mn: float, mx: float) -> None:
        if self.count == 0:
            self._mean, self._m2 = mean, max(m2, 0.0)
        else:
            total = self.count + n
            delta = mean - self._mean
            self._mean += delta * n / total
            self._m2 += max(m2, 0.0) + delta * delta * self.count * n / total
        self._min = min(self._min, mn)
        self._max = max(self._max, mx)

    def _accumulate(self, rows: torch.Tensor) -> None:  # pragma: no cover - update is overridden
        raise NotImplementedError

    def _merge_state(self, other: LogPartition) -> None:
        self._combine(other.count, other._mean, other._m2, other._min, other._max)

    def result(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0, "mean": _NAN, "std": _NAN, "min": _NAN, "max": _NAN}
        return {"count": self.count, "mean": self._mean, "std": math.sqrt(self._m2 / self.count),
                "min": self._min, "max": self._max}


class ConditionalMean(BaseReducer):
    """Mean of chosen channels over the tokens where each exceeds a magnitude threshold.

    The massive-activation intervention replaces a massive value by its mean *where it is massive*, so this
    averages channel c only over the tokens with ``|x_c| >= threshold``.

    Arguments:
        dims: the channels to average.
        threshold: the magnitude a value must reach to count.

    Returns (from `result()`):
        `{"count": tokens seen, "hits": (k,) number of counted tokens per channel, "mean": (k,) float64 (NaN
        where a channel never reached the threshold)}`.
    """

    def __init__(self, dims: list[int], threshold: float) -> None:
        super().__init__()
        if not dims:
            raise ActkitError("ConditionalMean needs at least one channel")
        self.dims = [int(d) for d in dims]
        self.threshold = float(threshold)
        self._sum = torch.zeros(len(self.dims), dtype=_F64)
        self._hits = torch.zeros(len(self.dims), dtype=_F64)

    def _config(self) -> tuple[Any, ...]:
        return (tuple(self.dims), self.threshold)

    def _init_state(self, d: int) -> None:
        if max(self.dims) >= d:
            raise ActkitError(f"ConditionalMean: channel {max(self.dims)} does not exist in a site of size {d}")

    def _accumulate(self, rows: torch.Tensor) -> None:
        sel = rows[:, self.dims].float() if rows.dtype != _F64 else rows[:, self.dims]
        hit = sel.abs() >= self.threshold
        self._sum += torch.where(hit, sel, 0.0).sum(0).to("cpu", _F64)
        self._hits += hit.sum(0).to("cpu", _F64)

    def _merge_state(self, other: ConditionalMean) -> None:
        self._sum += other._sum
        self._hits += other._hits

    def result(self) -> dict[str, Any]:
        mean = torch.where(self._hits > 0, self._sum / self._hits.clamp_min(1.0), _NAN)
        return {"count": self.count, "hits": self._hits.clone(), "mean": mean}
