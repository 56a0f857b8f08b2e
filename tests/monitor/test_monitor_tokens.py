"""Per-token monitoring: scores read during a batched, left-padded, KV-cached generation equal one forward pass
over the final text."""

from __future__ import annotations

import pytest
import torch

from actkit.core.generate import generate_ids
from actkit.errors import ActkitError
from actkit.monitor import Probe
from actkit.monitor.tokens import monitor_generate

PROMPTS = ["ab", "zyxwvut", "hello", "q"]


def probes(hidden: int = 64) -> dict[str, Probe]:
    g = torch.Generator().manual_seed(4)
    return {"p1": Probe("resid_post.1", torch.randn(hidden, generator=g), 0.3, 0.0, "logistic"),
            "p2": Probe("resid_post.0", torch.randn(hidden, generator=g), -1.0, 0.0, "mean-diff"),
            "p1b": Probe("resid_post.1", torch.randn(hidden, generator=g), 0.0, 0.0, "pca")}


@torch.no_grad()
def hand_scores(model, ids: list[int], probe: Probe) -> list[float]:
    # hidden_states[k + 1] is the output of block k (the last one has the final norm too: not used here)
    hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[probe.layer + 1][0]
    return (hidden.double() @ probe.weight.double() + probe.bias).tolist()


@pytest.mark.parametrize("batch_size", [None, 3])
def test_scores_in_batched_left_padded_generation_equal_one_forward_pass(llama, tok, batch_size):
    found = monitor_generate(llama, tok, PROMPTS, probes(), max_new_tokens=6, batch_size=batch_size)
    plain = generate_ids(llama, tok, PROMPTS, max_new_tokens=6)
    assert [m.ids for m in found] == plain  # reading changes nothing
    for prompt, item in zip(PROMPTS, found, strict=True):
        assert item.prompt_ids == tok(prompt)["input_ids"] and len(item.ids) == 6
        for name, probe in probes().items():
            full = hand_scores(llama, item.prompt_ids + item.ids, probe)
            plen = len(item.prompt_ids)
            assert item.prompt_scores[name] == pytest.approx(full[:plen], abs=1e-4)
            assert item.scores[name] == pytest.approx(full[plen - 1:plen + 5], abs=1e-4)


def test_rows_cut_at_end_of_sequence_keep_their_own_scores(llama, tok):
    first = generate_ids(llama, tok, PROMPTS, max_new_tokens=6)
    stop = first[1][2]  # a token row 1 generates third: row 1 stops there, the others maybe elsewhere
    found = monitor_generate(llama, tok, PROMPTS, probes(), max_new_tokens=6, eos_token_id=stop)
    assert len(found[1].ids) == 2
    for item in found:
        assert len(item.scores["p2"]) == len(item.ids)
        full = hand_scores(llama, item.prompt_ids + item.ids, probes()["p2"])
        plen = len(item.prompt_ids)
        assert item.scores["p2"] == pytest.approx(full[plen - 1:plen - 1 + len(item.ids)], abs=1e-4)


def test_generate_reads_see_global_prompt_indices(llama, tok):
    seen: list[int] = []
    generate_ids(llama, tok, PROMPTS, max_new_tokens=2, batch_size=3,
                 reads={"resid_post.0": lambda x, mask, ctx: seen.extend(ctx.documents.tolist())})
    assert sorted(set(seen)) == [0, 1, 2, 3]


def test_monitor_needs_probes(llama, tok):
    with pytest.raises(ActkitError, match="no probes"):
        monitor_generate(llama, tok, PROMPTS, {})
