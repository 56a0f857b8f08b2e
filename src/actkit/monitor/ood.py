"""Out-of-distribution scores: neuron activation coverage (NAC-style) against two output baselines.

Coverage (after Liu et al.'s neuron activation coverage, NAC): on in-distribution text, each neuron of the
``mlp_hidden`` sites gets a histogram of the values it takes (bins over its mean +- `width` standard deviations,
plus one bin below and one above). A token's coverage at a neuron is ``min(p / r, 1)``, p the fraction of
in-distribution tokens that fell in the same bin and r a small fraction ("seen often enough"); a text's coverage is
the mean over its tokens, the neurons and the sites. Low coverage means activation states the fitted text rarely
produced: the OOD score is ``1 - coverage``. Liu et al. histogram a neuron *state* that multiplies the activation by
the gradient of a KL divergence; this uses the activation value alone (no backward pass), hence "NAC-style".

Fitting is two streaming passes of `collect` (the core's `Moments`, then `NeuronHistogram`): memory is the
histograms (neurons x bins), whatever the number of tokens.

Baselines from the same forward pass as the coverage: maximum softmax probability (MSP: ``1 - mean over tokens of
the largest next-token probability``) and perplexity (the mean next-token negative log-likelihood of the text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from actkit.core.collect import collect, context_length, token_batches
from actkit.core.hooks import tap
from actkit.core.positions import StepContext
from actkit.core.stats import BaseReducer, Moments
from actkit.errors import ActkitError

_F64 = torch.float64
SCORES: tuple[str, ...] = ("coverage", "msp", "perplexity")


class NeuronHistogram(BaseReducer):
    """Per-neuron histogram over fixed per-neuron ranges: ``bins`` equal bins in [lo, hi), one below, one above.

    Memory is (d, bins + 2) float64, whatever the number of tokens.

    Returns (from `result()`):
        ``{"count": int, "counts": (d, bins + 2) float64}`` (column 0: below lo, column bins + 1: at or above hi).
    """

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, bins: int = 32) -> None:
        super().__init__()
        if bins < 1:
            raise ActkitError(f"a histogram needs at least one bin, got {bins}")
        self.lo = lo.to(_F64)
        self.hi = torch.maximum(hi.to(_F64), self.lo + 1e-6)
        self.bins = bins
        self.counts = torch.zeros(0, bins + 2, dtype=_F64)

    def _config(self) -> tuple[Any, ...]:
        return (self.bins, tuple(self.lo.tolist()), tuple(self.hi.tolist()))

    def _init_state(self, d: int) -> None:
        if d != self.lo.shape[0]:
            raise ActkitError(f"the histogram ranges cover {self.lo.shape[0]} neurons but the site has {d}")
        self.counts = torch.zeros(d, self.bins + 2, dtype=_F64)

    def index(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, d) values -> (N, d) int64 bin indices in [0, bins + 1]."""
        lo, hi = self.lo.to(rows.device), self.hi.to(rows.device)
        scaled = (rows.to(_F64 if rows.device.type != "mps" else torch.float32) - lo) / (hi - lo) * self.bins
        return (scaled.floor().clamp(-1, self.bins) + 1).long()

    def _accumulate(self, rows: torch.Tensor) -> None:
        d = rows.shape[1]
        flat = self.index(rows) + torch.arange(d, device=rows.device) * (self.bins + 2)
        counts = torch.bincount(flat.reshape(-1), minlength=d * (self.bins + 2))
        self.counts += counts.reshape(d, self.bins + 2).to("cpu", _F64)

    def _merge_state(self, other: NeuronHistogram) -> None:
        self.counts += other.counts

    def result(self) -> dict[str, Any]:
        return {"count": self.count, "counts": self.counts.clone()}


@dataclass
class Coverage:
    """A fitted coverage model: per site, each neuron's bin ranges and in-distribution bin fractions.

    Attributes:
        histograms: site -> the fitted `NeuronHistogram` (its ranges and counts).
        r: the fraction of in-distribution tokens at which a bin counts as fully covered.
        tokens: how many in-distribution tokens were read.
    """

    histograms: dict[str, NeuronHistogram]
    r: float
    tokens: int

    def token_coverage(self, site: str, x: torch.Tensor) -> torch.Tensor:
        """(..., d) activations at `site` -> (...) float64: mean over neurons of ``min(p / r, 1)``."""
        hist = self.histograms[site]
        rows = x.detach().reshape(-1, x.shape[-1])
        density = hist.counts / max(hist.count, 1)
        covered = (density / self.r).clamp(max=1.0).to(rows.device)
        index = hist.index(rows)
        per_neuron = covered[torch.arange(rows.shape[1], device=rows.device), index]
        return per_neuron.to(_F64).mean(-1).reshape(x.shape[:-1])


def fit_coverage(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, sites: str | Sequence[str] = "mlp_hidden.*",
                 bins: int = 32, width: float = 4.0, r: float | None = None, batch_size: int = 8,
                 max_tokens: int | None = None) -> Coverage:
    """Fit the coverage model on in-distribution texts, in two streaming passes.

    Arguments:
        model: the model.
        tokenizer: its tokenizer.
        texts: in-distribution documents.
        sites: the sites (a pattern such as ``"mlp_hidden.*"`` or a list).
        bins: bins per neuron over mean +- `width` standard deviations.
        width: the half-width of the binned range, in standard deviations.
        r: the fraction at which a bin is fully covered (default ``1 / (4 * bins)``: a quarter of a uniform bin).
        batch_size: documents per forward pass.
        max_tokens: read at most this many tokens (None: all).

    Returns:
        The `Coverage`.
    """
    if width <= 0:
        raise ActkitError(f"width must be positive, got {width}")
    moments = collect(model, texts, sites, {"moments": Moments}, tokenizer=tokenizer, batch_size=batch_size,
                      max_tokens=max_tokens)
    ranges = {}
    for site in moments.sites:
        m = moments[site]["moments"].result()
        ranges[site] = (m["mean"] - width * m["std"], m["mean"] + width * m["std"])
    histograms = {site: NeuronHistogram(lo, hi, bins) for site, (lo, hi) in ranges.items()}
    _fill(model, tokenizer, texts, histograms, batch_size=batch_size, max_tokens=max_tokens)
    return Coverage(histograms, r if r is not None else 1.0 / (4 * bins), moments.tokens)


def _fill(model: nn.Module, tokenizer: Any, texts: Sequence[str], histograms: dict[str, NeuronHistogram], *,
          batch_size: int, max_tokens: int | None) -> None:
    """The second pass: each site's own histogram (collect gives every site the same factories, these differ)."""
    device = next(model.parameters()).device
    limit = context_length(model, tokenizer)
    with torch.inference_mode(), tap(model, read=dict(histograms)):
        for batch in token_batches(texts, tokenizer, limit=limit, batch_size=batch_size, max_tokens=max_tokens):
            model(input_ids=batch.ids.to(device), attention_mask=batch.mask.long().to(device), use_cache=False)


def ood_scores(model: nn.Module, tokenizer: Any, texts: Sequence[str], coverage: Coverage, *,
               batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Each text's OOD scores (higher: further from the fitted distribution), from one forward pass per batch.

    Arguments:
        model: the model the coverage was fitted on.
        tokenizer: its tokenizer.
        texts: the texts (each must fit the model's context).
        coverage: from `fit_coverage`.
        batch_size: texts per forward pass.

    Returns:
        ``{"coverage": 1 - mean coverage, "msp": 1 - mean max next-token probability, "perplexity": mean next-token
        NLL}``, each (N,) float64.
    """
    if isinstance(texts, str) or not texts:
        raise ActkitError("give a non-empty list of texts to score")
    limit = context_length(model, tokenizer)
    for i, text in enumerate(texts):
        if len(tokenizer(text)["input_ids"]) > limit:
            raise ActkitError(f"text {i} is longer than the model's context of {limit} tokens; shorten it")
    n = len(texts)
    cover_sum = torch.zeros(n, dtype=_F64)
    cover_count = torch.zeros(n, dtype=_F64)
    rows_now: list[int] = []

    def reader(site: str) -> Any:
        def read(x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
            values = coverage.token_coverage(site, x).cpu()
            m = mask.cpu()
            for b, doc in enumerate(rows_now):
                cover_sum[doc] += values[b][m[b]].sum()
                cover_count[doc] += m[b].sum()
        return read

    msp = torch.zeros(n, dtype=_F64)
    nll = torch.zeros(n, dtype=_F64)
    device = next(model.parameters()).device
    start = 0
    with torch.inference_mode(), tap(model, read={site: reader(site) for site in coverage.histograms}):
        for batch in token_batches(texts, tokenizer, limit=limit, batch_size=batch_size, split=False):
            rows_now[:] = [start + b for b in range(batch.ids.shape[0])]
            ids, mask = batch.ids.to(device), batch.mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits.float()
            logp = F.log_softmax(logits, dim=-1)
            top = logp.max(-1).values.exp()
            scored = mask[:, :-1] & mask[:, 1:]
            token_nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            for b, doc in enumerate(rows_now):
                msp[doc] = 1.0 - float(top[b][mask[b]].double().mean())
                nll[doc] = float(token_nll[b][scored[b]].double().mean()) if bool(scored[b].any()) else 0.0
            start += batch.ids.shape[0]
    return {"coverage": 1.0 - cover_sum / cover_count.clamp(min=1.0), "msp": msp, "perplexity": nll}


__all__ = ["SCORES", "Coverage", "NeuronHistogram", "fit_coverage", "ood_scores"]
