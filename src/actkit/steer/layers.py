"""Which layer to steer: rank blocks by how well a mean-difference direction generalizes to held-out pairs.

For each candidate block the pairs are split once (the same seeded split for every block): a mean-diff
direction is trained on the training part, and on the held-out pairs two numbers are measured (in the spirit of
COSMIC, which picks layers by the agreement of held-out activations with a candidate direction):

- **accuracy**: the fraction of held-out pairs whose positive text projects higher onto the direction than its
  negative text, i.e. ``(pos - neg) . v > 0``;
- **consistency**: the mean cosine between each held-out difference ``pos - neg`` and the direction.

The score is their average; blocks are ranked by score (then accuracy, then consistency, then index). One
`collect` pass reads every candidate block at once.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from actkit.core.layers import resolve_layers
from actkit.core.positions import Positions
from actkit.errors import ActkitError
from actkit.steer.directions import mean_diff, read_activations
from actkit.steer.pairs import Pair, as_pairs


def split_pairs(n: int, held_out_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of the training and held-out pairs: a seeded shuffle, at least one pair on each side."""
    if n < 2:
        raise ActkitError(f"layer selection needs at least 2 pairs (one to train, one to hold out), got {n}")
    if not 0.0 < held_out_fraction < 1.0:
        raise ActkitError(f"held_out_fraction must lie strictly between 0 and 1, got {held_out_fraction}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = min(max(1, math.ceil(n * held_out_fraction)), n - 1)
    return sorted(order[held:]), sorted(order[:held])


def score_layer(train_pos: torch.Tensor, train_neg: torch.Tensor, test_pos: torch.Tensor,
                test_neg: torch.Tensor) -> dict[str, float]:
    """Accuracy and consistency of a mean-diff direction trained on one split and tested on the other.

    Arguments:
        train_pos, train_neg, test_pos, test_neg: (N, d) activations.

    Returns:
        ``{"accuracy", "consistency", "score", "direction_norm"}``.
    """
    v = mean_diff(train_pos, train_neg)
    diffs = test_pos.to(torch.float64) - test_neg.to(torch.float64)
    norm = float(v.norm())
    if norm == 0.0:
        return {"accuracy": 0.0, "consistency": 0.0, "score": 0.0, "direction_norm": 0.0}
    projections = diffs @ (v / norm)
    accuracy = float((projections > 0).to(torch.float64).mean())
    cosines = projections / diffs.norm(dim=-1).clamp(min=1e-30)
    consistency = float(cosines.mean())
    return {"accuracy": accuracy, "consistency": consistency, "score": (accuracy + consistency) / 2,
            "direction_norm": norm}


def _unique(items: list[Pair]) -> list[Pair]:
    """The pairs without repeats (first occurrence kept), with a warning when some were dropped.

    A pair present on both sides of the held-out split is scored on what it was trained on, so every block
    would look perfect; layer selection therefore counts each distinct pair once.
    """
    unique = list(dict.fromkeys(items))
    if len(unique) < len(items):
        warnings.warn(f"{len(items) - len(unique)} duplicated pair(s) ignored for layer selection "
                      f"({len(unique)} distinct pairs left): a pair on both sides of the held-out split would make "
                      "every block score as if it generalized perfectly", UserWarning, stacklevel=3)
    return unique


def select_layers(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair] | Sequence[Sequence[str]],
    *,
    layers: int | Iterable[int] | None = None,
    held_out_fraction: float = 0.3,
    top: int = 1,
    seed: int = 0,
    site: str = "resid_post",
    read_position: str | Positions = "last",
    batch_size: int = 8,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Rank blocks by how well a mean-diff direction trained on part of the pairs separates the rest.

    Arguments:
        model: the model.
        tokenizer: its tokenizer.
        pairs: the contrast pairs (at least 2).
        layers: candidate blocks (default every block).
        held_out_fraction: the share of pairs held out (at least one pair on each side).
        top: how many blocks to choose.
        seed: the seed of the split.
        site: the site kind read (``resid_post``).
        read_position: which tokens give a text's activation (default its last token).
        batch_size: texts per forward pass.

    Repeated pairs are counted once (with a `UserWarning`), so no pair is both trained on and held out.

    Returns:
        ``(table, chosen)``: one dict per block, best first, with ``layer``, ``rank``, ``accuracy``,
        ``consistency``, ``score``, ``direction_norm``, ``train_pairs``, ``held_out_pairs``; and the `top`
        best block indices, ascending.
    """
    items = _unique(as_pairs(pairs))
    if top < 1:
        raise ActkitError(f"top must be at least 1, got {top}")
    candidates = resolve_layers(model, layers)
    train, held = split_pairs(len(items), held_out_fraction, seed)
    n = len(items)
    texts = [p.positive for p in items] + [p.negative for p in items]
    acts, _ = read_activations(model, tokenizer, texts, candidates, site=site, read_position=read_position,
                               batch_size=batch_size)
    rows: list[dict[str, Any]] = []
    for layer in candidates:
        pos, neg = acts[layer][:n], acts[layer][n:]
        row = score_layer(pos[train], neg[train], pos[held], neg[held])
        rows.append({"layer": layer, **row, "train_pairs": len(train), "held_out_pairs": len(held)})
    rows.sort(key=lambda r: (-r["score"], -r["accuracy"], -r["consistency"], r["layer"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    chosen = sorted(r["layer"] for r in rows[:top])
    return rows, chosen


__all__ = ["score_layer", "select_layers", "split_pairs"]
