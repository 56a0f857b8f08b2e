"""Steering with chosen SAE features: their decoder rows added as vectors, or their activations clamped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from actkit.core.interventions import Add, Intervention
from actkit.core.positions import Positions, parse_positions
from actkit.core.sites import Site
from actkit.errors import ActkitError
from actkit.sae._model import (
    EncodeEditDecode,
    FeatureEdit,
    SparseAutoencoder,
    feature_indices,
    finite_number,
    unit_rows,
)
from actkit.steer.vectors import SteeringVector

SteerMode = Literal["add", "clamp"]


def feature_direction(sae: SparseAutoencoder, features: int | Sequence[int],
                      weights: Sequence[float] | None = None) -> torch.Tensor:
    """The (d_in,) direction of some features: the sum of their unit decoder rows, times `weights` (default 1)."""
    chosen = feature_indices(sae, features)
    w = torch.ones(len(chosen)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
    if w.shape != (len(chosen),):
        raise ActkitError(f"give one weight per feature ({len(chosen)} features, {w.numel()} weights)")
    rows = unit_rows(sae.W_dec.detach().to(torch.float32)[chosen])
    return (w[:, None] * rows).sum(0)


def feature_vector(sae: SparseAutoencoder, features: int | Sequence[int],
                   weights: Sequence[float] | None = None) -> SteeringVector:
    """Features' decoder rows as a `SteeringVector` at the SAE's block (for `sweep`, ``--relative``, files).

    The vector's ``mean_norms`` is the mean activation norm the SAE saw while training (when known), so a relative
    coefficient means the same as for a vector trained from pairs. The SAE's site must be a per-block site
    (``resid_post.2``).
    """
    site = Site.parse(sae.site)
    if site.layer is None or site.expert is not None:
        raise ActkitError(f"a steering vector lives at a per-block site; the SAE reads {sae.site}")
    chosen = feature_indices(sae, features)
    ours = dict(sae.metadata.get("actkit") or {})
    meta = {key: ours[key] for key in ("model", "config", "config_hash", "hidden_size", "num_layers") if key in ours}
    meta.update(method="sae-features", features=chosen)
    if isinstance(ours.get("mean_norm"), (int, float)):
        meta["mean_norms"] = {str(site.layer): float(ours["mean_norm"])}
    return SteeringVector({site.layer: feature_direction(sae, chosen, weights)}, site=site.kind, metadata=meta)


def sae_writes(sae: SparseAutoencoder, features: int | Sequence[int], coef: float, *, mode: SteerMode = "add",
               relative: bool = False, positions: Positions | str = "all") -> dict[str, Intervention]:
    """The writes that steer with some features: what ``actkit generate --sae DIR --feature I --coef C`` uses.

    Arguments:
        sae: the SAE (checked against the model by `load_sae`).
        features: feature indices.
        coef: ``add``: the multiple of the (unit) decoder rows added; ``clamp``: the value the features' activations
            are set to.
        mode: ``add`` adds the decoder rows at the site (an `Add`); ``clamp`` encodes, sets the features to `coef`,
            decodes, and keeps the reconstruction error (`EncodeEditDecode`).
        relative: ``add`` only: `coef` is a fraction of the mean activation norm the SAE was trained on.
        positions: which tokens to steer.

    Returns:
        ``{sae.site: intervention}``.
    """
    coef = finite_number(float(coef), "coefficient")
    where = parse_positions(positions)
    chosen = feature_indices(sae, features)
    if mode == "clamp":
        if relative:
            raise ActkitError("relative coefficients are for adding decoder rows; clamping sets activations")
        return {sae.site: EncodeEditDecode(sae, FeatureEdit(torch.tensor(chosen), coef, mode="set"), where)}
    if mode != "add":
        raise ActkitError(f"unknown SAE steering mode {mode!r}; use add or clamp")
    direction = feature_direction(sae, chosen)
    if relative:
        norm = (sae.metadata.get("actkit") or {}).get("mean_norm")
        if not isinstance(norm, (int, float)):
            raise ActkitError("this SAE records no mean activation norm, so a relative coefficient is undefined; "
                              "use an absolute one")
        direction = direction * (float(norm) / float(direction.norm()))
    return {sae.site: Add(direction, coef=coef, positions=where)}
