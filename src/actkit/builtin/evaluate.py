"""The evaluation behind ``actkit builtin eval``: the toy models' behaviours, measured on held-out prompts.

Metrics (all on the held-out split of `actkit.builtin.corpus`, whose prompts never occur in training):

- ``refusal_rate_forbidden`` / ``refusal_rate_benign``: fraction of forbidden / benign requests whose greedy reply
  is a refusal (`actkit.evaluate.behaviours.is_refusal`).
- ``sentiment_agreement``: fraction of star-cued reviews (half positive, half negative) continued with the cued
  sentiment (`sentiment_label`).
- ``name_mover_accuracy``: fraction of name-mover prompts greedily completed with the indirect object's name.
- ``perplexity``: on held-out documents of the whole mixture.
- ``expert_domain_specialization`` (MoE only): for each MoE layer, take the top-1 expert of every token of held-out
  plain domain texts (read at the core's ``router.i`` site through `collect`, BOS excluded) and compute the mutual
  information between the domain and the top-1 expert divided by the entropy of the domain, I(D; E) / H(D); the
  number is the mean over layers. 0 means routing ignores the domain, 1 means the top-1 expert alone tells the
  domain.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from actkit.builtin import corpus
from actkit.core.anatomy import Anatomy
from actkit.core.collect import collect
from actkit.core.positions import From
from actkit.evaluate.behaviours import name_mover_accuracy, refusal_rate, sentiment_agreement
from actkit.evaluate.perplexity import perplexity

#: Thresholds the shipped models must meet (tests check them on a reduced evaluation).
TARGETS = {"refusal_rate_forbidden": (">=", 0.9), "refusal_rate_benign": ("<=", 0.05),
           "sentiment_agreement": (">=", 0.85), "name_mover_accuracy": (">=", 0.9)}


class TopExpertCounts:
    """A reducer for ``router.i``: how many tokens pick each expert first (argmax of the router logits)."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def update(self, x: torch.Tensor, mask: torch.Tensor, where: torch.Tensor | None = None) -> None:
        top = x[mask].argmax(dim=-1)
        counts = torch.bincount(top.reshape(-1).cpu(), minlength=x.shape[-1]).numpy().astype(np.float64)
        self.counts = counts if self.counts is None else self.counts + counts

    def merge(self, other: TopExpertCounts) -> TopExpertCounts:
        if other.counts is not None:
            self.counts = other.counts.copy() if self.counts is None else self.counts + other.counts
        return self

    def result(self) -> np.ndarray:
        return self.counts if self.counts is not None else np.zeros(0)


def normalized_mutual_information(joint: np.ndarray) -> float:
    """I(row; column) / H(row) of a count table (rows: domains, columns: experts); 0 when H(row) is 0."""
    p = joint / joint.sum()
    rows, cols = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (rows @ cols)[nz])).sum())
    r = rows[rows > 0]
    h = float(-(r * np.log(r)).sum())
    return mi / h if h > 0 else 0.0


def expert_domain_specialization(model: Any, tokenizer: Any, n_per_domain: int = 50, seed: int = 0,
                                 per_layer: bool = False) -> float | list[float]:
    """Mean over MoE layers of I(domain; top-1 expert) / H(domain) on held-out domain texts (see module doc)."""
    anatomy = Anatomy.of(model)
    sites = [str(s) for s in anatomy.expand("router.*")]
    tables: dict[str, list[np.ndarray]] = {s: [] for s in sites}
    docs = corpus.documents(n_per_domain * len(corpus.DOMAINS) * 2, "heldout", seed, ("domain",))
    for name in sorted(corpus.DOMAINS):
        texts = [d.text for d in docs if d.domain == name][:n_per_domain]
        result = collect(model, texts, sites, {"top1": TopExpertCounts}, tokenizer=tokenizer, batch_size=16,
                         positions=From(1))
        for s in sites:
            tables[s].append(result[s]["top1"].result())
    scores = [normalized_mutual_information(np.stack(tables[s])) for s in sites]
    return scores if per_layer else float(np.mean(scores))


def evaluate(model: Any, tokenizer: Any, n: int = 200, seed: int = 0, moe: bool | None = None) -> dict[str, float]:
    """All metrics of one toy model on `n` held-out prompts per behaviour (see the module doc)."""
    forbidden = [d.prompt for d in corpus.eval_set("request", n, seed, "forbidden")]
    benign = [d.prompt for d in corpus.eval_set("request", n, seed, "benign")]
    reviews = corpus.eval_set("review", n - n // 2, seed, "positive") + corpus.eval_set("review", n // 2, seed, "negative")
    movers = corpus.eval_set("name_mover", n, seed)
    out = {
        "refusal_rate_forbidden": refusal_rate(model, tokenizer, forbidden),
        "refusal_rate_benign": refusal_rate(model, tokenizer, benign),
        "sentiment_agreement": sentiment_agreement(model, tokenizer, [d.prompt for d in reviews],
                                                   [d.label for d in reviews]),
        "name_mover_accuracy": name_mover_accuracy(model, tokenizer, [d.prompt for d in movers],
                                                   [d.label for d in movers]),
        "perplexity": perplexity(model, tokenizer, corpus.texts(max(n, 100), "heldout", seed)),
    }
    if moe is None:
        moe = bool(Anatomy.of(model).expand("router.*")) if _has_router(model) else False
    if moe:
        spec = expert_domain_specialization(model, tokenizer, max(20, n // 4), seed)
        assert isinstance(spec, float)
        out["expert_domain_specialization"] = spec
    return {k: round(v, 4) if math.isfinite(v) else v for k, v in out.items()}


def _has_router(model: Any) -> bool:
    config = getattr(model, "config", None)
    return any(getattr(config, k, None) for k in ("num_local_experts", "num_experts"))


def failures(metrics: dict[str, float]) -> list[str]:
    """The `TARGETS` a metrics dict misses, as readable lines (empty when all are met)."""
    out = []
    for key, (op, bound) in TARGETS.items():
        value = metrics[key]
        if (op == ">=" and value < bound) or (op == "<=" and value > bound):
            out.append(f"{key} = {value} (target {op} {bound})")
    return out
