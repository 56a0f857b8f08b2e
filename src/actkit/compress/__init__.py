"""compress: make a model smaller or cheaper using its activation statistics.

- Weight pruning scored by activation norms: `actkit.compress.weights.prune_weights` (magnitude, Wanda, SparseGPT,
  DaSS; unstructured and N:M), built from `masks`, `scores`, `sparsegpt` and the layer-by-layer calibration engine
  `layerwise` (the core's streaming reducers at the sites that carry each block's linear inputs, read by `tap`,
  each block calibrated on what the already-pruned blocks before it produce).
- Dynamic activation sparsity at inference: `actkit.compress.activation` (TEAL thresholds, calibrated by `collect`
  at the input sites; WINA and the variant of its released code; sparsified by `tap` writes at the projections' module sites) and
  `sparse_decode` / `sparse_linear` (a batch-1 CPU path that reads only the active weight columns).
- MoE experts: `actkit.compress.experts` (router statistics, REAP / EAN / frequency pruning, merging, switching).

Calibration text is passed in (`calibration_texts(file)`, a list of documents, or a `Calibration`); the command line
uses the built-in corpus. Every export is an ordinary Hugging Face checkpoint with a JSON report: `export_pruned`
for pruned weights, `export_experts` for pruned experts.
"""

from actkit.compress.activation import (
    ActivationSparsity,
    SparsityPlan,
    TealCalibration,
    activation_sparsity,
    calibrate_teal,
    plan_activation_sparsity,
    prepare_activation_sparsity,
)
from actkit.compress.calibration import Calibration, calibration_texts
from actkit.compress.experts import export_experts, prune_experts, switch_experts
from actkit.compress.export import export_pruned
from actkit.compress.sparse_decode import sparse_decode
from actkit.compress.weights import prune_weights

__all__ = [
    "ActivationSparsity", "Calibration", "SparsityPlan", "TealCalibration", "activation_sparsity", "calibrate_teal",
    "calibration_texts", "export_experts", "export_pruned", "plan_activation_sparsity",
    "prepare_activation_sparsity", "prune_experts", "prune_weights", "sparse_decode", "switch_experts",
]
