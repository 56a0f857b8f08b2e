"""The CPU speed path of activation sparsity: single-token steps read only the weight columns they keep.

`activation_sparsity` masks each projection's input and still runs the dense product, which is right for quality
measurements and any batch, but reads every weight. `SparseDecoder` replaces, while active, the forward of every
planned projection: a call on one token (batch-1 decoding) picks the kept entries with the plan's `Rule` and
computes the product with `SparseMatvec`, reading only those rows of the stored Wᵀ; any other call (a prefill, a
batch) masks the input and runs the module's own forward, so the numbers are those of `activation_sparsity` in
both cases (up to float summation order).

Projections that read the same tensor and keep the same entries (q/k/v and gate/up under TEAL) share one fused
table, so their weights are read in one pass; the first of them computes the fused product and the others take
their slice. A product is served at most once to each member and only for the very same input tensor (unchanged
since, by its version counter where it has one), so a buffer refilled in place is never answered from the past. The tables are a transposed copy of the weights (float32, or bfloat16 to halve the bytes read), built
once per `SparseDecoder`; the model's own parameters are never changed, and the original forwards are restored on
exit, also after an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actkit.compress.activation import Rule, SparsityPlan, SparsityStats, activation_sparsity
from actkit.compress.projections import Projection, input_groups
from actkit.compress.sparse_linear import SparseMatvec
from actkit.errors import ActkitError


@dataclass
class _Fused:
    """One table shared by projections that read the same input and keep the same entries."""

    rule: Rule
    op: SparseMatvec
    members: list[str] = field(default_factory=list)
    last_input: torch.Tensor | None = None
    last_version: int = -1
    last_output: torch.Tensor | None = None
    last_kept: int = 0
    pending: set[str] = field(default_factory=set)

    def reusable(self, name: str, x: torch.Tensor) -> bool:
        """Whether `name` may take its slice of the last product: the same tensor, not yet served to `name`, and
        not changed in place since (checked by version counter; inference tensors have none)."""
        return (x is self.last_input and name in self.pending
                and (x.is_inference() or x._version == self.last_version))

    def forget(self) -> None:
        self.last_input = self.last_output = None
        self.pending = set()


@dataclass
class _Member:
    proj: Projection
    fused: _Fused
    start: int
    stop: int
    original: Callable[..., Any] | None = field(default=None)


class SparseDecoder:
    """Tables for the sparse single-token path of one plan; `active()` switches it on for a ``with`` block.

    Arguments:
        model: the model the plan was made for.
        plan: from `plan_activation_sparsity`.
        dtype: storage dtype of the tables (default float32; bfloat16 halves the bytes read, not exact).
        kernel: `SparseMatvec` kernel for every table (``"auto"`` times the kernels on each table once).
    """

    def __init__(self, model: nn.Module, plan: SparsityPlan, *, dtype: torch.dtype = torch.float32,
                 kernel: str = "auto") -> None:
        self.model = model
        self.plan = plan
        self.members: list[_Member] = []
        planned = [p for p in plan.projections if p.name in plan.rules]
        for group in input_groups(model, planned) if planned else []:
            while group:
                rule = plan.rules[group[0].name]
                same = [p for p in group if plan.rules[p.name].same_choice(rule)]
                group = [p for p in group if p not in same]
                self._fuse(same, rule, dtype, kernel)

    def _fuse(self, projs: list[Projection], rule: Rule, dtype: torch.dtype, kernel: str) -> None:
        weight = torch.cat([p.weight() for p in projs], dim=0)
        biases = [p.bias() for p in projs]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b if b is not None else torch.zeros(p.out_features, dtype=weight.dtype)
                              for p, b in zip(projs, biases, strict=True)])
        fused = _Fused(rule, SparseMatvec(weight, bias, dtype=dtype, kernel=kernel), [p.name for p in projs])
        start = 0
        for p in projs:
            self.members.append(_Member(p, fused, start, start + p.out_features))
            start += p.out_features

    @property
    def kernels(self) -> dict[str, str]:
        """Projection name -> the kernel its table uses."""
        return {m.proj.name: m.fused.op.kernel for m in self.members}

    @contextmanager
    def active(self) -> Iterator[SparsityStats]:
        """Route the planned projections through the sparse path; yields `SparsityStats` (every row counted)."""
        stats = SparsityStats()
        patched: list[tuple[nn.Module, Any]] = []
        try:
            for member in self.members:
                module = member.proj.module
                patched.append((module, module.__dict__.get("forward")))
                member.original = module.forward
                module.forward = self._forward(member, stats)
            yield stats
        finally:
            for module, previous in reversed(patched):
                if previous is None:
                    del module.forward
                else:
                    module.forward = previous
            for member in self.members:
                member.original = None
                member.fused.forget()

    def _forward(self, member: _Member, stats: SparsityStats) -> Callable[[torch.Tensor], torch.Tensor]:
        fused, rule, n = member.fused, member.fused.rule, member.proj.in_features
        name, width = member.proj.name, member.stop - member.start

        def forward(x: torch.Tensor) -> torch.Tensor:
            if x.numel() != n or x.requires_grad:
                keep = rule.keep_mask(x)
                stats.add(name, int((~keep).sum()), int(keep.numel()))
                assert member.original is not None
                return member.original(x.masked_fill(~keep, 0))
            if not fused.reusable(name, x):
                v = x.reshape(-1)
                idx = rule.kept_indices(v)
                fused.last_output = fused.op(idx, v[idx])
                fused.last_input, fused.last_kept = x, int(idx.numel())
                fused.last_version = -1 if x.is_inference() else x._version
                fused.pending = set(fused.members)
            fused.pending.discard(name)
            assert fused.last_output is not None
            stats.add(name, n - fused.last_kept, n)
            return fused.last_output[member.start:member.stop].to(x.dtype).reshape(*x.shape[:-1], width)
        return forward


@contextmanager
def sparse_decode(model: nn.Module, plan: SparsityPlan, *, dtype: torch.dtype = torch.float32,
                  kernel: str = "auto") -> Iterator[SparsityStats]:
    """Build a `SparseDecoder` for `plan` and keep it active for the block (tables are built on entry)."""
    if not plan.rules:
        yield SparsityStats()
        return
    if next(model.parameters()).device.type != "cpu":
        raise ActkitError("the sparse decode path is a CPU kernel; on an accelerator use activation_sparsity "
                          "(masking) instead")
    with SparseDecoder(model, plan, dtype=dtype, kernel=kernel).active() as stats:
        yield stats


@contextmanager
def sparsity_for(model: nn.Module, plan: SparsityPlan, rows: int) -> Iterator[SparsityStats]:
    """The fastest exact way to run `plan` for `rows` sequences: the sparse path for one sequence on CPU (its
    decode steps skip weight columns), masking otherwise (any batch, any device)."""
    if rows == 1 and next(model.parameters()).device.type == "cpu":
        with sparse_decode(model, plan) as stats:
            yield stats
    else:
        with activation_sparsity(model, plan) as stats:
            yield stats


__all__ = ["SparseDecoder", "sparse_decode", "sparsity_for"]
