"""lm-evaluation-harness: export a `SteeringVector` as the steering file of lm-eval's ``steered`` model.

``lm-eval --model steered --model_args pretrained=MODEL,steer_path=V.pt`` loads V.pt with ``torch.load`` and
reads a dict from *hookpoint* to ``{"steering_vector", "steering_coefficient", "action"}``. A hookpoint is a
module name in ``model.base_model.named_modules()`` (``layers.12`` for a Llama-like model, ``h.12`` for GPT-2).
lm-eval registers a forward hook there and, for ``action: "add"``, adds ``coefficient * vector`` to the module's
output (its first element when the output is a tuple) at every token of every forward pass, prompt and
generated alike.

How actkit's meaning maps onto it:

- Sites: any site that actkit reads as the output of a module maps to that module's name (``resid_post.i`` ->
  the block, ``attn_out.i`` / ``mlp_out.i`` -> its attention / MLP module). Input sites (``resid_pre``) and
  experts have no lm-eval hookpoint and are refused.
- Coefficient: absolute coefficients are copied; a relative one (a fraction of the mean residual norm at each
  layer) is baked into the vector (``v * mean_norm / |v|``), with the coefficient as lm-eval's
  ``steering_coefficient``, which is exactly the vector actkit adds.
- Positions: lm-eval steers every position, so only actkit's ``all`` can be exported; any other rule is refused
  rather than silently widened.

Why a pickle file here when every other actkit file is safetensors: lm-eval's steered model reads only ``.pt`` /
``.pth`` files through ``torch.load`` (or a CSV of sparse-autoencoder features); it has no safetensors path. The
file holds plain tensors, floats and strings only, so it also loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy, family_of
from actkit.core.positions import All, parse_positions
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.io import atomic_file, check_output_file
from actkit.steer.vectors import SteeringVector, check_fits, restrict_layers


def lm_eval_hookpoints(vector: SteeringVector, model: nn.Module | None = None) -> dict[int, str]:
    """The lm-eval hookpoint (a name in ``model.base_model.named_modules()``) of each of the vector's layers.

    Arguments:
        vector: the vector.
        model: the model it steers; when given, each name is found by module identity. Without it the names
            come from actkit's anatomy table for the ``model_type`` in the vector's metadata.

    Returns:
        block index -> hookpoint, such as ``{12: "layers.12"}``.
    """
    if model is not None:
        return _hookpoints_from_model(vector, model)
    model_type = (vector.metadata.get("config") or {}).get("model_type")
    family = family_of(str(model_type))
    if family is None:
        raise ActkitError(f"the vector's metadata names model type {model_type!r}, for which actkit has no anatomy "
                          "table; give the model (--model) so that the hookpoints are found in it")
    if family.roots != ("",):
        raise ActkitError(f"{family.name} models keep their blocks under one of several roots "
                          f"{family.roots}; give the model (--model) so that the hookpoints are found in it")
    out: dict[int, str] = {}
    for layer in vector.layers:
        site = Site.parse(f"{vector.site}.{layer}")
        if site.kind == "resid_post":
            out[layer] = f"{family.layers}.{layer}"
            continue
        hook = family.block.get(site.kind)
        if hook is None or hook.side != "output":
            raise _unmappable(site)
        out[layer] = f"{family.layers}.{layer}.{hook.path}"
    return out


def _hookpoints_from_model(vector: SteeringVector, model: nn.Module) -> dict[int, str]:
    anatomy = Anatomy.of(model)
    names = {id(module): name for name, module in getattr(model, "base_model", model).named_modules()}
    out: dict[int, str] = {}
    for layer in vector.layers:
        site = Site.parse(f"{vector.site}.{layer}")
        point = anatomy.point(site)
        if point.side != "output" or point.element != 0 or point.expert is not None:
            raise _unmappable(site)
        name = names.get(id(point.module))
        if not name:
            raise ActkitError(f"site {site} is not a submodule of {type(model).__name__}.base_model, where lm-eval "
                              "looks for hookpoints")
        out[layer] = name
    return out


def _unmappable(site: Site) -> ActkitError:
    return ActkitError(f"site {site} is not the output of a module, and lm-eval's steered model only adds to module "
                       "outputs; train the vector at resid_post (block outputs), attn_out or mlp_out")


def lm_eval_steering(
    vector: SteeringVector,
    coef: float = 1.0,
    *,
    relative: bool = False,
    layers: list[int] | None = None,
    positions: str = "all",
    model: nn.Module | None = None,
) -> dict[str, dict[str, Any]]:
    """The steering config lm-eval's ``steered`` model reads, as the dict that `export_lm_eval` saves.

    Arguments:
        vector: the vector.
        coef: the coefficient, as in ``actkit generate --coef``.
        relative: `coef` is a fraction of the mean residual norm at each layer (baked into the vector).
        layers: only these of the vector's blocks (None: all).
        positions: must be ``all``: lm-eval steers every token, and a narrower rule cannot be expressed.
        model: the model, to check the vector against and to find the hookpoints in (see `lm_eval_hookpoints`).

    Returns:
        hookpoint -> ``{"steering_vector": (d,) float32 tensor, "steering_coefficient": float, "action": "add"}``.
    """
    coef = float(coef)
    if not torch.isfinite(torch.tensor(coef)):
        raise ActkitError(f"the coefficient must be a finite number (got {coef})")
    if not isinstance(parse_positions(positions), All):
        raise ActkitError(f"positions {positions!r} cannot be exported: lm-eval's steered model adds the vector at "
                          "every token of every forward pass; export with positions 'all' or evaluate in actkit")
    chosen = restrict_layers(vector, layers)
    if model is not None:
        check_fits(chosen, model)
    hookpoints = lm_eval_hookpoints(chosen, model)
    config: dict[str, dict[str, Any]] = {}
    for layer, v in sorted(chosen.directions.items()):
        if relative:
            norm = float(v.norm())
            if norm == 0.0:
                raise ActkitError(f"the direction of layer {layer} is zero; a relative coefficient needs a direction")
            v = v * (chosen.mean_norm(layer) / norm)
        config[hookpoints[layer]] = {"steering_vector": v.detach().to("cpu", torch.float32).clone(),
                                     "steering_coefficient": coef, "action": "add"}
    return config


def export_lm_eval(
    vector: SteeringVector,
    path: str | Path,
    coef: float = 1.0,
    *,
    relative: bool = False,
    layers: list[int] | None = None,
    positions: str = "all",
    model: nn.Module | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `vector` as the ``steer_path`` file of ``lm-eval --model steered`` (module docstring: the mapping).

    Arguments:
        vector, coef, relative, layers, positions, model: as in `lm_eval_steering`.
        path: the ``.pt`` (or ``.pth``) file to write, atomically; lm-eval picks its reader by that suffix.
        overwrite: replace an existing file (the CLI's ``--force``).

    Returns:
        The path written.
    """
    p = Path(path)
    if p.suffix not in (".pt", ".pth"):
        raise ActkitError(f"{str(p)!r}: lm-eval reads steering files only when their name ends in .pt or .pth")
    config = lm_eval_steering(vector, coef, relative=relative, layers=layers, positions=positions, model=model)
    p = check_output_file(p, overwrite=overwrite)
    with atomic_file(p, overwrite=overwrite) as tmp:
        torch.save(config, str(tmp))
    return p


__all__ = ["export_lm_eval", "lm_eval_hookpoints", "lm_eval_steering"]
