"""Activation patching: run one prompt, write another run's activation at one site, measure the change.

Denoising (the default) runs the corrupt prompt and writes the clean activation in: a large effect means the site
carries what the clean run needs. Noising runs the clean prompt and writes the corrupt activation in: a large
effect means the behaviour breaks without the site. An effect is the metric after the patch minus the metric of
the run that was patched (the corrupt run when denoising, the clean run when noising).

Sites: ``resid_pre``, ``resid_post``, ``attn_out``, ``mlp_out`` per block and position, and ``heads``: one
attention head's output (its slice of the core's ``attn_hidden`` site, the output projection's input) per block,
at every position at once. Patches are batched: each row of a forward pass carries a different patch, written by
the core's `Set` intervention at that row's position only, so a sweep over L blocks x T positions costs
L*T/batch_size passes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.attention import Handler, intercept_attention
from actkit.core.hooks import Capture, tap
from actkit.core.interventions import Set
from actkit.core.layers import resolve_layers
from actkit.core.positions import At
from actkit.errors import ActkitError
from actkit.localize.metrics import Metric, make_metric
from actkit.localize.pairs import PromptPair

SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "heads")
DIRECTIONS = ("denoise", "noise")


@dataclass
class PatchResult:
    """Effects of patching one kind of site, one row per block: per position, or per head for ``heads``."""

    site: str
    method: str
    metric: str
    direction: str
    clean_metric: float
    corrupt_metric: float
    effects: torch.Tensor
    tokens: list[str]
    layers: list[int]
    seconds: float = 0.0

    @property
    def columns(self) -> str:
        return "head" if self.site == "heads" else "position"

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``actkit patch --json``."""
        return {"site": self.site, "method": self.method, "metric": self.metric, "direction": self.direction,
                "clean_metric": self.clean_metric, "corrupt_metric": self.corrupt_metric,
                "effects": [[float(v) for v in row] for row in self.effects], "layers": self.layers,
                "columns": self.columns, "tokens": self.tokens, "seconds": round(self.seconds, 4)}


def check_site(site: str) -> None:
    if site not in SITES:
        raise ActkitError(f"unknown patching site {site!r}; use one of {', '.join(SITES)}")


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ActkitError(f"unknown direction {direction!r}; use denoise (clean into corrupt) or noise")


def core_site(site: str, layer: int) -> str:
    """The core site behind a patching site: ``heads`` live in ``attn_hidden``."""
    return f"{'attn_hidden' if site == 'heads' else site}.{layer}"


def head_count(model: nn.Module) -> int:
    config: Any = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not heads:
        raise ActkitError(f"{type(model).__name__}'s config names no number of attention heads")
    return int(heads)


def capture(model: nn.Module, ids: torch.Tensor, sites: list[str], attention: Mapping[int, Handler] | None = None
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One plain pass: the activations at `sites` (1, T, D) and the last position's logits (1, V); `attention`
    handlers (block -> handler) see that pass's attention calls."""
    caps = {s: Capture() for s in sites}
    watch = intercept_attention(Anatomy.of(model), dict(attention)) if attention else nullcontext()
    with torch.no_grad(), tap(model, read=caps), watch as why:
        if why is not None:
            raise ActkitError(f"AtP*'s QK fix needs the model's attention calls: {why}; use --method atp")
        logits = model(input_ids=ids).logits[:, -1]
    values = {s: c.last for s, c in caps.items()}
    for s, v in values.items():
        if not torch.isfinite(v).all():
            raise ActkitError(f"the activation at {s} holds NaN or infinity; patching it would be meaningless "
                              "(check the model's dtype: float16 overflows in some models, use float32)")
    return values, logits


@dataclass
class Runs:
    """The two plain runs of a pair and the metric, oriented by direction: `base` is the run that is patched."""

    base_ids: torch.Tensor
    source_ids: torch.Tensor
    base: dict[str, torch.Tensor]
    source: dict[str, torch.Tensor]
    metric: Metric
    clean_metric: float
    corrupt_metric: float
    base_metric: float


def plain_runs(model: nn.Module, pair: PromptPair, sites: list[str], metric: str, direction: str,
               source_attention: Mapping[int, Handler] | None = None) -> Runs:
    """Both plain runs; `source_attention` handlers see the attention calls of the run whose values are patched in."""
    check_direction(direction)
    denoise = direction == "denoise"
    device = next(model.parameters()).device  # a pair is tokenized on the CPU; the runs go where the model is
    clean_ids, corrupt_ids = pair.clean.to(device), pair.corrupt.to(device)
    clean, clean_logits = capture(model, clean_ids, sites, source_attention if denoise else None)
    corrupt, corrupt_logits = capture(model, corrupt_ids, sites, None if denoise else source_attention)
    if clean_logits.shape[-1] <= max(pair.answer, pair.foil or 0):
        raise ActkitError("the answer or foil token id is outside the model's vocabulary: is the tokenizer the "
                          "model's own?")
    m = make_metric(metric, pair.answer, pair.foil, clean_logits[0])
    clean_value, corrupt_value = float(m(clean_logits)[0]), float(m(corrupt_logits)[0])
    if denoise:
        return Runs(corrupt_ids, clean_ids, corrupt, clean, m, clean_value, corrupt_value, corrupt_value)
    return Runs(clean_ids, corrupt_ids, clean, corrupt, m, clean_value, corrupt_value, clean_value)


def activation_patching(model: nn.Module, pair: PromptPair, site: str = "resid_post", *, metric: str = "logit-diff",
                        direction: str = "denoise", layers: list[int] | None = None,
                        batch_size: int = 32) -> PatchResult:
    """Exact patching of every block (and position, or head) of one site kind; one patch per row of a batch.

    Returns:
        `PatchResult` with ``effects[i][j]`` = metric(patched at block ``layers[i]``, position or head j) minus
        the metric of the unpatched run.
    """
    check_site(site)
    if batch_size <= 0:
        raise ActkitError(f"batch_size must be positive (got {batch_size})")
    start = time.perf_counter()
    chosen = resolve_layers(model, layers)
    sites = [core_site(site, layer) for layer in chosen]
    runs = plain_runs(model, pair, sites, metric, direction)
    length = pair.length
    columns = head_count(model) if site == "heads" else length
    patches = [(i, j) for i in range(len(chosen)) for j in range(columns)]
    effects = torch.zeros(len(chosen), columns, dtype=torch.float64)
    for first in range(0, len(patches), batch_size):
        chunk = patches[first:first + batch_size]
        writes = {sites[i]: _patch(runs, sites[i], chunk, i, site == "heads", columns, length)
                  for i in sorted({i for i, _ in chunk})}
        with torch.no_grad(), tap(model, write=writes):
            logits = model(input_ids=runs.base_ids.expand(len(chunk), -1)).logits[:, -1]
        values = runs.metric(logits) - runs.base_metric
        for row, (i, j) in enumerate(chunk):
            effects[i, j] = float(values[row])
    return PatchResult(site, "exact", runs.metric.name, direction, runs.clean_metric, runs.corrupt_metric, effects,
                       pair.tokens, chosen, time.perf_counter() - start)


def _patch(runs: Runs, site: str, chunk: list[tuple[int, int]], layer: int, heads: bool, columns: int,
           length: int) -> Set:
    """One write for one block: the rows of the chunk that patch this block get the source's values."""
    source = runs.source[site]
    if not heads:
        rows = [[j] if i == layer else [] for i, j in chunk]
        return Set(source, At(rows))
    width = source.shape[-1] // columns
    value = runs.base[site].expand(len(chunk), -1, -1).clone()
    for row, (i, j) in enumerate(chunk):
        if i == layer:
            value[row, :, j * width:(j + 1) * width] = source[0, :, j * width:(j + 1) * width]
    everywhere = list(range(length))
    return Set(value, At([everywhere if i == layer else [] for i, _ in chunk]))
