"""Bake directional ablation into the weights: a checkpoint that never writes a direction to the residual stream.

Runtime ablation (`ablation_everywhere`) removes r^ from every block input and every attention and MLP output.
The same model can be had without hooks by orthogonalizing every matrix that writes to the residual stream:

- output projections, ``W <- W - r^ r^T W`` for ``nn.Linear`` (weight ``[out, in]``), ``W <- W - W r^ r^T`` for
  GPT-2's ``Conv1D`` (weight ``[in, out]``), and each fused expert's ``down_proj`` (``[E, d, F]``);
- their biases, ``b <- b - (b . r^) r^``;
- the token embeddings and any other embedding table added to the residual (GPT-2's positions),
  ``E <- E - (E r^) r^T``.

Then no block can add anything along r^, so every residual state is orthogonal to it, as with runtime ablation.
The writers are found from the anatomy: inside the module behind each ``attn_out.i`` / ``mlp_out.i`` site, the
linear layers the core's enumeration marks as residual writers (`actkit.core.linears`: the attention output
projection, the MLP's down projection, a shared expert's down projection), plus fused experts.
An output head tied to the embeddings is untied first (the head must keep reading the full vocabulary).
Families whose branch output passes through a norm before the residual (Gemma 2/3's sandwich norms) and
post-norm encoders have no exact weight equivalent and are refused. The export is checked against runtime
ablation on a short probe input before anything is written.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy, output_head
from actkit.core.hooks import tap
from actkit.core.linears import is_linear, linears
from actkit.errors import ActkitError
from actkit.io import check_output_folder
from actkit.models.checkpoint import save_checkpoint
from actkit.steer.interventions import ablation_everywhere
from actkit.steer.vectors import SteeringVector, model_name

ABLATION_FILE = "ablation.json"


def _unit_direction(direction: torch.Tensor | SteeringVector, layer: int | None, width: int) -> torch.Tensor:
    if isinstance(direction, SteeringVector):
        if layer is None:
            if len(direction.directions) != 1:
                raise ActkitError(f"the vector has layers {direction.layers}; say which one to ablate with layer=")
            layer = direction.layers[0]
        if layer not in direction.directions:
            raise ActkitError(f"the vector has no layer {layer}; it has {direction.layers}")
        direction = direction.directions[layer]
    r = torch.as_tensor(direction).detach().to("cpu", torch.float64).reshape(-1)
    if r.shape[0] != width:
        raise ActkitError(f"the direction has size {r.shape[0]} but the model's hidden size is {width}")
    norm = r.norm()
    if not bool(torch.isfinite(r).all()) or float(norm) == 0.0:
        raise ActkitError("the direction must be finite and non-zero")
    return r / norm


def _is_conv1d(module: nn.Module) -> bool:
    return is_linear(module) and not isinstance(module, nn.Linear)


def _writers(branch: nn.Module, writers: set[int], experts: nn.Module | None) -> list[nn.Module]:
    """The modules inside `branch` that write its output to the residual, in registration order."""
    return [m for _, m in branch.named_modules() if id(m) in writers or (experts is not None and m is experts)]


def residual_writers(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """The modules of `model` that write to the residual stream, by role.

    Returns:
        ``{"embed": [(name, module), ...], "attn_out.i": [...], "mlp_out.i": [...]}`` with names relative to
        the model. A branch in which no writer is found raises `ActkitError` (no exact weight ablation).
    """
    anatomy = Anatomy.of(model)
    if anatomy.family.encoder:
        raise ActkitError(f"{type(model).__name__} is a post-norm encoder: ablation cannot be baked into its "
                          "weights; use runtime ablation (ablation_everywhere)")
    width = anatomy.hidden_size
    names = {id(m): n for n, m in model.named_modules()}
    writers = {id(lin.module) for lin in linears(model) if lin.writer and lin.out_features == width}
    spec = anatomy.family.experts
    embed = anatomy.point("embed").module
    out: dict[str, list[tuple[str, nn.Module]]] = {"embed": [(names[id(embed)], embed)]}
    for child in anatomy.root.children():
        if isinstance(child, nn.Embedding) and child is not embed and child.embedding_dim == width:
            out["embed"].append((names[id(child)], child))
    for layer in range(anatomy.n_layers):
        for kind in ("attn_out", "mlp_out"):
            point = anatomy.point(f"{kind}.{layer}")
            experts = _submodule(anatomy.blocks[layer], spec.path) if spec is not None else None
            found = _writers(point.module, writers, experts)
            if not found:
                raise ActkitError(
                    f"cannot bake ablation into {type(model).__name__}: site {kind}.{layer} is the output of "
                    f"{type(point.module).__name__} ({names[id(point.module)]}), which holds no output projection "
                    "(a norm after the branch has no exact weight equivalent); use runtime ablation instead"
                )
            out[f"{kind}.{layer}"] = [(names[id(m)], m) for m in found]
    return out


@torch.no_grad()
def _orthogonalize(module: nn.Module, r: torch.Tensor) -> list[str]:
    """Remove r from what `module` writes, in place; returns the names of the parameters changed."""
    changed: list[str] = []

    def assign(name: str, new: torch.Tensor) -> None:
        param = getattr(module, name)
        param.data.copy_(new.to(param.dtype))
        changed.append(name)

    weight: Any = getattr(module, "weight", None)
    rr = r.to(weight.device) if isinstance(weight, torch.Tensor) else r
    if isinstance(module, nn.Embedding):
        w = weight.to(torch.float64)
        assign("weight", w - torch.outer(w @ rr, rr))
        return changed
    fused = getattr(module, "down_proj", None)
    if isinstance(fused, nn.Parameter) and fused.dim() == 3:
        w = fused.to(torch.float64)
        rf = r.to(w.device)
        assign("down_proj", w - rf[None, :, None] * torch.einsum("d,edf->ef", rf, w)[:, None, :])
        bias = getattr(module, "down_proj_bias", None)
        if isinstance(bias, nn.Parameter):
            b = bias.to(torch.float64)
            assign("down_proj_bias", b - (b @ rf)[:, None] * rf)
        return changed
    w = weight.to(torch.float64)
    if _is_conv1d(module):  # [in, out]: the output is x @ W
        assign("weight", w - torch.outer(w @ rr, rr))
    else:  # nn.Linear [out, in]: the output is W x
        assign("weight", w - torch.outer(rr, rr @ w))
    bias = getattr(module, "bias", None)
    if isinstance(bias, nn.Parameter):
        b = bias.to(torch.float64)
        assign("bias", b - (b @ rr) * rr)
    return changed


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _untie_head(model: nn.Module, embed: nn.Module) -> bool:
    head = output_head(model)
    weight = getattr(head, "weight", None)
    embed_weight = getattr(embed, "weight", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(embed_weight, torch.Tensor):
        return False
    if weight.data_ptr() != embed_weight.data_ptr():
        return False
    assert head is not None
    head.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    top: Any = model.config
    for config in {id(c): c for c in (top, top.get_text_config())}.values():
        config.tie_word_embeddings = False
    return True


def ablated_copy(model: nn.Module, direction: torch.Tensor | SteeringVector, *,
                 layer: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A deep copy of `model` with the direction orthogonalized out of every residual writer.

    Arguments:
        model: the model (left unchanged).
        direction: (d,) direction, or a `SteeringVector` (with `layer` when it has several).
        layer: which layer of a `SteeringVector` to use.

    Returns:
        ``(copy, report)``: the ablated copy and what was done (parameters changed, head untied, direction).
    """
    anatomy = Anatomy.of(model)
    r = _unit_direction(direction, layer, anatomy.hidden_size)
    writers = residual_writers(model)  # errors before the (large) copy
    names = [[name for name, _ in found] for found in writers.values()]
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    untied = _untie_head(clone, modules[writers["embed"][0][0]])
    changed: list[str] = []
    done: set[int] = set()
    for group in names:
        for name in group:
            module = modules[name]
            if id(module) in done:
                continue
            done.add(id(module))
            changed += [f"{name}.{p}" if name else p for p in _orthogonalize(module, r)]
    report = {
        "format_version": 1,
        "model": model_name(model),
        "operation": "directional ablation baked into the weights (W <- W - r r^T W on every residual writer)",
        "direction": [float(x) for x in r],
        "modified_parameters": changed,
        "untied_output_head": untied,
    }
    return clone, report


@torch.no_grad()
def _verify(model: nn.Module, clone: nn.Module, r: torch.Tensor, tokens: int = 8) -> tuple[float, float]:
    """Max |logit difference| between the copy and runtime ablation on a probe input, and the logits' scale."""
    top: Any = model.config
    config = top.get_text_config() if hasattr(top, "get_text_config") else top
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (1, tokens), generator=generator).to(device)
    with tap(model, write=ablation_everywhere(model, r)):
        expected = model(input_ids=ids).logits.float()
    got = clone(input_ids=ids).logits.float()
    return float((got - expected).abs().max()), max(1.0, float(expected.abs().max()))


def export_ablated(
    model: nn.Module,
    direction: torch.Tensor | SteeringVector,
    out_dir: str | Path,
    *,
    layer: int | None = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    verify: bool = True,
) -> Path:
    """Save a Hugging Face checkpoint of `model` with directional ablation baked into its weights.

    Arguments:
        model: the model; it is copied, never changed (the copy needs as much memory again).
        direction: (d,) direction to remove (normalized), or a `SteeringVector` (with `layer` if several).
        out_dir: the checkpoint folder (``save_pretrained``), with ``ablation.json`` describing the change.
        layer: the layer of a `SteeringVector` to use.
        tokenizer: saved alongside when given, so the folder loads as a complete model.
        overwrite: write into a non-empty folder (the CLI's ``--force``); otherwise that is an error.
        verify: compare the copy's logits with runtime ablation on a short probe input first, and refuse to
            write when they differ by more than float noise (the difference is recorded either way).

    Returns:
        The folder written, loadable by ``from_pretrained``.
    """
    check_output_folder(out_dir, overwrite)
    clone, report = ablated_copy(model, direction, layer=layer)
    if verify:
        r = torch.tensor(report["direction"], dtype=torch.float64)
        diff, scale = _verify(model, clone, r)
        dtype = next(model.parameters()).dtype
        tolerance = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
        report["verification"] = {"max_abs_logit_diff": diff, "logit_scale": scale, "tolerance": tolerance}
        if not math.isfinite(diff) or diff > tolerance * scale:
            raise ActkitError(
                f"the ablated weights of {type(model).__name__} differ from runtime ablation (max logit difference "
                f"{diff:.3g}); this architecture has a residual writer actkit does not know: use runtime ablation"
            )
    return save_checkpoint(clone, out_dir, report_name=ABLATION_FILE, report=report, tokenizer=tokenizer,
                           overwrite=overwrite)


__all__ = ["ABLATION_FILE", "ablated_copy", "export_ablated", "residual_writers"]
