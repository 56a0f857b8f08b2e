"""Per-expert statistics of an MoE model over calibration text: routing, gates and output norms, in one pass.

For every MoE block the pass reads two core sites through `tap`: ``mlp_in.i`` (the tokens the experts receive)
and ``router.i`` (the router logits). From the logits it recomputes the routing exactly as the model does
(`routing.route`), then runs each expert only on the tokens routed to it, so the cost is one more evaluation of
the experts the model ran anyway, not E/k times the MoE cost of running every expert on every token. With
``every_token=True`` each expert sees every token instead (what REAP's reference observer computes); norms and
probabilities are then averaged over all tokens, while counts and applied gates still describe the routing.

Gates come in two normalisations, both kept:

- the **applied gate** g: the weight the model multiplies the expert's output by (top-k of the softmax over all
  experts, renormalized over the k where the family does; see `routing`), zero for a token not routed there;
- the **router probability** p: the softmax over all E experts, before the top-k.

Padding is never read; every real token counts, the first one included. The pass runs the model's body (its
blocks) without the output head, whose logits no statistic needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actkit.compress.experts.routing import MoeLayer, moe_layers, route
from actkit.core.collect import context_length, token_batches
from actkit.core.experts import expert_output
from actkit.core.hooks import Read, tap
from actkit.core.positions import StepContext
from actkit.errors import ActkitError

_F64 = torch.float64
#: Per-expert sums every layer keeps, (E,) float64 each.
SUMS = ("routed", "observed", "gate_sum", "prob_sum", "norm_sum", "gated_norm_sum", "prob_norm_sum")


@dataclass
class ExpertStats:
    """What `expert_stats` measured, per MoE block (rows of every (L, E) tensor follow ``layers``).

    Attributes:
        layers: the indices of the MoE blocks.
        num_experts, top_k: E and k (the same in every block).
        renormalized: per block, whether its router renormalizes the top-k probabilities.
        tokens: real tokens that went through each block.
        every_token: whether expert outputs were computed on every token, not only on routed ones.
        routed: tokens routed to each expert (top-k assignments).
        observed: tokens each expert's output was computed on (``routed``, or ``tokens`` with every_token).
        gate_sum: sum over routed tokens of the applied gate g.
        prob_sum: sum over observed tokens of the router probability p.
        norm_sum: sum over observed tokens of ||f(x)||_2, the expert's output before gating (EAN).
        gated_norm_sum: sum over routed tokens of g * ||f(x)||_2 (REAP's numerator).
        prob_norm_sum: sum over observed tokens of p * ||f(x)||_2.
        logit_gram: (L, E, E) sum over tokens of l l^T of the router logits (router-logit similarity).
    """

    layers: list[int]
    num_experts: int
    top_k: int
    renormalized: list[bool]
    tokens: int
    every_token: bool
    routed: torch.Tensor
    observed: torch.Tensor
    gate_sum: torch.Tensor
    prob_sum: torch.Tensor
    norm_sum: torch.Tensor
    gated_norm_sum: torch.Tensor
    prob_norm_sum: torch.Tensor
    logit_gram: torch.Tensor

    def row(self, layer: int) -> int:
        """The row of block `layer` in the (L, E) tensors."""
        if layer not in self.layers:
            raise ActkitError(f"block {layer} is not an MoE block; the MoE blocks are {self.layers}")
        return self.layers.index(layer)

    def frequency(self) -> torch.Tensor:
        """(L, E) fraction of tokens routed to each expert (each row sums to top_k)."""
        return self.routed / max(self.tokens, 1)

    def mean_gate(self) -> torch.Tensor:
        """(L, E) mean applied gate over the tokens routed to each expert; NaN for an expert never routed."""
        return _ratio(self.gate_sum, self.routed)

    def mean_prob(self) -> torch.Tensor:
        """(L, E) mean router probability over the observed tokens; NaN where none was observed."""
        return _ratio(self.prob_sum, self.observed)

    def mean_norm(self) -> torch.Tensor:
        """(L, E) mean ||f(x)||_2 over the observed tokens; NaN where none was observed."""
        return _ratio(self.norm_sum, self.observed)

    def summary(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per MoE block: counts, frequencies, mean gates and norms per expert."""
        out = []
        for i, layer in enumerate(self.layers):
            out.append({
                "layer": layer, "renormalized": self.renormalized[i], "routed": _ints(self.routed[i]),
                "frequency": _floats(self.frequency()[i]), "mean_gate": _floats(self.mean_gate()[i]),
                "mean_prob": _floats(self.mean_prob()[i]), "mean_norm": _floats(self.mean_norm()[i]),
            })
        return out


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))


def _floats(t: torch.Tensor) -> list[float | None]:
    return [None if v != v else round(float(v), 6) for v in t.tolist()]


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.tolist()]


@dataclass
class _Observer:
    """The running sums of one MoE block; fed by the reads at its ``mlp_in`` and ``router`` sites."""

    moe: MoeLayer
    every_token: bool
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    gram: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    tokens: int = 0
    _hidden: torch.Tensor | None = None

    def __post_init__(self) -> None:
        e = self.moe.num_experts
        self.sums = {name: torch.zeros(e, dtype=_F64) for name in SUMS}
        self.gram = torch.zeros(e, e, dtype=_F64)

    def read_input(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        self._hidden = x

    def read_router(self, logits: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        hidden, self._hidden = self._hidden, None
        if hidden is None or tuple(hidden.shape[:2]) != tuple(logits.shape[:2]):
            raise ActkitError(f"block {self.moe.layer}: the router ran without the MoE block's input in the same "
                              "pass; expert statistics need the model's own forward")
        keep = mask.reshape(-1)
        self.update(hidden.reshape(-1, hidden.shape[-1])[keep], logits.reshape(-1, logits.shape[-1])[keep])

    def update(self, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        """Fold in N tokens: the experts' input (N, d) and the router logits (N, E)."""
        moe = self.moe
        probs, weights, index = route(logits, moe.top_k, moe.renormalize)
        gates = torch.zeros_like(probs).scatter_(1, index, weights)
        routed = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, index, True)
        seen = torch.ones_like(routed) if self.every_token else routed
        per_expert = torch.zeros(3, moe.num_experts, device=probs.device)
        for e in range(moe.num_experts):
            rows = seen[:, e].nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            norms = expert_output(moe.experts, moe.layout, hidden[rows], e).float().norm(dim=-1)
            per_expert[0, e] = norms.sum()
            per_expert[1, e] = (gates[rows, e] * norms).sum()
            per_expert[2, e] = (probs[rows, e] * norms).sum()
        batch = {
            "routed": routed.sum(0), "observed": seen.sum(0), "gate_sum": gates.sum(0),
            "prob_sum": (probs * seen).sum(0), "norm_sum": per_expert[0], "gated_norm_sum": per_expert[1],
            "prob_norm_sum": per_expert[2],
        }
        for name, value in batch.items():
            self.sums[name] += value.to("cpu", _F64)
        lf = logits.float()
        self.gram += (lf.T @ lf).to("cpu", _F64)
        self.tokens += int(logits.shape[0])


def expert_stats(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str] | Iterable[str],
    *,
    every_token: bool = False,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> ExpertStats:
    """Route calibration text through `model` and measure every expert of every MoE block.

    Arguments:
        model: a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE model (any family whose anatomy table has experts).
        tokenizer: its tokenizer (``tokenizer(text)["input_ids"]``).
        texts: documents, one per item; one longer than the model's context is split into chunks.
        every_token: compute each expert's output on every token, not only the tokens routed to it.
        batch_size: chunks per forward pass (right-padded; padding is never read).
        max_tokens: stop after this many tokens.

    Returns:
        An `ExpertStats`. The model is not changed; the hooks are gone when this returns.
    """
    if batch_size <= 0:
        raise ActkitError(f"batch_size must be positive (got {batch_size})")
    if max_tokens is not None and max_tokens <= 0:
        raise ActkitError(f"max_tokens must be a positive number of tokens (got {max_tokens})")
    layers = moe_layers(model)
    observers = [_Observer(moe, every_token) for moe in layers]
    reads: dict[str, Read] = {}
    for obs in observers:
        reads[f"mlp_in.{obs.moe.layer}"] = Read(obs.read_input)
        reads[f"router.{obs.moe.layer}"] = Read(obs.read_router)
    device = next(model.parameters()).device
    limit = context_length(model, tokenizer)
    with torch.inference_mode(), tap(model, read=reads) as state:
        body = state.anatomy.root  # the blocks are all the statistics need: the output head is skipped
        for batch in token_batches(texts, tokenizer, limit=limit, batch_size=batch_size, max_tokens=max_tokens):
            state.reset()
            body(input_ids=batch.ids.to(device), attention_mask=batch.mask.long().to(device), use_cache=False)
    tokens = observers[0].tokens
    if tokens == 0:
        raise ActkitError("no tokens to route: the calibration texts are empty")
    return ExpertStats(
        layers=[o.moe.layer for o in observers], num_experts=layers[0].num_experts, top_k=layers[0].top_k,
        renormalized=[o.moe.renormalize for o in observers], tokens=tokens, every_token=every_token,
        **{name: torch.stack([o.sums[name] for o in observers]) for name in SUMS},
        logit_gram=torch.stack([o.gram for o in observers]),
    )


__all__ = ["SUMS", "ExpertStats", "expert_stats"]
