"""LinEAS files served by ``actkit serve --vectors``: listed with their sites, applied by ``{"vector": NAME, "coef":
x}`` exactly as `actkit.generate` applies the maps (library path), mixed in one batch with plain and vector-steered
rows; what makes no sense for maps (relative, ablate, presets, monitoring, the guard) is refused with the reason."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch

import actkit
from actkit.errors import ActkitError
from actkit.monitor import probe_from_vector, save_probe
from actkit.serve.monitoring import ProbeRegistry, build_guard, monitor_probes, parse_guard
from actkit.serve.schema import APIError
from actkit.serve.steering import SteerItem, VectorRegistry, build_writes, parse_preset, parse_steer
from actkit.steer import combine, load_vector, save_vector, steering_writes
from actkit.steer.lineas import LinEAS, load_lineas, save_lineas

from lineas_helpers import LAYERS, RANK, save_toy_lineas

PROMPT = "James reviewed the soup, 1 stars: The food was"
NEW = 10


@pytest.fixture(scope="module")
def toy():
    return actkit.load("builtin:toy-dense")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, vector_dir: Path, toy) -> Path:
    """``tone.safetensors`` (LinEAS maps at blocks 1 and 3, a rank-2 term at 3) and ``sentiment.safetensors``."""
    out = tmp_path_factory.mktemp("lineas")
    save_toy_lineas(toy[0], out / "tone.safetensors")
    save_vector(load_vector(vector_dir / "sentiment.safetensors"), out / "sentiment.safetensors")
    return out


@pytest.fixture(scope="module")
def registry(folder: Path, toy) -> VectorRegistry:
    return VectorRegistry.from_folder(folder, toy[0])


def maps(folder: Path, toy) -> LinEAS:
    return load_lineas(folder / "tone.safetensors", toy[0])


def refused(call, param: str, *words: str) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    assert caught.value.status == 400 and caught.value.param == param, caught.value.message
    for word in words:
        assert word in caught.value.message, caught.value.message
    return caught.value


def test_registry_lists_the_maps_with_their_sites(registry: VectorRegistry, folder: Path, toy) -> None:
    assert sorted(registry.vectors) == ["sentiment", "tone"]
    described = {row["name"]: row for row in registry.describe()}
    tone = described["tone"]
    assert tone["method"] == "lineas" and tone["layers"] == list(LAYERS) and tone["rank"] == RANK
    assert tone["sites"] == [f"resid_post.{layer}" for layer in LAYERS] and tone["relative"] is False
    d = toy[0].config.hidden_size
    assert [b["active"] for b in tone["blocks"]] == [d // 2, d // 2]
    expected = maps(folder, toy)
    assert tone["blocks"][0]["shift_norm"] == pytest.approx(float(expected.maps[LAYERS[0]]["shift"].norm()))
    assert described["sentiment"]["method"] == "mean-diff"
    assert not registry.vectors["tone"].relative_ok and registry.vectors["sentiment"].relative_ok


@pytest.mark.parametrize("item", [
    {"vector": "tone", "coef": 1.0},
    {"vector": "tone", "coef": 0.5, "positions": "generated"},
    {"vector": "tone", "coef": 2.0, "layers": [3]},
    {"vector": "tone", "coef": -1.0, "layers": [-1], "positions": "prompt"},
])
def test_writes_are_the_maps_as_actkit_generate_applies_them(registry: VectorRegistry, folder: Path, toy,
                                                             item) -> None:
    model, tokenizer = toy
    ours = build_writes(registry, parse_steer([item], None))
    theirs = maps(folder, toy).to_intervention(item["coef"], positions=item.get("positions", "all"),
                                               layers=item.get("layers"))
    assert ours is not None and sorted(ours) == sorted(theirs)
    steered = actkit.generate_ids(model, tokenizer, [PROMPT], writes=ours, max_new_tokens=NEW)
    assert steered == actkit.generate_ids(model, tokenizer, [PROMPT], writes=theirs, max_new_tokens=NEW)


def test_coef_scales_the_maps_effect(registry: VectorRegistry, folder: Path, toy) -> None:
    """coef c gives x + c * (T(x) - x): 0 is the plain stream, 1 the map, 2 twice its change."""
    lineas = maps(folder, toy)
    x = torch.randn(2, 5, lineas.hidden_size)
    site = f"resid_post.{LAYERS[-1]}"
    parts = lineas.maps[LAYERS[-1]]
    mapped = x * (1 + parts["scale"]) + parts["shift"] + (x @ parts["down"]) @ parts["up"]
    for coef in (0.0, 1.0, 2.0):
        writes = build_writes(registry, [SteerItem(vector="tone", coef=coef)])
        assert writes is not None
        edit = writes[site][0]
        out = edit.edit(x, None)  # type: ignore[arg-type]  # the map reads no context
        assert torch.allclose(out, x + coef * (mapped - x), atol=1e-5)


def test_what_makes_no_sense_for_maps_is_a_400_with_the_reason(registry: VectorRegistry) -> None:
    refused(lambda: build_writes(registry, parse_steer([{"vector": "tone", "relative": True}], None)),
            "steer.0.relative", "LinEAS", "strength")
    refused(lambda: build_writes(registry, parse_steer([{"ablate": "tone"}], None)), "steer.0.ablate",
            "no direction")
    error = refused(lambda: build_writes(registry, parse_steer([{"vector": "tone", "layers": [0, 3]}], None)),
                    "steer.0", "[0]")
    assert "1, 3" in error.message  # names the valid blocks
    preset = parse_preset("toy-dense:tone@0.5", ("toy-dense",))
    assert preset is not None and preset[1] is not None
    refused(lambda: build_writes(registry, [preset[1]]), "steer.0.relative", "presets")
    refused(lambda: monitor_probes(["tone"], ProbeRegistry(), registry), "monitor.0", "LinEAS")


def test_maps_for_another_model_or_the_guard_are_refused_at_start(tmp_path: Path, folder: Path, toy) -> None:
    model, tokenizer = toy
    probe = probe_from_vector(load_vector(folder / "sentiment.safetensors", model), 2)
    save_probe(probe, tmp_path / "p.safetensors")
    with pytest.raises(ActkitError, match="LinEAS"):
        build_guard(parse_guard(f"{tmp_path / 'p.safetensors'}:steer=tone@1"), model,
                    VectorRegistry.from_folder(folder, model))
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    save_lineas(LinEAS({0: {"scale": torch.zeros(8), "shift": torch.ones(8)}}), narrow / "small.safetensors")
    with pytest.raises(ActkitError, match="small.safetensors"):
        VectorRegistry.from_folder(narrow, model)


@pytest.fixture(scope="module")
def server(serve_module, folder: Path):
    return serve_module("--vectors", str(folder), "--max-new-tokens", "32", "--max-batch", "4")


def test_served_maps_equal_actkit_generate_in_a_mixed_batch(server, folder: Path, toy) -> None:
    """8 requests at once (batches of 4): LinEAS, vector, composed and plain rows, each equal to its own
    `actkit.generate` with the same writes, built by the library (not the registry)."""
    model, tokenizer = toy
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
    lineas = maps(folder, toy)
    vector = load_vector(folder / "sentiment.safetensors", model)
    prompts = [PROMPT, "Sam", "The cat", "Once", "Sam reviewed the soup, 5 stars:", "In the", "Tom", "Q:"]
    cases = [
        ([{"vector": "tone", "coef": 1.0}], lineas.to_intervention(1.0)),
        (None, None),
        ([{"vector": "sentiment", "coef": 0.8, "relative": True}], steering_writes(vector, 0.8, relative=True)),
        ([{"vector": "tone", "coef": 0.5, "positions": "generated"}], lineas.to_intervention(0.5, "generated")),
        ([{"vector": "tone", "coef": 1.0, "layers": [3]}], lineas.to_intervention(1.0, layers=[3])),
        ([{"vector": "tone", "coef": 1.0}, {"vector": "sentiment", "coef": -0.5, "relative": True}],
         combine(lineas.to_intervention(1.0), steering_writes(vector, -0.5, relative=True))),
        (None, None),
        ([{"vector": "tone", "coef": 1.0}], lineas.to_intervention(1.0)),
    ]

    def ask(i: int) -> str:
        steer = cases[i][0]
        reply = client.completions.create(model="toy-dense", prompt=prompts[i], max_tokens=NEW, temperature=0,
                                          extra_body={"steer": steer} if steer else None)
        return reply.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    changed = 0
    for i, (prompt, (steer, writes)) in enumerate(zip(prompts, cases, strict=True)):
        expected = actkit.generate(model, tokenizer, [prompt], writes=writes, max_new_tokens=NEW)[0]
        assert together[i] == expected, (i, steer)
        changed += steer is not None and expected != actkit.generate(model, tokenizer, [prompt],
                                                                     max_new_tokens=NEW)[0]
    assert changed >= 4  # the maps really change the text
    alone = client.completions.create(model="toy-dense", prompt=prompts[0], max_tokens=NEW, temperature=0,
                                      extra_body={"vllm_xargs": {"steer": json.dumps(cases[0][0])}})
    assert alone.choices[0].text == together[0]


def test_listing_and_bad_requests_over_http(server) -> None:
    listing = httpx.get(f"{server.url}/v1/steering", timeout=30).json()["data"]
    tone = next(row for row in listing if row["name"] == "tone")
    assert tone["method"] == "lineas" and tone["sites"] == ["resid_post.1", "resid_post.3"]
    models = [row["id"] for row in httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]]
    assert not any(":tone@" in name for name in models)  # no preset for maps: presets are relative
    assert httpx.get(f"{server.url}/v1/models/toy-dense:tone@0.5", timeout=30).status_code == 404
    for steer, param in [([{"vector": "tone", "relative": True}], "steer.0.relative"),
                         ([{"ablate": "tone"}], "steer.0.ablate"),
                         ([{"vector": "tone", "layers": [2]}], "steer.0")]:
        reply = httpx.post(f"{server.url}/v1/completions", timeout=30,
                           json={"model": "toy-dense", "prompt": PROMPT, "max_tokens": 2, "steer": steer})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
