"""Sparse autoencoders on any site: top-k training through `collect`'s batches, SAELens files, per-feature input
and output scores, and steering with chosen features.

The public API:

- `SparseAutoencoder`: SAELens's tensors (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``), `encode`, `decode`; top-k,
  ReLU (``standard``) and JumpReLU architectures.
- Training: `train_sae(model, tokenizer, texts, site, n_features=, k=)` -> (SAE, report), streaming (Gao et al.
  2024's recipe); `evaluate_sae` -> fraction of variance explained, L0, dead features.
- Files: `save_sae` / `load_sae` (SAELens folders: ``cfg.json`` + ``sae_weights.safetensors``), `check_sae_fits`.
- Scores (Arad et al. 2025): `logit_lens_tokens`, `input_scores`, `output_scores`, `feature_scores`.
- Steering: `sae_writes(sae, features, coef, mode="add" | "clamp")`, `feature_vector` (a `SteeringVector`),
  `EncodeEditDecode` and `FeatureEdit` (edit feature activations, keep the reconstruction error).
"""

from __future__ import annotations

from actkit.sae._files import check_sae_fits, hook_name, load_sae, save_sae, site_of_hook
from actkit.sae._model import ARCHITECTURES, EncodeEditDecode, FeatureEdit, SparseAutoencoder
from actkit.sae._scores import NEUTRAL_PROMPT, feature_scores, input_scores, logit_lens_tokens, output_scores
from actkit.sae._steer import feature_direction, feature_vector, sae_writes
from actkit.sae._train import ReconstructionStats, evaluate_sae, train_sae

__all__ = [
    "ARCHITECTURES", "NEUTRAL_PROMPT", "EncodeEditDecode", "FeatureEdit", "ReconstructionStats", "SparseAutoencoder",
    "check_sae_fits", "evaluate_sae", "feature_direction", "feature_scores", "feature_vector", "hook_name",
    "input_scores", "load_sae", "logit_lens_tokens", "output_scores", "sae_writes", "save_sae", "site_of_hook",
    "train_sae",
]
