"""compress: make a model smaller or cheaper using its activation statistics.

- Weight pruning scored by activation norms: `actkit.compress.weights.prune_weights` (magnitude, Wanda, SparseGPT,
  DaSS; unstructured and N:M), built from `masks`, `scores`, `sparsegpt` and the layer-by-layer calibration engine
  `layerwise` (the core's streaming reducers at the sites that carry each block's linear inputs, read by `tap`,
  each block calibrated on what the already-pruned blocks before it produce).
- Dynamic activation sparsity at inference: `actkit.compress.activation` (TEAL thresholds, calibrated by `collect`
  at the input sites; WINA and the variant of its released code; sparsified by hooks on the projections) and
  `sparse_decode` / `sparse_linear` (a batch-1 CPU path that reads only the active weight columns).
- MoE experts: `actkit.compress.experts` (router statistics, REAP / EAN / frequency pruning, merging, switching).

Calibration text and its record come from `calibration`; every export is an ordinary Hugging Face checkpoint with a
JSON report (`actkit.models.checkpoint`).
"""
