"""The merging baseline: M-SMoE-style frequency-weighted averaging of experts within groups of similar experts.

Merging keeps a lossy copy of every expert instead of dropping some; REAP's paper argues that it still loses to
pruning on generation, because a merged expert can no longer be weighed independently by the router. To test
that claim on our models, per MoE block keeping n experts (after M-SMoE, Li et al. 2024):

1. the n most often routed experts are the *dominant* experts (protected experts are always dominant);
2. every other expert joins the dominant expert whose router logits it resembles most: the cosine similarity of
   the two experts' logit columns over the calibration tokens (from the router-logit Gram matrix);
3. each group becomes one expert whose weights are the members' weights averaged with their routing frequencies
   as weights (uniform if none was routed), after each member's hidden neurons are permuted to line up with the
   dominant expert's: neurons are matched greedily by the cosine similarity of their (gate, up, down) weights, a
   cheaper stand-in for M-SMoE's optimal weight matching;
4. the merged expert keeps the dominant expert's router row; the other members' rows are removed, so their
   tokens are routed among the experts that remain.

M-SMoE's low-rank compression of the merged experts (the "MC" in MC-SMoE) is not done.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from actkit.compress.experts.scores import ExpertId, check_protect
from actkit.compress.experts.stats import ExpertStats
from actkit.errors import ActkitError

#: One merged expert: (original expert, weight) pairs, dominant expert first, weights summing to one.
Group = list[tuple[int, float]]


def router_similarity(stats: ExpertStats) -> torch.Tensor:
    """(L, E, E) cosine similarity of the experts' router-logit columns over the calibration tokens."""
    gram = stats.logit_gram
    norms = gram.diagonal(dim1=1, dim2=2).clamp(min=1e-30).sqrt()
    return gram / (norms[:, :, None] * norms[:, None, :])


def merge_groups(stats: ExpertStats, count: int, protect: Iterable[ExpertId] = ()) -> dict[int, list[Group]]:
    """Per block, `count` groups of experts to merge, one per kept (dominant) expert, in ascending dominant order."""
    guarded = check_protect(protect, stats.layers, stats.num_experts, count)
    similarity = router_similarity(stats)
    out: dict[int, list[Group]] = {}
    for row, layer in enumerate(stats.layers):
        freq = stats.routed[row]
        dominant = list(guarded.get(layer, []))
        order = torch.argsort(-freq, stable=True).tolist()
        dominant = sorted(dominant + [e for e in order if e not in dominant][:count - len(dominant)])
        members: dict[int, list[int]] = {d: [d] for d in dominant}
        for e in range(stats.num_experts):
            if e not in members:
                sims = similarity[row, e, dominant]
                members[dominant[int(torch.argmax(sims))]].append(e)
        groups = []
        for d in dominant:
            weights = freq[members[d]]
            weights = weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1 / len(weights))
            groups.append([(e, float(w)) for e, w in zip(members[d], weights.tolist(), strict=True)])
        out[layer] = groups
    return out


def merged_parameters(experts: nn.Module, group: Group, *, align: bool = True) -> dict[str, torch.Tensor]:
    """The parameters of one merged expert: name -> tensor without the expert dimension.

    Every parameter of the fused experts module whose first dimension is the expert count is averaged; with
    `align`, each member's hidden neurons are first permuted onto the dominant expert's (``fused_glu`` layout:
    neuron i is row i and row F + i of ``gate_up_proj`` and column i of ``down_proj``).
    """
    count = int(experts.num_experts)  # type: ignore[arg-type]
    params = {n: p.detach() for n, p in experts.named_parameters(recurse=False) if p.shape[0] == count}
    if align and not {"gate_up_proj", "down_proj"} <= set(params):
        raise ActkitError(f"{type(experts).__name__}: neuron alignment needs fused gate_up_proj and down_proj; "
                          "pass align=False to average without it")
    dominant = group[0][0]
    out = {n: torch.zeros_like(p[0], dtype=torch.float32) for n, p in params.items()}
    for expert, weight in group:
        perm = _neuron_match(params, dominant, expert) if align and expert != dominant else None
        for name, p in params.items():
            value = p[expert].float()
            if perm is not None:
                value = _permute(name, value, perm)
            out[name] += weight * value
    return {n: v.to(params[n].dtype) for n, v in out.items()}


def _features(params: dict[str, torch.Tensor], expert: int) -> torch.Tensor:
    """(F, 3d): each hidden neuron's gate row, up row and down column."""
    gate, up = params["gate_up_proj"][expert].float().chunk(2, dim=0)
    return torch.cat([gate, up, params["down_proj"][expert].float().T], dim=1)


def _neuron_match(params: dict[str, torch.Tensor], target: int, source: int) -> torch.Tensor:
    """perm such that neuron perm[i] of `source` lines up with neuron i of `target` (greedy, by cosine)."""
    a = torch.nn.functional.normalize(_features(params, target), dim=1)
    b = torch.nn.functional.normalize(_features(params, source), dim=1)
    sim = a @ b.T
    width = sim.shape[0]
    perm = [-1] * width
    taken = [False] * width
    left = width
    for flat in torch.argsort(sim.reshape(-1), descending=True, stable=True).tolist():
        i, j = divmod(flat, width)
        if perm[i] < 0 and not taken[j]:
            perm[i], taken[j] = j, True
            left -= 1
            if left == 0:
                break
    return torch.tensor(perm, dtype=torch.long)


def _permute(name: str, value: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Reorder one member's hidden neurons: rows of gate_up_proj (and its bias), columns of down_proj."""
    if name.startswith("gate_up_proj"):
        gate, up = value.chunk(2, dim=0)
        return torch.cat([gate[perm], up[perm]], dim=0)
    if name == "down_proj":
        return value[:, perm]
    return value


__all__ = ["Group", "merge_groups", "merged_parameters", "router_similarity"]
