"""Directions: mean-diff against a hand computation, batching, every method on planted data, metadata."""

from __future__ import annotations

import pytest
import torch

from actkit import ActkitError
from actkit.steer import Pair, direction, read_activations, train_vector
from actkit.steer.directions import METHODS, mean_diff

PAIRS = [
    Pair("the cat sat on a mat", "the cat sat on a hat"),
    Pair("good morning", "bad morning!"),
    Pair("a longer text to pad the batch with", "short"),
    Pair("x", "yy"),
    Pair("hello world, happy", "hello world, sad"),
]


def _ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"])[None]


def test_mean_diff_equals_hand_computation(llama, tok) -> None:
    vector = train_vector(llama, tok, PAIRS, [0, 1], method="mean-diff", batch_size=3)
    for layer in (0, 1):  # hidden_states[layer + 1] is the output of block `layer` (the last one is normed)
        diffs = []
        for pair in PAIRS:
            with torch.no_grad():
                pos = llama(_ids(tok, pair.positive), output_hidden_states=True).hidden_states[layer + 1][0, -1]
                neg = llama(_ids(tok, pair.negative), output_hidden_states=True).hidden_states[layer + 1][0, -1]
            diffs.append(pos.double() - neg.double())
        expected = torch.stack(diffs).mean(0)
        torch.testing.assert_close(vector.directions[layer].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("read_position", ["last", "all"])
def test_batched_extraction_equals_unbatched(request, tok, name: str, read_position: str) -> None:
    model = request.getfixturevalue(name)
    texts = [p.positive for p in PAIRS] + [p.negative for p in PAIRS]
    batched, norms_b = read_activations(model, tok, texts, None, read_position=read_position, batch_size=4)
    single, norms_s = read_activations(model, tok, texts, None, read_position=read_position, batch_size=1)
    for layer in batched:
        torch.testing.assert_close(batched[layer], single[layer], rtol=1e-5, atol=1e-5)
        assert norms_b[layer] == pytest.approx(norms_s[layer], rel=1e-6)


def _planted(n: int = 40, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g, dtype=torch.float64)
    v /= v.norm()
    base = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.3  # shared content of each pair
    pos = base + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64) + 2 * v
    neg = base + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64) - 2 * v
    return pos, neg, v


@pytest.mark.parametrize("method", [m for m in METHODS if m != "actadd"])
def test_each_method_recovers_a_planted_direction(method: str) -> None:
    pos, neg, v = _planted()
    found = direction(pos, neg, method)
    assert torch.nn.functional.cosine_similarity(found, v, dim=0) > 0.95
    flipped = direction(neg, pos, method)  # sign follows the classes
    assert torch.nn.functional.cosine_similarity(flipped, v, dim=0) < -0.95
    if method != "mean-diff":  # unit directions scaled to the mean difference's norm
        assert float(found.norm()) == pytest.approx(float(mean_diff(pos, neg).norm()), rel=1e-9)
    assert float(direction(pos, neg, method, "unit").norm()) == pytest.approx(1.0)


def test_actadd_is_the_difference_of_one_pair() -> None:
    pos, neg, v = _planted(n=1)
    torch.testing.assert_close(direction(pos, neg, "actadd"), pos[0] - neg[0])
    with pytest.raises(ActkitError, match="exactly one prompt pair"):
        direction(*_planted(n=2)[:2], "actadd")


@pytest.mark.parametrize("method", METHODS)
def test_train_vector_every_method_on_a_model(llama, tok, method: str) -> None:
    pairs = PAIRS[:1] if method == "actadd" else PAIRS
    vector = train_vector(llama, tok, pairs, [-1, 1], method=method)
    reference = train_vector(llama, tok, pairs, [1, 2], method="mean-diff")
    assert vector.layers == [1, 2]
    for layer in vector.layers:
        v = vector.directions[layer]
        assert v.shape == (64,) and v.dtype == torch.float32 and torch.isfinite(v).all()
        assert float(v @ reference.directions[layer]) > 0
    meta = vector.metadata
    assert meta["method"] == method and meta["site"] == "resid_post" and meta["layers"] == [1, 2]
    assert meta["read_positions"] == "last" and meta["n_pairs"] == len(pairs) and len(meta["data_hash"]) == 64
    assert meta["normalization"] == ("none" if method in ("mean-diff", "actadd") else "mean-diff-norm")
    assert set(meta["mean_norms"]) == {"1", "2"} and all(n > 0 for n in meta["mean_norms"].values())
    assert meta["hidden_size"] == 64 and meta["num_layers"] == 3 and len(meta["config_hash"]) == 64


def test_relative_coefficient_scales_by_the_mean_norm(llama, tok) -> None:
    vector = train_vector(llama, tok, PAIRS, 1)
    add = vector.to_intervention(coef=0.5, relative=True)["resid_post.1"]
    assert float(add.vector.norm()) == pytest.approx(vector.mean_norm(1), rel=1e-5)
    assert add.coef == 0.5
    texts = [p.positive for p in PAIRS] + [p.negative for p in PAIRS]
    acts, _ = read_activations(llama, tok, texts, [1])
    assert vector.mean_norm(1) == pytest.approx(float(acts[1].norm(dim=-1).mean()), rel=1e-6)


def test_bad_requests_are_clear_errors(llama, tok) -> None:
    with pytest.raises(ActkitError, match="unknown method"):
        train_vector(llama, tok, PAIRS, 1, method="magic")
    with pytest.raises(ActkitError, match="exactly one prompt pair"):
        train_vector(llama, tok, PAIRS, 1, method="actadd")
    with pytest.raises(ActkitError, match="layer 3 does not exist"):
        train_vector(llama, tok, PAIRS, 3)
    with pytest.raises(ActkitError, match="no pairs"):
        train_vector(llama, tok, [], 1)
    with pytest.raises(ActkitError, match="more than the model's context of 128"):
        train_vector(llama, tok, [Pair("x" * 200, "y")], 1)
