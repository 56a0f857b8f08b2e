"""Steering requests of ``actkit serve`` (`actkit.serve.steering`): parsing, validation, presets, the registry,
and that a request's writes are exactly those of ``actkit generate`` (same `generate` output)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import actkit
from actkit.core.interventions import Add
from actkit.errors import ActkitError
from actkit.serve.schema import APIError
from actkit.serve.steering import (
    MAX_COEF,
    MAX_ITEMS,
    AblateItem,
    SteerItem,
    VectorRegistry,
    WritesCache,
    build_writes,
    parse_preset,
    parse_steer,
)
from actkit.steer import Ablate, export_gguf, load_vector, save_vector, steering_writes


@pytest.fixture(scope="module")
def toy():
    return actkit.load("builtin:toy-dense")


@pytest.fixture(scope="module")
def registry(vector_dir: Path, toy) -> VectorRegistry:
    return VectorRegistry.from_folder(vector_dir, toy[0])


def refused(call, param: str) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    assert caught.value.status == 400
    assert caught.value.param == param, caught.value.message
    assert param in caught.value.message
    return caught.value


def test_items_from_top_level_and_vllm_xargs_compose_in_order() -> None:
    items = parse_steer([{"vector": "a", "coef": 2}],
                        {"steer": json.dumps([{"ablate": "b", "positions": "prompt"},
                                              {"vector": "c", "relative": True, "layers": [3]}])})
    assert items == [SteerItem(vector="a", coef=2.0), AblateItem(ablate="b", positions="prompt"),
                     SteerItem(vector="c", relative=True, layers=[3])]
    assert parse_steer(None, None) == []
    assert parse_steer(None, {"steer": '{"vector": "a"}'}) == [SteerItem(vector="a")]


@pytest.mark.parametrize(("steer", "xargs", "param"), [
    ([{"vector": "a", "coef": "1"}], None, "steer.0.coef"),
    ([{"vector": "a", "coef": True}], None, "steer.0.coef"),
    ([{"vector": "a", "strength": 1}], None, "steer.0.strength"),
    ([{"vector": "a", "positions": "last"}], None, "steer.0.positions"),
    ([{"vector": "a", "layers": "3"}], None, "steer.0.layers"),
    ([{"vector": 3}], None, "steer.0.vector"),
    (["a"], None, "steer.0"),
    ([{"vector": "a", "coef": MAX_COEF * 2}], None, "steer.0.coef"),
    (None, {"steer": '[{"vector": "a", "coef": NaN}]'}, "vllm_xargs.steer.0.coef"),
    (None, {"steer": '[{"vector": "a", "coef": Infinity}]'}, "vllm_xargs.steer.0.coef"),
    (None, {"steer": "[{"}, "vllm_xargs.steer"),
    (None, {"steer": 3}, "vllm_xargs.steer"),
    (None, {"steer": '"a"'}, "vllm_xargs.steer"),
    (None, {"other": "x"}, "vllm_xargs"),
    ([{"vector": "a"}] * (MAX_ITEMS + 1), None, "steer"),
])
def test_bad_items_are_400s_naming_the_param(steer, xargs, param) -> None:
    refused(lambda: parse_steer(steer, xargs), param)


def test_writes_are_those_of_actkit_generate(registry: VectorRegistry, vector_dir: Path, toy) -> None:
    """The same `generate` output as the command's writes (built by `steering_writes` from the file)."""
    model, tokenizer = toy
    vector = load_vector(vector_dir / "sentiment.safetensors", model)
    ours = build_writes(registry, parse_steer([{"vector": "sentiment", "coef": 0.8, "relative": True,
                                                 "layers": [3], "positions": "generated"}], None))
    theirs = steering_writes(vector, 0.8, relative=True, layers=[3], positions="generated")
    assert ours is not None and sorted(ours) == sorted(theirs) == ["resid_post.3"]
    add = ours["resid_post.3"][0]
    assert isinstance(add, Add)
    prompts = ["James reviewed the soup, 1 stars: The food was"]
    steered = actkit.generate(model, tokenizer, prompts, writes=ours, max_new_tokens=8)
    assert steered == actkit.generate(model, tokenizer, prompts, writes=theirs, max_new_tokens=8)
    assert steered != actkit.generate(model, tokenizer, prompts, max_new_tokens=8)


def test_ablation_removes_the_direction_at_the_vectors_layers(registry: VectorRegistry) -> None:
    writes = build_writes(registry, [AblateItem(ablate="sentiment"), SteerItem(vector="sentiment")])
    assert writes is not None
    assert sorted(writes) == ["resid_post.2", "resid_post.3"]
    first, second = writes["resid_post.2"]
    assert isinstance(first, Ablate) and isinstance(second, Add)  # composed in the order given
    direction = registry.vectors["sentiment"].vector.directions[2]
    assert torch.allclose(first.direction.float(), direction / direction.norm())


def test_unknown_vectors_and_layers_are_400s(registry: VectorRegistry) -> None:
    error = refused(lambda: build_writes(registry, [SteerItem(vector="nope")]), "steer.0.vector")
    assert "sentiment" in error.message  # says what exists
    refused(lambda: build_writes(registry, [SteerItem(vector="../sentiment")]), "steer.0.vector")
    refused(lambda: build_writes(registry, [SteerItem(vector="sentiment", layers=[0])]), "steer.0")


def test_the_cache_builds_each_list_once_keeps_a_bounded_number_and_not_failures(registry: VectorRegistry) -> None:
    cache = WritesCache(registry, size=2)
    a = [SteerItem(vector="sentiment", coef=0.8, relative=True)]
    first = cache.get(a)
    again = cache.get([SteerItem(vector="sentiment", coef=0.8, relative=True)])  # an equal list, parsed anew
    assert again is first
    built = build_writes(registry, a)
    assert first is not None and built is not None and first.keys() == built.keys()
    assert all(float(x.coef) == float(y.coef) and torch.equal(x.vector, y.vector)
               for site in built for x, y in zip(first[site], built[site], strict=True))
    assert cache.get([SteerItem(vector="sentiment", coef=0.9, relative=True)]) is not first  # another coefficient
    assert cache.get([AblateItem(ablate="sentiment")]) is not None  # a third list: the oldest (a) goes
    assert cache.get(a) is not first
    refused(lambda: cache.get([SteerItem(vector="nope")]), "steer.0.vector")
    refused(lambda: cache.get([SteerItem(vector="nope")]), "steer.0.vector")  # not kept: refused again
    assert cache.get([]) is None


def test_presets(registry: VectorRegistry) -> None:
    names = ("toy-dense", "builtin:toy-dense")
    assert parse_preset("toy-dense", names) == ("toy-dense", None)
    assert parse_preset("toy-dense:sentiment@0.8", names) == (
        "toy-dense", SteerItem(vector="sentiment", coef=0.8, relative=True))
    assert parse_preset("builtin:toy-dense:sentiment@-1", names) == (
        "builtin:toy-dense", SteerItem(vector="sentiment", coef=-1.0, relative=True))
    assert parse_preset("gpt-4", names) is None
    assert parse_preset("other:sentiment@1", names) is None
    refused(lambda: parse_preset("toy-dense:sentiment@x", names), "model")
    refused(lambda: parse_preset("toy-dense:sentiment@inf", names), "model")


def test_registry_reads_safetensors_and_gguf_and_checks_the_fit(tmp_path: Path, vector_dir: Path, toy) -> None:
    model, _ = toy
    vector = load_vector(vector_dir / "sentiment.safetensors")
    save_vector(vector, tmp_path / "a.safetensors")
    export_gguf(vector, tmp_path / "b.gguf")
    (tmp_path / "notes.txt").write_text("not a vector")
    registry = VectorRegistry.from_folder(tmp_path, model)
    assert sorted(registry.vectors) == ["a", "b"]
    described = {row["name"]: row for row in registry.describe()}
    assert described["a"]["layers"] == [2, 3] and described["a"]["site"] == "resid_post"
    assert math.isclose(described["a"]["norms"]["2"], float(vector.directions[2].norm()), rel_tol=1e-6)
    wide = type(vector)({2: torch.ones(vector.hidden_size + 1)}, metadata={})
    save_vector(wide, tmp_path / "wide.safetensors")
    with pytest.raises(ActkitError, match="wide.safetensors"):
        VectorRegistry.from_folder(tmp_path, model)
    with pytest.raises(ActkitError, match="not a folder"):
        VectorRegistry.from_folder(tmp_path / "missing", model)
