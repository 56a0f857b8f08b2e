"""``actkit serve --probes DIR --guard P[:action]`` end to end: per-token monitor scores in the reply's ``actkit``
field equal a one-pass projection of the final text; the guard decides each request on its own prompt."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from typer.testing import CliRunner

import actkit
from actkit.cli import app as cli_app
from actkit.core.hooks import Capture, tap
from actkit.monitor import Probe, load_probe, probe_from_vector, save_probe
from actkit.serve.monitoring import REFUSAL, build_guard, parse_guard
from actkit.serve.steering import VectorRegistry
from actkit.steer import load_vector

BAD = "James reviewed the soup, 1 stars: The food was"
GOOD = "Lisa reviewed the flight, 5 stars: The crew was"


@pytest.fixture(scope="module")
def toy() -> tuple[Any, Any]:
    return actkit.load("builtin:toy-dense")


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory, vector_dir: Path, toy) -> Path:
    """``tone.safetensors``: the sentiment vector's direction at block 2, its threshold halfway between the scores
    of a one-star and a five-star prompt (so exactly one of the two is flagged)."""
    model, tokenizer = toy
    probe = probe_from_vector(load_vector(vector_dir / "sentiment.safetensors", model), 2)
    low, high = sorted(probe.score(model, tokenizer, [BAD, GOOD]).tolist())
    probe.threshold = (low + high) / 2
    folder = tmp_path_factory.mktemp("probes")
    save_probe(probe, folder / "tone.safetensors")
    return folder


@pytest.fixture(scope="module")
def served(serve_module, vector_dir: Path, probe_dir: Path):
    return serve_module("--vectors", str(vector_dir), "--probes", str(probe_dir), "--guard",
                        f"{probe_dir / 'tone.safetensors'}:refuse")


def one_pass(model: Any, ids: list[int], probe: Probe) -> list[float]:
    seen = Capture()
    with torch.inference_mode(), tap(model, read={probe.site: seen}):
        model(input_ids=torch.tensor([ids]))
    return probe.project(seen.last[0]).tolist()


def test_monitor_scores_equal_one_pass_over_the_final_text(served, toy, probe_dir: Path, vector_dir: Path) -> None:
    model, tokenizer = toy
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=60)
    flagged = load_probe(probe_dir / "tone.safetensors", model)
    prompt = GOOD if flagged.score(model, tokenizer, [GOOD]).item() <= flagged.threshold else BAD  # not refused
    names = ["tone", "sentiment"]  # a probe, and a vector of two blocks (sentiment@2, sentiment@3)
    reply = client.completions.create(model="toy-dense", prompt=prompt, max_tokens=10, temperature=0,
                                      extra_body={"vllm_xargs": {"monitor": json.dumps(names)}})
    choice = reply.choices[0].model_dump()
    scores = choice["actkit"]["monitor"]
    assert set(scores) == {"tone", "sentiment@2", "sentiment@3"}
    prompt_ids = tokenizer(prompt)["input_ids"]
    generated = generate_ids_of(model, tokenizer, prompt, 10)
    assert tokenizer.decode(generated, skip_special_tokens=True) == choice["text"]
    vector = load_vector(vector_dir / "sentiment.safetensors", model)
    probes = {"tone": flagged, "sentiment@2": probe_from_vector(vector, 2), "sentiment@3": probe_from_vector(vector, 3)}
    for name, probe in probes.items():
        full = one_pass(model, prompt_ids + generated, probe)
        n = len(prompt_ids)
        assert scores[name]["prompt"] == pytest.approx(full[:n], abs=1e-4)
        assert scores[name]["generated"] == pytest.approx(full[n - 1:n - 1 + len(generated)], abs=1e-4)
    streamed = list(client.completions.create(model="toy-dense", prompt=prompt, max_tokens=10, temperature=0,
                                              stream=True, extra_body={"monitor": names}))
    last = streamed[-1].choices[0].model_dump()
    assert last["finish_reason"] is not None and last["actkit"]["monitor"] == scores
    chat = client.chat.completions.create(model="toy-dense", messages=[{"role": "user", "content": prompt}],
                                          max_tokens=4, temperature=0, extra_body={"monitor": ["tone"]})
    assert len(chat.choices[0].model_dump()["actkit"]["monitor"]["tone"]["generated"]) == 4


def generate_ids_of(model: Any, tokenizer: Any, prompt: str, n: int) -> list[int]:
    from actkit.core.generate import generate_ids

    return list(generate_ids(model, tokenizer, [prompt], max_new_tokens=n)[0])


def test_the_guard_refuses_the_flagged_prompt_only(served, toy) -> None:
    """Two requests at once: the flagged one gets the refusal and content_filter, the other its own text; both
    carry the guard's score and decision."""
    model, tokenizer = toy
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=60)

    def ask(prompt: str) -> dict[str, Any]:
        return client.completions.create(model="toy-dense", prompt=prompt, max_tokens=8,
                                         temperature=0).choices[0].model_dump()

    with ThreadPoolExecutor(2) as pool:
        bad, good = pool.map(ask, [BAD, GOOD])
    decisions = {bad["actkit"]["guard"]["flagged"], good["actkit"]["guard"]["flagged"]}
    assert decisions == {True, False}
    for choice, prompt in ((bad, BAD), (good, GOOD)):
        guard = choice["actkit"]["guard"]
        assert (guard["score"] > guard["threshold"]) == guard["flagged"]
        if guard["flagged"]:
            assert choice["text"] == REFUSAL and choice["finish_reason"] == "content_filter"
        else:
            assert choice["text"] == actkit.generate(model, tokenizer, [prompt], max_new_tokens=8)[0]
            assert choice["finish_reason"] in ("stop", "length")
    chat = client.chat.completions.create(model="toy-dense", messages=[{"role": "user", "content": BAD}],
                                          max_tokens=8, temperature=0, stream=True)
    parts = [c.choices[0].model_dump() for c in chat]
    assert parts[-1]["finish_reason"] in ("content_filter", "stop", "length") and "guard" in parts[-1]["actkit"]


@pytest.mark.parametrize("body, param", [
    ({"monitor": ["nope"]}, "monitor.0"),
    ({"monitor": [3]}, "monitor.0"),
    ({"monitor": ["sentiment@9"]}, "monitor.0"),
    ({"monitor": [f"v{i}" for i in range(9)]}, "monitor"),
    ({"vllm_xargs": {"monitor": "[not json"}}, "vllm_xargs.monitor"),
])
def test_bad_monitor_requests_are_400s(served, body: dict[str, Any], param: str) -> None:
    reply = httpx.post(f"{served.url}/v1/completions", json={"model": "toy-dense", "prompt": GOOD, **body},
                       timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text


def test_steering_listing_shows_probes_and_guard(served) -> None:
    listing = httpx.get(f"{served.url}/v1/steering", timeout=60).json()
    assert [p["name"] for p in listing["probes"]] == ["tone"]
    assert listing["guard"]["action"] == "refuse" and listing["guard"]["site"] == "resid_post.2"


def test_bad_guard_options_fail_at_start(tmp_path: Path, probe_dir: Path, vector_dir: Path, toy) -> None:
    probe = str(probe_dir / "tone.safetensors")
    late = tmp_path / "late.safetensors"  # at block 3: after the vector's block 2
    save_probe(probe_from_vector(load_vector(vector_dir / "sentiment.safetensors", toy[0]), 3), late)
    assert parse_guard(probe).action == "flag"
    steer = build_guard(parse_guard(f"{probe}:steer=sentiment@0.5"), toy[0],
                        VectorRegistry.from_folder(vector_dir, toy[0]))
    assert steer.action == "steer" and steer.writes is not None and sorted(steer.writes) == ["resid_post.2",
                                                                                           "resid_post.3"]
    for args, message in [(["--guard", f"{probe}:shout"], "flag, refuse or steer"),
                          (["--guard", str(tmp_path / "none.safetensors")], "does not exist"),
                          (["--guard", f"{probe}:steer=nope@1", "--vectors", str(vector_dir)], "unknown vector"),
                          (["--guard", f"{late}:steer=sentiment@1", "--vectors", str(vector_dir)], "block"),
                          (["--probes", str(tmp_path / "none")], "--probes")]:
        result = CliRunner().invoke(cli_app, ["serve", *args])
        assert result.exit_code == 2 and message in result.output, result.output
