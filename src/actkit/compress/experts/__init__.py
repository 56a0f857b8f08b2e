"""MoE experts: routing statistics, pruning (REAP, EAN, frequency), a merging baseline, and expert switching.

The public API:

- `expert_stats(model, tokenizer, texts)` -> `ExpertStats`: per MoE block and expert, routed-token counts, mean
  applied gate and router probability, output norms (EAN) and gate-weighted output norms (REAP), in one pass that
  runs each expert only on the tokens routed to it (``every_token=True`` runs it on every token).
- `score_experts(stats, "reap" | "ean" | "frequency")`, `kept_count`, `select_experts`, `merge_groups`,
  `plan_experts`: what each block keeps.
- `slice_experts(model, keep)`: the smaller model (expert tensors, router rows, config).
- `prune_experts(model, tokenizer, method=..., keep=...)` and `export_experts(..., out_dir)`: all of it, with a
  Hugging Face checkpoint and a JSON report (``actkit prune experts``).
- `switch_experts(model, off=..., on=...)`: a context manager that switches experts off or forces them on at
  inference; `behaviour_experts` and `random_experts` pick the experts and the random control (MoTE).
- `route(logits, top_k, renormalize)`: the routing of every supported family, recomputed from router logits.
"""

from actkit.compress.experts.merge import Group, merge_groups, merged_parameters, router_similarity
from actkit.compress.experts.mote import (
    BehaviourExperts,
    behaviour_experts,
    random_experts,
    routing_frequency,
)
from actkit.compress.experts.prune import REPORT_FILE, ExpertPlan, export_experts, plan_experts, prune_experts
from actkit.compress.experts.routing import MoeLayer, moe_layers, route
from actkit.compress.experts.scores import METHODS as EXPERT_METHODS
from actkit.compress.experts.scores import (
    SCORES,
    kept_count,
    parse_experts,
    score_experts,
    select_experts,
)
from actkit.compress.experts.slicing import slice_experts
from actkit.compress.experts.stats import ExpertStats, expert_stats
from actkit.compress.experts.switch import switch_experts

__all__ = [
    "EXPERT_METHODS", "REPORT_FILE", "SCORES", "BehaviourExperts", "ExpertPlan", "ExpertStats", "Group", "MoeLayer",
    "behaviour_experts", "expert_stats", "export_experts", "kept_count", "merge_groups", "merged_parameters",
    "moe_layers", "parse_experts", "plan_experts", "prune_experts", "random_experts", "route", "router_similarity",
    "routing_frequency", "score_experts", "select_experts", "slice_experts", "switch_experts",
]
