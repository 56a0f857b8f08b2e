"""compress: make a model smaller or cheaper using its activation statistics.

Weight pruning scored by activation norms (magnitude, Wanda, SparseGPT, DaSS; unstructured and N:M), dynamic
activation sparsity at inference (TEAL, WINA) with a CPU path that skips inactive columns, and MoE expert pruning,
merging and switching (REAP, EAN, frequency, MoTE). Every method calibrates through the core's `collect` and hooks,
and every export is an ordinary Hugging Face checkpoint with a JSON report.
"""
