"""The serving engine: a request's tokens in a mixed, changing batch equal its tokens alone, with its own steering."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest
import torch

import actkit
from actkit import ActkitError, Apply, Generated
from actkit.core.generate import generate_ids
from actkit.core.hooks import Capture, tap
from actkit.core.positions import StepContext
from actkit.monitor import Probe, guard_writes
from actkit.serve.engine import (
    Engine,
    Finished,
    GenerationRequest,
    Guard,
    Stream,
    Token,
    _as_list,
    _batch_writes,
    _Row,
)
from actkit.steer import Ablate, SteeringVector, combine

from tiny import DecodingTokenizer, build

PROMPTS = ["the cat sat on the", "hello", "a b c d e f g h i j k", "once upon a time there was", "x",
           "the dog runs", "what is the name of", "one two three four five six seven", "we went to"]


@pytest.fixture(scope="module")
def toy() -> tuple[Any, Any]:
    return actkit.load("builtin:toy-dense")


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _ids(tok: Any, prompt: str) -> list[int]:
    return list(tok(prompt)["input_ids"])


def _run(stream: Stream) -> tuple[list[int], Finished]:
    events = list(stream)
    last = events[-1]
    assert isinstance(last, Finished)
    assert all(isinstance(e, Token) for e in events[:-1])
    return [e.id for e in events[:-1] if isinstance(e, Token)], last


def _vector(seed: int, layers: tuple[int, ...] = (1, 2)) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(256, generator=g) for layer in layers},
                          metadata={"mean_norms": {str(layer): 20.0 for layer in layers}})


def _writes() -> list[dict[str, Any] | None]:
    """One write set per prompt: vectors at several coefficients and positions, a relative one, an ablation,
    two composed, and none."""
    v, w = _vector(0), _vector(1, layers=(2,))
    return [
        None,
        v.to_intervention(4.0),
        v.to_intervention(8.0, positions="prompt"),
        v.to_intervention(-6.0, positions="generated"),
        v.to_intervention(0.5, relative=True),
        {"resid_post.1": Ablate(w.directions[2])},
        combine(v.to_intervention(3.0, positions="generated"), w.to_intervention(5.0)),
        None,
        w.to_intervention(12.0, positions="from:3"),
    ]


def test_mixed_batch_equals_each_request_alone(toy) -> None:
    model, tok = toy
    writes = _writes()
    lengths = [4 + 3 * (i % 4) for i in range(len(PROMPTS))]  # rows end at different steps
    alone = [generate_ids(model, tok, [p], writes=w, max_new_tokens=n, eos_token_id=-1)[0]
             for p, w, n in zip(PROMPTS, writes, lengths, strict=True)]
    unsteered = [generate_ids(model, tok, [p], max_new_tokens=n, eos_token_id=-1)[0]
                 for p, n in zip(PROMPTS, lengths, strict=True)]
    assert sum(a != u for a, u in zip(alone, unsteered, strict=True)) >= 5  # the writes matter
    engine = Engine(model, tok, max_batch=4)  # 9 requests, 4 rows: rows leave and join while others run
    streams = [engine.submit(GenerationRequest(_ids(tok, p), n, writes=w, eos_token_ids=frozenset()))
               for p, w, n in zip(PROMPTS, writes, lengths, strict=True)]
    engine.start()
    results = [_run(s) for s in streams]
    engine.shutdown()
    assert [tokens for tokens, _ in results] == alone
    assert all(end.reason == "length" and end.completion_tokens == n and end.prompt_tokens == len(_ids(tok, p))
               for (_, end), p, n in zip(results, PROMPTS, lengths, strict=True))
    assert _no_hooks(model)


@pytest.mark.parametrize("name", ["gpt2", "mixtral"])
def test_other_families_batch_exactly(name: str) -> None:
    model = build(name)
    tok = DecodingTokenizer()
    prompts = ["the quick brown fox", "hi", "steering vectors", "abcdefghijkl"]
    writes = [None, {"resid_post.1": actkit.Add(torch.randn(64) * 3, positions=Generated())}, None,
              {"resid_post.0": Ablate(torch.randn(64))}]
    alone = [generate_ids(model, tok, [p], writes=w, max_new_tokens=6, eos_token_id=-1)[0]
             for p, w in zip(prompts, writes, strict=True)]
    engine = Engine(model, tok, max_batch=3)
    engine.start()
    streams = [engine.submit(GenerationRequest(_ids(tok, p), 6, writes=w, eos_token_ids=frozenset()))
               for p, w in zip(prompts, writes, strict=True)]
    assert [_run(s)[0] for s in streams] == alone
    engine.shutdown()
    assert _no_hooks(model)


def test_requests_join_while_others_run_and_a_cancel_frees_the_slot() -> None:
    model = build("llama")
    tok = DecodingTokenizer()
    steer = {"resid_post.1": actkit.Add(torch.randn(64) * 3, positions=Generated())}
    steps = threading.Semaphore(0)

    def paced(x: torch.Tensor) -> torch.Tensor:  # the test lets the engine take one decode step per permit
        assert steps.acquire(timeout=30)
        return x

    held = {"resid_post.1": [Apply(paced, Generated()), steer["resid_post.1"]]}  # the identity, then the vector
    long, other, late = "the quick brown fox", "steering", "hi there"
    engine = Engine(model, tok, max_batch=2)
    engine.start()
    first = engine.submit(GenerationRequest(_ids(tok, long), 60, writes=held, eos_token_ids=frozenset()))
    second = engine.submit(GenerationRequest(_ids(tok, other), 60, eos_token_ids=frozenset()))
    steps.release(2)
    head = [first.get(timeout=30) for _ in range(3)]
    third = engine.submit(GenerationRequest(_ids(tok, late), 5, writes=steer, eos_token_ids=frozenset()))
    steps.release()
    with pytest.raises(queue.Empty):  # the batch is full: the third request waits
        third.get(timeout=0.3)
    second.cancel()
    steps.release()  # the step in flight ends; the next iteration frees the cancelled row and admits the third
    late_events = [third.get(timeout=30)]
    while not isinstance(late_events[-1], Finished):
        steps.release()
        late_events.append(third.get(timeout=30))
    assert isinstance(late_events[-1], Finished) and late_events[-1].reason == "length"
    cancelled = list(second)[-1]
    assert isinstance(cancelled, Finished) and cancelled.reason == "cancelled" and cancelled.completion_tokens < 10
    so_far = []
    while True:  # the long request is still running: it has sent tokens, not its end
        try:
            so_far.append(first.get(timeout=0.05))
        except queue.Empty:
            break
    assert all(isinstance(e, Token) for e in so_far)
    steps.release(100)
    rest, end = _run(first)
    assert end.reason == "length"
    engine.shutdown()
    assert [t.id for t in head + so_far if isinstance(t, Token)] + rest == generate_ids(
        model, tok, [long], writes=steer, max_new_tokens=60, eos_token_id=-1)[0]
    assert [e.id for e in late_events if isinstance(e, Token)] == generate_ids(
        model, tok, [late], writes=steer, max_new_tokens=5, eos_token_id=-1)[0]
    assert _no_hooks(model)


def test_eos_stops_the_request_and_is_not_sent(toy) -> None:
    model, tok = toy
    prompt = _ids(tok, PROMPTS[0])
    free = generate_ids(model, tok, [PROMPTS[0]], max_new_tokens=6, eos_token_id=-1)[0]
    stop = free[3]
    engine = Engine(model, tok)
    engine.start()
    tokens, end = _run(engine.submit(GenerationRequest(prompt, 6, eos_token_ids=frozenset({stop}))))
    engine.shutdown()
    assert tokens == free[:free.index(stop)]
    assert end.reason == "stop" and end.completion_tokens == len(tokens)


def test_prompt_and_token_logprobs_equal_a_plain_forward(toy) -> None:
    model, tok = toy
    prompt = _ids(tok, PROMPTS[3])
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)
    engine = Engine(model, tok)
    engine.start()
    tokens, end = _run(engine.submit(GenerationRequest(prompt, 0, prompt_logprobs=3)))
    generated = list(engine.submit(GenerationRequest(prompt, 1, logprobs=2)))
    engine.shutdown()
    assert tokens == [] and end.reason == "length" and end.completion_tokens == 0
    assert end.prompt_logprobs is not None and len(end.prompt_logprobs) == len(prompt)
    assert end.prompt_logprobs[0] == (None, {})
    for i, (value, top) in enumerate(end.prompt_logprobs[1:], start=1):
        assert value == pytest.approx(float(expected[i - 1, prompt[i]]), abs=1e-5)
        best = expected[i - 1].topk(3)
        assert list(top) == best.indices.tolist()
        assert list(top.values()) == pytest.approx(best.values.tolist(), abs=1e-5)
    first = generated[0]
    assert isinstance(first, Token) and first.id == int(expected[-1].argmax())
    assert first.logprob == pytest.approx(float(expected[-1].max()), abs=1e-5)
    assert first.top_logprobs is not None and list(first.top_logprobs) == expected[-1].topk(2).indices.tolist()


def test_seeded_sampling_is_reproducible_and_private_to_the_request(toy) -> None:
    model, tok = toy
    engine = Engine(model, tok, max_batch=4)
    engine.start()

    def sample(seed: int) -> GenerationRequest:
        return GenerationRequest(_ids(tok, PROMPTS[1]), 12, temperature=1.5, top_p=0.95, seed=seed,
                                 eos_token_ids=frozenset())

    together = [engine.submit(sample(s)) for s in (7, 7, 8)]  # the same batch, each with its own generator
    a, b, c = (_run(s)[0] for s in together)
    again = _run(engine.submit(sample(7)))[0]
    greedy = _run(engine.submit(GenerationRequest(_ids(tok, PROMPTS[1]), 12, eos_token_ids=frozenset())))[0]
    engine.shutdown()
    assert a == b == again
    assert c != a and a != greedy


def test_a_failing_request_does_not_disturb_the_others(toy) -> None:
    model, tok = toy

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this write fails")

    v = _vector(3)
    writes: list[dict[str, Any] | None] = [v.to_intervention(6.0), {"resid_post.2": Apply(boom, Generated())},
                                           None, {"resid_post.0": Apply(boom)}, v.to_intervention(-4.0)]
    prompts = PROMPTS[:5]
    engine = Engine(model, tok, max_batch=8)
    streams = [engine.submit(GenerationRequest(_ids(tok, p), 6, writes=w, eos_token_ids=frozenset()))
               for p, w in zip(prompts, writes, strict=True)]
    engine.start()
    results = [_run(s) for s in streams]
    after = _run(engine.submit(GenerationRequest(_ids(tok, prompts[2]), 6, eos_token_ids=frozenset())))
    engine.shutdown()
    for i in (1, 3):  # one fails in the batched decode step, one in its prefill
        tokens, end = results[i]
        assert end.reason == "error" and end.error is not None and "this write fails" in end.error
        assert len(tokens) == (0 if i == 3 else 1)
    for i in (0, 2, 4):
        assert results[i][0] == generate_ids(model, tok, [prompts[i]], writes=writes[i], max_new_tokens=6,
                                             eos_token_id=-1)[0]
    assert after == results[2]  # the engine goes on serving
    assert _no_hooks(model)


def test_shutdown_finishes_in_flight_requests_then_refuses(toy) -> None:
    model, tok = toy
    engine = Engine(model, tok, max_batch=2)
    engine.start()
    streams = [engine.submit(GenerationRequest(_ids(tok, p), 5, eos_token_ids=frozenset())) for p in PROMPTS[:3]]
    engine.shutdown(timeout=60)
    assert [_run(s)[1].reason for s in streams] == ["length"] * 3
    with pytest.raises(ActkitError, match="shut down"):
        engine.submit(GenerationRequest(_ids(tok, "hello"), 1))

    hurried = Engine(model, tok, max_batch=1)
    hurried.start()
    long = [hurried.submit(GenerationRequest(_ids(tok, p), 200, eos_token_ids=frozenset())) for p in PROMPTS[:2]]
    long[0].get(timeout=30)
    started = time.monotonic()
    hurried.shutdown(timeout=0.2)
    assert time.monotonic() - started < 10
    assert [_run(s)[1].reason for s in long] == ["cancelled", "cancelled"]


def test_submit_refuses_bad_requests(toy) -> None:
    model, tok = toy
    engine = Engine(model, tok, max_queue=1)  # not started: requests stay queued
    assert engine.context_length == 256
    prompt = _ids(tok, "hello")
    bad = [
        (GenerationRequest([], 4), "empty"),
        (GenerationRequest(prompt, 257 - len(prompt)), "context is 256"),
        (GenerationRequest(prompt, -1), "max_new_tokens"),
        (GenerationRequest(prompt, 4, temperature=float("nan")), "temperature"),
        (GenerationRequest(prompt, 4, top_p=0.0), "top_p"),
        (GenerationRequest([10**6], 4), "token ids"),
        (GenerationRequest(prompt, 4, logprobs=-2), "logprobs"),
        (GenerationRequest(prompt, 4, writes={"resid_post.99": Ablate(torch.ones(256))}), "does not exist"),
        (GenerationRequest(prompt, 4, writes={"resid_post.1": "steer"}), "not an Intervention"),  # type: ignore[dict-item]
    ]
    for request, message in bad:
        with pytest.raises(ActkitError, match=message):
            engine.submit(request)
    queued = engine.submit(GenerationRequest(prompt, 256 - len(prompt)))  # exactly fits
    with pytest.raises(ActkitError, match="queue is full"):
        engine.submit(GenerationRequest(prompt, 1))
    engine.shutdown()
    assert list(queued)[-1] == Finished("cancelled", len(prompt), 0)


def test_a_model_whose_cache_cannot_be_packed_is_refused() -> None:
    with pytest.raises(ActkitError, match="sliding window of 4 tokens"):
        Engine(build("gemma3"), DecodingTokenizer())


def test_folded_adds_fail_only_their_rows_and_hooks_go_when_the_batch_empties(toy) -> None:
    """Rows whose vectors do not fit the site fail in the decode step (their adds are folded together, or kept
    apart when the rows disagree on the width); the others equal their runs alone; an idle engine holds no hooks."""
    model, tok = toy
    g = torch.Generator().manual_seed(5)
    good = {"resid_post.1": actkit.Add(torch.randn(256, generator=g) * 4)}
    narrow = [actkit.Add(torch.randn(128, generator=g), positions=Generated()) for _ in range(3)]
    writes: list[dict[str, Any] | None] = [good, {"resid_post.2": narrow[0]}, {"resid_post.2": narrow[1]}, None,
                                           {"resid_post.1": narrow[2]}]
    engine = Engine(model, tok, max_batch=8)
    streams = [engine.submit(GenerationRequest(_ids(tok, p), 5, writes=w, eos_token_ids=frozenset()))
               for p, w in zip(PROMPTS, writes, strict=False)]
    engine.start()
    results = [_run(s) for s in streams]
    for i in (1, 2, 4):
        tokens, end = results[i]
        assert end.reason == "error" and end.error is not None and "size 128" in end.error and len(tokens) == 1
    for i in (0, 3):
        assert results[i][0] == generate_ids(model, tok, [PROMPTS[i]], writes=writes[i], max_new_tokens=5,
                                             eos_token_id=-1)[0]
    deadline = time.monotonic() + 10
    while not _no_hooks(model) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _no_hooks(model)  # the engine is still running, with no rows
    engine.shutdown()


def _probe(seed: int, layer: int, threshold: float = 0.0, reduce: str = "last") -> Probe:
    g = torch.Generator().manual_seed(seed)
    return Probe(f"resid_post.{layer}", torch.randn(256, generator=g), 0.25, threshold, "mean-diff", reduce)


def _one_pass(model: Any, ids: list[int], plen: int, writes: Any, probe: Probe) -> list[float]:
    """The probe's score of every position of `ids`, in one forward pass with the same writes."""
    seen = Capture()
    with torch.inference_mode(), tap(model, write=writes, read={probe.site: seen}, prompt_lengths=[plen]):
        model(input_ids=torch.tensor([ids]))
    return probe.project(seen.last[0]).tolist()


def test_monitor_scores_in_a_mixed_batch_equal_one_pass_over_the_final_text(toy) -> None:
    model, tok = toy
    probes = {"a": _probe(1, 1), "b": _probe(2, 3), "c": _probe(3, 1, reduce="mean")}
    v = _vector(4)
    asks: list[tuple[dict[str, Probe] | None, dict[str, Any] | None]] = [
        (probes, None), (None, v.to_intervention(5.0)),
        ({"b": probes["b"]}, v.to_intervention(-4.0, positions="generated")),
        ({"a": probes["a"], "c": probes["c"]}, None), (None, None),
        (probes, {"resid_post.2": Ablate(v.directions[2])})]
    lengths = [6, 9, 4, 7, 5, 8]
    engine = Engine(model, tok, max_batch=3)  # rows join and leave while the others are monitored
    streams = [engine.submit(GenerationRequest(_ids(tok, p), n, writes=w, monitor=m, eos_token_ids=frozenset()))
               for p, (m, w), n in zip(PROMPTS, asks, lengths, strict=False)]
    engine.start()
    results = [list(s) for s in streams]
    engine.shutdown()
    for p, (monitor, writes), n, events in zip(PROMPTS, asks, lengths, results, strict=False):
        tokens = [e for e in events if isinstance(e, Token)]
        end = events[-1]
        assert isinstance(end, Finished) and len(tokens) == n
        assert [t.id for t in tokens] == generate_ids(model, tok, [p], writes=writes, max_new_tokens=n,
                                                      eos_token_id=-1)[0]
        if monitor is None:
            assert end.prompt_scores is None and all(t.scores is None for t in tokens)
            continue
        prompt = _ids(tok, p)
        assert end.prompt_scores is not None and set(end.prompt_scores) == set(monitor)
        for name, probe in monitor.items():
            full = _one_pass(model, prompt + [t.id for t in tokens], len(prompt), writes, probe)
            assert end.prompt_scores[name] == pytest.approx(full[:len(prompt)], abs=1e-4)
            assert [t.scores[name] for t in tokens if t.scores] == pytest.approx(
                full[len(prompt) - 1:len(prompt) + n - 1], abs=1e-4)


@pytest.mark.parametrize("action", ["flag", "refuse", "steer"])
def test_the_guard_decides_per_row_in_a_mixed_batch(toy, action: str) -> None:
    """Each prompt is scored and decided in its prefill; flag reports, refuse generates nothing, steer steers the
    flagged rows only: each as `actkit.monitor.guarded_generate` does it alone."""
    model, tok = toy
    prompts = PROMPTS[:6]
    probe = _probe(7, 1)
    scores = [_one_pass(model, _ids(tok, p), len(_ids(tok, p)), None, probe)[-1] for p in prompts]
    probe.threshold = sorted(scores)[len(scores) // 2] - 1e-3  # about half the prompts are flagged
    steer = _vector(8, layers=(2, 3)).to_intervention(6.0) if action == "steer" else None
    guard = Guard(probe, action, steer)
    own = [None, _vector(9).to_intervention(3.0), None, None, _vector(9).to_intervention(-3.0), None]
    engine = Engine(model, tok, max_batch=4)
    streams = [engine.submit(GenerationRequest(_ids(tok, p), 6, writes=w, guard=guard, eos_token_ids=frozenset()))
               for p, w in zip(prompts, own, strict=True)]
    engine.start()
    results = [_run(s) for s in streams]
    engine.shutdown()
    flagged = [s > probe.threshold for s in scores]
    assert 0 < sum(flagged) < len(prompts)
    for p, w, (tokens, end), flag, score in zip(prompts, own, results, flagged, scores, strict=True):
        assert end.guard is not None and end.guard[1] == flag and end.guard[0] == pytest.approx(score, abs=1e-4)
        if action == "refuse" and flag:
            assert tokens == [] and end.reason == "refused"
            continue
        expected = generate_ids(model, tok, [p], writes=combine(guard_writes(probe, "steer", steer)[0], w)
                                if action == "steer" else w, max_new_tokens=6, eos_token_id=-1)[0]
        assert tokens == expected and end.reason == "length"
    if action == "steer":  # the guard's steering changed the flagged rows
        assert any(tokens != generate_ids(model, tok, [p], writes=w, max_new_tokens=6, eos_token_id=-1)[0]
                   for p, w, (tokens, _), flag in zip(prompts, own, results, flagged, strict=True) if flag)


def test_folded_adds_equal_each_rows_own_add_bit_for_bit() -> None:
    """The batch's folded add gives each row exactly what its own `Add` gives it alone (any positions rule that
    folds, two adds at one site), and rows without adds keep their values bit for bit."""
    g = torch.Generator().manual_seed(11)
    vectors = [torch.randn(16, generator=g) for _ in range(4)]
    own: list[dict[str, Any] | None] = [
        {"resid_post.1": actkit.Add(vectors[0], 0.7)},
        None,
        {"resid_post.1": [actkit.Add(vectors[1], -1.3, positions=Generated()), actkit.Add(vectors[2], 2.0)]},
        {"resid_post.1": actkit.Add(vectors[3], torch.tensor([0.35]), positions=actkit.From(6))},
        {"resid_post.1": actkit.Add(vectors[0], 3.0, positions=actkit.Prompt())},
    ]
    rows = [_Row(GenerationRequest([1] * n, 4, writes=w), Stream(), frozenset(), None)
            for n, w in zip([5, 3, 7, 4, 6], own, strict=True)]
    writes = _batch_writes(rows, torch.float32, torch.device("cpu"))["resid_post.1"]
    assert [type(w).__name__ for w in writes] == ["_Fold", "_Fold"]  # two ranks: row 2 adds twice
    x = torch.randn(len(rows), 9, 16, generator=g)
    positions = torch.arange(9).expand(len(rows), 9)
    ctx = StepContext(positions, torch.ones(len(rows), 9, dtype=torch.bool),
                      torch.tensor([r.prompt_len for r in rows]), torch.arange(len(rows)), torch.zeros(len(rows)))
    out = x
    for w in writes:
        out = w(out, w.positions.mask(ctx), ctx)
    for i, w in enumerate(own):
        row, sub = x[i:i + 1], StepContext(positions[i:i + 1], ctx.valid[i:i + 1], ctx.prompt_len[i:i + 1],
                                           ctx.documents[i:i + 1], ctx.offsets[i:i + 1])
        for add in _as_list((w or {}).get("resid_post.1", [])):
            row = add(row, add.positions.mask(sub), sub)
        assert torch.equal(out[i:i + 1], row), i
