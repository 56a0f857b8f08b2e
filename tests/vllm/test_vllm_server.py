"""The same OpenAI client code against vLLM's OpenAI server with the plugin and against ``actkit serve``: the
same steered tokens, and both equal to `actkit.generate`. One start of each server serves the module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import actkit
from actkit.serve.steering import VectorRegistry, build_writes, parse_steer

PROMPT = "Anna reviewed the hotel: The room was"
STEERS: list[list[dict[str, Any]] | None] = [
    None,
    [{"vector": "sentiment", "coef": 4.0}],
    [{"vector": "sentiment", "coef": -6.0, "positions": "generated"}],
    [{"ablate": "sentiment"}, {"vector": "refusal", "coef": 0.5, "relative": True}],
]


def complete(base_url: str, steer: list[dict[str, Any]] | None) -> tuple[str, str]:
    """What an application does: one greedy completion, steering through ``vllm_xargs``; (text, finish)."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=60)
    extra = {"vllm_xargs": {"steer": json.dumps(steer)}} if steer is not None else None
    reply = client.completions.create(model="toy-dense", prompt=PROMPT, max_tokens=24, temperature=0,
                                      extra_body=extra)
    return reply.choices[0].text, str(reply.choices[0].finish_reason)


@pytest.mark.parametrize("steer", STEERS)
def test_vllm_and_actkit_serve_give_the_same_tokens(servers: dict[str, Any], vector_dir: Path,
                                                    steer: list[dict[str, Any]] | None) -> None:
    from_vllm = complete(servers["vllm"].base_url, steer)
    from_actkit = complete(servers["actkit"].base_url, steer)
    assert from_vllm == from_actkit
    model, tokenizer = actkit.load("builtin:toy-dense")
    writes = build_writes(VectorRegistry.from_folder(vector_dir, model), parse_steer(steer, None)) if steer else None
    assert from_vllm[0] == actkit.generate(model, tokenizer, [PROMPT], writes=writes, max_new_tokens=24)[0]


def test_a_bad_steer_is_a_400_from_both(servers: dict[str, Any]) -> None:
    import openai

    for name in ("vllm", "actkit"):
        with pytest.raises(openai.BadRequestError, match="unknown vector 'nope'"):
            complete(servers[name].base_url, [{"vector": "nope"}])
