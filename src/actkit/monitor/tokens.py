"""Per-token monitoring while generating: every token's projection on probes, read by the same passes that generate.

A `TokenScores` sink is hooked at each probe's site through ``generate_ids(reads=...)``: the prefill pass gives the
scores of the prompt tokens, each KV-cache decode step the score of the token it reads. Each value is placed at
(prompt index, absolute position), so left padding and batching change nothing: the scores equal those of one
forward pass over the final text (tested).

Which activation a generated token's score comes from: the model chooses generated token k while reading the token
before it (position ``prompt_len + k - 1``), and the last generated token is never read (generation stops), so
generated token k is given the score of the position that produced it: the state in which the model chose it. The
first generated token's score is thus the last prompt token's, which is also what a guard decides on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from actkit.core.generate import generate_ids, prompt_token_ids
from actkit.core.positions import StepContext
from actkit.errors import ActkitError
from actkit.monitor.probe import Probe


class TokenScores:
    """A read sink: the probe's score of every real token of every pass, kept as prompt -> position -> score.

    Memory grows with the tokens read (one float per token), which per-token scores need.
    """

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.rows: dict[int, dict[int, float]] = {}

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, ctx: StepContext) -> None:
        scores = self.probe.project(x.detach()).cpu()
        positions, valid, docs = ctx.positions.cpu(), mask.cpu(), ctx.documents.cpu().tolist()
        for b, doc in enumerate(docs):
            row = self.rows.setdefault(int(doc), {})
            keep = valid[b]
            for pos, score in zip(positions[b][keep].tolist(), scores[b][keep].tolist(), strict=True):
                row[int(pos)] = float(score)


@dataclass
class Monitored:
    """One prompt's generation with per-token scores.

    Attributes:
        prompt_ids: the prompt's token ids (chat template applied when asked).
        ids: the generated token ids, cut before the first end-of-sequence token.
        prompt_scores: probe name -> one score per prompt token (at that token).
        scores: probe name -> one score per generated token (at the position that produced it: module docstring).
    """

    prompt_ids: list[int]
    ids: list[int]
    prompt_scores: dict[str, list[float]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)


def monitor_generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    probes: Mapping[str, Probe],
    **options: Any,
) -> list[Monitored]:
    """Generate from each prompt and score every prompt and generated token on each probe, at no extra pass.

    Arguments:
        model: the model the probes were made for.
        tokenizer: its tokenizer.
        prompts: the prompts.
        probes: name -> `Probe` (several may share a site).
        options: keyword arguments of `generate_ids` (``writes``, ``max_new_tokens``, ``chat``, ``batch_size``...).

    Returns:
        One `Monitored` per prompt.
    """
    if not probes:
        raise ActkitError("no probes to monitor with")
    if "reads" in options:
        raise ActkitError("monitor_generate sets the reads itself; pass extra sinks to generate_ids directly")
    sinks = {name: TokenScores(probe) for name, probe in probes.items()}
    reads: dict[str, list[TokenScores]] = {}
    for sink in sinks.values():
        reads.setdefault(sink.probe.site, []).append(sink)
    ids = generate_ids(model, tokenizer, prompts, reads=reads, **options)
    out: list[Monitored] = []
    for i, row in enumerate(ids):
        prompt_ids = prompt_token_ids(tokenizer, prompts[i], bool(options.get("chat", False)))
        plen = len(prompt_ids)
        item = Monitored(prompt_ids, list(row))
        for name, sink in sinks.items():
            scores = sink.rows.get(i, {})
            item.prompt_scores[name] = [scores[p] for p in range(plen)]
            item.scores[name] = [scores[plen + k - 1] for k in range(len(row))]
        out.append(item)
    return out


__all__ = ["Monitored", "TokenScores", "monitor_generate"]
