"""Steering: directions from contrast pairs, written back into the residual stream.

The public API:

- Data: `read_pairs(path)` -> list of `Pair`; `pairs_hash(pairs)`.
- Directions: `train_vector(model, tokenizer, pairs, layers, method=...)` -> `SteeringVector` (methods
  ``mean-diff``, ``pca-diff``, ``pca-center``, ``probe``, ``actadd``); `direction(pos, neg, method)` on tensors;
  `read_activations`; `select_layers(model, tokenizer, pairs)` -> (ranking table, chosen layers).
- `SteeringVector.to_intervention(coef, positions, relative)` -> writes for ``tap`` or `generate`;
  `steering_writes(vector, coef, relative=, layers=, positions=)`: what ``actkit generate`` (and ``actkit serve``)
  steer with; `restrict_layers`.
- Interventions: `Ablate`, `Clamp`, `Conditional` / `conditional` (CAST), `ablation_everywhere`, `combine`.
- Adaptive steering (on `actkit.core.decode`): `dynamic_generate` / `DynamicComposition` (several vectors, each
  coefficient set per token from a KL), `backtrack_generate` / `Backtracking` / `vector_probe` (steer after a
  probe crosses its threshold, k tokens back).
- LinEAS (Rodriguez et al. 2025): `train_lineas(model, tokenizer, source, target, layers)` -> `LinEAS` (affine maps
  per block trained end to end with a 1-D Wasserstein loss), `AffineMap`, `save_lineas` / `load_lineas`.
- Files: `save_vector` / `load_vector` (safetensors + JSON metadata), `export_gguf` / `import_gguf` (llama.cpp
  control vectors), `export_ablated` (a Hugging Face checkpoint with the ablation baked into the weights).
"""

from __future__ import annotations

from actkit.steer.ablate_export import ablated_copy, export_ablated, residual_writers
from actkit.steer.backtrack import Backtracking, backtrack_generate, vector_probe
from actkit.steer.directions import (
    METHODS,
    actadd,
    direction,
    mean_diff,
    pca_center,
    pca_diff,
    probe,
    read_activations,
    train_vector,
)
from actkit.steer.dynamic import DynamicComposition, dynamic_generate
from actkit.steer.gguf import export_gguf, import_gguf
from actkit.steer.interventions import (
    Ablate,
    Clamp,
    Conditional,
    ConditionGate,
    ablation_everywhere,
    combine,
    conditional,
)
from actkit.steer.layers import select_layers
from actkit.steer.lineas import AffineMap, LinEAS, load_lineas, save_lineas, train_lineas
from actkit.steer.pairs import Pair, pairs_hash, read_pairs
from actkit.steer.vectors import (
    SteeringVector,
    check_fits,
    load_vector,
    restrict_layers,
    save_vector,
    steering_writes,
)

__all__ = [
    "Backtracking", "DynamicComposition", "backtrack_generate", "dynamic_generate", "vector_probe",
    "METHODS", "Ablate", "Clamp", "ConditionGate", "Conditional", "Pair", "SteeringVector", "ablated_copy",
    "AffineMap", "LinEAS", "load_lineas", "save_lineas", "train_lineas",
    "ablation_everywhere", "actadd", "check_fits", "combine", "conditional", "direction", "export_ablated",
    "export_gguf", "import_gguf", "load_vector", "mean_diff", "pairs_hash",
    "pca_center", "pca_diff", "probe", "read_activations", "read_pairs", "residual_writers", "restrict_layers",
    "save_vector", "select_layers", "steering_writes", "train_vector",
]
