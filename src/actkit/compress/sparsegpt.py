"""SparseGPT (Frantar and Alistarh, 2023): prune a weight matrix and update the weights that stay, so that the
layer's output on the calibration inputs changes as little as possible.

For a linear layer ``y = W x`` and calibration inputs ``X``, the squared output error of row ``w`` is
``(w - w') H (w - w')^T / 2`` with ``H = 2 X^T X`` (here ``2 X^T X / n``; the scale cancels). Removing the weight in
column ``j`` costs ``w_j^2 / [H^-1]_jj`` (the optimal brain surgeon saliency) once the remaining weights to its
right absorb the error through ``-(w_j / [H^-1]_jj) [H^-1]_j,:``. SparseGPT makes this affordable by treating the
columns left to right with one shared inverse: the rows of the upper Cholesky factor ``U`` of ``H^-1`` are exactly
the update directions of the successive column eliminations, so

1. ``H`` is dampened (``+ 1% of its mean diagonal``, for a stable Cholesky factorization), inverted and factored;
2. columns are processed in blocks of 128; for unstructured sparsity the mask of a whole block is chosen at once
   from the saliency ``w^2 / U_jj^2`` of the *current* (already updated) weights ("adaptive mask selection": the
   lowest ``floor(sparsity * rows * 128)`` in the block go), for N:M the ``M - N`` lowest of every ``M`` consecutive
   columns of each row are chosen when the sweep reaches the group;
3. each column is zeroed where the mask says so and its error ``(w - q) / U_jj`` is pushed onto the later columns
   of the block with row ``j`` of ``U``; after a block, its errors update all later columns in one product.

Inputs that never fire (``H_jj = 0``) get ``H_jj = 1`` so the factorization exists; their weights are pruned or
kept like any other (the reference code zeroes them outright, which would prune weights outside the budget).
The arithmetic is float64; the result is cast back to the weight's dtype. A weight that is kept and never
corrected (sparsity 0) comes back bit for bit.
"""

from __future__ import annotations

import torch

from actkit.compress.masks import NMPattern, check_divisible, check_sparsity, nm_mask, unstructured_mask
from actkit.errors import ActkitError

#: Columns per block (the paper's and the reference code's setting).
BLOCK_SIZE = 128
#: Dampening added to the Hessian's diagonal, as a fraction of its mean diagonal.
DAMPENING = 0.01


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: NMPattern | None = None,
    *,
    block_size: int = BLOCK_SIZE,
    dampening: float = DAMPENING,
) -> torch.Tensor:
    """Prune `weight` (out, in) with the OBS update against `hessian` (in, in), ``2 X^T X / n`` of its inputs.

    Arguments:
        weight: the weight matrix in ``nn.Linear``'s (out, in) layout; not modified.
        hessian: the (in, in) second-moment matrix of the layer's calibration inputs (any positive scale).
        sparsity: fraction of weights to remove (ignored when `pattern` is given; it implies 1 - N/M).
        pattern: N:M along the input dimension, or None for unstructured sparsity.
        block_size: columns per block (a multiple of M with a pattern).
        dampening: fraction of the mean diagonal added to the diagonal of `hessian`.

    Returns:
        The new weight, same shape and dtype, with the pruned entries exactly zero.
    """
    check_sparsity(sparsity)
    if weight.dim() != 2:
        raise ActkitError(f"SparseGPT prunes weight matrices; got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ActkitError(f"the Hessian has shape {tuple(hessian.shape)}; a weight with {cols} inputs needs "
                          f"({cols}, {cols})")
    if block_size <= 0 or (pattern is not None and block_size % pattern.m):
        raise ActkitError(f"block_size must be a positive multiple of M (got {block_size} with pattern {pattern})")
    if not dampening >= 0:
        raise ActkitError(f"dampening must be a non-negative fraction (got {dampening})")
    if pattern is not None:
        check_divisible((rows, cols), pattern, -1, "weight")
    u = _inverse_cholesky(hessian.to(weight.device), dampening)
    w = weight.detach().to(torch.float64).clone()
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        diag = u_block.diagonal()
        if pattern is None:
            keep = unstructured_mask(block.square() / diag.square(), sparsity, dim=None)
        else:
            keep = torch.ones_like(block, dtype=torch.bool)
        kept = torch.empty_like(block)
        errors = torch.empty_like(block)
        for j in range(end - start):
            if pattern is not None and j % pattern.m == 0:
                group = slice(j, j + pattern.m)
                keep[:, group] = nm_mask(block[:, group].square() / diag[group].square(), pattern)
            column = block[:, j]
            q = torch.where(keep[:, j], column, torch.zeros_like(column))
            err = (column - q) / diag[j]
            block[:, j:].sub_(torch.outer(err, u_block[j, j:]))
            kept[:, j] = q
            errors[:, j] = err
        w[:, start:end] = kept
        if end < cols:
            w[:, end:].sub_(errors @ u[start:end, end:])
    return w.to(weight.dtype)


def _inverse_cholesky(hessian: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of the inverse of the dampened Hessian, float64."""
    h = hessian.detach().to(torch.float64).clone()
    if not bool(torch.isfinite(h).all()):
        raise ActkitError("the calibration Hessian has NaN or inf entries; the model overflows on the calibration "
                          "text (try float32)")
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag += dampening * float(diag.mean())
    try:
        lower = torch.linalg.cholesky(h)
        return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    except torch.linalg.LinAlgError:
        raise ActkitError(f"the calibration Hessian is not positive definite even with dampening {dampening:g}; "
                          "give more calibration text or a larger dampening") from None


__all__ = ["BLOCK_SIZE", "DAMPENING", "sparsegpt"]
