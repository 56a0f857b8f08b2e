"""``prune_weights``: zero a fraction of every linear layer inside the blocks, scored by magnitude, Wanda, DaSS or
SparseGPT, unstructured or N:M, and say exactly what was done.

What is pruned: every ``nn.Linear`` (and GPT-2's ``Conv1D``) inside the transformer blocks: attention q/k/v/o
(fused or not) and the MLP projections; never embeddings or the output head. Fused MoE experts (3-D weights) and
routers are left dense and listed under ``skipped``. ``keep_attention_dense`` prunes the MLP only (what DaSS's
code does). Which layers form the MLP comes from the anatomy table (the module behind ``mlp_in`` and the down
projection behind ``mlp_hidden``), not from layer names.

Comparison groups (see `actkit.compress.masks`): magnitude compares all weights of a matrix (as the magnitude
baselines of the Wanda and SparseGPT papers do); Wanda each output row; DaSS each output row of the down
projection and each input column of the gate and up projections (`actkit.compress.scores`); SparseGPT each block
of 128 columns (`actkit.compress.sparsegpt`). N:M groups run along the input dimension, except DaSS's gate and up
projections, whose groups run along the output dimension (consecutive intermediate neurons).

Calibrated methods read their statistics layer by layer from the already-pruned blocks
(`actkit.compress.layerwise`). The model given is never changed: the work happens on a deep copy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from actkit.compress.calibration import Calibration, as_calibration, require_tokens
from actkit.compress.layerwise import Stats, layer_by_layer
from actkit.compress.masks import NMPattern, check_divisible, make_mask, parse_pattern, resolve_sparsity
from actkit.compress.scores import DASS_ALPHA, dass_expand, input_norms, magnitude, wanda
from actkit.compress.sparsegpt import BLOCK_SIZE, DAMPENING, sparsegpt
from actkit.core.anatomy import Anatomy
from actkit.core.collect import context_length, token_batches
from actkit.core.linears import Linear, linears
from actkit.core.stats import Covariance, Moments
from actkit.errors import ActkitError
from actkit.models.naming import model_name

METHODS = ("magnitude", "wanda", "sparsegpt", "dass")
#: The report written next to an exported checkpoint.
REPORT_FILE = "pruning.json"
#: Fewest calibration tokens a calibrated method accepts.
MIN_TOKENS = 64

Kind = Literal["attention", "mlp", "expand", "down"]


@dataclass
class Target:
    """A linear layer to prune: its name in the model, block, module, and role.

    ``kind``: ``down`` (the MLP's down projection), ``expand`` (a gate or up projection of a GLU MLP, whose rows
    are intermediate neurons; ``repeat`` is 2 for a fused gate-and-up), ``mlp`` (another MLP layer), ``attention``
    (anything else in the block). ``glu`` marks the gate, up and down projections of a GLU MLP.
    """

    name: str
    layer: int
    module: nn.Module
    kind: Kind
    down: str | None = None
    repeat: int = 1
    glu: bool = False

    @property
    def weight(self) -> torch.Tensor:
        """The weight as (out, in): ``nn.Linear``'s own tensor, or a transposed view of a ``Conv1D``'s."""
        w = self.module.weight
        assert isinstance(w, torch.Tensor)
        return w if isinstance(self.module, nn.Linear) else w.T


def find_targets(model: nn.Module, keep_attention_dense: bool = False) -> tuple[list[Target], dict[str, str]]:
    """The linear layers `prune_weights` prunes, in forward order, and the parts it leaves dense (with why).

    The layers and their roles are the core's one enumeration (`actkit.core.linears.linears`).
    """
    anatomy = Anatomy.of(model)
    names = {id(m): n for n, m in model.named_modules()}
    experts = anatomy.family.experts
    per_layer: dict[int, list[Linear]] = {}
    for lin in linears(model):
        per_layer.setdefault(lin.layer, []).append(lin)
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for layer, block in enumerate(anatomy.blocks):
        if experts is not None and _submodule(block, experts.path) is not None:
            skipped[f"{names[id(block)]}.{experts.path}"] = (
                "fused MoE experts (3-D weights) are left dense: weight pruning targets dense layers; prune whole "
                "experts instead")
        found: list[Target] = []
        for lin in per_layer.get(layer, []):
            if lin.role == "attention" and keep_attention_dense:
                skipped[lin.name] = "attention kept dense (keep_attention_dense)"
                continue
            found.append(Target(lin.name, layer, lin.module, lin.role))
        targets += _mark_glu(found)
    if not targets:
        raise ActkitError(f"{type(model).__name__} has no linear layer to prune inside its blocks")
    return targets, skipped


def _mark_glu(found: list[Target]) -> list[Target]:
    """In a GLU MLP the layers feeding the down projection together output twice its input width."""
    down = next((t for t in found if t.kind == "down"), None)
    if down is None:
        return found
    width = down.weight.shape[1]
    expanders = [t for t in found if t.kind == "mlp" and t.weight.shape[0] in (width, 2 * width)]
    if sum(t.weight.shape[0] for t in expanders) != 2 * width:
        return found
    for t in expanders:
        t.kind, t.down, t.repeat, t.glu = "expand", down.name, t.weight.shape[0] // width, True
    down.glu = True
    return found


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def prune_weights(
    model: nn.Module,
    tokenizer: Any = None,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: str | NMPattern | None = None,
    *,
    calibration: Calibration | Sequence[str] | None = None,
    keep_attention_dense: bool = False,
    batch_size: int = 8,
    max_length: int | None = None,
    block_size: int = BLOCK_SIZE,
    dampening: float = DAMPENING,
    dass_alpha: float = DASS_ALPHA,
    on_block: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune the linear layers of `model`'s blocks; return the pruned copy and a report.

    Arguments:
        model: a model of a family in the anatomy; never modified (the copy needs as much memory again).
        tokenizer: its tokenizer (needed by every method but magnitude).
        method: ``magnitude``, ``wanda``, ``sparsegpt`` or ``dass`` (see the module docstring).
        sparsity: fraction of each layer's weights to remove, in [0, 1); implied by `pattern` when omitted.
        pattern: ``"N:M"`` (keep N of every M consecutive weights), or None for unstructured sparsity.
        calibration: a `Calibration` (from `calibration_texts`) or a list of documents; every method but
            magnitude needs it.
        keep_attention_dense: prune the MLP layers only.
        batch_size: calibration documents per forward pass.
        max_length: cap on a calibration chunk's tokens (default the model's context).
        block_size: SparseGPT's columns per block.
        dampening: SparseGPT's Hessian dampening, a fraction of the mean diagonal.
        dass_alpha: DaSS's exponent on the intermediate activation norm for gate and up projections.
        on_block: progress callback ``(block, blocks)`` for calibrated methods.

    Returns:
        ``(pruned, report)``: the pruned deep copy (eval mode) and a JSON-ready dict with the method, target
        sparsity, pattern, per-module achieved sparsity, calibration record (source, seed, documents, tokens),
        what was left dense, and the seconds it took.
    """
    start = time.perf_counter()
    if method not in METHODS:
        raise ActkitError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    nm = parse_pattern(pattern)
    target = resolve_sparsity(sparsity, nm)
    targets, skipped = find_targets(model, keep_attention_dense)
    if nm is not None:
        for t in targets:
            check_divisible(tuple(t.weight.shape), nm, _group_dim(method, t), t.name)
    if method != "magnitude" and tokenizer is None:
        raise ActkitError(f"method {method!r} calibrates on text and needs the model's tokenizer")
    calib = None if method == "magnitude" else as_calibration(calibration, f"pruning with {method}")
    pruned = copy.deepcopy(model).eval()
    by_name = dict(pruned.named_modules())
    work = [Target(t.name, t.layer, by_name[t.name], t.kind, t.down, t.repeat, t.glu) for t in targets]
    record: dict[str, Any] | None = None
    details: dict[str, dict[str, str]] = {}
    if method == "magnitude":
        with torch.no_grad():
            for t in work:
                details[t.name] = _prune_scored(t, magnitude(t.weight), target, nm, None)
    else:
        assert calib is not None
        limit = min(context_length(pruned, tokenizer), max_length or 10**9)
        batches = list(token_batches(calib.texts, tokenizer, limit=limit, batch_size=batch_size))
        tokens = sum(b.tokens for b in batches)
        require_tokens(tokens, MIN_TOKENS, calib.source)
        record = calib.record(tokens)
        reducers: dict[str, Callable[[], Any]] = (
            {"covariance": Covariance} if method == "sparsegpt" else {"moments": Moments})
        modules: dict[int, dict[str, nn.Module]] = {}
        for t in work:
            modules.setdefault(t.layer, {})[t.name] = t.module
        per_layer: dict[int, list[Target]] = {}
        for t in work:
            per_layer.setdefault(t.layer, []).append(t)

        def prune_block(layer: int, stats: dict[str, Stats]) -> None:
            with torch.no_grad():
                for t in per_layer.get(layer, []):
                    details[t.name] = _prune_calibrated(method, t, stats, target, nm, block_size, dampening,
                                                        dass_alpha)

        layer_by_layer(pruned, batches, modules, reducers, prune_block, on_block=on_block)
    report = {"model": model_name(model),
              **_report(method, target, nm, keep_attention_dense, work, details, skipped, record)}
    report["settings"] = {"block_size": block_size, "dampening": dampening} if method == "sparsegpt" else (
        {"dass_alpha": dass_alpha} if method == "dass" else {})
    report["seconds"] = round(time.perf_counter() - start, 3)
    return pruned, report


def _group_dim(method: str, t: Target) -> int:
    """The dimension along which N:M groups run for this layer."""
    return 0 if method == "dass" and t.kind == "expand" else -1


def _prune_scored(t: Target, scores: torch.Tensor, sparsity: float, nm: NMPattern | None,
                  dim: int | None) -> dict[str, str]:
    keep = make_mask(scores, sparsity, nm, dim)
    t.weight.masked_fill_(~keep, 0)
    if nm is not None:
        groups = f"{nm} along the {'output' if dim == 0 else 'input'} dimension"
    else:
        groups = {None: "whole matrix", -1: "each output row", 0: "each input column"}[dim]
    return {"groups": groups}


def _prune_calibrated(method: str, t: Target, stats: dict[str, Stats], sparsity: float, nm: NMPattern | None,
                      block_size: int, dampening: float, alpha: float) -> dict[str, str]:
    if method == "sparsegpt":
        cov = stats[t.name]["covariance"].result()
        hessian = 2.0 * (cov["cov"] + torch.outer(cov["mean"], cov["mean"]))
        t.weight.copy_(sparsegpt(t.weight, hessian, sparsity, nm, block_size=block_size, dampening=dampening))
        groups = str(nm) + " along the input dimension" if nm else f"blocks of {block_size} columns"
        return {"score": "sparsegpt", "groups": groups}
    if method == "dass" and t.kind == "expand":
        assert t.down is not None
        hidden = input_norms(stats[t.down]["moments"].result()).repeat(t.repeat)
        return {"score": "dass", **_prune_scored(t, dass_expand(t.weight, hidden, alpha), sparsity, nm, 0)}
    scores = wanda(t.weight, input_norms(stats[t.name]["moments"].result()))
    name = "wanda" if method == "wanda" else ("dass" if t.glu else "wanda (not part of a GLU MLP)")
    return {"score": name, **_prune_scored(t, scores, sparsity, nm, -1)}


def _report(method: str, sparsity: float, nm: NMPattern | None, keep_attention_dense: bool, work: list[Target],
            details: dict[str, dict[str, str]], skipped: dict[str, str],
            calibration: dict[str, Any] | None) -> dict[str, Any]:
    import transformers

    from actkit.version import __version__

    modules: dict[str, Any] = {}
    zeros = total = 0
    for t in work:
        w = t.weight
        z, n = int((w == 0).sum()), w.numel()
        zeros, total = zeros + z, total + n
        modules[t.name] = {"block": t.layer, "kind": t.kind, "shape": list(w.shape), "sparsity": z / n,
                           "score": method, **details.get(t.name, {})}
    return {
        "format": "actkit.pruning/1",
        "method": method,
        "sparsity": sparsity,
        "pattern": None if nm is None else str(nm),
        "keep_attention_dense": keep_attention_dense,
        "achieved_sparsity": zeros / total,
        "pruned_parameters": zeros,
        "prunable_parameters": total,
        "calibration": calibration,
        "modules": modules,
        "skipped": skipped,
        "versions": {"actkit": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }


__all__ = ["METHODS", "MIN_TOKENS", "REPORT_FILE", "Target", "find_targets", "prune_weights"]
