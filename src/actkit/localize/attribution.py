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
  gradient that flows back into block ℓ (through its attention and MLP branches) set to zero; AtP* averages

      ĉ_GD(n) = 1/(L−1) Σ_{ℓ ≠ ℓ(n)} ĉ_{GD_ℓ}(n)

  over the L−1 blocks other than the one that writes n (a residual node belongs to the block that writes it;
  ``resid_pre.0``, written by the embedding, averages over all L blocks). Each term keeps its sign, so the
  estimates stay comparable with signed patching effects. Cost: L more backward passes (one graph, gates switched).
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
from actkit.errors import ActkitError
from actkit.localize.pairs import PromptPair
from actkit.localize.patching import (
    PatchResult,
    check_site,
    core_site,
    head_count,
    plain_runs,
    resolve_layers,
)

METHODS = ("exact", "atp", "atp-star")
RESIDUAL = ("resid_pre", "resid_post")


class _Switch:
    """Whether the gradient into one block is dropped; read when the backward pass reaches the gate."""

    closed = False


class _GradGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, switch: _Switch) -> torch.Tensor:
        ctx.switch = switch
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (torch.zeros_like(grad) if ctx.switch.closed else grad), None


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
    from `source` (row s and column s of the scores change). Returns (T,)."""
    assert base.probs is not None
    length = base.query.shape[2]
    scores = base.scores(base.query, base.key).detach()[0]  # (H, T, T)
    rows = base.scores(source.query, base.key).detach()[0]  # [h, s, t] = q'_s · k_t
    cols = base.scores(base.query, source.key).detach()[0]  # [h, t, s] = q_t · k'_s
    diag = base.scores(source.query[..., None, :], source.key[..., None, :]).detach()[0, ..., 0, 0]  # (H, T)
    probs, g, allowed = base.probs.detach()[0].float(), grad[0].float(), base.allowed[0]
    out = torch.zeros(length, dtype=torch.float64)
    for start in range(0, length, chunk):
        idx = torch.arange(start, min(start + chunk, length))
        patched = scores.expand(len(idx), -1, -1, -1).clone()  # (n, H, T, T)
        n = torch.arange(len(idx))
        patched[n, :, idx, :] = rows[:, idx, :].transpose(0, 1)
        patched[n, :, :, idx] = cols[:, :, idx].permute(2, 0, 1)
        patched[n, :, idx, idx] = diag[:, idx].transpose(0, 1)
        shifted = torch.softmax(patched.masked_fill(~allowed, float("-inf")).float(), dim=-1).nan_to_num(0.0)
        out[idx] = ((shifted - probs) * g).sum(dim=(1, 2, 3)).double()
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
    runs = plain_runs(model, pair, sites, metric, direction)
    fix = star and qk_fix and site in RESIDUAL
    targets = {i: _pattern_block(site, layer, anatomy.n_layers) for i, layer in enumerate(chosen)} if fix else {}
    pattern_blocks = sorted({j for j in targets.values() if j is not None})
    source_patterns: dict[int, Pattern] = {}
    if pattern_blocks:
        source_ids = pair.clean if runs.base_ids is pair.corrupt else pair.corrupt
        handler = _recorder(source_patterns, keep_graph=False)
        with intercept_attention(anatomy, dict.fromkeys(pattern_blocks, handler)) as why:
            if why is not None:
                raise ActkitError(f"AtP*'s QK fix needs the model's attention calls: {why}; use --method atp")
            with torch.no_grad():
                model(input_ids=source_ids)

    switches = [_Switch() for _ in range(anatomy.n_layers)]
    drop = star and grad_drop and anatomy.n_layers > 1
    deltas = [torch.zeros_like(runs.base[s], requires_grad=True) for s in sites]
    writes: dict[str, list[Apply]] = {s: [Apply(_adder(d))] for s, d in zip(sites, deltas, strict=True)}
    if drop:
        for block, switch in enumerate(switches):
            for branch in (f"attn_out.{block}", f"mlp_out.{block}"):
                writes.setdefault(branch, []).append(Apply(_gate(switch)))
    base_patterns: dict[int, Pattern] = {}
    with torch.enable_grad(), tap(model, write=writes), intercept_attention(
            anatomy, dict.fromkeys(pattern_blocks, _recorder(base_patterns, keep_graph=True))):
        value = runs.metric(model(input_ids=runs.base_ids).logits[:, -1])[0]
    probs = [p for j in pattern_blocks if (p := base_patterns[j].probs) is not None and p.requires_grad]
    if len(probs) != len(pattern_blocks):
        raise ActkitError("AtP*'s QK fix did not see the attention probabilities in the graph; use --method atp")
    pattern_of = dict(zip(pattern_blocks, probs, strict=True))
    moves = [(runs.source[s] - runs.base[s]).detach() for s in sites]

    def estimate() -> torch.Tensor:
        """One backward pass (with the switches as they are): every node's estimate, (layers, columns)."""
        grads = torch.autograd.grad(value, [*deltas, *probs], retain_graph=True, allow_unused=True)
        node_grads, prob_grads = grads[:len(deltas)], dict(zip(pattern_blocks, grads[len(deltas):], strict=True))
        rows = []
        for i, (move, grad) in enumerate(zip(moves, node_grads, strict=True)):
            grad = torch.zeros_like(move) if grad is None else grad
            j = targets.get(i)
            g_pattern = prob_grads.get(j) if j is not None else None
            if j is None or g_pattern is None:
                rows.append(_per_column(move * grad, site, model))
                continue
            through = torch.autograd.grad(pattern_of[j], deltas[i], grad_outputs=g_pattern,
                                          retain_graph=True)[0]
            linear = (move * (grad - through)).sum(-1)[0].double()
            rows.append(linear + pattern_shift(base_patterns[j], source_patterns[j], g_pattern))
        return torch.stack(rows)

    if not drop:
        effects = estimate()
    else:
        terms = []
        for switch in switches:
            switch.closed = True
            terms.append(estimate())
            switch.closed = False
        stacked = torch.stack(terms)  # (L, layers, columns)
        rows = []
        for i, layer in enumerate(chosen):
            own = _writer_block(site, layer)
            keep = [b for b in range(anatomy.n_layers) if b != own]
            rows.append(stacked[keep, i].mean(dim=0))
        effects = torch.stack(rows)
    return PatchResult(site, method, runs.metric.name, direction, runs.clean_metric, runs.corrupt_metric,
                       effects.detach().double(), pair.tokens, chosen, time.perf_counter() - start)


def _adder(delta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x + delta


def _gate(switch: _Switch) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: _GradGate.apply(x, switch)


def _per_column(product: torch.Tensor, site: str, model: nn.Module) -> torch.Tensor:
    """Sum a (1, T, D) product over the hidden dimension per position, or per head over positions too."""
    if site != "heads":
        return product.sum(-1)[0].double()
    heads = head_count(model)
    return product[0].reshape(product.shape[1], heads, -1).sum(dim=(0, 2)).double()
