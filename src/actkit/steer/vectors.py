"""`SteeringVector` and its file format.

A vector file is safetensors (never pickle): one float32 tensor of shape (d,) per block, named ``layers.<i>``
(i the 0-based block index of the site, ``resid_post`` unless the metadata says otherwise), and in the
safetensors header two string entries: ``format_version`` and ``actkit``, one JSON object holding the model
name, a hash of the architecture-relevant config fields (and the fields themselves, so a mismatch can be named),
the hidden size, block count, site, layers, read positions, method, normalization, data hash and the mean
residual norms measured while reading (for relative coefficients).

Loading against a model checks what would make the vector wrong or meaningless: a different hidden size or block
count, or a layer outside the model, is an error; a different model name or other config fields only warn,
because fine-tunes of one base model share their residual geometry.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actkit.core.interventions import Add, Intervention
from actkit.core.positions import Positions, parse_positions
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.io import atomic_file, check_output_file, read_safetensors
from actkit.models.naming import model_name

FORMAT_VERSION = "1"
#: The config fields that decide whether a vector fits a model (their sha256 is the ``config_hash``).
CONFIG_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


@dataclass
class SteeringVector:
    """Directions in the residual stream, one per block, with the facts needed to use them correctly.

    Arguments:
        directions: block index -> (d,) float32 tensor (the vector added at coefficient 1).
        site: the site kind the directions live in (``resid_post``: the output of each block).
        metadata: JSON-ready facts (method, positions read, ``mean_norms``, model, data hash...); see the module
            docstring. ``mean_norms`` maps the block index (as a string) to the mean residual norm at read time.
    """

    directions: dict[int, torch.Tensor]
    site: str = "resid_post"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ActkitError("a steering vector needs at least one layer")
        Site.parse(f"{self.site}.0")
        widths = {int(v.reshape(-1).shape[0]) for v in self.directions.values()}
        if len(widths) != 1:
            raise ActkitError(f"the directions have different sizes {sorted(widths)}; all layers need one size")
        fixed: dict[int, torch.Tensor] = {}
        for layer, vector in sorted(self.directions.items()):
            if int(layer) < 0:
                raise ActkitError(f"layer {layer}: block indices must be non-negative")
            v = torch.as_tensor(vector).detach().to("cpu", torch.float32).reshape(-1)
            if not bool(torch.isfinite(v).all()):
                raise ActkitError(f"the direction of layer {layer} holds NaN or inf")
            if not math.isfinite(float(v.norm())):
                raise ActkitError(f"the direction of layer {layer} has a norm too large for float32 (largest entry "
                                  f"{float(v.abs().max()):.3g}): steering with it would overflow the model; "
                                  "rescale the vector")
            fixed[int(layer)] = v
        self.directions = fixed

    @property
    def layers(self) -> list[int]:
        """The block indices, ascending."""
        return sorted(self.directions)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def mean_norm(self, layer: int) -> float:
        """The mean residual norm at `layer` measured when the vector was read (for relative coefficients)."""
        norms = self.metadata.get("mean_norms") or {}
        value = norms.get(str(layer), norms.get(layer)) if isinstance(norms, Mapping) else None
        if value is None or not math.isfinite(float(value)):
            raise ActkitError(
                f"the vector has no mean residual norm for layer {layer}, so a relative coefficient is undefined; "
                "retrain it with actkit or use an absolute coefficient"
            )
        return float(value)

    def to_intervention(
        self,
        coef: float | torch.Tensor = 1.0,
        positions: Positions | str | None = None,
        relative: bool = False,
    ) -> dict[str, Intervention]:
        """The writes that steer a model with this vector, for ``tap(model, write=...)`` or `generate`.

        Arguments:
            coef: the coefficient, a scalar or (B,) one per row of the batch.
            positions: which tokens to steer (default all, prompt and generated; ``"generated"``, ``"from:K"``...).
            relative: if True, `coef` is a fraction of the mean residual norm at each layer: the added vector is
                ``coef * mean_norm[layer] * v / |v|``, so one coefficient means the same strength at every layer
                and in every model.

        Returns:
            site -> `Add` intervention, one per layer.
        """
        where = parse_positions(positions) if positions is not None else None
        out: dict[str, Intervention] = {}
        for layer, vector in sorted(self.directions.items()):
            v = vector
            if relative:
                norm = float(vector.norm())
                if norm == 0.0:
                    raise ActkitError(f"the direction of layer {layer} is zero; a relative coefficient needs a direction")
                v = vector * (self.mean_norm(layer) / norm)
            out[f"{self.site}.{layer}"] = Add(v, coef=coef, positions=where)
        return out


def steering_writes(
    vector: SteeringVector,
    coef: float = 1.0,
    *,
    relative: bool = False,
    layers: list[int] | None = None,
    positions: Positions | str = "all",
) -> dict[str, Intervention]:
    """The writes ``actkit generate --vector F --coef C [--relative] [--layers L] [--positions P]`` steers with.

    One function for the command and ``actkit serve``, so a steered request means exactly what the command does.

    Arguments:
        vector: the vector.
        coef: the coefficient (a finite number).
        relative: `coef` is a fraction of the mean residual norm at each layer (see `SteeringVector.to_intervention`).
        layers: steer only these of the vector's blocks (negative: from the end of the model the vector was made
            for); None: all of them.
        positions: which tokens to steer (``all``, ``prompt``, ``generated``, ``from:K``...).

    Raises:
        ActkitError: a non-finite coefficient, unknown positions, or a layer the vector has no direction at.
    """
    if not math.isfinite(coef):
        raise ActkitError(f"the coefficient must be a finite number (got {coef})")
    where = parse_positions(positions)
    return restrict_layers(vector, layers).to_intervention(coef, positions=where, relative=relative)


def restrict_layers(vector: SteeringVector, layers: list[int] | None) -> SteeringVector:
    """`vector` with only the directions at `layers` (negative: from the end); all of them when None or empty."""
    if not layers:
        return vector
    n = int(vector.metadata.get("num_layers") or 0)
    wanted = [w + n if w < 0 and n else w for w in layers]
    missing = [w for w in wanted if w not in vector.directions]
    if missing:
        raise ActkitError(f"the vector has no direction at block(s) {missing}; "
                          f"it has {', '.join(map(str, vector.layers))}")
    return SteeringVector({w: vector.directions[w] for w in wanted}, site=vector.site, metadata=vector.metadata)


def config_fields(model: nn.Module) -> dict[str, Any]:
    """The architecture-relevant config fields of `model` (text config of multimodal models)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ActkitError(f"{type(model).__name__} has no config; actkit needs a Hugging Face model")
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    out: dict[str, Any] = {}
    for key in CONFIG_FIELDS:
        value = getattr(text, key, None)
        if value is None and key == "model_type":
            value = getattr(config, key, None)
        out[key] = value
    return out


def config_hash(fields: Mapping[str, Any]) -> str:
    """sha256 (hex) of the config fields, in a canonical JSON form."""
    text = json.dumps({k: fields.get(k) for k in CONFIG_FIELDS}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """The facts about `model` a vector file records: name, config fields and their hash, sizes."""
    fields = config_fields(model)
    return {
        "model": model_name(model),
        "config": fields,
        "config_hash": config_hash(fields),
        "hidden_size": fields["hidden_size"],
        "num_layers": fields["num_hidden_layers"],
    }


def save_vector(vector: SteeringVector, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `vector` as a safetensors file, atomically (a crash never leaves half a file).

    Arguments:
        vector: the vector; its metadata must be JSON-serializable.
        path: the file to write (conventionally ``*.safetensors``); its folder is created if missing.
        overwrite: replace an existing file (the CLI's ``--force``); otherwise an existing file is an error.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    p = check_output_file(path, overwrite=overwrite)
    meta = dict(vector.metadata)
    meta.update(site=vector.site, layers=vector.layers, hidden_size=vector.hidden_size)
    try:
        blob = json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ActkitError(f"the vector's metadata cannot be written as JSON: {error}") from None
    tensors = {f"layers.{layer}": v.contiguous() for layer, v in vector.directions.items()}
    with atomic_file(p, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"format_version": FORMAT_VERSION, "actkit": blob})
    return p


def load_vector(path: str | Path, model: nn.Module | None = None) -> SteeringVector:
    """Read a vector file written by `save_vector`, and check it against `model` when given.

    Arguments:
        path: the safetensors file.
        model: the model the vector will steer. A different hidden size or block count, or a layer the model
            lacks, raises `ActkitError` saying what differs; a different model name or other config fields only
            warn (`UserWarning`).

    Returns:
        The `SteeringVector`, float32, on the CPU. Files that are not safetensors, lack actkit's metadata, or
        hold misnamed, misshapen or non-finite tensors raise `ActkitError`.
    """
    p = Path(path)
    header, tensors = read_safetensors(p, "vector file")
    if "actkit" not in header:
        raise ActkitError(f"{str(p)!r} has no actkit metadata: it was not written by actkit's save_vector")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ActkitError(f"{str(p)!r} has format version {version!r}; this actkit reads version {FORMAT_VERSION}")
    try:
        meta = json.loads(header["actkit"])
    except json.JSONDecodeError as error:
        raise ActkitError(f"{str(p)!r}: the actkit metadata is not valid JSON ({error.msg})") from None
    if not isinstance(meta, dict):
        raise ActkitError(f"{str(p)!r}: the actkit metadata is not a JSON object")
    check_metadata(meta, str(p))
    directions = _directions(p, tensors, meta)
    site = str(meta.get("site", "resid_post"))
    try:
        Site.parse(f"{site}.0")
    except ActkitError as error:
        raise ActkitError(f"{str(p)!r}: bad site in the metadata: {error}") from None
    vector = SteeringVector(directions, site=site, metadata=meta)
    if model is not None:
        check_fits(vector, model, source=str(p))
    return vector


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: The metadata fields actkit reads, each with its check and how to say what it must be (None is always allowed).
_FIELDS: dict[str, tuple[Any, str]] = {
    **{key: (lambda v: isinstance(v, str), "a string") for key in (
        "model", "model_hint", "config_hash", "site", "read_positions", "read_reduce", "method", "normalization",
        "data_hash")},
    "hidden_size": (lambda v: _is_int(v, 1), "a positive integer"),
    "num_layers": (lambda v: _is_int(v, 1), "a positive integer"),
    "n_pairs": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "random_seed": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "layers": (lambda v: isinstance(v, list) and all(_is_int(x, 0) for x in v),
               "a list of block indices (non-negative integers)"),
    "config": (lambda v: isinstance(v, dict) and all(x is None or isinstance(x, (str, int)) for x in v.values()),
               "an object of config fields (strings or integers)"),
    "mean_norms": (lambda v: isinstance(v, dict) and all(str(k).isdigit() and _is_number(x) for k, x in v.items()),
                   "an object block index -> finite number"),
}


def check_metadata(meta: Mapping[str, Any], source: str) -> None:
    """Check the type of every metadata field actkit reads, so a hand-edited file fails here and not later.

    Arguments:
        meta: the decoded JSON metadata of a vector file (fields actkit does not read are left alone).
        source: the file, for the message.

    Raises:
        ActkitError: ``this file's metadata is malformed: field ...`` naming the first bad field.
    """
    for key, (ok, what) in _FIELDS.items():
        value = meta.get(key)
        if value is not None and not ok(value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ActkitError(f"{source!r}: this file's metadata is malformed: field {key!r} must be {what}, got "
                              f"{shown}; re-export the vector with actkit, or fix the field")


def _directions(p: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[int, torch.Tensor]:
    if not tensors:
        raise ActkitError(f"{str(p)!r} holds no tensors; a vector file has one tensor 'layers.<i>' per layer")
    out: dict[int, torch.Tensor] = {}
    width = meta.get("hidden_size")
    for name, t in tensors.items():
        prefix, _, index = name.partition(".")
        if prefix != "layers" or not index.isdigit():
            raise ActkitError(f"{str(p)!r}: unexpected tensor {name!r}; tensors must be named 'layers.<i>'")
        if t.dim() != 1:
            raise ActkitError(f"{str(p)!r}: tensor {name!r} has shape {tuple(t.shape)}; expected (hidden_size,)")
        if not t.is_floating_point():
            raise ActkitError(f"{str(p)!r}: tensor {name!r} has dtype {t.dtype}; expected a float tensor")
        if width is not None and t.shape[0] != int(width):
            raise ActkitError(f"{str(p)!r}: tensor {name!r} has size {t.shape[0]} but the metadata says "
                              f"hidden size {width}")
        if not bool(torch.isfinite(t).all()):
            raise ActkitError(f"{str(p)!r}: tensor {name!r} holds NaN or inf; the vector is unusable")
        out[int(index)] = t.to(torch.float32)
    listed = meta.get("layers")
    if isinstance(listed, list) and sorted(int(x) for x in listed) != sorted(out):
        raise ActkitError(f"{str(p)!r}: the metadata lists layers {listed} but the file holds {sorted(out)}")
    return out


def check_fits(vector: SteeringVector, model: nn.Module, *, source: str = "the vector") -> None:
    """Raise `ActkitError` if `vector` cannot steer `model`; warn if it was made for a different model.

    Arguments:
        vector: the vector.
        model: the model.
        source: how to name the vector in messages (its file).
    """
    here = model_metadata(model)
    meta = vector.metadata
    problems: list[str] = []
    if vector.hidden_size != here["hidden_size"]:
        problems.append(f"hidden size {vector.hidden_size} in the vector, {here['hidden_size']} in the model")
    saved_layers = meta.get("num_layers")
    if saved_layers is not None and here["num_layers"] is not None and int(saved_layers) != int(here["num_layers"]):
        problems.append(f"{saved_layers} blocks in the model the vector was made for, {here['num_layers']} in this one")
    n_layers = int(here["num_layers"] or 0)
    outside = [layer for layer in vector.layers if layer >= n_layers]
    if outside:
        problems.append(f"layer(s) {outside} do not exist; the model has blocks 0..{n_layers - 1}")
    if problems:
        made_for = meta.get("model", "an unknown model")
        raise ActkitError(
            f"{source} (made for {made_for}) does not fit {here['model']}: " + "; ".join(problems)
        )
    saved_hash = meta.get("config_hash")
    if saved_hash is not None and saved_hash != here["config_hash"]:
        saved = meta.get("config") or {}
        diffs = [f"{k}: {saved.get(k)!r} in the vector, {here['config'].get(k)!r} in the model"
                 for k in CONFIG_FIELDS if saved.get(k) != here["config"].get(k)]
        detail = "; ".join(diffs) or "the config hash differs"
        warnings.warn(f"{source} was made for a different configuration ({detail}); shapes fit, so it is used",
                      UserWarning, stacklevel=3)
    elif meta.get("model") not in (None, here["model"]):
        warnings.warn(f"{source} was made for {meta.get('model')!r} and is used on {here['model']!r} "
                      "(same configuration)", UserWarning, stacklevel=3)


__all__ = [
    "CONFIG_FIELDS", "FORMAT_VERSION", "SteeringVector", "check_fits", "check_metadata", "config_fields",
    "config_hash",
    "load_vector", "model_metadata", "model_name", "restrict_layers", "save_vector", "steering_writes",
]
