"""Expert pruning and merging end to end: calibrate, score, choose, slice, and write a checkpoint with a report.

``prune_experts`` is what ``actkit prune experts`` runs: route the calibration text through the model once
(`expert_stats`), score the experts (REAP, EAN, frequency) or group them (merge), keep the same number in every
MoE block, and build the smaller model on a copy. ``export_experts`` saves it with `save_checkpoint` beside a
JSON report of what was kept, removed or merged, the scores, the routing statistics and the calibration text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from actkit.compress.calibration import Calibration, as_calibration, require_tokens
from actkit.compress.experts.merge import Group, merge_groups
from actkit.compress.experts.routing import moe_layers
from actkit.compress.experts.scores import (
    METHODS,
    ExpertId,
    check_protect,
    kept_count,
    score_experts,
    select_experts,
)
from actkit.compress.experts.slicing import slice_experts
from actkit.compress.experts.stats import ExpertStats, expert_stats
from actkit.core.anatomy import Anatomy
from actkit.errors import ActkitError
from actkit.io import check_output_folder
from actkit.models.checkpoint import save_checkpoint

#: The report written beside the checkpoint.
REPORT_FILE = "actkit_experts.json"
#: Report format, bumped when its fields change meaning.
REPORT_VERSION = 1


@dataclass
class ExpertPlan:
    """What to keep: per MoE block the kept experts (ascending), with merge groups or scores.

    Attributes:
        method: ``reap``, ``ean``, ``frequency`` or ``merge``.
        count: experts kept per block.
        keep: block -> kept original expert indices.
        scores: block -> the score of every expert (pruning methods).
        groups: block -> one `Group` per kept expert (merge).
    """

    method: str
    count: int
    keep: dict[int, list[int]]
    scores: dict[int, list[float]] | None = None
    groups: dict[int, list[Group]] | None = None

    def layers(self, num_experts: int) -> list[dict[str, Any]]:
        """JSON-ready rows: per block the kept and removed experts, and scores or groups."""
        rows = []
        for layer, kept in self.keep.items():
            row: dict[str, Any] = {"layer": layer, "kept": kept,
                                   "removed": [e for e in range(num_experts) if e not in kept]}
            if self.scores is not None:
                row["scores"] = [round(s, 6) for s in self.scores[layer]]
            if self.groups is not None:
                row["groups"] = [{"into": g[0][0], "members": [e for e, _ in g],
                                  "weights": [round(w, 6) for _, w in g]} for g in self.groups[layer]]
            rows.append(row)
        return rows


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ActkitError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    return method


def plan_experts(stats: ExpertStats, method: str, keep: float | int, *, protect: Iterable[ExpertId] = (),
                 reap_gate: str = "applied") -> ExpertPlan:
    """Choose the experts every MoE block keeps, from calibration statistics."""
    check_method(method)
    count = kept_count(keep, stats.num_experts, stats.top_k)
    protect = list(protect)
    if method == "merge":
        groups = merge_groups(stats, count, protect)
        return ExpertPlan(method, count, {layer: [g[0][0] for g in gs] for layer, gs in groups.items()},
                          groups=groups)
    scores = score_experts(stats, method, reap_gate=reap_gate)
    chosen = select_experts(scores, stats.layers, count, protect)
    return ExpertPlan(method, count, chosen,
                      scores={layer: scores[row].tolist() for row, layer in enumerate(stats.layers)})


def prune_experts(
    model: nn.Module,
    tokenizer: Any,
    *,
    method: str = "reap",
    keep: float | int = 0.5,
    calibration: Calibration | Sequence[str] | None = None,
    protect: Iterable[ExpertId] = (),
    every_token: bool = False,
    reap_gate: str = "applied",
    align: bool = True,
    batch_size: int = 8,
    max_tokens: int | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune (or merge) the experts of an MoE model to a kept fraction per block.

    Arguments:
        model: a Mixtral, Qwen2-MoE, Qwen3-MoE or OLMoE model; it is not changed unless `inplace`.
        tokenizer: its tokenizer.
        method: ``reap``, ``ean``, ``frequency`` (see `scores`) or ``merge`` (see `merge`).
        keep: a fraction (float) in (0, 1] of each block's experts, or a number of experts (int, ``1`` is one);
            at least the router's top-k.
        calibration: the text to route: a `Calibration` (from `calibration_texts`) or a list of documents.
        protect: (block, expert) pairs kept whatever their score.
        every_token: compute expert outputs on every token for the statistics (REAP's reference observer).
        reap_gate: ``applied`` or ``softmax``: the gate REAP weighs the norms with (see `scores`).
        align: permute neurons before merging (merge only).
        batch_size, max_tokens: calibration batching and budget.
        inplace: slice `model` itself instead of a copy (saves the memory of a second model).

    Returns:
        ``(pruned model, report)``; the report is JSON-ready (see `export_experts`).
    """
    check_method(method)
    layers = moe_layers(model)
    protect = list(protect)
    count = kept_count(keep, layers[0].num_experts, layers[0].top_k)  # refuse bad input before calibrating
    check_protect(protect, [m.layer for m in layers], layers[0].num_experts, count)
    calib = as_calibration(calibration, f"expert pruning with {method}")
    start = time.perf_counter()
    stats = expert_stats(model, tokenizer, calib.texts, every_token=every_token, batch_size=batch_size,
                         max_tokens=max_tokens)
    observed = time.perf_counter() - start
    require_tokens(stats.tokens, max(64, 4 * stats.num_experts), calib.source)
    plan = plan_experts(stats, method, keep, protect=protect, reap_gate=reap_gate)
    parameters_before = _count(model)
    start = time.perf_counter()
    pruned = slice_experts(model, plan.keep, groups=plan.groups, align=align, inplace=inplace)
    sliced = time.perf_counter() - start
    report = {
        "format_version": REPORT_VERSION,
        "family": Anatomy.of(model).family.name,
        "method": method,
        "keep": keep,
        "experts_before": stats.num_experts,
        "experts_after": plan.count,
        "top_k": stats.top_k,
        "protect": [list(p) for p in protect],
        "reap_gate": reap_gate if method == "reap" else None,
        "every_token": every_token,
        "merge_align": align if method == "merge" else None,
        "calibration": calib.record(stats.tokens),
        "layers": plan.layers(stats.num_experts),
        "routing": stats.summary(),
        "parameters_before": parameters_before,
        "parameters_after": _count(pruned),
        "seconds": {"statistics": round(observed, 3), "slicing": round(sliced, 3)},
    }
    return pruned, report


def export_experts(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    model_name: str | None = None,
    **options: Any,
) -> tuple[Path, dict[str, Any]]:
    """`prune_experts`, then save the smaller model, its tokenizer and the report as ``out_dir/actkit_experts.json``.

    The folder is checked before any work and written atomically; an existing non-empty folder is replaced only
    with `overwrite`. Returns the folder and the report.
    """
    check_output_folder(out_dir, overwrite)
    pruned, report = prune_experts(model, tokenizer, **options)
    report = {"model": model_name, **report}
    folder = save_checkpoint(pruned, out_dir, report_name=REPORT_FILE, report=report, tokenizer=tokenizer,
                             overwrite=overwrite)
    return folder, report


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["REPORT_FILE", "ExpertPlan", "check_method", "export_experts", "plan_experts", "prune_experts"]
