"""Wanda and DaSS scores against hand computations, alone and inside `prune_weights` on a tiny Llama."""

from __future__ import annotations

import math

import pytest
import torch

from actkit import Moments, collect
from actkit.compress.scores import dass_expand, input_norms, magnitude, wanda
from actkit.compress.weights import find_targets, prune_weights
from actkit.errors import ActkitError

from tiny import CharTokenizer, build

W = [[0.5, -2.0, 1.0], [-1.5, 0.25, -3.0]]
X = [[1.0, 0.0, 2.0], [3.0, -1.0, 0.0], [-2.0, 4.0, 1.0], [0.5, 0.5, -0.5]]  # four tokens, three features
TEXTS = ["the cat sat on the mat and looked around", "a dog ran to the park", "birds sing in the morning light"]


def hand_norms(rows: list[list[float]]) -> list[float]:
    return [math.sqrt(sum(r[j] ** 2 for r in rows)) for j in range(len(rows[0]))]


def test_magnitude_and_wanda_by_hand() -> None:
    w = torch.tensor(W)
    norms = hand_norms(X)
    expected = [[abs(W[i][j]) * norms[j] for j in range(3)] for i in range(2)]
    assert torch.allclose(wanda(w, torch.tensor(norms)), torch.tensor(expected))
    assert torch.equal(magnitude(w), w.abs())


def test_input_norms_from_moments_over_batches_with_a_mask() -> None:
    reducer = Moments()
    x = torch.tensor(X)
    reducer.update(x[None, :2], torch.tensor([[True, True]]))
    reducer.update(torch.cat([x[2:], torch.full((1, 3), 99.0)])[None], torch.tensor([[True, True, False]]))
    norms = input_norms(reducer.result())
    assert torch.allclose(norms, torch.tensor(hand_norms(X), dtype=torch.float64))


def test_dass_expand_by_hand() -> None:
    w = torch.tensor(W).T.contiguous()  # (3 neurons, 2 inputs)
    hidden = [4.0, 0.25, 9.0]
    expected = [[abs(w[i, j].item()) * math.sqrt(hidden[i]) for j in range(2)] for i in range(3)]
    assert torch.allclose(dass_expand(w, torch.tensor(hidden)), torch.tensor(expected))
    assert torch.allclose(dass_expand(w, torch.tensor(hidden), alpha=1.0), w.abs() * torch.tensor(hidden)[:, None])


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ActkitError, match="one input norm per input feature"):
        wanda(torch.ones(2, 3), torch.ones(4))
    with pytest.raises(ActkitError, match="one output norm per output feature"):
        dass_expand(torch.ones(2, 3), torch.ones(3))


def block0_norms(model: torch.nn.Module, site: str) -> torch.Tensor:
    """Block 0 sees unpruned inputs, so `collect` on the dense model gives the statistics pruning must use."""
    got = collect(model, TEXTS, [site], {"m": Moments}, tokenizer=CharTokenizer())
    r = got[site]["m"].result()
    return (r["count"] * (r["var"] + r["mean"] ** 2)).sqrt()


def lowest(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Zero pattern a hand-written per-group pruning gives: the k lowest along `dim`."""
    zero = torch.zeros_like(scores, dtype=torch.bool)
    return zero.scatter_(dim, scores.argsort(dim=dim, stable=True).narrow(dim, 0, k), True)


def test_wanda_in_a_model_prunes_the_hand_computed_weights() -> None:
    model = build("llama")
    pruned, report = prune_weights(model, CharTokenizer(), "wanda", 0.5, calibration=TEXTS)
    gate = model.model.layers[0].mlp.gate_proj.weight.detach()
    norms = block0_norms(model, "mlp_in.0").float()
    expected = lowest(gate.abs() * norms[None, :], gate.shape[1] // 2, dim=1)
    assert torch.equal(pruned.model.layers[0].mlp.gate_proj.weight == 0, expected)
    assert report["modules"]["model.layers.0.mlp.gate_proj"]["groups"] == "each output row"


def test_dass_prunes_gate_up_by_neuron_norm_per_input_column_and_down_like_wanda() -> None:
    model = build("llama")
    pruned, report = prune_weights(model, CharTokenizer(), "dass", 0.5, calibration=TEXTS)
    hidden = block0_norms(model, "mlp_hidden.0").float()
    mlp, new = model.model.layers[0].mlp, pruned.model.layers[0].mlp
    for name in ("gate_proj", "up_proj"):
        w = getattr(mlp, name).weight.detach()
        expected = lowest(w.abs() * hidden.sqrt()[:, None], w.shape[0] // 2, dim=0)
        assert torch.equal(getattr(new, name).weight == 0, expected), name
        assert report["modules"][f"model.layers.0.mlp.{name}"]["score"] == "dass"
    down = mlp.down_proj.weight.detach()
    assert torch.equal(new.down_proj.weight == 0, lowest(down.abs() * hidden[None, :], down.shape[1] // 2, dim=1))
    assert report["modules"]["model.layers.0.self_attn.q_proj"]["score"] == "wanda (not part of a GLU MLP)"


def test_dass_nm_groups_run_along_neurons_in_gate_and_up() -> None:
    pruned, report = prune_weights(build("llama"), CharTokenizer(), "dass", pattern="2:4", calibration=TEXTS)
    mlp = pruned.model.layers[1].mlp
    gate = mlp.gate_proj.weight  # (96 neurons, 64 inputs): 2 of every 4 consecutive neurons in each column
    assert ((gate != 0).T.reshape(64, 24, 4).sum(-1) == 2).all()
    assert ((mlp.down_proj.weight != 0).reshape(64, 24, 4).sum(-1) == 2).all()
    assert report["modules"]["model.layers.1.mlp.up_proj"]["groups"] == "2:4 along the output dimension"


def test_glu_detection_from_shapes() -> None:
    kinds = {name: {t.name.split(".", 3)[-1]: (t.kind, t.repeat) for t in find_targets(build(name))[0]
                    if t.layer == 0} for name in ("llama", "phi3", "gpt2", "gpt_neox")}
    assert kinds["llama"]["mlp.gate_proj"] == ("expand", 1) and kinds["llama"]["mlp.down_proj"] == ("down", 1)
    assert kinds["phi3"]["mlp.gate_up_proj"] == ("expand", 2)  # fused [gate; up]: each neuron twice
    assert kinds["gpt2"]["mlp.c_fc"] == ("mlp", 1)  # not a GLU: DaSS falls back to Wanda
    assert kinds["gpt_neox"]["mlp.dense_h_to_4h"] == ("mlp", 1)


def test_dass_falls_back_to_wanda_outside_glu_mlps() -> None:
    _, report = prune_weights(build("gpt2"), CharTokenizer(), "dass", 0.5, calibration=TEXTS)
    assert {info["score"] for info in report["modules"].values()} == {"wanda (not part of a GLU MLP)"}
