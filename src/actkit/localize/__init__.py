"""Localize: which components carry a behaviour, by activation patching and attribution patching (AtP, AtP*)."""

from actkit.localize.agreement import agreement
from actkit.localize.attribution import attribution_patching
from actkit.localize.metrics import METRICS, Metric, make_metric
from actkit.localize.pairs import PromptPair, name_mover_pairs, prompt_pair
from actkit.localize.patching import SITES, PatchResult, activation_patching

__all__ = ["METRICS", "SITES", "Metric", "PatchResult", "PromptPair", "activation_patching", "agreement",
           "attribution_patching", "make_metric", "name_mover_pairs", "prompt_pair"]
