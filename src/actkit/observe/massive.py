"""Massive activations (Sun et al., 2024): find them, and test whether the model needs them as they are.

A massive activation is one entry of the residual stream (one channel of one token) whose magnitude is orders
of magnitude above the layer's typical entry. Following the paper, an entry is reported when its magnitude is
at least 100 times the median magnitude of all entries of its block's output (``resid_post.i``), and marked as
level 1000 when it is at least 1000 times that median. The median comes from a log-spaced histogram of |x| and
the candidates from the core `TopK` plus a per-channel peak, so memory does not grow with the tokens.

The paper's test of what they do: set them to zero at the block where they first appear and perplexity
explodes; set them to their mean value and it barely moves, because they act as fixed biases. `intervene` runs
that test with the core `tap` and an intervention (`ReplaceMassive`) at ``resid_post.L``: wherever one of the
massive channels reaches the threshold in a pass, its value is replaced by zero, or by its mean over the tokens
where it reached the threshold in an unmodified pass over the same text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.collect import context_length, next_token_nll
from actkit.core.hooks import tap
from actkit.core.interventions import Intervention
from actkit.core.positions import StepContext
from actkit.errors import ActkitError
from actkit.observe.reducers import ConditionalMean

#: An entry is massive at ratio >= RATIOS[0] of its layer's median magnitude; RATIOS[1] marks the extreme ones.
RATIOS = (100.0, 1000.0)


def level(ratio: float) -> int | None:
    """The massive level of an entry whose magnitude is `ratio` times its layer's median: 1000, 100 or None."""
    if not math.isfinite(ratio):
        return int(RATIOS[1]) if ratio > 0 else None
    for bound in reversed(RATIOS):
        if ratio >= bound:
            return int(bound)
    return None


def massive_entries(layer: int, median: float, top: dict[str, Any], peak: dict[str, Any],
                    token: Callable[[int, int], tuple[int | None, str | None]]) -> list[dict[str, Any]]:
    """The massive entries of one block, from its `TopK` and `ChannelPeak` results, largest first.

    Arguments:
        layer: the block index.
        median: the median magnitude of the block's entries.
        top: `TopK.result()` of ``resid_post.layer``.
        peak: `ChannelPeak.result()` of the same site.
        token: (document, position) -> (token id, token text), either may be None.

    Returns:
        One dict per distinct (document, position, dim), see the module README for the keys.
    """
    if not (median > 0 and math.isfinite(median)):
        return []
    found: dict[tuple[int, int, int], tuple[float, float]] = {}
    for value, mag, doc, pos, dim in zip(top["values"], top["magnitudes"], top["documents"], top["positions"],
                                         top["dims"], strict=True):
        found[(int(doc), int(pos), int(dim))] = (float(value), float(mag))
    peak_mags = peak["magnitudes"].tolist()
    for dim, mag in enumerate(peak_mags):
        if mag == mag and mag >= RATIOS[0] * median:
            key = (int(peak["documents"][dim]), int(peak["positions"][dim]), dim)
            found.setdefault(key, (float(peak["values"][dim]), float(mag)))
    out: list[dict[str, Any]] = []
    for (doc, pos, dim), (value, mag) in found.items():
        ratio = mag / median
        lvl = level(ratio)
        if lvl is None:
            continue
        token_id, text = token(doc, pos)
        out.append({"layer": layer, "dim": dim, "document": doc, "position": pos, "token_id": token_id,
                    "token": text, "value": value, "magnitude": mag, "ratio": ratio, "level": lvl})
    out.sort(key=lambda e: -e["magnitude"])
    return out


class TokenLookup:
    """(document, position) -> (token id, token text), re-tokenizing only the documents asked for."""

    def __init__(self, texts: Sequence[str] | Iterable[str], tokenizer: Any):
        self.texts = texts if isinstance(texts, Sequence) else None
        self.tokenizer = tokenizer
        self._ids: dict[int, list[int]] = {}

    def __call__(self, document: int, position: int) -> tuple[int | None, str | None]:
        if self.texts is None or not 0 <= document < len(self.texts) or position < 0:
            return None, None
        if document not in self._ids:
            self._ids[document] = list(self.tokenizer(self.texts[document])["input_ids"])
        ids = self._ids[document]
        if position >= len(ids):
            return None, None
        token_id = int(ids[position])
        decode = getattr(self.tokenizer, "decode", None)
        try:
            text = decode([token_id]) if callable(decode) else None
        except Exception:  # a tokenizer stand-in without a vocabulary: the id alone is still useful
            text = None
        return token_id, None if text is None else str(text)


class ReplaceMassive(Intervention):
    """Where channel ``dims[j]`` has magnitude >= `threshold`, set it to ``values[j]`` (zero, or its mean).

    The positions are data-driven: the tokens where the channel is massive in this pass (on trained models the
    first token and some delimiters), whatever the text. Counts the entries it replaced on real tokens.

    Arguments:
        dims: the channels of the site to watch.
        threshold: the magnitude that marks a value as massive.
        values: (len(dims),) replacement values.
    """

    def __init__(self, dims: Sequence[int], threshold: float, values: torch.Tensor):
        super().__init__()
        if len(values) != len(dims):
            raise ActkitError(f"ReplaceMassive needs one value per channel: {len(dims)} channels, {len(values)} values")
        self.dims = [int(d) for d in dims]
        self.threshold = float(threshold)
        self.values = torch.as_tensor(values, dtype=torch.float64)
        self.replaced = 0

    def edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        index = torch.tensor(self.dims, device=x.device)
        chosen = x.index_select(-1, index)
        hit = chosen.abs() >= self.threshold
        self.replaced += int((hit & ctx.valid.to(hit.device)[..., None]).sum())
        new = torch.where(hit, self.values.to(dtype=x.dtype).to(x.device), chosen)  # cast first: MPS has no float64
        return x.index_copy(-1, index, new)


def next_token_loss(model: nn.Module, tokenizer: Any, texts: Sequence[str] | Iterable[str], *,
                    read: dict[str, Any] | None = None, write: dict[str, Any] | None = None,
                    max_tokens: int | None = None, batch_size: int = 8, progress: bool = False) -> tuple[float, int]:
    """Mean next-token NLL (nats) of `model` on `texts` while `tap` reads and writes are active.

    The tokens are `collect`'s (same chunks, same budget), so a profile and its intervention score the same text;
    the loss is the core's `actkit.core.collect.next_token_nll`.

    Returns:
        (mean NLL, number of scored tokens); the NLL is inf or NaN when an edit makes the logits overflow.
    """
    with tap(model, read=read or {}, write=write or {}):
        total, count = next_token_nll(model, texts, tokenizer, limit=context_length(model, tokenizer),
                                      batch_size=batch_size, max_tokens=max_tokens, progress=progress)
    if count == 0:
        raise ActkitError("no token to score: every chunk of the text is a single token")
    return total / count, count


def _perplexity(nll: float) -> float:
    return math.exp(nll) if nll < 700 else math.inf  # NaN stays NaN; both become null in JSON


def intervene(model: nn.Module, tokenizer: Any, texts: Sequence[str] | Iterable[str], layer: int,
              dims: Sequence[int], threshold: float, *, max_tokens: int | None = None, batch_size: int = 8,
              progress: bool = False) -> dict[str, Any]:
    """Perplexity with the massive activations of block `layer` as they are, set to zero, and set to their mean.

    Arguments:
        model, tokenizer, texts: a causal LM and the text to score (three passes over it).
        layer: the block whose output ``resid_post.layer`` is edited (the first block where they appear).
        dims: the massive channels of that block.
        threshold: the magnitude from which a value counts as massive (100 x the block's median magnitude).
        max_tokens, batch_size, progress: as for `collect`.

    Returns:
        ``{"site", "layer", "dims", "threshold", "mean_values", "entries", "tokens", "nll" and "perplexity":
        {"original", "zero", "mean"}, "replaced": {"zero", "mean"}}``; see the README for their meaning.
    """
    if not dims:
        raise ActkitError("no massive channels to intervene on")
    site = f"resid_post.{layer}"
    if not isinstance(texts, Sequence):
        texts = list(texts)  # three passes over the same text
    options = {"max_tokens": max_tokens, "batch_size": batch_size, "progress": progress}
    means = ConditionalMean(list(dims), threshold)
    original, scored = next_token_loss(model, tokenizer, texts, read={site: means}, **options)  # type: ignore[arg-type]
    found = means.result()
    values = found["mean"].nan_to_num(0.0)
    zero_edit = ReplaceMassive(dims, threshold, torch.zeros(len(dims), dtype=torch.float64))
    zero, _ = next_token_loss(model, tokenizer, texts, write={site: zero_edit}, **options)  # type: ignore[arg-type]
    mean_edit = ReplaceMassive(dims, threshold, values)
    mean, _ = next_token_loss(model, tokenizer, texts, write={site: mean_edit}, **options)  # type: ignore[arg-type]
    losses = {"original": original, "zero": zero, "mean": mean}
    return {
        "site": site,
        "layer": layer,
        "dims": [int(d) for d in dims],
        "threshold": float(threshold),
        "mean_values": [float(v) for v in values],
        "entries": int(found["hits"].sum()),
        "tokens": scored,
        "nll": losses,
        "perplexity": {k: _perplexity(v) for k, v in losses.items()},
        "replaced": {"zero": zero_edit.replaced, "mean": mean_edit.replaced},
    }


__all__ = ["RATIOS", "ReplaceMassive", "TokenLookup", "intervene", "level", "massive_entries", "next_token_loss"]
