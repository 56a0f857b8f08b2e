"""LinEAS maps through vLLM with actkit's plugin against `actkit.generate`, token for token (greedy, toy-dense,
float32, one process): the plugin applies a map (not an `Add`) to the residual stream it forms from the block's
``(hidden, residual)`` halves, on each request's own rows, in batches that mix prefill chunks and decode steps."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import actkit
from actkit.steer import combine, load_vector, save_vector, steering_writes
from actkit.steer.lineas import LinEAS

from lineas_helpers import save_toy_lineas
from vllm_helpers import greedy, toy_engine

_spec = importlib.util.find_spec("vllm")
if _spec is None or _spec.origin is None:  # the main venv: this folder is a namespace package named vllm
    pytest.skip("needs vLLM (./run test-vllm)", allow_module_level=True)

#: Tokens per pass at most: the long prompts are prefilled in chunks, sharing passes with decode steps.
BUDGET = 16
NEW = 16
PROMPTS = [
    "James reviewed the soup, 1 stars: The food was",
    "Sam",
    "Zoe reviewed the cinema after the late show on a rainy evening with her two friends: The seats",
    "The cat",
    "Leo reviewed the bakery: The bread was warm and",
    "Once",
    "Kim reviewed the shop, which sells old maps, books and records from all over the world: The owner",
    "Tom asked: how do I",
]


@pytest.fixture(scope="module")
def toy() -> tuple[Any, Any]:
    return actkit.load("builtin:toy-dense")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, vector_dir: Path, toy: tuple[Any, Any]) -> Path:
    """``tone.safetensors`` (LinEAS maps at blocks 1 and 3, a rank-2 term at 3) and ``sentiment.safetensors``."""
    out = tmp_path_factory.mktemp("lineas")
    save_toy_lineas(toy[0], out / "tone.safetensors")
    save_vector(load_vector(vector_dir / "sentiment.safetensors"), out / "sentiment.safetensors")
    return out


@pytest.fixture(scope="module")
def llm(folder: Path) -> Iterator[Any]:
    with toy_engine(folder, BUDGET) as engine:
        yield engine


def run(llm: Any, tokenizer: Any, prompts: list[str], steers: list[Any]) -> list[list[int]]:
    return greedy(llm, tokenizer, prompts, steers, NEW)


def test_lineas_in_a_mixed_batch_equals_actkit_generate(llm: Any, toy: tuple[Any, Any], folder: Path) -> None:
    """Each request, in one batch with plain, vector-steered and other LinEAS requests, gets what it gets alone
    and what `actkit.generate` gives it with the library's writes (not the registry's)."""
    from actkit.steer.lineas import load_lineas

    model, tokenizer = toy
    maps: LinEAS = load_lineas(folder / "tone.safetensors", model)
    vector = load_vector(folder / "sentiment.safetensors", model)
    cases: list[tuple[Any, Any]] = [
        ([{"vector": "tone", "coef": 1.0}], maps.to_intervention(1.0)),
        (None, None),
        ([{"vector": "tone", "coef": 0.5, "positions": "generated"}], maps.to_intervention(0.5, "generated")),
        ([{"vector": "sentiment", "coef": 4.0}], steering_writes(vector, 4.0)),
        ([{"vector": "tone", "coef": 1.0, "layers": [3]}], maps.to_intervention(1.0, layers=[3])),
        ([{"vector": "tone", "coef": 1.0, "positions": "prompt"}], maps.to_intervention(1.0, "prompt")),
        ([{"vector": "sentiment", "coef": -3.0}, {"vector": "tone", "coef": 2.0}],
         combine(steering_writes(vector, -3.0), maps.to_intervention(2.0))),
        ([{"vector": "tone", "coef": 1.0}], maps.to_intervention(1.0)),
    ]
    texts = [json.dumps(steer) if steer is not None else None for steer, _ in cases]
    together = run(llm, tokenizer, PROMPTS, texts)
    alone = [run(llm, tokenizer, [p], [t])[0] for p, t in zip(PROMPTS, texts, strict=True)]
    changed = 0
    for prompt, (steer, writes), both, one in zip(PROMPTS, cases, together, alone, strict=True):
        expected = actkit.generate_ids(model, tokenizer, [prompt], writes=writes, max_new_tokens=NEW)[0]
        assert both == one == expected, (prompt, steer)
        plain = actkit.generate_ids(model, tokenizer, [prompt], max_new_tokens=NEW)[0]
        changed += steer is not None and expected != plain
    assert changed >= 5  # the maps really steer
    assert max(len(tokenizer(p)["input_ids"]) for p in PROMPTS) > BUDGET  # some prompt was prefilled in chunks


def test_bad_lineas_requests_are_refused_at_admission(llm: Any, toy: tuple[Any, Any]) -> None:
    from vllm import SamplingParams, exceptions

    _, tokenizer = toy
    for steer, message in [('[{"vector": "tone", "relative": true}]', "LinEAS file, whose coef"),
                           ('[{"ablate": "tone"}]', "no direction to ablate"),
                           ('[{"vector": "tone", "layers": [2]}]', "no map at block(s) [2]; it has 1, 3")]:
        with pytest.raises(exceptions.VLLMValidationError, match=re.escape(message)):
            llm.generate([PROMPTS[0]], SamplingParams(max_tokens=4, extra_args={"steer": steer}), use_tqdm=False)
    model, _ = toy
    expected = actkit.generate_ids(model, tokenizer, [PROMPTS[1]], max_new_tokens=NEW)[0]
    assert run(llm, tokenizer, PROMPTS[1:2], [None])[0] == expected  # the engine goes on
