"""Localize: which components carry a behaviour, by activation patching and attribution patching (AtP, AtP*);
function vectors (the heads that carry an in-context task, summed into one vector)."""

from actkit.localize.agreement import agreement
from actkit.localize.attribution import attribution_patching
from actkit.localize.function_vectors import FunctionVector, function_vector, zero_shot_accuracy
from actkit.localize.metrics import METRICS, Metric, make_metric
from actkit.localize.pairs import PromptPair, name_mover_pairs, prompt_pair
from actkit.localize.patching import SITES, PatchResult, activation_patching

__all__ = ["METRICS", "SITES", "FunctionVector", "Metric", "PatchResult", "PromptPair", "activation_patching",
           "agreement", "attribution_patching", "function_vector", "make_metric", "name_mover_pairs", "prompt_pair",
           "zero_shot_accuracy"]
