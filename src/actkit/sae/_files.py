"""SAELens's folder format: ``cfg.json`` plus ``sae_weights.safetensors``, read and written.

Written as SAELens 6 writes an inference SAE: ``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``,
``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``, ``k`` (top-k) at the top level, and a
``metadata`` object with ``model_name``, ``hook_name`` (TransformerLens's name when the site has one, such as
``blocks.2.hook_resid_post``), ``hook_layer``, ``sae_lens_version`` (the layout: ``6.0.0``) and ``actkit``: actkit's
own facts (the site, the model's config fields and hash, training statistics). Weights are ``W_enc``, ``b_enc``,
``W_dec``, ``b_dec`` (and ``threshold`` for JumpReLU).

Read: that layout, and the older one (SAELens before 6: ``hook_name`` or ``hook_point`` and ``model_name`` at the
top level, ``activation_fn_str`` / ``activation_fn`` ``"topk"`` with ``activation_fn_kwargs.k``). A folder without
actkit's metadata (an SAE trained elsewhere) is placed by its hook name; its model is checked by the hidden size.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actkit.core.anatomy import Anatomy
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.io import atomic_folder, read_safetensors
from actkit.sae._model import ARCHITECTURES, SparseAutoencoder
from actkit.steer.vectors import CONFIG_FIELDS, model_metadata

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
#: The SAELens layout written (what ``metadata.sae_lens_version`` says: SAELens reads it without conversion).
LAYOUT_VERSION = "6.0.0"

#: actkit site kind <-> TransformerLens hook name (``{i}`` the block).
_HOOKS = {
    "resid_pre": "blocks.{i}.hook_resid_pre",
    "resid_post": "blocks.{i}.hook_resid_post",
    "attn_out": "blocks.{i}.hook_attn_out",
    "mlp_out": "blocks.{i}.hook_mlp_out",
    "mlp_in": "blocks.{i}.ln2.hook_normalized",
    "mlp_hidden": "blocks.{i}.mlp.hook_post",
}
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def hook_name(site: str) -> str:
    """TransformerLens's hook name for an actkit site (``resid_post.2`` -> ``blocks.2.hook_resid_post``); the site
    itself when TransformerLens has no name for it."""
    s = Site.parse(site)
    if s.kind == "embed":
        return "hook_embed"
    if s.kind in _HOOKS and s.layer is not None and s.expert is None:
        return _HOOKS[s.kind].format(i=s.layer)
    return str(s)


def site_of_hook(name: str) -> str:
    """The actkit site of a TransformerLens hook name (or of an actkit site name, returned checked)."""
    if name == "hook_embed":
        return "embed"
    match = _HOOK_RE.match(name)
    if match:
        for kind, pattern in _HOOKS.items():
            if pattern.format(i=match.group(1)) == name:
                return f"{kind}.{match.group(1)}"
        raise ActkitError(f"the SAE's hook {name!r} has no actkit site; actkit reads SAEs at "
                          + ", ".join(p.format(i="N") for p in _HOOKS.values()) + " or hook_embed")
    try:
        return str(Site.parse(name))
    except ActkitError:
        raise ActkitError(f"the SAE's hook {name!r} is neither a TransformerLens hook name nor an actkit site") from None


def config(sae: SparseAutoencoder) -> dict[str, Any]:
    """The ``cfg.json`` object of `sae`."""
    s = Site.parse(sae.site)
    cfg: dict[str, Any] = {
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": (sae.metadata.get("actkit") or {}).get("model"),
            "hook_name": hook_name(sae.site),
            "hook_layer": s.layer,
            "hook_head_index": None,
            "sae_lens_version": LAYOUT_VERSION,
            "sae_lens_training_version": None,
            "actkit": {**sae.metadata.get("actkit", {}), "site": sae.site},
        },
    }
    if sae.architecture == "topk":
        cfg["k"] = sae.k
    for key, value in sae.metadata.items():
        if key != "actkit":
            cfg["metadata"]["actkit"][key] = value
    return cfg


def save_sae(sae: SparseAutoencoder, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write `sae` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``), atomically.

    Arguments:
        sae: the SAE.
        folder: the folder to write; an existing non-empty one is replaced only with `overwrite`.
        overwrite: the CLI's ``--force``.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    cfg = config(sae)
    try:
        text = json.dumps(cfg, indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ActkitError(f"the SAE's metadata cannot be written as JSON: {error}") from None
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(text + "\n", encoding="utf-8")
    return Path(folder)


def _read_cfg(p: Path) -> dict[str, Any]:
    cfg_path = p / CFG_FILE
    if not cfg_path.is_file():
        raise ActkitError(f"{str(p)!r} has no {CFG_FILE}: an SAE folder holds {CFG_FILE} and {WEIGHTS_FILE} "
                          "(SAELens's format; `actkit sae train` writes one)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ActkitError(f"cannot read {str(cfg_path)!r}: {error}") from None
    except json.JSONDecodeError as error:
        raise ActkitError(f"{str(cfg_path)!r} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(cfg, dict):
        raise ActkitError(f"{str(cfg_path)!r} is not a JSON object")
    return cfg


def _int_field(cfg: dict[str, Any], key: str, source: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ActkitError(f"{source}: field {key!r} must be a positive integer, got {json.dumps(value)}")
    return value


def _architecture(cfg: dict[str, Any], source: str) -> tuple[str, int | None]:
    """(architecture, k) from either SAELens layout."""
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    architecture = cfg.get("architecture", "standard")
    if architecture == "standard" and activation == "topk":
        architecture = "topk"
    if architecture not in ARCHITECTURES:
        raise ActkitError(f"{source}: SAE architecture {architecture!r} is not supported; actkit runs "
                          f"{', '.join(ARCHITECTURES)}")
    if architecture != "topk":
        return architecture, None
    k = cfg.get("k")
    if k is None:
        kwargs = cfg.get("activation_fn_kwargs") or {}
        k = kwargs.get("k") if isinstance(kwargs, dict) else None
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int):
        raise ActkitError(f"{source}: a top-k SAE needs an integer 'k' (or activation_fn_kwargs.k), got "
                          f"{json.dumps(k)}")
    return architecture, k


def load_sae(folder: str | Path, model: nn.Module | None = None) -> SparseAutoencoder:
    """Read a SAELens SAE folder, and check it against `model` when given.

    Arguments:
        folder: a folder with ``cfg.json`` and ``sae_weights.safetensors`` (written by actkit or by SAELens).
        model: the model the SAE will read. Its site must exist in the model and have the SAE's input size; an
            SAE made for a model of another hidden size is refused, naming both sizes.

    Returns:
        The `SparseAutoencoder`, float32 on the CPU. Missing files, unknown architectures, activation
        normalization other than ``none``, misnamed or misshapen tensors raise `ActkitError`.
    """
    p = Path(folder)
    if not p.is_dir():
        raise ActkitError(f"SAE folder {str(p)!r} does not exist (an SAE is a folder with {CFG_FILE} and "
                          f"{WEIGHTS_FILE})")
    cfg = _read_cfg(p)
    source = str(p / CFG_FILE)
    d_in, d_sae = _int_field(cfg, "d_in", source), _int_field(cfg, "d_sae", source)
    architecture, k = _architecture(cfg, source)
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none", False):
        raise ActkitError(f"{source}: normalize_activations {norm!r} is not supported; fold the normalization into "
                          "the weights first (SAELens: fold_activation_norm_scaling_factor) and save again")
    if cfg.get("reshape_activations", "none") not in (None, "none"):
        raise ActkitError(f"{source}: reshape_activations {cfg['reshape_activations']!r} (per-head SAEs) is not "
                          "supported")
    raw_meta = cfg.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    raw_ours = meta.get("actkit")
    ours: dict[str, Any] = raw_ours if isinstance(raw_ours, dict) else {}
    name = ours.get("site") or meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not isinstance(name, str):
        raise ActkitError(f"{source}: no hook_name: the SAE does not say which site it reads")
    site = site_of_hook(name)
    weights = p / WEIGHTS_FILE
    if not weights.is_file():
        raise ActkitError(f"{str(p)!r} has no {WEIGHTS_FILE}")
    _, tensors = read_safetensors(weights, "SAE weights file")
    needed = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if architecture == "jumprelu" else [])
    missing = [key for key in needed if key not in tensors]
    if missing:
        raise ActkitError(f"{str(weights)!r} lacks {', '.join(missing)}; SAELens weights are named "
                          f"{', '.join(needed)}")
    for key in needed:
        if not tensors[key].is_floating_point() or not bool(torch.isfinite(tensors[key]).all()):
            raise ActkitError(f"{str(weights)!r}: tensor {key} is not finite floating point")
    if tuple(tensors["W_enc"].shape) != (d_in, d_sae):
        raise ActkitError(f"{str(weights)!r}: W_enc has shape {tuple(tensors['W_enc'].shape)} but cfg.json says "
                          f"d_in={d_in}, d_sae={d_sae}")
    extra = {key: value for key, value in ours.items() if key != "site"}
    w_enc, b_enc, w_dec, b_dec = (tensors[key].to(torch.float32) for key in ("W_enc", "b_enc", "W_dec", "b_dec"))
    sae = SparseAutoencoder(
        w_enc, b_enc, w_dec, b_dec, site=site, k=k,
        architecture=architecture,
        threshold=tensors["threshold"].to(torch.float32) if architecture == "jumprelu" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        metadata={"actkit": extra, "model_name": meta.get("model_name", cfg.get("model_name"))},
    )
    if model is not None:
        check_sae_fits(sae, model, source=str(p))
    return sae


def check_sae_fits(sae: SparseAutoencoder, model: nn.Module, *, source: str = "the SAE") -> None:
    """Raise `ActkitError` unless `sae` can read `model`: its site exists there with the SAE's input size; warn
    (`UserWarning`) when the SAE records a model configuration that differs in other fields.

    Arguments:
        sae: the SAE.
        model: the model.
        source: how to name the SAE in messages (its folder).
    """
    here = model_metadata(model)
    ours = sae.metadata.get("actkit") or {}
    made_for = ours.get("model") or sae.metadata.get("model_name") or "an unknown model"
    anatomy = Anatomy.of(model)
    try:
        anatomy.point(sae.site)
    except ActkitError as error:
        raise ActkitError(f"{source} (made for {made_for}) reads site {sae.site}, which {here['model']} lacks: "
                          f"{error}") from None
    width = _site_width(model, sae.site)
    if width is not None and width != sae.d_in:
        raise ActkitError(f"{source} (made for {made_for}) reads activations of size {sae.d_in} at {sae.site}, but "
                          f"{here['model']} has size {width} there (hidden size {here['hidden_size']}): the SAE "
                          "was trained for another model; train one for this model with `actkit sae train`")
    saved = ours.get("config") or {}
    diffs = [f"{k}: {saved.get(k)!r} in the SAE, {here['config'].get(k)!r} in the model"
             for k in CONFIG_FIELDS if saved and saved.get(k) != here["config"].get(k)]
    if diffs:  # as for vectors: fine-tunes of one base model share their geometry, so this only warns
        warnings.warn(f"{source} was trained for a different configuration ({'; '.join(diffs)}); sizes fit, so it "
                      "is used", UserWarning, stacklevel=3)


def _site_width(model: nn.Module, site: str) -> int | None:
    """The activation size at `site`, from the config for the residual-sized sites (None when not known)."""
    s = Site.parse(site)
    here = model_metadata(model)
    if s.kind in ("embed", "resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in"):
        return int(here["hidden_size"])
    if s.kind == "mlp_hidden":
        config: Any = getattr(model, "config", None)
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        width = getattr(config, "intermediate_size", None)
        return int(width) if isinstance(width, int) else None
    return None
