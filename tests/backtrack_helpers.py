"""Helpers of the backtracking tests: a tokenizer that round-trips ids, and a probe's scores on a plain run."""

from __future__ import annotations

import torch

from actkit.core.generate import generate_ids
from actkit.core.hooks import Capture, tap

from tiny import DecodingTokenizer


class RoundTrip(DecodingTokenizer):
    """Ids as letters and back (id k <-> chr(64 + k)), so a prompt plus generated ids is again a prompt."""

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) - 64 for c in text]}


def probe_scores(model, tok, prompts, probe, n) -> list[list[float]]:
    """The probe's score of every generated token of a plain greedy run (read as each token is fed)."""
    ids = generate_ids(model, tok, prompts, max_new_tokens=n)
    out = []
    for prompt, row in zip(prompts, ids, strict=True):
        cap = Capture()
        with torch.no_grad(), tap(model, read={probe.site: cap}):
            model(input_ids=torch.tensor([tok(prompt)["input_ids"] + row]))
        out.append(probe.project(cap.last[0, len(tok(prompt)["input_ids"]):]).tolist())
    return out
