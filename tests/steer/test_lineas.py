"""LinEAS: the loss against a hand computation, training, identity maps, files, bad input (library and command)."""

from __future__ import annotations

import json

import pytest
import torch

from actkit.core.hooks import tap
from actkit.errors import ActkitError
from actkit.steer.lineas import (
    AffineMap,
    LinEAS,
    distribution_loss,
    is_lineas_file,
    load_lineas,
    save_lineas,
    train_lineas,
    wasserstein_1d,
)

from cli_helpers import assert_bad_input, invoke, save_tiny
from tiny import HIDDEN, build, tokens

SOURCE = ["abcab", "bcabc", "cabca", "aabbc", "ccbba", "abcba"]
TARGET = ["xyzxy", "yzxyz", "zxyzx", "xxyyz", "zzyyx"]


def logits(model, writes=None) -> torch.Tensor:
    ids = tokens(2, 9)
    with torch.no_grad(), tap(model, write=writes or {}):
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Module, LinEAS]:
    from tiny import DecodingTokenizer

    model = build("llama")
    return model, train_lineas(model, DecodingTokenizer(), SOURCE, TARGET, [0, 2], steps=25, lr=0.05, l1=1e-4,
                               group=1e-4)


def test_wasserstein_equals_hand_computation() -> None:
    source = torch.tensor([[3.0, 0.0], [1.0, 2.0]])
    target = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
    # column 0: sorted (1, 3) against (0, 2) -> (1 + 1) / 2; column 1: (0, 2) against (1, 5) -> (1 + 9) / 2
    assert torch.allclose(wasserstein_1d(source, target), torch.tensor([1.0, 5.0]))
    # unequal sizes: quantile functions 0|1 (halves) against 0|0.5|1 (thirds) differ by 0.5 on (1/3, 2/3]
    uneven = wasserstein_1d(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]]))
    assert torch.allclose(uneven, torch.tensor([0.25 / 3]))
    # the loss: per block, the mean over coordinates of W2^2 of the activations divided by the block's scale
    loss = distribution_loss({0: source, 1: source}, {0: target, 1: target}, {0: 1.0, 1: 2.0})
    assert loss.item() == pytest.approx(3.0 + 3.0 / 4)


def test_training_decreases_the_loss_and_leaves_the_model_alone() -> None:
    from tiny import DecodingTokenizer

    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses: list[float] = []
    lineas = train_lineas(model, DecodingTokenizer(), SOURCE, TARGET, None, steps=15, lr=0.05,
                          progress=lambda step, loss: losses.append(loss))
    assert len(losses) == 15 and lineas.layers == [0, 1, 2]
    assert lineas.metadata["loss_end"] < 0.5 * lineas.metadata["loss_start"]
    assert losses[0] == pytest.approx(lineas.metadata["loss_start"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_sparsity_selects_coordinates() -> None:
    from tiny import DecodingTokenizer

    model = build("llama")
    dense = train_lineas(model, DecodingTokenizer(), SOURCE, TARGET, [1], steps=10, lr=0.05, l1=0.0, group=0.0)
    sparse = train_lineas(model, DecodingTokenizer(), SOURCE, TARGET, [1], steps=10, lr=0.05, l1=0.05, group=0.0)
    assert dense.active()[1] == HIDDEN
    assert sparse.active()[1] < HIDDEN // 2


def test_identity_maps_change_nothing_bit_for_bit(trained) -> None:
    model, lineas = trained
    plain = logits(model)
    zero = torch.zeros(HIDDEN)
    identity = {f"resid_post.{i}": AffineMap(zero, zero, torch.randn(HIDDEN, 2), torch.zeros(2, HIDDEN))
                for i in range(3)}
    assert torch.equal(logits(model, identity), plain)
    assert torch.equal(logits(model, lineas.to_intervention(0.0)), plain)
    steered = logits(model, lineas.to_intervention(1.0))
    assert not torch.allclose(steered, plain, atol=1e-4)
    # strength interpolates the map: x + s * (T(x) - x), by hand at one block
    x = torch.randn(2, 3, HIDDEN)
    parts = lineas.maps[2]
    mask = torch.ones(2, 3, dtype=torch.bool)
    out = lineas.to_intervention(0.5)["resid_post.2"](x, mask, None)  # type: ignore[arg-type]
    assert torch.allclose(out, x + 0.5 * (parts["scale"] * x + parts["shift"]))


def test_save_load_round_trip(trained, tmp_path) -> None:
    model, lineas = trained
    path = save_lineas(lineas, tmp_path / "l.safetensors")
    assert is_lineas_file(path)
    loaded = load_lineas(path, model)
    assert loaded.layers == lineas.layers == [0, 2] and loaded.site == "resid_post"
    for layer in lineas.layers:
        for part in ("scale", "shift"):
            assert torch.equal(loaded.maps[layer][part], lineas.maps[layer][part])
    assert loaded.metadata["method"] == "lineas" and loaded.metadata["n_source"] == len(SOURCE)
    assert torch.equal(logits(model, loaded.to_intervention(0.7)), logits(model, lineas.to_intervention(0.7)))
    with pytest.raises(ActkitError, match="exists"):
        save_lineas(lineas, path)
    low = LinEAS({1: {**lineas.maps[2], "down": torch.randn(HIDDEN, 2), "up": torch.randn(2, HIDDEN)}},
                 metadata=lineas.metadata)
    again = load_lineas(save_lineas(low, tmp_path / "low.safetensors"), model)
    assert torch.equal(again.maps[1]["up"], low.maps[1]["up"])


def test_files_for_another_model_are_refused(trained, tmp_path) -> None:
    _, lineas = trained
    path = save_lineas(lineas, tmp_path / "l.safetensors")
    other = build("gpt2")  # same hidden size and depth, another architecture: a warning
    with pytest.warns(UserWarning, match="different configuration"):
        load_lineas(path, other)
    narrow = LinEAS({0: {"scale": torch.zeros(8), "shift": torch.ones(8)}}, metadata={"hidden_size": 8})
    with pytest.raises(ActkitError, match="hidden size 8 in the vector, 64 in the model"):
        load_lineas(save_lineas(narrow, tmp_path / "n.safetensors"), build("llama"))
    deep = LinEAS({7: lineas.maps[0]}, metadata={})
    with pytest.raises(ActkitError, match=r"layer\(s\) \[7\] do not exist"):
        load_lineas(save_lineas(deep, tmp_path / "d.safetensors"), build("llama"))
    with pytest.raises(ActkitError, match="not a LinEAS file"):
        from actkit.steer import SteeringVector, save_vector

        load_lineas(save_vector(SteeringVector({0: torch.ones(HIDDEN)}), tmp_path / "v.safetensors"))


def test_bad_input_is_named() -> None:
    from tiny import DecodingTokenizer

    model = build("llama")
    with pytest.raises(ActkitError, match="at least 2 source texts"):
        train_lineas(model, DecodingTokenizer(), ["abc"], TARGET, steps=1)
    with pytest.raises(ActkitError, match="steps must be"):
        train_lineas(model, DecodingTokenizer(), SOURCE, TARGET, steps=0)
    with pytest.raises(ActkitError, match="map has size 8 but the site has size 64"):
        logits(model, {"resid_post.0": AffineMap(torch.ones(8), torch.ones(8))})
    with pytest.raises(ActkitError, match="NaN"):
        AffineMap(torch.full((4,), float("nan")), torch.zeros(4))
    with pytest.raises(ActkitError, match="low-rank"):
        AffineMap(torch.zeros(4), torch.zeros(4), torch.zeros(4, 2), None)


def test_command_line_trains_generates_and_refuses(tmp_path) -> None:
    folder = save_tiny("llama", tmp_path / "tiny")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"positive": f"good {w}", "negative": f"bad {w}"})
                               for w in ("day", "food", "film", "room")), encoding="utf-8")
    out = tmp_path / "l.safetensors"
    result = invoke("vector", "train", "--method", "lineas", "--pairs", pairs, "--out", out, "-m", folder,
                    "--layers", "0,2", "--steps", "3", "--lr", "0.02", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["layers"] == [0, 2] and data["loss_end"] <= data["loss_start"] and out.is_file()
    result = invoke("generate", "-m", folder, "-p", "good", "--vector", out, "--coef", "0.5", "-n", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["coef"] == 0.5
    assert_bad_input(invoke("generate", "-m", folder, "-p", "x", "--vector", out, "--relative"), "--relative")
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"positive": "good", "negative": "bad"}), encoding="utf-8")
    assert_bad_input(invoke("vector", "train", "--method", "lineas", "--pairs", one, "--out", tmp_path / "x",
                            "-m", folder, "--steps", "1"), "at least 2 source texts")
    narrow = save_lineas(LinEAS({0: {"scale": torch.zeros(8), "shift": torch.ones(8)}}), tmp_path / "n.safetensors")
    assert_bad_input(invoke("generate", "-m", folder, "-p", "x", "--vector", narrow), "hidden size 8")
