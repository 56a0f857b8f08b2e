"""Keep-masks from importance scores: unstructured within a comparison group, or N:M.

A mask is a bool tensor shaped like the weight, True where a weight is kept. Which weights compete with which
matters as much as the score: Wanda compares the weights of one output row, magnitude pruning usually the whole
matrix, DaSS the weights that read one input feature. ``dim`` names the dimension along which weights compete
(``-1``: each row, the weights of one output; ``0``: each column, the weights of one input) and ``None`` means the
whole matrix. N:M sparsity keeps at most N of every M consecutive weights along ``dim``: "2:4" keeps 2 of 4.

The number pruned in a group is ``floor(sparsity * group size)``, so the achieved sparsity is exact and never
above the target. Ties are broken by position (a stable sort), so masks are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from actkit.errors import ActkitError


@dataclass(frozen=True)
class NMPattern:
    """Keep at most `n` nonzeros in every group of `m` consecutive weights ("2:4": n=2, m=4)."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def sparsity(self) -> float:
        """The fraction of weights the pattern removes: 1 - n/m."""
        return 1.0 - self.n / self.m


def parse_pattern(text: str | NMPattern | None) -> NMPattern | None:
    """``"2:4"`` -> NMPattern(2, 4); None or ``"unstructured"`` -> None; bad text is an `ActkitError`."""
    if text is None or isinstance(text, NMPattern):
        pattern = text
    elif text.strip().lower() in ("", "unstructured"):
        return None
    else:
        parts = text.strip().split(":")
        try:
            n, m = (int(p) for p in parts)
        except ValueError:
            raise ActkitError(f"pattern {text!r} should look like N:M, such as 2:4 or 4:8 (N weights kept in "
                              "every group of M)") from None
        pattern = NMPattern(n, m)
    if pattern is not None and not 0 < pattern.n < pattern.m:
        raise ActkitError(f"pattern {pattern}: N must be at least 1 and smaller than M (N weights are kept in every "
                          "group of M; N >= M would prune nothing, N = 0 everything), as in 2:4 or 4:8")
    return pattern


def check_sparsity(sparsity: float) -> float:
    """A sparsity must lie in [0, 1): 0 keeps every weight, 1 would remove them all."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ActkitError(f"sparsity must be a fraction in [0, 1), such as 0.5 (got {sparsity!r})")
    return float(sparsity)


def resolve_sparsity(sparsity: float | None, pattern: NMPattern | None) -> float:
    """The target sparsity: given, or implied by an N:M pattern; a pattern and a different sparsity clash."""
    if pattern is None:
        if sparsity is None:
            raise ActkitError("give a sparsity (such as 0.5) or an N:M pattern (such as 2:4)")
        return check_sparsity(sparsity)
    if sparsity is not None and not math.isclose(check_sparsity(sparsity), pattern.sparsity, abs_tol=1e-9):
        raise ActkitError(f"pattern {pattern} means sparsity {pattern.sparsity:g}, but sparsity {sparsity:g} was "
                          "given; drop the sparsity or make them agree")
    return pattern.sparsity


def check_divisible(shape: tuple[int, ...], pattern: NMPattern, dim: int, name: str) -> None:
    """N:M groups must tile the grouped dimension exactly; say which module and dimension do not."""
    size = shape[dim]
    if size % pattern.m:
        which = "input" if dim in (-1, len(shape) - 1) else "output"
        raise ActkitError(f"{name}: its {which} dimension {size} is not divisible by M={pattern.m} of pattern "
                          f"{pattern}; choose an M that divides {size} or prune without a pattern")


def unstructured_mask(scores: torch.Tensor, sparsity: float, dim: int | None = -1) -> torch.Tensor:
    """Keep-mask pruning the ``floor(sparsity * size)`` lowest scores in each group along `dim` (None: all)."""
    check_sparsity(sparsity)
    if dim is None:
        flat = unstructured_mask(scores.reshape(1, -1), sparsity, -1)
        return flat.reshape(scores.shape)
    size = scores.shape[dim]
    k = int(math.floor(sparsity * size))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k == 0:
        return keep
    lowest = torch.argsort(scores, dim=dim, stable=True).narrow(dim, 0, k)
    return keep.scatter_(dim, lowest, False)


def nm_mask(scores: torch.Tensor, pattern: NMPattern, dim: int = -1) -> torch.Tensor:
    """Keep-mask holding the `n` highest scores of every `m` consecutive entries along `dim` (2-D scores)."""
    if scores.dim() != 2:
        raise ActkitError(f"N:M masks are for weight matrices; got scores of shape {tuple(scores.shape)}")
    check_divisible(tuple(scores.shape), pattern, dim, "weight")
    moved = scores.transpose(0, 1) if dim in (0, -2) else scores
    rows, cols = moved.shape
    groups = moved.reshape(rows, cols // pattern.m, pattern.m)
    lowest = torch.argsort(groups, dim=-1, stable=True)[..., : pattern.m - pattern.n]
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, lowest, False).reshape(rows, cols)
    return keep.transpose(0, 1) if dim in (0, -2) else keep


def make_mask(scores: torch.Tensor, sparsity: float, pattern: NMPattern | None, dim: int | None) -> torch.Tensor:
    """N:M along `dim` when a pattern is given, else unstructured within groups along `dim`."""
    if pattern is not None:
        return nm_mask(scores, pattern, -1 if dim is None else dim)
    return unstructured_mask(scores, sparsity, dim)


__all__ = ["NMPattern", "check_divisible", "check_sparsity", "make_mask", "nm_mask", "parse_pattern",
           "resolve_sparsity", "unstructured_mask"]
