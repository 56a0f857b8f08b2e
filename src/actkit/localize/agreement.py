"""How well an approximation ranks components like exact patching: Pearson correlation and top-k recall."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from actkit.errors import ActkitError


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two flattened tensors (NaN when either is constant)."""
    x, y = a.flatten().double(), b.flatten().double()
    if x.shape != y.shape:
        raise ActkitError(f"cannot compare {x.numel()} effects with {y.numel()} estimates")
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else float("nan")


def top_k_recall(exact: torch.Tensor, estimate: torch.Tensor, k: int) -> float:
    """The share of the k components with the largest |exact effect| that are among the k largest |estimates|.

    Components whose exact effect is zero (those before the first token where the prompts differ) are not
    ranked: k shrinks to the number of non-zero effects when there are fewer.
    """
    x, y = exact.flatten().abs(), estimate.flatten().abs()
    nonzero = int((x > 1e-9 * float(x.max())).sum()) if x.numel() else 0
    k = max(1, min(k, nonzero))
    truth = set(x.topk(k).indices.tolist())
    return len(truth & set(y.topk(k).indices.tolist())) / k


def agreement(exact: Sequence[torch.Tensor] | torch.Tensor, estimate: Sequence[torch.Tensor] | torch.Tensor,
              k: int = 10) -> dict[str, float]:
    """Agreement over one or several prompt pairs: Pearson over all components pooled, mean top-k recall per pair.

    Arguments:
        exact: effects from `activation_patching`, one tensor per pair (shapes may differ between pairs).
        estimate: the approximation's effects, the same shapes.
        k: how many of the strongest components the recall looks at, per pair.
    """
    xs = [exact] if isinstance(exact, torch.Tensor) else list(exact)
    ys = [estimate] if isinstance(estimate, torch.Tensor) else list(estimate)
    if len(xs) != len(ys) or any(x.shape != y.shape for x, y in zip(xs, ys, strict=True)):
        raise ActkitError("exact effects and estimates must come from the same pairs and sites")
    pooled = pearson(torch.cat([x.flatten() for x in xs]), torch.cat([y.flatten() for y in ys]))
    recall = sum(top_k_recall(x, y, k) for x, y in zip(xs, ys, strict=True)) / len(xs)
    return {"pearson": pooled, f"top{k}_recall": recall, "pairs": len(xs)}
