"""What the SAE tests share: a random top-k SAE for a tiny model."""

from __future__ import annotations

import torch

from actkit.sae import SparseAutoencoder
from actkit.steer.vectors import model_metadata


def random_sae(d_in: int, d_sae: int = 48, k: int = 5, site: str = "resid_post.1", seed: int = 0,
               model: torch.nn.Module | None = None) -> SparseAutoencoder:
    """A random top-k SAE with unit decoder rows (and the model's metadata when given)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    sae = SparseAutoencoder(w_dec.T.contiguous().clone(), torch.randn(d_sae, generator=g) * 0.1, w_dec,
                            torch.randn(d_in, generator=g) * 0.1, site=site, k=k)
    if model is not None:
        sae.metadata["actkit"] = {**model_metadata(model), "mean_norm": 3.0}
    return sae
