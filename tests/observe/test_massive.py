"""Massive activations: detection on models with a planted one, and the zero-versus-mean intervention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actkit import tap
from actkit.core.positions import All
from actkit.observe import intervene, profile
from actkit.observe.massive import ReplaceMassive, level, next_token_loss

from observe_helpers import ByteTokenizer, capture, texts
from tiny import build

DIM, LAYER = 7, 1


def planted_llama() -> torch.nn.Module:
    """Block 1's MLP writes ~1e4 times its usual size into residual channel 7: massive from block 1 on."""
    model = build("llama")
    with torch.no_grad():
        model.model.layers[LAYER].mlp.down_proj.weight[DIM] *= 1e4
    return model


def planted_gpt2() -> torch.nn.Module:
    """Block 1's MLP adds a near-constant 300 to channel 5 of every token: a bias, as in Sun et al."""
    model = build("gpt2")
    with torch.no_grad():
        model.transformer.h[LAYER].mlp.c_proj.bias[5] += 300.0
    return model


def test_planted_massive_activation_is_found_where_it_is() -> None:
    model = planted_llama()
    docs = texts()
    result = profile(model, ByteTokenizer(), docs, batch_size=3, top_k=8)
    _, got = capture(model, docs, {f"resid{i}": (b, "output") for i, b in enumerate(model.model.layers)})
    assert result["layers"][0]["magnitude"]["massive_dims"] == []
    entries = result["massive"]
    assert entries and {e["layer"] for e in entries} == {1, 2}
    assert {e["dim"] for e in entries} == {DIM}
    for layer in (1, 2):
        assert result["layers"][layer]["magnitude"]["massive_dims"] == [DIM]
        median = np.median(np.abs(got[f"resid{layer}"]))
        mine = [e for e in entries if e["layer"] == layer]
        assert len(mine) == 8  # the top-k candidates, all massive here
        for e in mine:
            assert e["ratio"] == pytest.approx(abs(e["value"]) / median, rel=3e-3)
            assert e["level"] == (1000 if e["ratio"] >= 1000 else 100)
            assert e["magnitude"] == abs(e["value"])
            # document and position point at the token that carries the value, and its text is decoded
            ids = ByteTokenizer()(docs[e["document"]])["input_ids"]
            assert e["token_id"] == ids[e["position"]]
            assert e["token"] == ByteTokenizer().decode([ids[e["position"]]])
        assert {e["level"] for e in mine} == {1000}
        largest = np.abs(got[f"resid{layer}"][:, DIM]).max()
        assert mine[0]["magnitude"] == pytest.approx(largest, rel=1e-6)
    assert [e["layer"] for e in entries] == sorted(e["layer"] for e in entries)


def test_every_massive_channel_is_reported_even_when_top_k_is_full() -> None:
    model = planted_llama()
    with torch.no_grad():  # a second, smaller massive channel that a top-1 list would never show
        model.model.layers[LAYER].mlp.down_proj.weight[3] *= 2e3
    result = profile(model, ByteTokenizer(), texts(), top_k=1)
    assert result["layers"][1]["magnitude"]["massive_dims"] == [3, DIM]
    assert {e["dim"] for e in result["massive"] if e["layer"] == 1} == {3, DIM}


def test_levels() -> None:
    assert level(99.9) is None and level(100) == 100 and level(999) == 100 and level(1000) == 1000
    assert level(float("inf")) == 1000 and level(float("nan")) is None


def test_replace_massive_against_a_hand_edit() -> None:
    x = torch.tensor([[[1.0, 500.0, -2.0, -800.0], [1.0, 3.0, -2.0, 900.0]]])
    ctx_mask = torch.ones(1, 2, dtype=torch.bool)
    edit = ReplaceMassive([1, 3], 100.0, torch.tensor([7.0, -9.0]))
    from actkit.core.positions import StepContext

    ctx = StepContext(torch.arange(2)[None], ctx_mask, torch.tensor([2]), torch.tensor([0]), torch.tensor([0]))
    out = edit(x, All().mask(ctx), ctx)
    expected = torch.tensor([[[1.0, 7.0, -2.0, -9.0], [1.0, 3.0, -2.0, -9.0]]])
    assert torch.equal(out, expected)
    assert x[0, 0, 1] == 500.0  # the input is untouched
    assert edit.replaced == 3


def test_zeroing_hurts_much_more_than_mean_setting() -> None:
    model = planted_gpt2()
    docs = texts()[:5]
    result = profile(model, ByteTokenizer(), docs, massive_intervention=True)
    iv = result["massive_intervention"]
    assert iv["site"] == "resid_post.1" and iv["layer"] == 1 and iv["dims"] == [5] and iv["level"] == 1000
    ppl = iv["perplexity"]
    assert abs(ppl["zero"] - ppl["original"]) > 0.1  # a random tiny model: ppl ~ its vocabulary, 32
    assert abs(ppl["zero"] - ppl["original"]) > 100 * abs(ppl["mean"] - ppl["original"])
    assert iv["mean_values"][0] == pytest.approx(300.0, rel=0.01)
    assert iv["replaced"]["zero"] == iv["replaced"]["mean"] == iv["entries"] > 0


def test_next_token_loss_matches_a_plain_forward() -> None:
    model = build("gpt2")
    docs = texts()[:3]
    loss, count = next_token_loss(model, ByteTokenizer(), docs, batch_size=2)
    total, n = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([ByteTokenizer()(doc)["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            n += ids.shape[1] - 1
    assert count == n
    assert loss == pytest.approx(total / n, rel=1e-5)


def test_intervention_uses_the_core_tap_and_restores_the_model() -> None:
    model = planted_gpt2()
    ids = torch.tensor([ByteTokenizer()(texts()[0])["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    found = intervene(model, ByteTokenizer(), texts()[:2], 1, [5], 10.0)
    with torch.no_grad():
        after = model(input_ids=ids).logits
        edit = ReplaceMassive([5], 10.0, torch.zeros(1))
        with tap(model, write={"resid_post.1": edit}):
            edited = model(input_ids=ids).logits
    assert torch.equal(before, after)
    assert not torch.allclose(before, edited)
    assert found["nll"]["original"] < found["nll"]["zero"]
