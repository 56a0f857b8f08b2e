"""vLLM with actkit's plugin against `actkit.generate`, token for token (greedy, toy-dense, float32, in one process).

The engine is started with a small token budget per pass (``max_num_batched_tokens``), so long prompts are
prefilled in chunks and decode steps share passes with other requests' prefill: the batch test checks that this
happened, and that each request still gets exactly what it gets alone and what actkit gives it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import actkit
from actkit.serve.steering import VectorRegistry, build_writes, parse_steer
from actkit.steer import load_vector, steering_writes
from actkit.vllm import plugin
from actkit.vllm._rows import Scheduled

from vllm_helpers import greedy, toy_engine

#: Tokens per pass at most: prompts longer than this are prefilled in chunks.
BUDGET = 16
NEW = 32

PROMPTS = [
    "Anna reviewed the hotel: The room was",
    "Bob reviewed the cafe: The",
    "Sam reviewed the museum, and after a long day of walking through every hall he wrote: The guide was",
    "Mia",
    "Leo reviewed the bakery: The bread was warm and",
    "Zoe reviewed the cinema after the late show on a rainy evening with her two friends: The seats",
    "Tom asked: how do I",
    "Eva reviewed the park: The",
    "Ian reviewed the train: It was",
    "Kim reviewed the shop, which sells old maps, books and records from all over the world: The owner",
]


@pytest.fixture(scope="module")
def toy() -> tuple[Any, Any]:
    return actkit.load("builtin:toy-dense")


@pytest.fixture(scope="module")
def llm(vector_dir: Path) -> Iterator[Any]:
    with toy_engine(vector_dir, BUDGET) as engine:
        yield engine


def run(llm: Any, tokenizer: Any, prompts: list[str], steers: list[Any]) -> list[list[int]]:
    return greedy(llm, tokenizer, prompts, steers, NEW)


def reference(toy: tuple[Any, Any], prompt: str, writes: Any) -> list[int]:
    model, tokenizer = toy
    return actkit.generate_ids(model, tokenizer, [prompt], writes=writes, max_new_tokens=NEW)[0]


@pytest.mark.parametrize("coef", [-8.0, -4.0, 2.0, 4.0, 8.0])
def test_sentiment_vector_equals_actkit_generate(llm: Any, toy: tuple[Any, Any], vector_dir: Path,
                                                 coef: float) -> None:
    model, tokenizer = toy
    vector = load_vector(vector_dir / "sentiment.safetensors", model)
    prompts = PROMPTS[:2]
    got = run(llm, tokenizer, prompts, [json.dumps([{"vector": "sentiment", "coef": coef}])] * 2)
    for prompt, tokens in zip(prompts, got, strict=True):
        assert tokens == reference(toy, prompt, steering_writes(vector, coef))
        assert tokens != reference(toy, prompt, None)  # the steering does something


def test_mixed_batch_each_equals_alone_and_actkit(llm: Any, toy: tuple[Any, Any], vector_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = toy
    steers: list[Any] = [
        None,
        [{"vector": "sentiment", "coef": 4.0}],
        [{"vector": "sentiment", "coef": -6.0, "positions": "generated"}],
        [{"vector": "sentiment", "coef": 0.6, "relative": True, "positions": "prompt"}],
        [{"vector": "refusal", "coef": 6.0}],
        [{"ablate": "sentiment"}],
        [{"vector": "sentiment", "coef": 5.0, "layers": [3]}, {"vector": "refusal", "coef": -3.0}],
        None,
        [{"ablate": "refusal", "positions": "generated"}, {"vector": "sentiment", "coef": 8.0}],
        [{"vector": "refusal", "coef": 0.5, "relative": True}],
    ]
    texts = [json.dumps(s) if s is not None else None for s in steers]
    layouts: list[list[Scheduled]] = []  # each steered layout (a pass, or decode steps of an unchanged batch)
    record = plugin.step_writes

    def recording(requests: list[Scheduled], *rest: Any) -> Any:
        layouts.append([*requests])
        return record(requests, *rest)

    monkeypatch.setattr(plugin, "step_writes", recording)
    together = run(llm, tokenizer, PROMPTS, texts)
    monkeypatch.setattr(plugin, "step_writes", record)
    alone = [run(llm, tokenizer, [p], [t])[0] for p, t in zip(PROMPTS, texts, strict=True)]
    registry = VectorRegistry.from_folder(vector_dir, model)
    changed = 0
    for prompt, steer, both, one in zip(PROMPTS, steers, together, alone, strict=True):
        writes = build_writes(registry, parse_steer(steer, None)) if steer else None
        expected = reference(toy, prompt, writes)
        assert both == one == expected, (prompt, steer)
        changed += steer is not None and expected != reference(toy, prompt, None)
    assert changed >= 6
    # the batch really mixed: a pass held prefill rows and decode rows, and a prompt was prefilled in chunks
    assert any(any(r.stop - r.start > 1 for r in p) and any(r.stop - r.start == 1 for r in p) for p in layouts)
    lengths = {len(tokenizer(p)["input_ids"]) for p in PROMPTS}
    assert max(lengths) > BUDGET


def _hooks_on_blocks(model: torch.nn.Module) -> int:
    return sum(len(b._forward_hooks) + len(b._forward_pre_hooks) for b in model.model.layers)


def test_hooks_stay_on_while_the_layout_stays_and_come_off_without_steering(
        llm: Any, toy: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm import SamplingParams

    _, tokenizer = toy
    opened: list[int] = []
    passes: list[int] = []
    real_tap, real_context = plugin.tap, plugin.step_context
    monkeypatch.setattr(plugin, "tap", lambda *a, **k: (opened.append(1), real_tap(*a, **k))[1])
    monkeypatch.setattr(plugin, "step_context", lambda *a: (passes.append(1), real_context(*a))[1])
    prompt = [{"prompt_token_ids": tokenizer(PROMPTS[0])["input_ids"]}]
    steer = json.dumps([{"vector": "sentiment", "coef": 2.0}])
    llm.generate(prompt, SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True,
                                        extra_args={"steer": steer}), use_tqdm=False)
    # one prefill pass, then NEW - 1 decode steps of one unchanged layout: the hooks go on twice, not per pass
    assert (len(opened), len(passes)) == (2, NEW)
    assert llm.apply_model(_hooks_on_blocks) == [2]  # the sentiment vector's blocks (2 and 3), one hook each
    llm.generate(prompt, SamplingParams(max_tokens=2, temperature=0.0), use_tqdm=False)
    assert llm.apply_model(_hooks_on_blocks) == [0]  # an unsteered pass runs vLLM's model as it is
    llm.generate(prompt, SamplingParams(max_tokens=4, temperature=0.0, extra_args={"steer": steer}), use_tqdm=False)
    assert llm.apply_model(_hooks_on_blocks) == [2]
    # vLLM's dummy pass (5 rows, where the hooks were put on for 1) calls the model directly: they come off first
    llm.collective_rpc(_dummy_pass)
    assert llm.apply_model(_hooks_on_blocks) == [0]


def _dummy_pass(worker: Any) -> None:
    worker.model_runner._dummy_run(5)


def test_a_bad_request_is_refused_at_admission_and_the_engine_goes_on(llm: Any, toy: tuple[Any, Any]) -> None:
    from vllm import SamplingParams, exceptions

    _, tokenizer = toy
    for steer, message in [('[{"vector": "nope"}]', "unknown vector 'nope'"),
                           ('[{"vector": "sentiment", "coef": 1e9}]', "coefficient must be a finite number"),
                           ('[{"vector": "sentiment", "layers": [0]}]', "no direction at block(s) [0]"),
                           ("{not json", "not valid JSON")]:
        with pytest.raises(exceptions.VLLMValidationError, match=re.escape(message)):
            llm.generate([PROMPTS[0]], SamplingParams(max_tokens=4, extra_args={"steer": steer}), use_tqdm=False)
    assert run(llm, tokenizer, PROMPTS[:1], [None])[0] == reference(toy, PROMPTS[0], None)


def test_steering_from_python_takes_the_list_itself(llm: Any, toy: tuple[Any, Any], vector_dir: Path) -> None:
    model, tokenizer = toy
    items = [{"vector": "sentiment", "coef": -4.0}]
    as_list = run(llm, tokenizer, PROMPTS[:1], [items])[0]
    vector = load_vector(vector_dir / "sentiment.safetensors", model)
    assert as_list == reference(toy, PROMPTS[0], steering_writes(vector, -4.0))


def test_unsupported_versions_and_engine_setups_are_refused_with_their_fix() -> None:
    from types import SimpleNamespace

    from actkit.errors import ActkitError

    for version in ("0.32.0", "0.32.0+cpu", "0.32.4"):
        plugin.check_version(version)
    for version in ("0.31.2", "0.33.0", "1.0.0"):
        with pytest.raises(ActkitError, match=r"supports vLLM .*this is vLLM " + re.escape(version)):
            plugin.check_version(version)
    other = type("GPT2LMHeadModel", (torch.nn.Module,), {})()
    config = SimpleNamespace(compilation_config=SimpleNamespace(mode=3),
                             cache_config=SimpleNamespace(enable_prefix_caching=True), speculative_config=object())
    problems = plugin._refusals(other, config)
    assert len(problems) == 4
    assert "GPT2LMHeadModel" in problems[0] and "Mixtral (MixtralForCausalLM)" in problems[0]
    assert "--enforce-eager" in problems[1] and "--no-enable-prefix-caching" in problems[2]
    eager = SimpleNamespace(compilation_config=SimpleNamespace(mode=0),
                            cache_config=SimpleNamespace(enable_prefix_caching=False), speculative_config=None)
    assert plugin._refusals(type("LlamaForCausalLM", (torch.nn.Module,), {})(), eager) == []
