"""A CPU matrix-vector product that reads only the weight columns of the kept input entries.

Decoding one token is memory-bound: ``W @ x`` streams all of W. With a fraction s of x zeroed, the product only
needs the columns ``W[:, idx]`` of the kept entries, so it could read (1 - s) of the bytes. Two obvious ways lose
(measured in ``../shared/NOTES.md`` and ``docs/activation-sparsity.md``): gathering ``W[:, idx]`` first copies
more bytes than the product saves, and a dense product over a masked x reads everything. What works with stock
PyTorch ops is to keep Wᵀ (in, out) contiguous once, so that column i of W is one contiguous row, and let a
kernel that walks a list of rows accumulate ``sum_j x[idx_j] * Wᵀ[idx_j]``:

- ``"bag"``: `torch.nn.functional.embedding_bag` in sum mode with ``per_sample_weights``. One bag runs on one
  thread, so with T > 1 threads the kept rows are split into 2T bags (parallel over bags) whose outputs are
  summed: on the 2-core EPYC measured here this took the down projection at 50% sparsity from 1.24x to about
  1.9x the dense product's speed with 2 threads;
- ``"coo"``: `torch.sparse.mm` of x as a 1 x in sparse COO row vector with Wᵀ (an axpy per kept row, one
  thread).

Which is faster depends on the matrix, the thread count and the machine, so ``kernel="auto"`` times both once
on the real matrix. Wᵀ may be stored in bfloat16, halving the bytes read at the cost of rounding the weights
(the product is then no longer exact, about 0.3% relative error on a 5632-wide product; float32 storage is
exact up to summation order). Only ``bag`` takes bfloat16 tables: ``coo`` accumulates in the table's dtype.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from actkit.errors import ActkitError

#: The kernels `SparseMatvec` can use.
KERNELS = ("bag", "coo")


class SparseMatvec:
    """``y = W[:, idx] @ values (+ bias)`` for one fixed W (out, in), reading only the rows of Wᵀ in `idx`.

    Arguments:
        weight: (out, in); copied once, transposed and contiguous (the caller's tensor is never changed).
        bias: optional (out,), added to every product.
        dtype: storage dtype of the table (float32 default; bfloat16 halves the bytes, not exact).
        kernel: ``"bag"``, ``"coo"``, or ``"auto"`` (time both on this matrix and keep the faster).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 dtype: torch.dtype | None = None, kernel: str = "auto") -> None:
        if weight.dim() != 2:
            raise ActkitError(f"SparseMatvec needs a 2-D weight (out, in), got shape {tuple(weight.shape)}")
        if kernel not in (*KERNELS, "auto"):
            raise ActkitError(f"unknown sparse kernel {kernel!r}; choose one of {', '.join(KERNELS)} or auto")
        self.dtype = dtype or weight.dtype
        if not self.dtype.is_floating_point:
            raise ActkitError(f"SparseMatvec stores floating weights, got {self.dtype}")
        if kernel == "coo" and self.dtype != torch.float32:
            raise ActkitError(f"the coo kernel accumulates in the table's dtype ({self.dtype}), which loses about 6% "
                              "of a product in bfloat16; use kernel='bag' (or 'auto') for low-precision tables")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        with torch.no_grad():
            self.table = weight.detach().t().to(self.dtype).contiguous()  # (in, out): row i is column i of W
        self.bias = None if bias is None else bias.detach().to(torch.float32).clone()
        self._offsets = torch.zeros(1, dtype=torch.long, device=weight.device)
        self.kernel = autotune(self) if kernel == "auto" else kernel

    def __call__(self, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The product for kept indices `idx` (k,) int64 and their input values (k,); returns (out,) float32."""
        y = self._product(idx, values, self.kernel)
        return y if self.bias is None else y + self.bias

    def _product(self, idx: torch.Tensor, values: torch.Tensor, kernel: str) -> torch.Tensor:
        if idx.numel() == 0:
            return torch.zeros(self.out_features, dtype=torch.float32, device=self.table.device)
        values = values.to(self.dtype)
        if kernel == "bag":
            threads = torch.get_num_threads()
            parts = min(idx.numel(), 1 if threads == 1 else 2 * threads)
            offsets = self._offsets if parts == 1 else torch.arange(parts, device=idx.device) * idx.numel() // parts
            y = F.embedding_bag(idx, self.table, offsets, mode="sum", per_sample_weights=values)
            if parts > 1:
                y = y.to(torch.float32).sum(0)
        else:  # sorted unique indices: the row is coalesced, so torch need not check or sort it
            row = torch.sparse_coo_tensor(torch.stack([torch.zeros_like(idx), idx]), values, (1, self.in_features),
                                          is_coalesced=True, check_invariants=False)
            y = torch.sparse.mm(row, self.table)
        return y.reshape(-1).to(torch.float32)


def autotune(op: SparseMatvec, sparsity: float = 0.5, repeats: int = 7) -> str:
    """The faster kernel on this matrix: the best of `repeats` interleaved products of each at `sparsity`.

    The best (not the median) time is compared because other processes only ever make a run slower.
    """
    g = torch.Generator().manual_seed(0)
    k = max(1, op.in_features - round(sparsity * op.in_features))
    idx = torch.randperm(op.in_features, generator=g)[:k].sort().values.to(op.table.device)
    values = torch.randn(k, generator=g).to(op.table.device)
    best: dict[str, float] = {}
    kernels = KERNELS if op.dtype == torch.float32 else ("bag",)
    for _ in range(repeats):
        for kernel in kernels:
            start = time.perf_counter()
            op._product(idx, values, kernel)
            best[kernel] = min(best.get(kernel, float("inf")), time.perf_counter() - start)
    return min(best, key=lambda name: best[name])


__all__ = ["KERNELS", "SparseMatvec", "autotune"]
