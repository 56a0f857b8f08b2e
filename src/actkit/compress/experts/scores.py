"""Expert saliency scores and the choice of the experts each MoE block keeps.

Scores, per block and expert j, from `ExpertStats` (X_j: the calibration tokens routed to j):

- ``reap``: (1/|X_j|) sum over X_j of g_j(x) ||f_j(x)||_2, the mean gate-weighted output norm (REAP, Lasby et al.
  2025). g is the gate the model applies (the top-k softmax probabilities, renormalized where the family
  renormalizes); that is what REAP's reference code uses since its March 2026 fix (``renormalize_router_weights``,
  for models that renormalize) and what llm-compressor's REAP uses. ``reap_gate="softmax"`` takes the softmax
  probability over all experts instead (the reference code before that fix).
- ``ean``: sum over X_j of ||f_j(x)||_2, the expert activation norm (EAN), which grows with both how often an
  expert is chosen and how large its output is.
- ``frequency``: |X_j|, the number of tokens routed to j.

An expert that received no token scores 0 under all three. Each block keeps its highest-scoring experts (ties go
to the lower index); protected experts are kept whatever their score.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from actkit.compress.experts.stats import ExpertStats
from actkit.errors import ActkitError

#: Pruning scores; ``merge`` (see `merge.py`) is the fourth method of ``actkit prune experts``.
SCORES = ("reap", "ean", "frequency")
METHODS = (*SCORES, "merge")

ExpertId = tuple[int, int]


def score_experts(stats: ExpertStats, method: str, *, reap_gate: str = "applied") -> torch.Tensor:
    """(L, E) float64 scores of `method` (``reap``, ``ean`` or ``frequency``); rows follow ``stats.layers``."""
    if method == "reap":
        if reap_gate == "applied":
            num, den = stats.gated_norm_sum, stats.routed
        elif reap_gate == "softmax":
            num, den = stats.prob_norm_sum, stats.observed
        else:
            raise ActkitError(f"unknown reap_gate {reap_gate!r}; use 'applied' (the gate the model multiplies the "
                              "expert output by) or 'softmax' (the router probability over all experts)")
        return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))
    if method == "ean":
        return stats.norm_sum.clone()
    if method == "frequency":
        return stats.routed.clone()
    raise ActkitError(f"unknown scoring method {method!r}; use one of {', '.join(SCORES)}")


def kept_count(keep: float | int, num_experts: int, top_k: int) -> int:
    """How many experts each block keeps: an `int` is a number of experts (``1`` is one expert), a `float` a
    fraction in (0, 1] (``1.0`` is every expert), as ``--keep 1`` and ``--keep 100%`` mean on the command line.

    A fraction is rounded to the nearest count. Keeping more experts than exist, or fewer than the router's
    top-k (the router must still find k experts for every token), is refused.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ActkitError(f"keep must be a fraction (float) or a number of experts (int), got {keep!r}")
    if isinstance(keep, int):
        if keep < 1:
            raise ActkitError(f"--keep {keep}: keep at least one expert (or give a fraction such as 0.5)")
        count = keep
    elif not 0 < keep <= 1:  # also NaN
        raise ActkitError(f"--keep {keep}: a fraction lies in (0, 1]; a number of experts is a whole number (an "
                          "int), such as 4")
    else:
        count = int(round(keep * num_experts))
    if count > num_experts:
        raise ActkitError(f"--keep {keep:g} keeps {count} experts but each MoE block has only {num_experts}; keep at "
                          f"most {num_experts} (or a fraction up to 1)")
    if count < top_k:
        raise ActkitError(f"--keep {keep:g} keeps {count} of {num_experts} experts per block, fewer than the "
                          f"{top_k} the router picks for every token; keep at least {top_k} "
                          f"(a fraction of at least {top_k / num_experts:.3g})")
    return count


def select_experts(scores: torch.Tensor, layers: Sequence[int], count: int,
                   protect: Iterable[ExpertId] = ()) -> dict[int, list[int]]:
    """Per block, the `count` experts to keep (ascending indices): the protected ones, then the best scores."""
    guarded = check_protect(protect, layers, int(scores.shape[1]), count)
    out: dict[int, list[int]] = {}
    for row, layer in enumerate(layers):
        chosen = list(guarded.get(layer, []))
        order = torch.argsort(-scores[row], stable=True).tolist()
        chosen += [e for e in order if e not in chosen][:count - len(chosen)]
        out[layer] = sorted(chosen)
    return out


def check_protect(protect: Iterable[ExpertId], layers: Sequence[int], num_experts: int,
                  count: int) -> dict[int, list[int]]:
    """Group protected experts by block, refusing unknown blocks or experts and more than a block keeps."""
    by_layer: dict[int, list[int]] = {}
    for layer, expert in protect:
        if layer not in layers:
            raise ActkitError(f"--protect {layer}:{expert}: block {layer} is not an MoE block; MoE blocks: "
                              f"{', '.join(map(str, layers))}")
        if not 0 <= expert < num_experts:
            raise ActkitError(f"--protect {layer}:{expert}: expert {expert} does not exist; experts are "
                              f"0..{num_experts - 1}")
        if expert not in by_layer.setdefault(layer, []):
            by_layer[layer].append(expert)
    for layer, experts in by_layer.items():
        if len(experts) > count:
            raise ActkitError(f"--protect names {len(experts)} experts of block {layer} but each block keeps only "
                              f"{count}; protect fewer or keep more")
    return by_layer


def parse_experts(text: str) -> list[ExpertId]:
    """Parse ``"LAYER:EXPERT,LAYER:EXPERT"`` (as ``--protect`` and ``--experts-off`` take it)."""
    out: list[ExpertId] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        try:
            layer, expert = (int(p) for p in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            layer = expert = None
        if layer is None or expert is None or layer < 0 or expert < 0:
            raise ActkitError(f"cannot read the expert {item!r}: write LAYER:EXPERT with non-negative integers, "
                              "several separated by commas (for example 1:3,2:0)")
        out.append((layer, expert))
    if not out:
        raise ActkitError(f"no experts in {text!r}: write LAYER:EXPERT, several separated by commas (1:3,2:0)")
    return out


__all__ = ["METHODS", "SCORES", "ExpertId", "check_protect", "kept_count", "parse_experts", "score_experts",
           "select_experts"]
