"""Attribution patching: estimate every patching effect at once from one backward pass (AtP), and AtP*.

**AtP** (Nanda 2023; Kramár et al. 2024) linearises the metric M around the run that is patched (the base run;
the corrupt run when denoising) and estimates the effect of writing the other run's activation a' at node n as

    ĉ_AtP(n) = (a'(n) − a(n)) · ∂M/∂a(n)                    (summed over the hidden dimension)

For a position site the node is (block, position); for ``heads`` it is (block, head), summed over positions and
the head's dimensions. Cost: two plain forward passes, one forward and one backward pass with gradients.

**AtP*** (Kramár et al. 2024) removes AtP's two main sources of false negatives:

- *QK fix.* A node that feeds an attention softmax can change the pattern far more than the gradient of a
  saturated softmax says. For a residual node at position s (``resid_pre.j``, or ``resid_post.j−1``), patching
  makes the queries and keys of block j at s exactly those of the other run, so block j's pattern is recomputed
  exactly instead of linearised, and only what follows the pattern is linear:

      ĉ_QK(n) = a·(g − g_A) + Σ_{heads, t, u} ∂M/∂A_tu · (A'_tu(s) − A_tu)

  where a = a'(n) − a(n), g = ∂M/∂a(n), g_A is the part of g that flows through block j's pattern A (the
  vector-Jacobian product of A with ∂M/∂A), and A'(s) is the softmax recomputed with the query and key at s
  replaced (its row s and its column s change). The queries, keys, mask, scaling and soft-cap are the ones the
  model passed to its attention function (read through the core's `intercept_attention`), so rotary embeddings
  and QK-norms need no per-family code. Only residual sites have exact queries and keys to substitute: for
  ``attn_out``, ``mlp_out`` and ``heads`` AtP* applies GradDrop alone.
- *GradDrop.* Direct and indirect effects of a node can cancel in its gradient. GD_ℓ is the estimate with the
  gradient that flows back into block ℓ's attention and MLP branches dropped: the backward pass crosses block ℓ
  as if it were the identity. AtP* averages

      ĉ_GD(n) = 1/(L−1) Σ_{ℓ ≠ ℓ(n)} ĉ_{GD_ℓ}(n)

  over the L−1 blocks other than the one that writes n (a residual node belongs to the block that writes it;
  ``resid_pre.0``, written by the embedding, averages over all L blocks). Each term keeps its sign, so the
  estimates stay comparable with signed patching effects. Cost: one full backward pass, then for each block ℓ a
  backward pass from ℓ's input down, seeded with what ℓ adds to the gradient there (the gradient entering its
  input minus the gradient at its output) — about L/2 full backward passes in all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.attention import AttentionCall, intercept_attention
from actkit.core.hooks import tap
from actkit.core.interventions import Apply
from actkit.core.layers import resolve_layers
from actkit.errors import ActkitError
from actkit.localize.pairs import PromptPair
from actkit.localize.patching import (
    PatchResult,
    Runs,
    check_site,
    core_site,
    head_count,
    plain_runs,
)

METHODS = ("exact", "atp", "atp-star")
RESIDUAL = ("resid_pre", "resid_post")


@dataclass
class Pattern:
    """What one attention call used: queries and keys per head (1, H, T, d_head), the allowed pairs, the
    scaling and soft-cap, and the probabilities (1, H, T, T) as a tensor of the autograd graph."""

    query: torch.Tensor
    key: torch.Tensor
    allowed: torch.Tensor
    scaling: float
    softcap: float | None
    probs: torch.Tensor | None = None

    def scores(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        s = (query @ key.transpose(-1, -2)) * self.scaling
        return torch.tanh(s / self.softcap) * self.softcap if self.softcap else s


def _pattern(call: AttentionCall) -> Pattern:
    allowed = call.allowed()
    if allowed is None:
        raise ActkitError("AtP*'s QK fix cannot read this model's attention mask format; use --method atp")
    heads = call.query.shape[1]
    key = call.key.repeat_interleave(heads // call.key.shape[1], dim=1)
    return Pattern(call.query, key, allowed, call.scaling, call.softcap)


def _recorder(store: dict[int, Pattern], keep_graph: bool) -> Callable[[AttentionCall], Any]:
    """An attention handler that records each call; with `keep_graph` it computes attention itself (eager,
    the same arithmetic the QK fix uses) so that the probabilities are a tensor whose gradient can be read."""
    def handler(call: AttentionCall) -> Any:
        pattern = _pattern(call)
        if not keep_graph:
            store[call.layer] = Pattern(pattern.query.detach(), pattern.key.detach(), pattern.allowed,
                                        pattern.scaling, pattern.softcap)
            return call.run()
        scores = pattern.scores(pattern.query, pattern.key).masked_fill(~pattern.allowed, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(call.query.dtype)
        value = call.value.repeat_interleave(call.query.shape[1] // call.value.shape[1], dim=1)
        pattern.probs = probs
        store[call.layer] = pattern
        return (probs @ value).transpose(1, 2).contiguous(), probs
    return handler


def pattern_shift(base: Pattern, source: Pattern, grad: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """For every position s: Σ ∂M/∂A · (A'(s) − A), A'(s) being the softmax with the query and key at s taken
    from `source` (row s and column s of the scores change). `grad` is (R, H, T, T), one ∂M/∂A per row of the
    base run (the rows share one pattern); returns (R, T)."""
    assert base.probs is not None
    length = base.query.shape[2]
    scores = base.scores(base.query[:1], base.key[:1]).detach()[0]  # (H, T, T)
    rows = base.scores(source.query, base.key[:1]).detach()[0]  # [h, s, t] = q'_s · k_t
    cols = base.scores(base.query[:1], source.key).detach()[0]  # [h, t, s] = q_t · k'_s
    diag = base.scores(source.query[..., None, :], source.key[..., None, :]).detach()[0, ..., 0, 0]  # (H, T)
    probs, g, allowed = base.probs.detach()[0].float(), grad.float(), base.allowed[0]
    device = grad.device
    out = torch.zeros(grad.shape[0], length, dtype=torch.float64, device=device)
    for start in range(0, length, chunk):
        idx = torch.arange(start, min(start + chunk, length), device=device)
        patched = scores.expand(len(idx), -1, -1, -1).clone()  # (n, H, T, T)
        n = torch.arange(len(idx), device=device)
        patched[n, :, idx, :] = rows[:, idx, :].transpose(0, 1)
        patched[n, :, :, idx] = cols[:, :, idx].permute(2, 0, 1)
        patched[n, :, idx, idx] = diag[:, idx].transpose(0, 1)
        shifted = torch.softmax(patched.masked_fill(~allowed, float("-inf")).float(), dim=-1).nan_to_num(0.0)
        out[:, idx] = torch.einsum("nhtu,rhtu->rn", shifted - probs, g).double()
    return out


def _writer_block(site: str, layer: int) -> int | None:
    """The block that writes a node (None for the embedding's ``resid_pre.0``)."""
    if site == "resid_pre":
        return layer - 1 if layer > 0 else None
    return layer


def _pattern_block(site: str, layer: int, n_layers: int) -> int | None:
    """The first block whose attention reads a residual node at its position exactly."""
    if site == "resid_pre":
        return layer
    if site == "resid_post" and layer + 1 < n_layers:
        return layer + 1
    return None


def attribution_patching(model: nn.Module, pair: PromptPair, site: str = "resid_post", *,
                         metric: str = "logit-diff", direction: str = "denoise", layers: list[int] | None = None,
                         method: str = "atp", qk_fix: bool = True, grad_drop: bool = True) -> PatchResult:
    """AtP or AtP* estimates of `activation_patching`'s effects, for every block and position (or head).

    Arguments:
        method: ``atp`` or ``atp-star``.
        qk_fix, grad_drop: AtP*'s two parts, on by default (turn one off to see what the other does).
    """
    check_site(site)
    if method not in ("atp", "atp-star"):
        raise ActkitError(f"unknown attribution method {method!r}; use atp or atp-star (or exact patching)")
    star = method == "atp-star"
    start = time.perf_counter()
    anatomy = Anatomy.of(model)
    chosen = resolve_layers(model, layers)
    sites = [core_site(site, layer) for layer in chosen]
    fix = star and qk_fix and site in RESIDUAL
    targets = {i: _pattern_block(site, layer, anatomy.n_layers) for i, layer in enumerate(chosen)} if fix else {}
    pattern_blocks = sorted({j for j in targets.values() if j is not None})
    source_patterns: dict[int, Pattern] = {}  # the queries and keys of the run whose values are patched in
    runs = plain_runs(model, pair, sites, metric, direction,
                      dict.fromkeys(pattern_blocks, _recorder(source_patterns, keep_graph=False)))
    drop = star and grad_drop and anatomy.n_layers > 1
    graph = _GradientPass(model, anatomy, runs, sites, pattern_blocks, drop)
    variants = graph.variants()
    rows = []
    for i, layer in enumerate(chosen):
        move = (runs.source[sites[i]] - runs.base[sites[i]]).detach()
        node = torch.cat([v.node(i, graph.deltas[i]) for v in variants])
        j = targets.get(i)
        if j is None:
            per_variant = _per_column(move * node, site, model)  # (variants, columns)
        else:
            patterns = [v.patterns.get(j) for v in variants]
            probs = graph.probs[j]
            throughs = _throughs(probs, graph.deltas[i], patterns)
            g_patterns = torch.cat([torch.zeros_like(probs) if g is None else g for g in patterns])
            per_variant = ((move * (node - throughs)).sum(-1).double()
                           + pattern_shift(graph.patterns[j], source_patterns[j], g_patterns))
        if drop:
            own = _writer_block(site, layer)
            rows.append(per_variant[[1 + b for b in range(anatomy.n_layers) if b != own]].mean(dim=0))
        else:
            rows.append(per_variant[0])
    effects = torch.stack(rows)
    return PatchResult(site, method, runs.metric.name, direction, runs.clean_metric, runs.corrupt_metric,
                       effects.detach().double().cpu(), pair.tokens, chosen, time.perf_counter() - start)


class _GradientPass:
    """The base run with gradients: a zero leaf added at every node (its gradient is ∂M at the node), the
    recomputed attention patterns of `pattern_blocks`, and for GradDrop a zero leaf at every block's input and
    output, plus each block's input tensor."""

    def __init__(self, model: nn.Module, anatomy: Anatomy, runs: Runs, sites: list[str], pattern_blocks: list[int],
                 drop: bool):
        self.drop, self.n_layers = drop, anatomy.n_layers
        self.deltas = [torch.zeros_like(runs.base[s], requires_grad=True) for s in sites]
        writes: dict[str, list[Apply]] = {s: [Apply(_adder(d))] for s, d in zip(sites, self.deltas, strict=True)}
        self.entries: dict[int, torch.Tensor] = {}
        like = runs.base[sites[0]]
        self.probes = {(b, kind): torch.zeros(*runs.base_ids.shape, anatomy.hidden_size, dtype=like.dtype,
                                              device=like.device, requires_grad=True)
                       for b in range(anatomy.n_layers) if drop for kind in ("resid_pre", "resid_post")}
        for (b, kind), probe in self.probes.items():
            keep = self.entries if kind == "resid_pre" else None
            writes.setdefault(f"{kind}.{b}", []).append(Apply(_adder(probe, keep, b)))
        self.patterns: dict[int, Pattern] = {}
        with torch.enable_grad(), tap(model, write=writes), intercept_attention(
                anatomy, dict.fromkeys(pattern_blocks, _recorder(self.patterns, keep_graph=True))):
            self.value = runs.metric(model(input_ids=runs.base_ids).logits[:, -1])[0]
        self.probs = {j: p for j in pattern_blocks
                      if (p := self.patterns[j].probs) is not None and p.requires_grad}
        if len(self.probs) != len(pattern_blocks):
            raise ActkitError("AtP*'s QK fix did not see the attention probabilities in the graph; use --method atp")

    def variants(self) -> list[Gradients]:
        """The full gradients, then (with GradDrop) those of GD_0 .. GD_{L-1}."""
        probs = list(self.probs.values())
        leaves = [*self.deltas, *probs, *self.probes.values()]
        grads = torch.autograd.grad(self.value, leaves, retain_graph=True, allow_unused=True)
        n, m = len(self.deltas), len(probs)
        full = Gradients(list(grads[:n]), dict(zip(self.probs, grads[n:n + m], strict=True)))
        if not self.drop:
            return [full]
        at = dict(zip(self.probes, grads[n + m:], strict=True))
        return [full, *(full.dropping(b, self.entries[b], at[b, "resid_pre"], at[b, "resid_post"], self.deltas,
                                      self.probs) for b in range(self.n_layers))]


@dataclass
class Gradients:
    """∂M at every node (1, T, D) and at every recomputed pattern (1, H, T, T), under one backward rule."""

    nodes: list[torch.Tensor | None]
    patterns: dict[int, torch.Tensor | None]

    def node(self, i: int, like: torch.Tensor) -> torch.Tensor:
        g = self.nodes[i]
        return torch.zeros_like(like) if g is None else g

    def dropping(self, block: int, entry: torch.Tensor, entering: torch.Tensor | None, leaving: torch.Tensor | None,
                 deltas: list[torch.Tensor], patterns: dict[int, torch.Tensor]) -> Gradients:
        """The gradients of GD_block: the backward pass crosses `block` as if it were the identity.

        Block ℓ adds (gradient entering its input) − (gradient at its output) to everything upstream of it; that
        difference, pulled back from the block's input, is what GD_ℓ removes. Patterns of later blocks keep their
        gradient; the block's own pattern gets none.
        """
        seed = (entering if entering is not None else torch.zeros_like(entry)) - (
            leaving if leaving is not None else torch.zeros_like(entry))
        upstream = [j for j in patterns if j < block]
        pulled = torch.autograd.grad(entry, [*deltas, *(patterns[j] for j in upstream)], grad_outputs=seed,
                                     retain_graph=True, allow_unused=True)
        nodes = [g if c is None or g is None else g - c
                 for g, c in zip(self.nodes, pulled[:len(deltas)], strict=True)]
        changed = dict(self.patterns)
        for j, c in zip(upstream, pulled[len(deltas):], strict=True):
            g = changed.get(j)
            changed[j] = g if c is None or g is None else g - c
        if block in changed:
            changed[block] = None
        return Gradients(nodes, changed)


def _throughs(probs: torch.Tensor, delta: torch.Tensor, grads: list[torch.Tensor | None]) -> torch.Tensor:
    """For each ∂M/∂A in `grads`: the part of the node's gradient that flows through the pattern A (its
    vector-Jacobian product), all distinct ones in one batched call. Returns (variants, T, D)."""
    distinct: dict[int, int] = {}
    seeds: list[torch.Tensor] = []
    for g in grads:
        if g is not None and id(g) not in distinct:
            distinct[id(g)] = len(seeds)
            seeds.append(g)
    pulled = None
    if seeds:
        pulled = torch.autograd.grad(probs, delta, grad_outputs=torch.stack(seeds), retain_graph=True,
                                     is_grads_batched=True)[0]  # (distinct, 1, T, D)
    zero = torch.zeros_like(delta)
    return torch.cat([zero if g is None or pulled is None else pulled[distinct[id(g)]] for g in grads])


def _adder(delta: torch.Tensor, keep: dict[int, torch.Tensor] | None = None,
           block: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """x + delta (a zero leaf whose gradient is ∂M/∂x); with `keep`, the sum is also kept as ``keep[block]``."""
    def add(x: torch.Tensor) -> torch.Tensor:
        y = x + delta
        if keep is not None:
            keep[block] = y
        return y
    return add


def _per_column(product: torch.Tensor, site: str, model: nn.Module) -> torch.Tensor:
    """Sum a (R, T, D) product over the hidden dimension per position, or per head over positions too: (R, C)."""
    if site != "heads":
        return product.sum(-1).double()
    rows, length = product.shape[:2]
    return product.reshape(rows, length, head_count(model), -1).sum(dim=(1, 3)).double()
