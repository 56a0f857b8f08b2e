"""The latent guard: decided on the prompt in the prefill, per row of a mixed batch; flag, refuse and steer."""

from __future__ import annotations

import pytest
import torch

from actkit.core.generate import generate_ids
from actkit.core.interventions import Add
from actkit.errors import ActkitError
from actkit.monitor import Probe
from actkit.monitor.guard import guard_writes, guarded_generate

PROMPTS = ["ab", "zyxwvut", "hello", "q", "mnop"]


def split_probe(model, tok, reduce: str) -> tuple[Probe, list[bool]]:
    """A random probe at resid_post.1 whose threshold splits the prompts 3:2: a mixed batch."""
    g = torch.Generator().manual_seed(5)
    probe = Probe("resid_post.1", torch.randn(64, generator=g), 0.1, 0.0, "logistic", reduce=reduce)
    scores = probe.score(model, tok, PROMPTS)
    ordered = scores.sort().values
    threshold = float(ordered[2] + ordered[3]) / 2  # halfway between two scores: no row sits on the threshold
    probe.threshold = threshold
    return probe, (scores > threshold).tolist()


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_flags_are_per_row_and_equal_the_probe_on_each_prompt(llama, tok, reduce):
    probe, expected = split_probe(llama, tok, reduce)
    assert 0 < sum(expected) < len(expected)
    found = guarded_generate(llama, tok, PROMPTS, probe, max_new_tokens=3, batch_size=2)
    assert [g.flagged for g in found] == expected
    assert [g.score for g in found] == pytest.approx(probe.score(llama, tok, PROMPTS).tolist(), abs=1e-4)
    assert [g.ids for g in found] == generate_ids(llama, tok, PROMPTS, max_new_tokens=3)  # flag changes nothing


def test_refuse_replaces_only_flagged_rows(llama, tok):
    probe, expected = split_probe(llama, tok, "last")
    found = guarded_generate(llama, tok, PROMPTS, probe, action="refuse", refusal="NO", max_new_tokens=3)
    plain = generate_ids(llama, tok, PROMPTS, max_new_tokens=3)
    for g, flagged, ids in zip(found, expected, plain, strict=True):
        assert (g.text == "NO") if flagged else (g.ids == ids)


def test_steer_applies_to_flagged_rows_only(llama, tok):
    probe, expected = split_probe(llama, tok, "last")
    push = {"resid_post.2": Add(torch.randn(64, generator=torch.Generator().manual_seed(9)) * 20)}
    found = guarded_generate(llama, tok, PROMPTS, probe, action="steer", writes=push, max_new_tokens=4)
    plain = generate_ids(llama, tok, PROMPTS, max_new_tokens=4)
    steered = generate_ids(llama, tok, PROMPTS, max_new_tokens=4, writes=push)
    assert plain != steered
    for g, flagged, p, s in zip(found, expected, plain, steered, strict=True):
        assert g.ids == (s if flagged else p)


def test_guard_bad_arguments(llama):
    probe = Probe("resid_post.1", torch.ones(64), 0.0, 0.0, "vector")
    with pytest.raises(ActkitError, match="unknown guard action"):
        guard_writes(probe, "block")
    with pytest.raises(ActkitError, match="needs writes"):
        guard_writes(probe, "steer")
    with pytest.raises(ActkitError, match="takes no writes"):
        guard_writes(probe, "flag", {"resid_post.2": Add(torch.ones(64))})
